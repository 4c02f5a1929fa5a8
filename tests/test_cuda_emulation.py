"""What only the CUDA kernels have, run through their emulation (stn_ext.testing.cuda_emulation):
grid-stride loops over a batch above the grid's y-limit, the 64-bit index path, several blocks
per image in any block order, and the number of kernel launches per call. The shared matrix
(test_op.py, test_registration.py) runs the same kernels on the `cuda-emulated` backend."""
import math

import pytest
import torch

from stn_ext.functional import checked_grid_arguments
from stn_ext.testing import cuda_emulation
from _reference import (CAST_PASSES, CONFIG_IDS, CONFIGS, FILL_AND_REDUCE_PASSES, SHAPES,
                        Backend, assert_bitwise_identical, assert_close, deterministic_mode,
                        grads, make_case, max_abs, out_hw, random_input, reference, seed_of)

EMULATED = Backend("cuda-emulated", "cpu")

# (max_grid_y, force_64bit_indexing, block_order_seed): the launch as on a GPU, a grid-y limit
# below the batch (every block loops over several images), 64-bit indices, both, and a
# shuffled block order.
LIMITS = {
    "as-on-gpu": (cuda_emulation.CUDA_MAX_GRID_Y, False, 0),
    "grid-y-2": (2, False, 0),
    "index-64": (cuda_emulation.CUDA_MAX_GRID_Y, True, 0),
    "grid-y-1-index-64": (1, True, 0),
    "shuffled-blocks": (cuda_emulation.CUDA_MAX_GRID_Y, False, 12345),
}


# Inputs for each backward path: a small image takes the one-block-per-image kernel that stages
# grad_input in shared memory (backward_staged_kernel, up to 32 KB an image); a larger one the
# gather (backward_gather_kernel: zeros padding, float or double, up to 4 channels) or else the
# kernel with several blocks per image and atomics in global memory.
INPUT_SHAPES = {"staged": (5, 3, 6, 9), "global": (5, 3, 64, 64)}


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[5], CONFIGS[8]],
                         ids=[CONFIG_IDS[0], CONFIG_IDS[5], CONFIG_IDS[8]])
@pytest.mark.parametrize("limits", LIMITS.values(), ids=LIMITS.keys())
@pytest.mark.parametrize("shape", INPUT_SHAPES.values(), ids=INPUT_SHAPES.keys())
def test_launch_geometry(shape, limits, config, deterministic):
    """Batch 5 and 17 x 33 output pixels (3 x 2 tiles of 32 x 8 per image where an image takes
    several blocks): output and both gradients equal the reference whatever the grid and index
    width."""
    max_grid_y, force_64bit_indexing, block_order_seed = limits
    size = (17, 33)
    seed = seed_of("geometry", config)
    x, theta = make_case(EMULATED, shape, size, config, torch.float64, seed, requires_grad=True)
    grad_output = random_input((*shape[:2], *size), seed=seed + 1)
    mode = deterministic_mode() if deterministic else torch.autograd.set_grad_enabled(True)
    with mode, cuda_emulation.device_limits(max_grid_y=max_grid_y,
                                             force_64bit_indexing=force_64bit_indexing,
                                             block_order_seed=block_order_seed):
        out, gx, gth = grads(lambda a, t: cuda_emulation.affine_grid_sample(a, t, size, **config),
                             x, theta, grad_output)
    ref, rgx, rgth = grads(lambda a, t: reference(a, t, size, **config), x, theta, grad_output)
    assert_close(out, ref, torch.float64, "output")
    assert_close(gx, rgx, torch.float64, "grad input", scale=max_abs(rgx))
    assert_close(gth, rgth, torch.float64, "grad theta", scale=max_abs(rgth))


# Kernel launches per call: the forward is one kernel; the backward one kernel for the theta
# gradient and the atomic input gradient together (the staged kernel at this small shape), or,
# deterministic, a kernel writing tap records plus the gather kernel (the sort between them is
# ATen's). The fused op's deterministic backward is instead the gather of grad_input per input
# pixel, where the map is invertible as here (test_gather_backward_deterministic has the rest).
LAUNCHES = {
    "forward": 1,
    "backward-atomic": 1,
    "backward-theta-only": 1,
    "backward-deterministic": 2,
}
FUSED_LAUNCHES = {**LAUNCHES, "backward-deterministic": 1}


def assert_launches(call: str, forward, backward, launches=LAUNCHES) -> None:
    """Runs forward() or backward(output_mask) as `call` (a key of `launches`) says, and checks
    its kernel launches."""
    mask = [call != "backward-theta-only", True]
    mode = deterministic_mode() if call == "backward-deterministic" else torch.no_grad()
    with mode:
        before = cuda_emulation.launch_count()
        if call == "forward":
            forward()
        else:
            backward(mask)
        assert cuda_emulation.launch_count() - before == launches[call]


@pytest.mark.parametrize("call", FUSED_LAUNCHES)
def test_launch_count(call):
    config = CONFIGS[0]
    shape, size = (3, 2, 5, 6), (7, 4)
    x, theta = make_case(EMULATED, shape, size, config, torch.float32, seed_of("launches"))
    grad_output = torch.ones(*shape[:2], *size)
    assert_launches(
        call, lambda: cuda_emulation.forward_op()(x, theta, *size, *config.values()),
        lambda mask: cuda_emulation.backward_op()(grad_output, x, theta, *config.values(), mask),
        FUSED_LAUNCHES)


def _aten_calls(call) -> list:
    """The ATen ops that call() runs itself, by name (torch.profiler's record of the dispatcher;
    not the ops those run in turn, such as the fill inside a CPU reduction, which a GPU's
    reduction kernel does not launch)."""
    def is_aten(event):
        return event is not None and event.name.startswith("aten::")

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        call()
    return [event.name for event in profile.events()
            if is_aten(event) and not is_aten(event.cpu_parent)]


# What a backward that writes grad_input once must not run: a fill of grad_input, a reduction
# of theta partials, a cast of either (each a kernel launch on a GPU).
EXTRA_PASSES = FILL_AND_REDUCE_PASSES + CAST_PASSES

# (kernel launches, the EXTRA_PASSES it runs) by backward path, at the shapes of INPUT_SHAPES:
# a small image is staged (one kernel, nothing else); a larger float one is gathered (the gather
# and its fallback for images it cannot gather, then the theta partials' sum); a larger half one
# is scattered with atomics into a zero-filled float buffer, summed and cast.
BACKWARD_PASSES = {
    ("staged", torch.float32): (1, set()),
    ("staged", torch.float16): (1, set()),
    ("staged", torch.bfloat16): (1, set()),
    ("global", torch.float32): (2, {"aten::sum"}),
    ("global", torch.float16): (1, {"aten::zeros_like", "aten::sum", "aten::to"}),
    ("global", torch.bfloat16): (1, {"aten::zeros_like", "aten::sum", "aten::to"}),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", INPUT_SHAPES, ids=INPUT_SHAPES.keys())
def test_backward_passes(shape, dtype):
    """The backward's kernels and the ATen passes around them, by path: at a small image (the
    STN regime) one kernel writes grad_input and grad_theta in their final dtype, with no
    zero-fill, reduction or cast; a larger float image's gathered grad_input needs no fill."""
    size = (7, 4)
    x, theta = make_case(EMULATED, INPUT_SHAPES[shape], size, CONFIGS[0], dtype,
                         seed_of("passes", shape))
    grad_output = torch.ones(*x.shape[:2], *size, dtype=dtype)
    before = cuda_emulation.launch_count()
    calls = _aten_calls(lambda: cuda_emulation.backward_op()(
        grad_output, x, theta, *CONFIGS[0].values(), [True, True]))
    launches, passes = BACKWARD_PASSES[shape, dtype]
    assert cuda_emulation.launch_count() - before == launches
    assert {name for name in calls if name in EXTRA_PASSES} == passes


@pytest.mark.parametrize("shape,size", [((2, 0, 5, 6), (4, 3)), ((2, 3, 5, 6), (0, 4)),
                                        ((0, 3, 5, 6), (4, 4))], ids=["C0", "Ho0", "N0"])
def test_nothing_to_sample_launches_nothing(shape, size):
    """No channel, output pixel or image: zero gradients without a kernel (or a buffer sized
    by the pixels alone)."""
    x = torch.randn(shape, dtype=torch.float64)
    theta = torch.eye(2, 3, dtype=torch.float64).repeat(shape[0], 1, 1)
    grad_output = torch.ones(*shape[:2], *size, dtype=torch.float64)
    before = cuda_emulation.launch_count()
    gx, gth = cuda_emulation.backward_op()(grad_output, x, theta, *CONFIGS[0].values(),
                                            [True, True])
    assert cuda_emulation.launch_count() == before
    assert gx.shape == x.shape and gth.shape == theta.shape
    assert torch.count_nonzero(gx) == 0 and torch.count_nonzero(gth) == 0


def test_nearest_copies_negative_zero():
    """Nearest mode copies the sampled value bit for bit, -0.0 included (as ATen)."""
    x = torch.full((1, 2, 3, 3), -0.0)
    theta = torch.eye(2, 3).unsqueeze(0)
    out = cuda_emulation.affine_grid_sample(x, theta, mode="nearest")
    assert torch.equal(out.signbit(), torch.ones_like(out, dtype=torch.bool))


def test_refuses_non_cpu_tensors():
    x = torch.randn(1, 1, 2, 2, device="meta")
    theta = torch.eye(2, 3, device="meta").unsqueeze(0)
    with pytest.raises(ValueError, match="CUDA emulation takes CPU tensors"):
        cuda_emulation.affine_grid_sample(x, theta)


# --- lanes across channels (ChannelSplit, sampling_common.cuh) ---------------------------------

# Channels in one 16-byte vector, by dtype.
CHANNEL_VECTOR = {torch.float64: 2, torch.float32: 4, torch.float16: 8, torch.bfloat16: 8}
CHANNEL_LAYOUTS = {  # (channels, channels_last)
    "channels_last": (16, True),        # whole vectors in every dtype
    "contiguous": (16, False),          # channel stride is a plane: a thread per pixel
    "channels_last-C9": (9, True),      # no whole vectors in any dtype
}


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("dtype", CHANNEL_VECTOR, ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("layout", CHANNEL_LAYOUTS.values(), ids=CHANNEL_LAYOUTS.keys())
def test_lanes_across_channels(layout, dtype, deterministic):
    """Where every pixel's channels are whole 16-byte vectors (channels_last), each output pixel
    gets C / vector threads, one vector of channels each, in the forward kernel and the backward
    kernel that is not staged (an image over 32 KB); elsewhere a thread per pixel, in 2-D tiles.
    Output and gradients equal the reference either way."""
    channels, channels_last = layout
    shape, size = (3, channels, 32, 32), (17, 33)
    groups = channels // CHANNEL_VECTOR[dtype] if channels_last and channels == 16 else 1
    x, theta = make_case(EMULATED, shape, size, CONFIGS[0], dtype, seed_of("lanes", channels),
                         requires_grad=True)
    if channels_last:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    grad_output = random_input((*shape[:2], *size), seed=seed_of("lanes-grad"), dtype=dtype)
    if channels_last:
        grad_output = grad_output.to(memory_format=torch.channels_last)

    def threads(items):  # one block column per image
        return -(-items // 256) * 256 * shape[0]

    # A thread per pixel takes it in 32 x 8 tiles of the output (PixelTiles).
    forward = (threads(size[0] * size[1] * groups) if groups > 1 else
               threads(-(-size[0] // 8) * -(-size[1] // 32) * 256))
    mode = deterministic_mode() if deterministic else torch.autograd.set_grad_enabled(True)
    with mode:
        before = cuda_emulation.launched_threads()
        out = cuda_emulation.forward_op()(x, theta, *size, *CONFIGS[0].values())
        assert cuda_emulation.launched_threads() - before == forward
        before = cuda_emulation.launched_threads()
        _, gx, gth = grads(lambda a, t: cuda_emulation.affine_grid_sample(a, t, size,
                                                                          **CONFIGS[0]),
                           x, theta, grad_output)
        backward = forward  # (the same split of the output)
        if deterministic:  # and the gather, a thread per input pixel
            backward += threads(shape[2] * shape[3])
        # (the forward that grads() runs first, then the backward)
        assert cuda_emulation.launched_threads() - before == forward + backward
    ref, rgx, rgth = grads(lambda a, t: reference(a, t, size, **CONFIGS[0]), x, theta,
                           grad_output)
    assert_close(out, ref, dtype, "output")
    assert_close(gx, rgx, dtype, "grad input", scale=max_abs(rgx))
    assert_close(gth, rgth, dtype, "grad theta", scale=max_abs(rgth))


# --- the general ops' kernels (csrc/cuda/grid_sample_cuda.cu) ----------------------------------

GENERAL_CASES = {  # (mode, dims, fill)
    "bilinear-2d": ("bilinear", 2, None), "bicubic-2d-fill": ("bicubic", 2, [0.5, -1.0]),
    "trilinear-3d": ("bilinear", 3, None), "nearest-3d-fill": ("nearest", 3, [2.0, 0.0]),
}


def general_results(backend, x, grid, theta, out_size, grad_output, config):
    """(output, grad input, grad grid) of grid_sample and (output, grad input, grad theta) of
    affine sampling on `backend` (the CPU kernels, which equal F.grid_sample, as the reference:
    tests/test_grid_sample.py)."""
    return (grads(lambda a, g: backend.grid_sample(a, g, **config), x, grid, grad_output)
            + grads(lambda a, t: backend.affine_sample(a, t, out_size, **config), x, theta,
                    grad_output))


def assert_general_close(got, want, dtype):
    names = ["grid output", "grid grad input", "grad grid",
             "affine output", "affine grad input", "grad theta"]
    for g, w, what in zip(got, want, names):
        assert_close(g, w, dtype, what, scale=max_abs(w))


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("case", GENERAL_CASES.values(), ids=GENERAL_CASES.keys())
def test_general_launch_geometry(case, deterministic):
    """Batch 5 and 300 output points (2 blocks of 256 per image), dense grid and affine theta,
    with a grid-y limit of 2 (every block loops over images) and the blocks in shuffled order:
    output and gradients equal the reference."""
    max_grid_y, block_order_seed = 2, 12345
    mode, dims, fill = case
    out_size = (15, 20) if dims == 2 else (3, 10, 10)
    shape = (5, 2, *([4] * dims))
    seed = seed_of("general-geometry", mode, dims)
    x = random_input(shape, seed=seed).requires_grad_()
    gen = torch.Generator().manual_seed(seed)
    grid = ((torch.rand(5, *out_size, dims, generator=gen, dtype=torch.float64) * 2 - 1) * 1.2
            ).requires_grad_()
    theta = (torch.eye(dims, dims + 1, dtype=torch.float64)
             + 0.3 * torch.randn(5, dims, dims + 1, generator=gen, dtype=torch.float64)
             ).requires_grad_()
    grad_output = random_input((*shape[:2], *out_size), seed=seed + 1)
    config = dict(mode=mode, padding_mode="zeros", align_corners=False, fill_value=fill)
    want = general_results(Backend("cpu", "cpu"), x, grid, theta, out_size, grad_output, config)
    mode_ctx = deterministic_mode() if deterministic else torch.autograd.set_grad_enabled(True)
    with mode_ctx, cuda_emulation.device_limits(max_grid_y=max_grid_y,
                                                 block_order_seed=block_order_seed):
        got = general_results(EMULATED, x, grid, theta, out_size, grad_output, config)
    assert_general_close(got, want, torch.float64)


GENERAL_LANE_CASES = {  # (mode, dims, fill, channels): channels_last(_3d) inputs
    "bilinear-2d": ("bilinear", 2, None, 16),
    "bicubic-2d-fill": ("bicubic", 2, "per-channel", 16),
    "nearest-3d-fill": ("nearest", 3, "per-channel", 16),
    "trilinear-3d": ("bilinear", 3, None, 16),
    # 6 groups a point: the forward splits channels, the backward (whose shuffles need a power
    # of two) takes a thread per point.
    "bilinear-2d-C24": ("bilinear", 2, None, 24),
}


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("dtype", CHANNEL_VECTOR, ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("case", GENERAL_LANE_CASES.values(), ids=GENERAL_LANE_CASES.keys())
def test_general_lanes_across_channels(case, dtype, deterministic):
    """The general ops on channels_last inputs whose pixels hold whole 16-byte vectors: C / vector
    threads per output point in the forward and (where that is a power of two up to a warp) the
    backward, which sums the point's coordinate gradient over its lanes by warp shuffles. Output,
    grad input, grad grid and grad theta equal the CPU kernels', with and without a fill."""
    mode, dims, fill, channels = case
    out_size = (9, 30) if dims == 2 else (3, 5, 20)
    shape = (2, channels, *([5] * dims))
    memory_format = torch.channels_last if dims == 2 else torch.channels_last_3d
    seed = seed_of("general-lanes", mode, dims, channels)
    x = random_input(shape, seed=seed, dtype=dtype).to(memory_format=memory_format)
    x.requires_grad_()
    gen = torch.Generator().manual_seed(seed)
    grid = ((torch.rand(2, *out_size, dims, generator=gen) * 2 - 1) * 1.2).to(dtype)
    grid.requires_grad_()
    theta = (torch.eye(dims, dims + 1) + 0.3 * torch.randn(2, dims, dims + 1, generator=gen))
    theta = theta.to(dtype).requires_grad_()
    grad_output = random_input((*shape[:2], *out_size), seed=seed + 1, dtype=dtype)
    grad_output = grad_output.to(memory_format=memory_format)
    fill_value = (torch.linspace(-2, 2, channels, dtype=torch.float64).tolist()
                  if fill == "per-channel" else None)
    config = dict(mode=mode, padding_mode="zeros", align_corners=False, fill_value=fill_value)
    points = out_size[0] * out_size[1] * (out_size[2] if dims == 3 else 1)
    vector = CHANNEL_VECTOR[dtype]
    forward_groups = channels // vector
    backward_groups = forward_groups if forward_groups & (forward_groups - 1) == 0 else 1

    def threads(items):  # one block column per image
        return -(-items // 256) * 256 * shape[0]

    want = general_results(Backend("cpu", "cpu"), x, grid, theta, out_size, grad_output, config)
    mode_ctx = deterministic_mode() if deterministic else torch.autograd.set_grad_enabled(True)
    with mode_ctx:
        before = cuda_emulation.launched_threads()
        cuda_emulation.grid_sample(x, grid, **config)
        assert cuda_emulation.launched_threads() - before == threads(points * forward_groups)
        if not deterministic:  # (the deterministic backward adds a gather kernel)
            ops = getattr(torch.ops, cuda_emulation.NAMESPACE)
            args = checked_grid_arguments(x.detach(), grid.detach(), **config)
            before = cuda_emulation.launched_threads()
            ops.grid_sample_backward(grad_output, args[0], args[1], mode, "zeros", False, args[2],
                                     [True, True])
            assert (cuda_emulation.launched_threads() - before
                    == threads(points * backward_groups))
        got = general_results(EMULATED, x, grid, theta, out_size, grad_output, config)
    assert_general_close(got, want, dtype)


# Launches per call of the general ops: as the fused op's (LAUNCHES).
@pytest.mark.parametrize("op", ["grid_sample", "affine_sample"])
@pytest.mark.parametrize("call", LAUNCHES)
def test_general_launch_count(call, op):
    shape, size = (3, 2, 5, 6), (7, 4)
    x = torch.randn(shape)
    coords = torch.rand(3, *size, 2) * 2 - 1 if op == "grid_sample" else torch.randn(3, 2, 3)
    size_arg = [] if op == "grid_sample" else [list(size)]
    options = ["bilinear", "zeros", False, None]
    ops = getattr(torch.ops, cuda_emulation.NAMESPACE)
    grad_output = torch.ones(*shape[:2], *size)
    assert_launches(
        call, lambda: getattr(ops, op)(x, coords, *size_arg, *options),
        lambda mask: getattr(ops, f"{op}_backward")(grad_output, x, coords, *options, mask))


# --- the gathered backward of large images (backward_gather_kernel) ---------------------------

ZEROS_CONFIGS = {CONFIG_IDS[i]: CONFIGS[i] for i, c in enumerate(CONFIGS)
                 if c["padding_mode"] == "zeros"}
GATHER_SHAPES = {name: case for name, case in SHAPES.items() if case[0][1] <= 4}


def gathers_every_image(shape, size, align_corners: bool) -> bool:
    """Whether a near-identity theta gives an invertible map from output to input pixels: an
    output axis of 1 pixel, or an input axis of 1 pixel with align_corners, makes it singular."""
    out_h, out_w = out_hw(shape, size)
    singular_input = align_corners and min(shape[2:]) == 1
    return min(out_h, out_w) > 1 and not singular_input


def emulated_backward(x, theta, size, config, grad_output, **limits):
    """(output, grad input, grad theta) on the emulated kernels with the small images' staging
    off, and the atomic additions the backward made."""
    with cuda_emulation.device_limits(stage_small_images=False, **limits):
        out = cuda_emulation.affine_grid_sample(x, theta, size, **config)
        before = cuda_emulation.atomic_adds()
        gx, gth = torch.autograd.grad(out, (x, theta), grad_output.to(out.dtype))
        return out, gx, gth, cuda_emulation.atomic_adds() - before


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("config", ZEROS_CONFIGS.values(), ids=ZEROS_CONFIGS.keys())
@pytest.mark.parametrize("case", GATHER_SHAPES.values(), ids=GATHER_SHAPES.keys())
def test_gather_backward(case, config, dtype):
    """With zeros padding, float or double and up to 4 channels, grad_input is gathered per input
    pixel (no atomics) and theta's gradient taken in the same pass; an image whose map is singular
    is left to the scattering kernel (atomics). Both equal the reference on the shared shapes."""
    shape, size = case
    seed = seed_of("gather", shape, config)
    x, theta = make_case(EMULATED, shape, size, config, dtype, seed, requires_grad=True)
    grad_output = random_input((*shape[:2], *out_hw(shape, size)), seed=seed + 1, dtype=dtype)
    out, gx, gth, atomics = emulated_backward(x, theta, size, config, grad_output)
    ref, rgx, rgth = grads(lambda a, t: reference(a, t, size, **config), x, theta, grad_output)
    assert_close(out, ref, dtype, "output")
    assert_close(gx, rgx, dtype, "grad input", scale=max_abs(rgx))
    assert_close(gth, rgth, dtype, "grad theta", scale=max_abs(rgth))
    assert (atomics == 0) == gathers_every_image(shape, size, config["align_corners"])


def rotation(degrees: float, scale: float = 1.0, shift=(0.0, 0.0)) -> torch.Tensor:
    c, s = math.cos(math.radians(degrees)) * scale, math.sin(math.radians(degrees)) * scale
    return torch.tensor([[c, -s, shift[0]], [s, c, shift[1]]], dtype=torch.float64)


# One theta per image of one call (the identity's points lie exactly on pixels, the others' at
# least 5e-5 pixel from any kink, see kink_distance): the gather takes the first six, the
# scattering fallback the rest (singular, not finite, or with over kMaxGatherCandidates
# candidates a pixel; "huge" only in float32, whose coordinates it would take near overflow).
GATHER_THETAS = {
    "identity": torch.eye(2, 3, dtype=torch.float64),
    "rotate-30-shifted": rotation(30.0, 1.0, (0.1037, -0.2113)),
    "zoom-in-4x": rotation(10.0, 0.25, (0.0123, 0.0071)),
    "zoom-out-3x": rotation(-20.0, 3.0),
    "mirrored-sheared": torch.tensor([[-1.0, 0.43, 0.0517], [0.21, 0.87, 0.0131]],
                                     dtype=torch.float64),
    "partly-outside": rotation(45.0, 1.5, (0.9071, 0.7043)),
    "zero": torch.zeros(2, 3, dtype=torch.float64),
    "rank-1": torch.tensor([[0.5, 0.5, 0.0113], [1.0, 1.0, 0.1071]], dtype=torch.float64),
    "squashed-1e-4": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1e-4, 0.0]], dtype=torch.float64),
    "huge": torch.tensor([[1e30, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64),
    "nan": torch.tensor([[1.0, float("nan"), 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64),
}
GATHERED_THETAS = 6


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("config", ZEROS_CONFIGS.values(), ids=ZEROS_CONFIGS.keys())
def test_gather_backward_thetas(config, dtype):
    """Maps the gather must cover (rotated, zoomed in 4x and out 3x, mirrored, partly outside)
    and maps it must leave to the fallback, in one batch: every gradient equals the reference
    (NaN where it is NaN), and only the fallback's images make atomic additions."""
    shape, size = (len(GATHER_THETAS), 2, 23, 31), (19, 26)
    theta = torch.stack(list(GATHER_THETAS.values())).to(dtype).requires_grad_()
    x = random_input(shape, seed=seed_of("gather-thetas"), dtype=dtype).requires_grad_()
    grad_output = random_input((*shape[:2], *size), seed=seed_of("gather-thetas-grad"),
                               dtype=dtype)
    out, gx, gth, atomics = emulated_backward(x, theta, size, config, grad_output)
    ref, rgx, rgth = grads(lambda a, t: reference(a, t, size, **config), x, theta, grad_output)
    # The NaN theta's image: every point undefined (test_op.py's test_non_finite_theta): NaN
    # output, nothing added to the input's gradient, a NaN theta gradient (zero for nearest).
    undefined = list(GATHER_THETAS).index("nan")
    ref, rgth = ref.detach().clone(), rgth.detach().clone()
    ref[undefined] = math.nan
    rgth[undefined] = math.nan if config["mode"] == "bilinear" else 0.0
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    for got, want, what in ((out, ref, "output"), (gx, rgx, "grad input"),
                            (gth, rgth, "grad theta")):
        for n, name in enumerate(GATHER_THETAS):
            scale = max(1.0, float(want[n].detach().nan_to_num(0, 0, 0).abs().max()))
            torch.testing.assert_close(got[n], want[n], equal_nan=True, rtol=tol["rtol"],
                                       atol=tol["atol"] * scale,
                                       msg=lambda m: f"{what}, {name}: {m}")
    assert atomics > 0
    _, _, _, gathered_atomics = emulated_backward(
        x[:GATHERED_THETAS], theta[:GATHERED_THETAS], size, config, grad_output[:GATHERED_THETAS])
    assert gathered_atomics == 0


def test_gather_backward_is_bitwise_deterministic():
    """The gather sums each input pixel's points in a fixed order: the same bits whatever order
    the blocks run in (atomics would add in the order they run)."""
    shape, size = (3, 3, 40, 50), (37, 45)
    x = random_input(shape, seed=seed_of("gather-bits"), dtype=torch.float32).requires_grad_()
    theta = torch.stack([rotation(25.0, 0.7), rotation(-60.0, 1.3), rotation(90.0)])
    theta = theta.float().requires_grad_()
    grad_output = random_input((*shape[:2], *size), seed=seed_of("gather-bits-grad"),
                               dtype=torch.float32)
    runs = [emulated_backward(x, theta, size, CONFIGS[0], grad_output, block_order_seed=seed)
            for seed in (0, 7, 123)]
    assert_bitwise_identical([run[1:3] for run in runs])
    assert all(run[3] == 0 for run in runs)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_gather_backward_gradcheck(mode):
    config = dict(mode=mode, padding_mode="zeros", align_corners=False)
    shape, size = (2, 2, 5, 6), (4, 7)
    x, theta = make_case(EMULATED, shape, size, config, torch.float64, seed_of("gather-gc", mode),
                         requires_grad=True)
    with cuda_emulation.device_limits(stage_small_images=False):
        assert torch.autograd.gradcheck(
            lambda a, t: cuda_emulation.affine_grid_sample(a, t, size, **config), (x, theta))


@pytest.mark.parametrize("align_corners", [False, True], ids=["noac", "ac"])
def test_gather_backward_zero_weight_taps(align_corners):
    """The identity at the input's size puts every point exactly on a pixel: its other taps have
    weight 0 and sit at the very edge of their pixels' candidate boxes. They still add
    0 * grad_output, NaN where grad_output is NaN or infinite (as ATen)."""
    config = dict(mode="bilinear", padding_mode="zeros", align_corners=align_corners)
    shape = (1, 2, 9, 11)
    x = random_input(shape, seed=seed_of("gather-zero-weights")).requires_grad_()
    theta = torch.eye(2, 3, dtype=torch.float64).unsqueeze(0).requires_grad_()
    grad_output = random_input(shape, seed=seed_of("gather-zero-weights-grad"))
    grad_output[0, 0, 4, 6], grad_output[0, 1, 2, 3] = math.nan, math.inf
    _, gx, _, atomics = emulated_backward(x, theta, None, config, grad_output)
    _, rgx, _ = grads(lambda a, t: reference(a, t, None, **config), x, theta, grad_output)
    assert atomics == 0
    assert torch.equal(gx.isnan(), rgx.isnan()) and gx.isnan().sum() >= 4
    torch.testing.assert_close(gx, rgx, equal_nan=True)


@pytest.mark.parametrize("want_theta", [False, True], ids=["input-only", "input-and-theta"])
def test_gather_backward_grid_stride(want_theta):
    """One block row for the whole batch (grid y-limit 1): each block gathers image after image
    with the plan of each (made by one thread and shared), also when no theta gradient's
    reduction puts barriers between the images."""
    config = CONFIGS[0]
    shape, size = (GATHERED_THETAS, 2, 23, 31), (19, 26)
    thetas = torch.stack(list(GATHER_THETAS.values())[:GATHERED_THETAS]).requires_grad_(want_theta)
    x = random_input(shape, seed=seed_of("gather-stride")).requires_grad_()
    grad_output = random_input((*shape[:2], *size), seed=seed_of("gather-stride-grad"))
    with cuda_emulation.device_limits(max_grid_y=1, stage_small_images=False):
        out = cuda_emulation.affine_grid_sample(x, thetas, size, **config)
        got = torch.autograd.grad(out, (x, thetas) if want_theta else x, grad_output)
    ref = reference(x, thetas, size, **config)
    want = torch.autograd.grad(ref, (x, thetas) if want_theta else x, grad_output)
    for g, w, what in zip(got, want, ("grad input", "grad theta")):
        assert_close(g, w, torch.float64, what, scale=max_abs(w))


@pytest.mark.parametrize("config", ZEROS_CONFIGS.values(), ids=ZEROS_CONFIGS.keys())
def test_gather_backward_deterministic(config):
    """Under use_deterministic_algorithms the gather serves when every image of the call was
    gathered (one launch, no atomics); otherwise the host sees a false flag and the tap records
    redo the call (their kernel and its gather: 2 launches more), as they do at once while a
    CUDA graph is being captured. Every way equals the reference, with no atomic addition."""
    shape, size = (len(GATHER_THETAS), 2, 23, 31), (19, 26)
    thetas = torch.stack(list(GATHER_THETAS.values()))
    x = random_input(shape, seed=seed_of("gather-det")).requires_grad_()
    grad_output = random_input((*shape[:2], *size), seed=seed_of("gather-det-grad"))
    undefined = list(GATHER_THETAS).index("nan")
    cases = {  # (images, capturing a graph): backward launches
        (GATHERED_THETAS, False): 1, (GATHERED_THETAS, True): 2, (len(GATHER_THETAS), False): 3}
    for (images, capturing), launches in cases.items():
        theta = thetas[:images].clone().requires_grad_()
        with deterministic_mode(), cuda_emulation.device_limits(stage_small_images=False,
                                                                capturing_graph=capturing):
            out = cuda_emulation.affine_grid_sample(x[:images], theta, size, **config)
            launches_before, atomics_before = (cuda_emulation.launch_count(),
                                               cuda_emulation.atomic_adds())
            gx, gth = torch.autograd.grad(out, (x, theta), grad_output[:images])
            assert cuda_emulation.launch_count() - launches_before == launches
            assert cuda_emulation.atomic_adds() == atomics_before
        ref = reference(x[:images], theta, size, **config)
        rgx, rgth = torch.autograd.grad(ref, (x, theta), grad_output[:images])
        if images > undefined:  # (as in test_gather_backward_thetas)
            rgth = rgth.clone()
            rgth[undefined] = math.nan if config["mode"] == "bilinear" else 0.0
        torch.testing.assert_close(gx, rgx, rtol=1e-9, atol=1e-9 * max(1.0, max_abs(rgx)))
        torch.testing.assert_close(gth, rgth, equal_nan=True, rtol=1e-9,
                                   atol=1e-9 * max(1.0, float(rgth.nan_to_num(0).abs().max())))
