"""The torch.library registration of stn_ext's ops: opcheck (schema, fake kernels, autograd),
the backward op's output_mask contract, torch.compile(fullgraph=True) and autocast."""
import pytest
import torch
import torch._dynamo.testing

from _reference import (CONFIG_IDS, CONFIGS, DTYPES, Backend, assert_close, assert_same_run,
                        expected_memory_format, grads, make_case, max_abs, random_input,
                        reference, run, seed_of)

SHAPE, SIZE = (2, 3, 5, 6), (4, 7)


def _args(backend, dtype, layout, config, *, requires_grad=True):
    x, theta = make_case(backend, SHAPE, SIZE, config, dtype, seed_of("opcheck", config))
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "strided":
        x = x.transpose(2, 3).contiguous().transpose(2, 3)  # neither layout: contiguous output
    return x.requires_grad_(requires_grad), theta.requires_grad_(requires_grad)


# (dtype, layout, config): every dtype in both layouts, spread so that each mode meets each
# padding mode (CONFIGS[k] for k = 0, 1, 3, 4, 6, 7, 9, 10).
OPCHECK_CASES = [
    pytest.param(dtype, layout, CONFIGS[3 * i + j],
                 id=f"{str(dtype)[6:]}-{layout}-{CONFIG_IDS[3 * i + j]}")
    for i, dtype in enumerate(DTYPES) for j, layout in enumerate(["contiguous", "channels_last"])
] + [pytest.param(torch.float32, "strided", CONFIGS[5], id=f"float32-strided-{CONFIG_IDS[5]}")]


@pytest.mark.parametrize("dtype,layout,config", OPCHECK_CASES)
def test_opcheck_forward(backend, dtype, layout, config):
    x, theta = _args(backend, dtype, layout, config)
    torch.library.opcheck(backend.forward_op, (x, theta, *SIZE, *config.values()))


@pytest.mark.parametrize("mask", [[True, True], [True, False], [False, True]],
                         ids=["both", "input", "theta"])
@pytest.mark.parametrize("dtype,layout,config", OPCHECK_CASES)
def test_opcheck_backward(backend, dtype, layout, config, mask):
    x, theta = _args(backend, dtype, layout, config, requires_grad=False)
    grad_output = random_input((*SHAPE[:2], *SIZE), seed=5, dtype=dtype, device=backend.device)
    torch.library.opcheck(backend.backward_op, (grad_output, x, theta, *config.values(), mask))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("mask", [[True, True], [True, False], [False, True], [False, False]],
                         ids=["both", "input", "theta", "none"])
def test_backward_output_mask(backend, mask, layout):
    """A gradient not asked for comes back empty; the ones asked for equal a full call's, and
    grad_input follows the output layout rule."""
    config = CONFIGS[2]
    x, theta = _args(backend, torch.float64, layout, config, requires_grad=False)
    grad_output = random_input((*SHAPE[:2], *SIZE), seed=5, device=backend.device)
    full = backend.backward_op(grad_output, x, theta, *config.values(), [True, True])
    got = backend.backward_op(grad_output, x, theta, *config.values(), mask)
    for wanted, g, f in zip(mask, got, full):
        if wanted:
            assert_same_run(g, f, backend)
        else:
            assert g.numel() == 0
    if mask[0]:
        assert got[0].is_contiguous(memory_format=expected_memory_format(x)), (
            f"grad_input strides {got[0].stride()} for input strides {x.stride()}")
    assert full[1].shape == theta.shape


# --- torch.compile -----------------------------------------------------------------------------

def _stn_step(backend, x, theta, delta, size, config):
    """A small STN-like step: theta from a parameter, the fused op, a loss."""
    out = backend.sample(x * 2, theta + delta, size, **config)
    return (out.sin() * out).sum()


def _compare_compiled(compiled, x, theta, delta, size, config, backend, exact):
    leaves = [t.detach().requires_grad_() for t in (x, theta, delta)]
    eager_loss = _stn_step(backend, *leaves, size, config)
    eager_grads = torch.autograd.grad(eager_loss, leaves)
    leaves = [t.detach().requires_grad_() for t in (x, theta, delta)]
    loss = compiled(backend, *leaves, size, config)
    got_grads = torch.autograd.grad(loss, leaves)
    for what, got, want in zip(("loss", "grad x", "grad theta", "grad delta"),
                               (loss, *got_grads), (eager_loss, *eager_grads)):
        if exact:  # the same kernels run, only traced
            assert_same_run(got, want, backend, what)
        else:      # inductor fuses the surrounding ops differently: rounding only
            assert_close(got, want, x.dtype, what, scale=max_abs(want))
        if what == "grad x":
            assert got.stride() == want.stride(), "grad x layout differs from eager"


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("size_form", ["none", "tuple", "size4"])
@pytest.mark.parametrize("compile_backend", ["eager", "aot_eager"])
def test_compile_fullgraph_matches_eager(backend, compile_backend, size_form, layout):
    torch._dynamo.reset()
    config = CONFIGS[3]  # bilinear, border, align_corners
    x, theta = _args(backend, torch.float32, layout, config, requires_grad=False)
    size = {"none": None, "tuple": SIZE, "size4": torch.Size([*SHAPE[:2], *SIZE])}[size_form]
    delta = 0.01 * torch.ones(2, 3, device=backend.device)
    compiled = torch.compile(_stn_step, fullgraph=True, backend=compile_backend)
    _compare_compiled(compiled, x, theta, delta, size, config, backend, exact=True)


def test_compile_dynamic_shapes(backend):
    """dynamic=True: the op's SymInt output size traces; a second shape reuses the graph."""
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(_stn_step, fullgraph=True, backend=counter, dynamic=True)
    config = CONFIGS[8]  # nearest, border, no align_corners
    # No size of 2 or 3: dynamo's duck sizing would tie it to theta's constant (2, 3) dims.
    for shape, size in (((4, 5, 6, 7), (8, 9)), ((5, 4, 9, 6), (7, 10))):
        x, theta = make_case(backend, shape, size, config, torch.float64, seed_of(shape))
        delta = torch.zeros(2, 3, dtype=torch.float64, device=backend.device)
        _compare_compiled(compiled, x, theta, delta, size, config, backend, exact=True)
    assert counter.frame_count == 1


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_compile_inductor(backend, layout):
    torch._dynamo.reset()
    config = CONFIGS[4]  # bilinear, reflection, no align_corners
    x, theta = _args(backend, torch.float32, layout, config, requires_grad=False)
    delta = 0.01 * torch.ones(2, 3, device=backend.device)
    compiled = torch.compile(_stn_step, fullgraph=True)
    _compare_compiled(compiled, x, theta, delta, SIZE, config, backend, exact=False)


# --- autocast ----------------------------------------------------------------------------------

AUTOCAST = [pytest.param(Backend("cpu", "cpu"), torch.bfloat16, id="cpu-bfloat16"),
            pytest.param(Backend("cuda-emulated", "cpu"), torch.bfloat16,
                         id="cuda-emulated-bfloat16"),
            pytest.param(Backend("cuda", "cuda"), torch.float16, id="cuda-float16",
                         marks=pytest.mark.cuda)]


@pytest.mark.parametrize("backend,low", AUTOCAST)
@pytest.mark.parametrize("in_dtype", ["float32", "low", "float64"])
def test_autocast_runs_in_float32(backend, low, in_dtype):
    """Under autocast the op runs in float32 like F.grid_sample: float32 (or upcast low
    precision) inputs give the float32 result, and gradients reach the leaves in their dtype.
    float64 is left alone by autocast, as for PyTorch's own ops."""
    dtype = {"float32": torch.float32, "low": low, "float64": torch.float64}[in_dtype]
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    config = CONFIGS[1]
    x, theta = make_case(backend, SHAPE, SIZE, config, dtype, seed_of("autocast"),
                         requires_grad=True)
    grad_output = torch.randn(*SHAPE[:2], *SIZE, device=backend.device)
    with torch.autocast(backend.device, dtype=low):
        out, gx, gth = grads(lambda a, b: run(backend, a, b, SIZE, **config), x, theta,
                             grad_output)
    assert out.dtype == compute
    assert gx.dtype == dtype and gth.dtype == dtype
    want, wgx, wgth = grads(lambda a, b: run(backend, a.to(compute), b.to(compute), SIZE,
                                             **config), x, theta, grad_output)
    for what, got, exp in (("output", out, want), ("grad input", gx, wgx),
                           ("grad theta", gth, wgth)):
        assert_same_run(got, exp, backend, what)


@pytest.mark.parametrize("backend,low", AUTOCAST)
def test_autocast_theta_from_low_precision_layer(backend, low):
    """The usual STN under AMP: theta comes from a Linear, so it is low precision while the
    image is float32. PyTorch's F.affine_grid + F.grid_sample accept this under autocast (the
    sampler runs in float32); so must the fused op."""
    config = CONFIGS[0]
    x = random_input(SHAPE, seed=3, dtype=torch.float32, device=backend.device)
    regressor = torch.nn.Linear(4, 6).to(backend.device)
    features = torch.randn(SHAPE[0], 4, device=backend.device)
    with torch.autocast(backend.device, dtype=low):
        theta = regressor(features).view(-1, 2, 3)
        assert theta.dtype == low
        assert reference(x, theta, SIZE, **config).dtype == torch.float32  # PyTorch: fine
        out = run(backend, x, theta, SIZE, **config)
    assert out.dtype == torch.float32
    # Documented autocast semantics: the op runs on the float32 casts of its inputs.
    want = run(backend, x, theta.detach().float(), SIZE, **config)
    assert_close(out, want, torch.float32, "output")
    out.sum().backward()
    assert regressor.weight.grad is not None and regressor.weight.grad.isfinite().all()
