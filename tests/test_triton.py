"""The Triton backend (stn_ext/triton_kernels.py): parity with PyTorch and with the C++ kernel of
the same device, gradients, layouts, registration.

Without a GPU the kernels run in Triton's interpreter on CPU tensors. Triton chooses between
compiled and interpreted kernels when a @triton.jit decorator runs, so this module sets
TRITON_INTERPRET=1 before it imports stn_ext.triton_kernels, whatever pytest imported before.
With a GPU the interpreter stays off (it would also swap the kernels of every other Triton user
in the process) and the same tests run on CUDA tensors, plus a few too slow to interpret.

The interpreter runs each program as numpy calls (~50 ms per program here), so the matrix uses
small shapes: every mode x padding x align_corners x dtype on one shape, every shape class of
tests/test_op.py on a few configurations.
"""
import contextlib
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton_kernels = pytest.importorskip("stn_ext.triton_kernels")

from _reference import (CONFIG_IDS, CONFIGS, DTYPES, SHAPES, Backend, assert_close,  # noqa: E402
                        expected_memory_format, grads, make_case, max_abs, out_hw, pixel_coords,
                        random_input, random_theta, reference, run, seed_of)

DTYPE_IDS = [str(d).replace("torch.", "") for d in DTYPES]
DEVICES = [
    pytest.param("cpu", id="interpreter", marks=pytest.mark.skipif(
        not triton_kernels.INTERPRETED,
        reason="stn_ext.triton_kernels was imported before TRITON_INTERPRET=1 was set")),
    pytest.param("cuda", marks=pytest.mark.cuda),
]
FORWARD = torch.ops.stn_ext.triton_affine_grid_sample.default
BACKWARD = torch.ops.stn_ext.triton_affine_grid_sample_backward.default

# Triton against the C++ kernel of its device: the same formulas in the same order and
# precision, so they differ by the compilers' choices of fused multiply-adds (a few ulps of the
# compute precision, amplified up to ~8x by the interpolation of randn data), and then by one
# rounding of reduced-precision outputs, where the interpreter's float32 -> bfloat16 cast rounds
# toward zero (one bfloat16 ulp, 2**-7 relative at most).
KERNEL_TOL = {torch.float64: dict(rtol=1e-13, atol=1e-13),
              torch.float32: dict(rtol=1e-5, atol=1e-5),
              torch.float16: dict(rtol=2 ** -10, atol=1e-5),
              torch.bfloat16: dict(rtol=2 ** -7, atol=1e-5)}


@pytest.fixture(params=DEVICES)
def triton(request) -> Backend:
    return Backend("triton", request.param)


def sampler(backend, size, config):
    return lambda x, theta: run(backend, x, theta, size, **config)


def kernel_sampler(size, config):
    """The C++ kernel of the tensors' device, through its registered op."""
    return lambda x, theta: torch.ops.stn_ext.affine_grid_sample(
        x, theta, *out_hw(x.shape, size), *config.values())


def assert_close_to_kernel(got, want, dtype, what, scale=1.0):
    """`scale`: gradients are sums over pixels, so their rounding error is relative to the
    magnitude of the summands, not of the (possibly cancelling) sum."""
    tol = KERNEL_TOL[dtype]
    torch.testing.assert_close(got.double(), want.double(), rtol=tol["rtol"],
                               atol=tol["atol"] * max(1.0, scale),
                               msg=lambda m: f"{what} ({dtype}) vs the C++ kernel: {m}")


def check_against_references(backend, x, theta, size, config, grad_output, dtype):
    """Output and both gradients equal PyTorch's composition (the tolerances of test_op.py) and
    the C++ kernel of the device; returns (output, grad input, grad theta)."""
    ours = grads(sampler(backend, size, config), x, theta, grad_output)
    ref = grads(lambda a, t: reference(a, t, size, **config), x, theta, grad_output)
    kernel = grads(kernel_sampler(size, config), x, theta, grad_output)
    for what, got, want, cpp in zip(("output", "grad input", "grad theta"), ours, ref, kernel):
        assert (got is None) == (want is None), what
        if got is None:
            continue
        assert got.dtype == dtype and got.shape == want.shape, what
        scale = 1.0 if what == "output" else max_abs(want)
        assert_close(got, want, dtype, what, scale=scale)
        assert_close_to_kernel(got, cpp, dtype, what, scale=scale)
    if config["mode"] == "nearest" and ours[2] is not None:
        assert torch.count_nonzero(ours[2]) == 0, "nearest mode gives theta exactly zero grad"
    return ours


# ----------------------------------------------------------------------------------------------
# Parity: every mode x padding x align_corners x dtype, then every shape class
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_forward_and_gradient_parity(triton, config, dtype):
    shape, size = (2, 3, 5, 7), (9, 13)  # upsampling, non-square, odd sizes
    seed = seed_of("triton", config, dtype)
    x, theta = make_case(triton, shape, size, config, dtype, seed, requires_grad=True)
    grad_output = random_input((*shape[:2], *size), seed=seed + 1, dtype=dtype,
                               device=triton.device)
    out, _, _ = check_against_references(triton, x, theta, size, config, grad_output, dtype)
    assert out.is_contiguous() and out.device == x.device


# (input shape, size): the shared ones but the largest (the interpreter is slow), plus channel
# and pixel counts that need more than one block of the kernels (and a tail block).
TRITON_SHAPES = {name: case for name, case in SHAPES.items() if name != "up-nonsquare"} | {
    "channel-blocks": ((1, 37, 4, 5), (3, 2)),
    "pixel-blocks": ((1, 2, 6, 5), (17, 33)),
}
SHAPE_CONFIGS = [CONFIGS[0], CONFIGS[5], CONFIGS[8]]  # bilinear zeros / reflection, nearest


@pytest.mark.parametrize("config", SHAPE_CONFIGS, ids=[CONFIG_IDS[i] for i in (0, 5, 8)])
@pytest.mark.parametrize("shape,size", TRITON_SHAPES.values(), ids=TRITON_SHAPES.keys())
def test_shapes(triton, shape, size, config):
    seed = seed_of("triton-shape", shape, size, config)
    x, theta = make_case(triton, shape, size, config, torch.float64, seed, requires_grad=True)
    grad_output = random_input((*shape[:2], *out_hw(shape, size)), seed=seed + 1,
                               device=triton.device)
    check_against_references(triton, x, theta, size, config, grad_output, torch.float64)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_gradcheck(triton, config):
    shape, size = (2, 2, 4, 5), (3, 6)
    x, theta = make_case(triton, shape, size, config, torch.float64, seed_of("gc", config),
                         requires_grad=True)
    # Fast mode checks one random projection of the Jacobian: the full one would take ~100
    # interpreted launches per configuration.
    assert torch.autograd.gradcheck(sampler(triton, size, config), (x, theta),
                                    fast_mode=triton.device == "cpu")


# ----------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------

N, C, H, W = 3, 4, 6, 7
# (N, C, H, W) views of a base tensor of the given shape, as in tests/test_op.py.
INPUT_VIEWS = {
    "channels_last": ((N, H, W, C), lambda b: b.permute(0, 3, 1, 2)),
    "sliced": ((N, C + 2, 2 * H, W + 3), lambda b: b[:, 1:C + 1, ::2, 2:W + 2]),
    "transposed": ((N, C, W, H), lambda b: b.transpose(2, 3)),
    "batch_broadcast": ((1, C, H, W), lambda b: b.expand(N, C, H, W)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("kind", INPUT_VIEWS)
def test_input_layouts(triton, kind, dtype):
    """Any input strides (and a transposed theta) give the references' values; outputs and input
    gradients follow the layout rule of stn_ext.ops.output_memory_format."""
    size = (5, 8)
    config = dict(mode="bilinear", padding_mode="border", align_corners=False)
    seed = seed_of("triton-layout", kind)
    base_shape, view = INPUT_VIEWS[kind]
    base = random_input(base_shape, seed=seed, dtype=dtype, device=triton.device)
    x = view(base).requires_grad_()
    theta = random_theta(N, (H, W), size, False, seed=seed, dtype=dtype, device=triton.device)
    theta = theta.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    grad_output = random_input((N, C, *size), seed=seed + 1, dtype=dtype, device=triton.device)
    out, grad_input, _ = check_against_references(triton, x, theta, size, config, grad_output,
                                                   dtype)
    assert out.is_contiguous(memory_format=expected_memory_format(x))
    grad_input = BACKWARD(grad_output, x.detach(), theta.detach(), *config.values(),
                          [True, False])[0]
    assert grad_input.is_contiguous(memory_format=expected_memory_format(x))


def test_grad_output_strides(triton):
    """The backward kernel reads grad_output by its strides (here: broadcast, as from .sum())."""
    config = dict(mode="bilinear", padding_mode="zeros", align_corners=True)
    x, theta = make_case(triton, (N, C, H, W), (5, 8), config, torch.float32, seed_of("gout"))
    grad_output = random_input((1, C, 1, 8), seed=4, dtype=torch.float32,
                               device=triton.device).expand(N, C, 5, 8)
    args = (x, theta, *config.values(), [True, True])
    for got, want in zip(BACKWARD(grad_output, *args), BACKWARD(grad_output.contiguous(), *args)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Extreme and non-finite maps
# ----------------------------------------------------------------------------------------------

def _affine(angle=0.0, sx=1.0, sy=1.0, tx=0.0, ty=0.0, shear=0.0):
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[sx * c, -sy * s + shear, tx], [sx * s, sy * c, ty]], dtype=torch.float64)


# One batch of extreme maps (the kinds of tests/test_op.py), sampled in one launch.
EXTREME_THETAS = torch.stack([
    _affine(-3 * math.pi / 4, tx=0.4, ty=-0.7),   # rotation
    _affine(sx=-1.3, sy=-0.8, tx=0.2),             # mirror
    _affine(shear=2.5),
    _affine(0.3, sx=1e-3, sy=1e-3, tx=0.2, ty=-0.1),  # zoom in
    _affine(0.2, sx=1e4, sy=-1e4),                 # zoom out: many reflections
    _affine(0.1, sx=3.0, sy=3.0, tx=1e6, ty=-1e6),  # far outside
])


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_extreme_thetas(triton, config):
    shape, size = (len(EXTREME_THETAS), 3, 9, 12), (11, 8)
    ac = config["align_corners"]
    theta = torch.cat([random_theta(1, shape[2:], size, ac, seed=seed_of("extreme", i),
                                    center=center, spread=1e-3, device=triton.device)
                       for i, center in enumerate(EXTREME_THETAS)]).requires_grad_()
    x = random_input(shape, seed=seed_of("extreme-x"), device=triton.device).requires_grad_()
    grad_output = random_input((*shape[:2], *size), seed=3, device=triton.device)
    ours = grads(sampler(triton, size, config), x, theta, grad_output)
    ref = grads(lambda a, t: reference(a, t, size, **config), x, theta, grad_output)
    kernel = grads(kernel_sampler(size, config), x, theta, grad_output)
    # As in tests/test_op.py: a source coordinate of magnitude M is resolved to ~eps * M px,
    # which interpolation turns into up to 4 max|x| times that.
    coords = pixel_coords(theta, shape[2:], size, ac)
    extra = 4 * 8 * torch.finfo(torch.float64).eps * max(max_abs(coords), 1.0) * max_abs(x)
    for what, got, want, cpp in zip(("output", "grad input", "grad theta"), ours, ref, kernel):
        assert_close(got, want, torch.float64, what, scale=max_abs(want), extra_atol=extra)
        assert_close(got, cpp, torch.float64, what, scale=max_abs(want), extra_atol=extra)


# The interpreter evaluates the reflection of an infinite coordinate (inf - inf = NaN, as on a
# GPU) with numpy, which warns about it.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_non_finite_theta(triton, value, padding_mode):
    """Non-finite coordinates read zero padding, except +-inf clipped to the border by border
    padding; gradients stay finite (the documented behaviour of tests/test_op.py)."""
    config = dict(mode="bilinear", padding_mode=padding_mode, align_corners=False)
    x = random_input((2, 3, 5, 6), seed=7, device=triton.device).requires_grad_()
    theta = torch.eye(2, 3, dtype=torch.float64, device=triton.device).repeat(2, 1, 1)
    theta[:, 0, 2] = value
    theta.requires_grad_()
    out = run(triton, x, theta, **config)
    out.backward(torch.ones_like(out))
    assert out.isfinite().all() and x.grad.isfinite().all() and theta.grad.isfinite().all()
    expected = torch.ops.stn_ext.affine_grid_sample(x, theta, 5, 6, *config.values())
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("shape,size", [((0, 3, 5, 6), (4, 4)), ((2, 3, 5, 6), (0, 4)),
                                        ((2, 3, 5, 6), (4, 0)), ((2, 0, 5, 6), (4, 3))],
                         ids=["N0", "Ho0", "Wo0", "C0"])
def test_empty(triton, shape, size):
    x = random_input(shape, seed=1, device=triton.device).requires_grad_()
    theta = torch.eye(2, 3, dtype=torch.float64, device=triton.device).repeat(shape[0], 1, 1)
    theta.requires_grad_()
    out = run(triton, x, theta, size)
    assert out.shape == (*shape[:2], *size) and out.dtype == x.dtype
    out.backward(torch.ones_like(out))
    assert x.grad.shape == x.shape and torch.count_nonzero(x.grad) == 0
    assert theta.grad.shape == theta.shape and torch.count_nonzero(theta.grad) == 0


# ----------------------------------------------------------------------------------------------
# Gradients asked for, determinism
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_backward_output_mask(triton, mode):
    """A gradient not asked for comes back empty (and is not computed); the others equal a full
    call's; nearest gives theta a zero gradient."""
    config = dict(mode=mode, padding_mode="reflection", align_corners=False)
    x, theta = make_case(triton, (2, 3, 5, 6), (4, 7), config, torch.float64, seed_of("mask"))
    grad_output = random_input((2, 3, 4, 7), seed=5, device=triton.device)
    full = BACKWARD(grad_output, x, theta, *config.values(), [True, True])
    for mask in ([True, False], [False, True], [False, False]):
        got = BACKWARD(grad_output, x, theta, *config.values(), mask)
        for wanted, g, f in zip(mask, got, full):
            assert torch.equal(g, f) if wanted else g.numel() == 0
    if mode == "nearest":
        assert full[1].shape == (2, 2, 3) and torch.count_nonzero(full[1]) == 0

    x.requires_grad_()
    run(triton, x, theta, (4, 7), **config).backward(grad_output)
    assert x.grad is not None and theta.grad is None


def test_theta_gradient_is_bitwise_reproducible(triton):
    """Per-program partial sums, added in a fixed order: no atomics in the theta gradient."""
    config = dict(mode="bilinear", padding_mode="zeros", align_corners=False)
    x, theta = make_case(triton, (3, 5, 12, 12), (20, 18), config, torch.float32,
                         seed_of("det"), margin=0.0)
    grad_output = random_input((3, 5, 20, 18), seed=4, dtype=torch.float32, device=triton.device)
    first = BACKWARD(grad_output, x, theta, *config.values(), [False, True])[1]
    again = BACKWARD(grad_output, x, theta, *config.values(), [False, True])[1]
    assert torch.equal(first, again)


@contextlib.contextmanager
def deterministic_mode():
    """torch.use_deterministic_algorithms(True) inside the block only."""
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("config", [CONFIGS[2], CONFIGS[7]], ids=[CONFIG_IDS[2], CONFIG_IDS[7]])
def test_deterministic_algorithms(triton, config, layout):
    """Under torch.use_deterministic_algorithms(True) the input gradient is accumulated by a
    fixed-order index_add_ instead of atomics: the same values, bitwise equal from run to run,
    in the same layout; the theta gradient is the same computation either way."""
    shape, size = (2, 3, 6, 5), (7, 9)
    x, theta = make_case(triton, shape, size, config, torch.float32, seed_of("det", config),
                         spread=0.6, requires_grad=True)  # some points far outside
    if layout == "channels_last":
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    grad_output = random_input((*shape[:2], *size), seed=9, dtype=torch.float32,
                               device=triton.device)
    atomic = grads(sampler(triton, size, config), x, theta, grad_output)
    with deterministic_mode():
        first = grads(sampler(triton, size, config), x, theta, grad_output)
        again = grads(sampler(triton, size, config), x, theta, grad_output)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert first[1].stride() == atomic[1].stride()
    for got, want in zip(first, atomic):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Registration: opcheck, torch.compile, autocast, devices, recompiles
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(triton, layout):
    config = dict(mode="bilinear", padding_mode="reflection", align_corners=True)
    x, theta = make_case(triton, (2, 3, 5, 6), (4, 7), config, torch.float32, seed_of("opc"))
    x = x.contiguous(memory_format=torch.channels_last if layout == "channels_last"
                     else torch.contiguous_format)
    torch.library.opcheck(FORWARD, (x.requires_grad_(), theta.requires_grad_(), 4, 7,
                                    *config.values()))
    grad_output = random_input((2, 3, 4, 7), seed=5, dtype=torch.float32, device=triton.device)
    for mask in ([True, True], [False, True]):
        torch.library.opcheck(BACKWARD, (grad_output, x.detach(), theta.detach(),
                                         *config.values(), mask))


def test_compile_fullgraph(triton):
    """torch.compile traces the op (forward and backward) without a graph break."""
    config = dict(mode="bilinear", padding_mode="border", align_corners=False)
    x, theta = make_case(triton, (2, 3, 5, 6), (4, 7), config, torch.float32, seed_of("compile"),
                         requires_grad=True)

    def loss(x, theta):
        return run(triton, x, theta, (4, 7), **config).square().sum()

    torch._dynamo.reset()
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True)(x, theta), (x, theta))
    eager = torch.autograd.grad(loss(x, theta), (x, theta))
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_autocast_runs_in_float32(triton):
    config = dict(mode="bilinear", padding_mode="zeros", align_corners=False)
    x, theta = make_case(triton, (2, 3, 5, 6), (4, 7), config, torch.float32, seed_of("amp"))
    with torch.autocast(triton.device, dtype=torch.bfloat16):
        out = run(triton, x.bfloat16(), theta.bfloat16(), (4, 7), **config)
    assert out.dtype == torch.float32


def test_unsupported_device_is_refused():
    meta = dict(device="meta", dtype=torch.float32)
    with pytest.raises(ValueError, match="Triton backend needs CUDA tensors"):
        triton_kernels.affine_grid_sample(torch.zeros(1, 1, 2, 2, **meta),
                                          torch.zeros(1, 2, 3, **meta), 2, 2, "bilinear",
                                          "zeros", False)


@pytest.mark.cuda
def test_batch_size_does_not_recompile():
    """Block sizes depend on C and Ho*Wo only, and sizes are not specialised: after the first
    batch size, others compile no new kernel."""
    triton = Backend("triton", "cuda")
    config = dict(mode="bilinear", padding_mode="zeros", align_corners=False)
    device_id = torch.cuda.current_device()
    compiled_kernel_counts = set()
    for batch in (1, 2, 5, 16, 33):
        x, theta = make_case(triton, (batch, 3, 8, 8), None, config, torch.float32, batch,
                             requires_grad=True)
        run(triton, x, theta, **config).sum().backward()
        compiled_kernel_counts.add(tuple(len(kernel.device_caches[device_id][0])
                         for kernel in (triton_kernels._forward_kernel,
                                        triton_kernels._backward_kernel)))
    assert len(compiled_kernel_counts) == 1, compiled_kernel_counts


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_cuda_larger_images(config, dtype):
    """Many pixel and channel blocks in both layouts: too slow for the interpreter."""
    triton = Backend("triton", "cuda")
    shape, size = (4, 21, 37, 29), (41, 23)
    seed = seed_of("cuda-large", config, dtype)
    for layout in (torch.contiguous_format, torch.channels_last):
        x, theta = make_case(triton, shape, size, config, dtype, seed)
        x = x.contiguous(memory_format=layout).requires_grad_()
        grad_output = random_input((*shape[:2], *size), seed=seed + 1, dtype=dtype,
                                   device="cuda")
        check_against_references(triton, x, theta.requires_grad_(), size, config, grad_output,
                                 dtype)


# ----------------------------------------------------------------------------------------------
# The GPU code path, compiled without a GPU
# ----------------------------------------------------------------------------------------------

# Compiles the kernels for an H100 (Triton's own PTX and cubin generation, no GPU needed) for
# two variants that between them cover every dtype path, padding with arithmetic, nearest,
# 64-bit indexing, and unit strides specialised as the JIT does for contiguous tensors.
COMPILE_FOR_SM90 = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from stn_ext import triton_kernels as tk

    def compile(kernel, pointer_types, constexprs):
        signature = {name: pointer_types[name] if name.endswith("_ptr")
                     else "constexpr" if name in constexprs else "i32"
                     for name in kernel.arg_names}
        triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})

    for data, compute, mode, padding, aligned, index_64, unit_strides in [
            ("bf16", "fp32", "bilinear", "reflection", False, True, {}),
            ("fp64", "fp64", "nearest", "border", True, False,
             dict(in_sw=1, out_s_pixel=1, go_sw=1, gi_sw=1))]:
        options = dict(MODE=mode, PADDING=padding, ALIGN_CORNERS=aligned, INDEX_64=index_64,
                       BLOCK_PIXELS=64, BLOCK_CHANNELS=4)
        compile(tk._forward_kernel,
                {"input_ptr": "*" + data, "theta_ptr": "*" + compute, "output_ptr": "*" + data},
                dict(options, **{k: v for k, v in unit_strides.items()
                                 if k in tk._forward_kernel.arg_names}))
        compile(tk._backward_kernel,
                {"grad_output_ptr": "*" + data, "input_ptr": "*" + data,
                 "theta_ptr": "*" + compute, "grad_input_ptr": "*" + compute,
                 "theta_partials_ptr": "*" + compute},
                dict(options, NEED_INPUT_GRAD=True, NEED_THETA_GRAD=mode == "bilinear",
                     **{k: v for k, v in unit_strides.items()
                        if k in tk._backward_kernel.arg_names}))
        compile(tk._stencil_kernel,
                {"theta_ptr": "*" + compute, "tap_index_ptr": "*i64",
                 "tap_weight_ptr": "*" + compute},
                {k: v for k, v in options.items() if k != "BLOCK_CHANNELS"})
""")


def test_kernels_compile_for_sm90():
    """The interpreter skips Triton's type checks and code generation: compile the kernels, in a
    process without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", COMPILE_FOR_SM90], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
