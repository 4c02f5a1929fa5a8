"""What only the Triton backend (stn_ext/triton_kernels.py) has: agreement with the C++ kernel of
its device (tighter than with PyTorch), its block shapes, the non-finite rule in every
configuration, its deterministic path's layout, autocast, its compile cache and its PTX for sm_90.
The shared matrix (tests/test_op.py, tests/test_registration.py) runs the rest on the `triton`
backend.

Without a GPU the kernels run in Triton's interpreter on CPU tensors. Triton chooses between
compiled and interpreted kernels when a @triton.jit decorator runs, so this module sets
TRITON_INTERPRET=1 before it imports stn_ext.triton_kernels, whatever pytest imported before.
With a GPU the interpreter stays off (it would also swap the kernels of every other Triton user
in the process) and the same tests run on CUDA tensors, plus a few too slow to interpret.
"""
import json
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

from _reference import triton_interpreter_problem  # noqa: E402

if triton_interpreter_problem() is not None:
    pytest.skip(triton_interpreter_problem(), allow_module_level=True)

from _reference import (CONFIG_IDS, CONFIGS, DTYPES, FILL_AND_REDUCE_PASSES,  # noqa: E402
                        Backend, assert_close, deterministic_mode, grads, make_case, max_abs,
                        out_hw, random_input, random_theta, reference, run, seed_of)

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
# Parity with the C++ kernel: every mode x padding x align_corners x dtype, then block shapes
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


# Channel and pixel counts that need more than one block of the kernels (and a tail block);
# the shared shapes are in the matrix of tests/test_op.py.
TRITON_SHAPES = {
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


# The interpreter evaluates the reflection of an infinite coordinate (inf - inf = NaN, as on a
# GPU) and 0 * inf with numpy, which warns about it.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_non_finite_theta(triton, value, config):
    """The non-finite rule of tests/test_op.py (assert_non_finite_rule; its reduced matrix for
    slow backends leaves most configurations out) in every configuration, on its mixed map (an
    infinite x scale: undefined points beside points clipped to the border), and the C++ kernel
    of the device gives the same NaNs and values."""
    from test_op import (NON_FINITE_ENTRIES, NON_FINITE_SHAPE, NON_FINITE_SIZE,
                         assert_non_finite_rule)
    shape, size = NON_FINITE_SHAPE, NON_FINITE_SIZE
    x = random_input(shape, seed=7, device=triton.device).requires_grad_()
    theta = random_theta(shape[0], shape[2:], size, config["align_corners"],
                         seed=seed_of("non-finite"), device=triton.device)
    theta[NON_FINITE_ENTRIES["scale-x"]] = value
    theta.requires_grad_()
    grad_output = random_input((*shape[:2], *size), seed=8, device=triton.device)
    assert_non_finite_rule(triton, x, theta, size, config, grad_output)
    ours = grads(sampler(triton, size, config), x, theta, grad_output)
    kernel = grads(kernel_sampler(size, config), x, theta, grad_output)
    for what, got, cpp in zip(("output", "grad input", "grad theta"), ours, kernel):
        torch.testing.assert_close(got, cpp, equal_nan=True, **KERNEL_TOL[torch.float64],
                                   msg=lambda m: f"{what} vs the C++ kernel: {m}")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("config", [c for c in CONFIGS if c["padding_mode"] == "zeros"],
                         ids=[i for i in CONFIG_IDS if "-zeros-" in i])
@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_far_points_ignore_non_finite_grad_output(triton, value, config):
    """tests/test_op.py's check (points with no tap in the image take no gradient from a NaN or
    inf grad_output) in every zeros-padding configuration."""
    from test_op import assert_far_points_ignore_grad_output
    assert_far_points_ignore_grad_output(triton, value, config)


# ----------------------------------------------------------------------------------------------
# Determinism
# ----------------------------------------------------------------------------------------------

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
# Registration: autocast, devices, recompiles
# ----------------------------------------------------------------------------------------------

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

# compile(kernel, pointer_types, constexprs, attrs): a kernel compiled for an H100 (Triton's own
# PTX and cubin generation, no GPU needed), its other arguments 32-bit integers.
SM90_COMPILER = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from stn_ext import triton_kernels as tk

    def compile(kernel, pointer_types, constexprs, attrs=None):
        signature = {name: pointer_types[name] if name.endswith("_ptr")
                     else "constexpr" if name in constexprs else "i32"
                     for name in kernel.arg_names}
        return triton.compile(
            ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
            target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
""")

# Compiles the kernels for an H100 for three variants that between them cover every dtype path,
# both coordinate sources (and both coordinate gradients), a fill value, padding with
# arithmetic, nearest, 64-bit indexing, and unit strides specialised as the JIT does for
# contiguous tensors.
COMPILE_FOR_SM90 = SM90_COMPILER + textwrap.dedent("""
    for source, data, compute, mode, padding, fill, aligned, index_64, unit_strides in [
            ("grid", "bf16", "fp32", "bilinear", "zeros", True, False, True, {}),
            ("affine", "fp32", "fp32", "bilinear", "reflection", False, False, False, {}),
            ("affine", "fp64", "fp64", "nearest", "border", False, True, False,
             dict(in_sw=1, out_s_pixel=1, go_sw=1, gi_sw=1))]:
        options = dict(SOURCE=source, MODE=mode, PADDING=padding, ALIGN_CORNERS=aligned,
                       INDEX_64=index_64, BLOCK_PIXELS=64, BLOCK_CHANNELS=4,
                       EVEN_CHANNELS=False)
        compile(tk._forward_kernel,
                {"input_ptr": "*" + data, "coords_ptr": "*" + compute, "output_ptr": "*" + data,
                 "fill_ptr": "*" + compute},
                dict(options, HAS_FILL=fill, **{k: v for k, v in unit_strides.items()
                                                if k in tk._forward_kernel.arg_names}))
        compile(tk._backward_kernel,
                {"grad_output_ptr": "*" + data, "input_ptr": "*" + data,
                 "coords_ptr": "*" + compute, "grad_input_ptr": "*" + compute,
                 "coord_grad_ptr": "*" + compute, "fill_ptr": "*" + compute,
                 "gathered_ptr": "*i1"},
                dict(options, HAS_FILL=fill, NEED_INPUT_GRAD=True,
                     SKIP_GATHERED=source == "affine",
                     NEED_COORD_GRAD=mode == "bilinear",
                     **{k: v for k, v in unit_strides.items()
                        if k in tk._backward_kernel.arg_names}))
        if source == "affine":  # (float32 and float64 data)
            compile(tk._gather_backward_kernel,
                    {"grad_output_ptr": "*" + data, "input_ptr": "*" + data,
                     "theta_ptr": "*" + compute, "grad_input_ptr": "*" + data,
                     "partials_ptr": "*" + compute, "gathered_ptr": "*i1"},
                    dict(MODE=mode, ALIGN_CORNERS=aligned, NEED_COORD_GRAD=mode == "bilinear",
                         TILE_W=tk._GATHER_TILE_W, TILE_H=tk._GATHER_TILE_H, BLOCK_CHANNELS=4,
                         EVEN_CHANNELS=False,
                         **{k: v for k, v in unit_strides.items()
                            if k in tk._gather_backward_kernel.arg_names}))
        compile(tk._stencil_kernel,
                {"coords_ptr": "*" + compute, "tap_index_ptr": "*i64",
                 "tap_weight_ptr": "*" + compute},
                {k: v for k, v in options.items() if "CHANNELS" not in k})
""")


# Compiles the forward and backward kernels for an H100 as the JIT specialises them for a
# channels_last bfloat16 input of 64 channels (unit channel strides as constants; pointers and
# the other strides, multiples of 16, marked divisible by 16) and counts the PTX's global
# accesses of 16 bytes (v4.b32: 8 bfloat16, or 4 float32 atomic adds) and of one bfloat16.
CHANNELS_LAST_VECTORS = SM90_COMPILER + textwrap.dedent("""
    import json, re

    def accesses(kernel, pointer_types, unit_strides):
        constexprs = dict(SOURCE="affine", MODE="bilinear", PADDING="zeros", ALIGN_CORNERS=False,
                          HAS_FILL=False, INDEX_64=False, BLOCK_PIXELS=64, BLOCK_CHANNELS=16,
                          EVEN_CHANNELS=True, **{k: 1 for k in unit_strides})
        if kernel is tk._backward_kernel:
            constexprs.update(NEED_INPUT_GRAD=True, NEED_COORD_GRAD=True, SKIP_GATHERED=False)
        # Pointers not named take float32.
        pointers = {name: pointer_types.get(name, "*fp32") for name in kernel.arg_names
                    if name.endswith("_ptr")}
        divisible = [i for i, name in enumerate(kernel.arg_names) if name not in constexprs
                     and (name.endswith("_ptr") or re.search("_s(n|h|w|_pixel)$", name))]
        compiled = compile(kernel, pointers, constexprs,
                           attrs={(i,): [["tt.divisibility", 16]] for i in divisible})
        ptx = compiled.asm["ptx"]
        return {kind: len(re.findall(pattern, ptx)) for kind, pattern in [
            ("vector loads", r"ld\\.global(\\.\\w+)*\\.v4\\.b32"),
            ("vector stores", r"st\\.global(\\.\\w+)*\\.v4\\.b32"),
            ("vector atomics", r"atom\\.global(\\.\\w+)*\\.v4\\.f32"),
            ("bfloat16 loads", r"ld\\.global(\\.\\w+)*\\.b16 "),
            ("bfloat16 stores", r"st\\.global(\\.\\w+)*\\.b16 ")]}

    print(json.dumps({
        "forward": accesses(tk._forward_kernel, {"input_ptr": "*bf16", "output_ptr": "*bf16"},
                            ["in_sc", "out_sc"]),
        "backward": accesses(tk._backward_kernel,
                             {"grad_output_ptr": "*bf16", "input_ptr": "*bf16",
                              "gathered_ptr": "*i1"}, ["go_sc", "in_sc", "gi_sc"])}))
""")


def test_channels_last_moves_16_byte_vectors():
    """With the channel block dividing the channels (EVEN_CHANNELS), a channels_last pixel's
    channels move as 16-byte vectors: the forward's loads and stores, the backward's loads of
    grad_output and input and its atomic adds into the float32 accumulator (the design point of
    the CUDA kernels' lanes across channels). With a run-time channel mask they were single
    bfloat16 accesses."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", CHANNELS_LAST_VECTORS], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    forward, backward = counts["forward"], counts["backward"]
    assert forward["vector loads"] > 0 and forward["vector stores"] > 0, counts
    assert forward["bfloat16 loads"] == 0 and forward["bfloat16 stores"] == 0, counts
    assert backward["vector loads"] > 0 and backward["vector atomics"] > 0, counts
    assert backward["bfloat16 loads"] == 0, counts


def test_kernels_compile_for_sm90():
    """The interpreter skips Triton's type checks and code generation: compile the kernels, in a
    process without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", COMPILE_FOR_SM90], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("config", CONFIGS[:2] + CONFIGS[-1:],
                         ids=CONFIG_IDS[:2] + CONFIG_IDS[-1:])
@pytest.mark.parametrize("programs", ["per-image", "per-block"])
def test_backward_program_layouts(device, dtype, config, programs, monkeypatch):
    """Both scattering backward kernels against the references: one program per small image
    (_image_backward_kernel, the path of the other tests' small shapes) and, forced here, one
    per block of pixels (_backward_kernel, the path of large images that the gather does not
    take: test_gather_backward). The per-image path runs no zero-fill and no reduction of
    partials (casts are not checked here: the interpreter copies every argument, and a
    same-dtype .to() is recorded though it launches nothing)."""
    if programs == "per-block":
        monkeypatch.setattr(triton_kernels, "_IMAGE_PROGRAM_MAX_POINTS", 0)
        monkeypatch.setattr(triton_kernels, "_GATHER_MAX_CHANNELS", 0)
    backend = Backend("triton", device)
    x, theta = make_case(backend, (3, 2, 7, 9), (5, 6), config, dtype, seed_of("programs"),
                         requires_grad=True)
    grad_output = random_input((3, 2, 5, 6), seed=seed_of("programs-go"), dtype=dtype,
                               device=device)
    check_against_references(backend, x, theta, (5, 6), config, grad_output, dtype)
    if programs == "per-image" and config["mode"] == "bilinear":  # (nearest: theta's zeros)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            BACKWARD(grad_output, x.detach(), theta.detach(), *config.values(), [True, True])
        passes = {e.name for e in prof.events()} & set(FILL_AND_REDUCE_PASSES)
        assert not passes, passes


GATHER_CONFIGS = [c for c in CONFIGS if c["padding_mode"] == "zeros"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("config", GATHER_CONFIGS,
                         ids=[CONFIG_IDS[CONFIGS.index(c)] for c in GATHER_CONFIGS])
@pytest.mark.parametrize("singular", [False, True], ids=["regular", "singular"])
def test_gather_backward(device, dtype, config, singular, monkeypatch):
    """The backward of larger images under an affine map with zeros padding gathers
    (_gather_backward_kernel, forced here on a small shape): both gradients equal the
    references, with no zero-fill. An image with a singular map (a `singular` batch's second)
    is left to _backward_kernel, whose programs skip the gathered images; under
    torch.use_deterministic_algorithms the gather alone serves, bitwise reproducible, or with a
    singular image the deterministic path redoes the call."""
    monkeypatch.setattr(triton_kernels, "_IMAGE_PROGRAM_MAX_POINTS", 0)
    backend = Backend("triton", device)
    shape, size = (3, 3, 11, 37), (9, 13)  # two tiles across, odd sizes
    x, theta = make_case(backend, shape, size, config, dtype, seed_of("gather", config),
                         spread=0.4)
    if singular:
        theta[1, 1, :2] = 2.0 * theta[1, 0, :2]  # rank 1: the map collapses onto a line
    x.requires_grad_()
    theta.requires_grad_()
    grad_output = random_input((*shape[:2], *size), seed=seed_of("gather-go"), dtype=dtype,
                               device=device)
    ours = check_against_references(backend, x, theta, size, config, grad_output, dtype)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        BACKWARD(grad_output, x.detach(), theta.detach(), *config.values(), [True, False])
    # (Not aten::fill_: on the CPU, a sum of theta's partials fills its own output.)
    zero_fills = {e.name for e in prof.events()} & {"aten::zeros", "aten::zeros_like",
                                                    "aten::zero_"}
    assert not zero_fills, zero_fills
    with deterministic_mode():
        first = grads(sampler(backend, size, config), x, theta, grad_output)
        again = grads(sampler(backend, size, config), x, theta, grad_output)
    for a, b, c in zip(first, again, ours):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, **KERNEL_TOL[dtype])
