"""The general sampling ops against PyTorch: stn_ext.grid_sample (dense 2-D and 3-D grids) and
stn_ext.affine_grid_sample where it goes beyond the fused op (5-D input, bicubic, fill_value):
values, gradients (gradcheck in float64), fill values, layouts, non-finite points, determinism,
registration and bad input. Every implementation of the general ops runs the same bodies
(the general_backend fixture of conftest.py)."""
import itertools
import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

import stn_ext
from stn_ext.functional import FUSED_MODES
from _reference import (DTYPES, assert_bitwise_identical, assert_close, compute_dtype, max_abs,
                        random_input, repeated_runs, reproducibly, seed_of)

DTYPE_IDS = [str(d).replace("torch.", "") for d in DTYPES]
PADDINGS = ("zeros", "border", "reflection")
# (mode, spatial dims): bicubic is 2-D only, as in PyTorch.
MODE_DIMS = [("bilinear", 2), ("nearest", 2), ("bicubic", 2), ("bilinear", 3), ("nearest", 3)]
CONFIGS = [dict(mode=m, padding_mode=p, align_corners=a, dims=d)
           for (m, d), p, a in itertools.product(MODE_DIMS, PADDINGS, (False, True))]
CONFIG_IDS = [f"{c['dims']}d-{c['mode']}-{c['padding_mode']}-{'ac' if c['align_corners'] else 'noac'}"
              for c in CONFIGS]
# (input shape, grid's output size) per rank: odd sizes, 1-pixel axes in and out.
SHAPES = {
    2: {"odd": ((2, 3, 5, 7), (4, 6)), "in-1x1": ((2, 2, 1, 1), (3, 2)),
        "in-H1": ((1, 3, 1, 6), (2, 5)), "out-1x1": ((2, 3, 4, 5), (1, 1))},
    3: {"odd": ((2, 3, 4, 5, 3), (3, 4, 2)), "in-1x1x1": ((1, 2, 1, 1, 1), (2, 2, 3)),
        "in-D1": ((2, 2, 1, 4, 5), (2, 3, 3)), "out-1x1x1": ((2, 3, 3, 4, 5), (1, 1, 1))},
}


def config_args(config):
    return {k: v for k, v in config.items() if k != "dims"}


def random_grid(n, out_size, dims, *, seed, dtype=torch.float64, spread=1.3, device="cpu"):
    """Sample points in [-spread, spread]: some outside the input, where padding matters."""
    gen = torch.Generator().manual_seed(seed)
    grid = (torch.rand(n, *out_size, dims, generator=gen, dtype=torch.float64) * 2 - 1) * spread
    return grid.to(device, dtype)


def reference(input, grid, *, mode, padding_mode, align_corners, fill_value=None):
    """F.grid_sample in float64 (or float32 for half/bfloat16, as the op computes); with a fill,
    F.grid_sample(input - fill, grid) + fill: taps outside read the fill, weights sum to one."""
    dtype = compute_dtype(input.dtype)
    input, grid = input.to(dtype), grid.to(dtype)
    if fill_value is None:
        return F.grid_sample(input, grid, mode=mode, padding_mode=padding_mode,
                             align_corners=align_corners)
    f = torch.as_tensor(fill_value, dtype=dtype, device=input.device).expand(input.shape[1])
    f = f.reshape(1, -1, *([1] * (input.dim() - 2)))
    return F.grid_sample(input - f, grid, mode=mode, padding_mode="zeros",
                         align_corners=align_corners) + f


def grads(fn, input, coords, grad_output):
    out = fn(input, coords)
    got = torch.autograd.grad(out, (input, coords), grad_output.to(out.dtype))
    return (out, *got)


def make(shape, out_size, dims, dtype, seed, device="cpu"):
    x = random_input(shape, seed=seed, dtype=dtype, device=device).requires_grad_()
    grid = random_grid(shape[0], out_size, dims, seed=seed + 1, dtype=dtype,
                       device=device).requires_grad_()
    go = random_input((*shape[:2], *out_size), seed=seed + 2, dtype=dtype, device=device)
    return x, grid, go


def shape_params():
    return [pytest.param(dims, shape, size, id=f"{dims}d-{name}")
            for dims, shapes in SHAPES.items() for name, (shape, size) in shapes.items()]


class TritonGeneralOps:
    """The Triton backend as these tests see it: grid_sample and affine sampling on 4-D input,
    bilinear or nearest, with or without a fill value (stn_ext::triton_grid_sample,
    ::triton_affine_sample, and the fused op without a fill). Every other combination must raise
    NotImplementedError naming the backend; a test that reaches one checks that, then skips."""
    emulated = False

    def __init__(self, backend):
        self._backend = backend
        self.name, self.device = backend.name, backend.device

    @staticmethod
    def has_kernel(dims, mode) -> bool:
        return dims == 2 and mode in FUSED_MODES

    @staticmethod
    def _refused(call):
        with pytest.raises(NotImplementedError, match="backend 'triton' has no kernel for"):
            call()
        pytest.skip("Triton refuses this combination with NotImplementedError (checked)")

    def grid_sample(self, input, grid, mode="bilinear", padding_mode="zeros",
                    align_corners=False, *, fill_value=None):
        def call():
            return self._backend.grid_sample(input, grid, mode, padding_mode, align_corners,
                                             fill_value=fill_value)
        return call() if self.has_kernel(input.dim() - 2, mode) else self._refused(call)

    def affine_sample(self, input, theta, size=None, *, mode="bilinear", fill_value=None,
                      **config):
        def call():
            return self._backend.affine_sample(input, theta, size, mode=mode,
                                               fill_value=fill_value, **config)
        return call() if self.has_kernel(input.dim() - 2, mode) else self._refused(call)

    @property
    def general_ops(self):
        import stn_ext.triton_kernels  # noqa: F401  (registers the Triton ops)
        return types.SimpleNamespace(grid_sample=torch.ops.stn_ext.triton_grid_sample,
                                     affine_sample=torch.ops.stn_ext.triton_affine_sample)


@pytest.fixture
def backend(general_backend):
    """The tests below run on every backend (conftest.py); Triton's refusals are checked."""
    if general_backend.name == "triton":
        return TritonGeneralOps(general_backend)
    return general_backend


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_grid_sample_parity(backend, config, dtype):
    shape, size = SHAPES[config["dims"]]["odd"]
    x, grid, go = make(shape, size, config["dims"], dtype, seed_of(config, dtype), backend.device)
    args = config_args(config)
    out, gx, gg = grads(lambda x, g: backend.grid_sample(x, g, **args), x, grid, go)
    ref, rgx, rgg = grads(lambda x, g: reference(x, g, **args), x, grid, go)
    assert out.dtype == dtype
    assert_close(out, ref, dtype, "output")
    assert_close(gx, rgx, dtype, "grad input", scale=max_abs(rgx))
    assert_close(gg, rgg, dtype, "grad grid", scale=max_abs(rgg))
    if config["mode"] == "nearest":
        assert torch.count_nonzero(gg) == 0


@pytest.mark.parametrize("dims,shape,size", shape_params())
@pytest.mark.parametrize("padding_mode", PADDINGS)
def test_grid_sample_shapes(backend, dims, shape, size, padding_mode):
    modes = [mode for mode, mode_dims in MODE_DIMS if mode_dims == dims and (
        backend.name != "triton" or TritonGeneralOps.has_kernel(dims, mode))]
    if not modes:
        pytest.skip(f"no {dims}-D kernels on this backend")
    for mode in modes:
        for align_corners in (False, True):
            args = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)
            x, grid, go = make(shape, size, dims, torch.float64, seed_of(shape, args),
                               backend.device)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                ref, rgx, rgg = grads(lambda x, g: reference(x, g, **args), x, grid, go)
            out, gx, gg = grads(lambda x, g: backend.grid_sample(x, g, **args),
                                x, grid, go)
            what = f"{mode} {padding_mode} ac={align_corners}"
            assert_close(out, ref, torch.float64, f"output {what}")
            assert_close(gx, rgx, torch.float64, f"grad input {what}", scale=max_abs(rgx))
            assert_close(gg, rgg, torch.float64, f"grad grid {what}", scale=max_abs(rgg))


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_grid_sample_gradcheck(backend, config):
    dims = config["dims"]
    shape, size = ((1, 2, 3, 4), (2, 3)) if dims == 2 else ((1, 2, 2, 3, 3), (2, 2, 2))
    x, grid, _ = make(shape, size, dims, torch.float64, seed_of("gradcheck", config),
                      backend.device)
    args = config_args(config)
    assert torch.autograd.gradcheck(
        lambda x, g: backend.grid_sample(x, g, **args), (x, grid))


@pytest.mark.parametrize("channels", [9, 12])
def test_uneven_channel_groups(backend, channels):
    """A small batch splits its channels into groups (the CPU backward's work units); channel
    counts that do not divide evenly among them."""
    x, grid, go = make((1, channels, 5, 7), (4, 6), 2, torch.float64,
                       seed_of("groups", channels), backend.device)
    args = dict(mode="bilinear", padding_mode="zeros", align_corners=False)
    out, gx, gg = grads(lambda x, g: backend.grid_sample(x, g, **args), x, grid, go)
    ref, rgx, rgg = grads(lambda x, g: reference(x, g, **args), x, grid, go)
    assert_close(out, ref, torch.float64, "output")
    assert_close(gx, rgx, torch.float64, "grad input", scale=max_abs(rgx))
    assert_close(gg, rgg, torch.float64, "grad grid", scale=max_abs(rgg))


@pytest.mark.parametrize("op", ["grid_sample", "affine_sample"])
def test_double_backward_raises(backend, op):
    """The ops are differentiable once: differentiating their backward raises (a silent zero
    second derivative would be wrong)."""
    x, grid, go = make((2, 3, 5, 7), (4, 6), 2, torch.float64, seed_of("double", op),
                       backend.device)
    if op == "grid_sample":
        out = backend.grid_sample(x, grid)
        coords = grid
    else:  # a fill value takes the general op
        coords = (torch.eye(2, 3, dtype=torch.float64, device=backend.device).expand(2, 2, 3)
                  + 0.1).requires_grad_()
        out = backend.affine_sample(x, coords, (4, 6), fill_value=0.5)
    gx, gc = torch.autograd.grad(out, (x, coords), go, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad((gx.sum() + gc.sum()), (x, coords))


FILLS = {"scalar": 0.75, "per-channel": [1.5, -2.0, 0.25], "tensor": torch.tensor([3.0, 0.0, -1.0])}


@pytest.mark.parametrize("fill", FILLS.values(), ids=FILLS.keys())
@pytest.mark.parametrize("mode,dims", MODE_DIMS, ids=[f"{m}-{d}d" for m, d in MODE_DIMS])
def test_fill_value(backend, mode, dims, fill):
    shape, size = SHAPES[dims]["odd"]
    x, grid, go = make(shape, size, dims, torch.float64, seed_of("fill", mode, dims),
                       backend.device)
    args = dict(mode=mode, padding_mode="zeros", align_corners=False)
    fill_arg = fill.to(backend.device, torch.float64) if isinstance(fill, torch.Tensor) else fill
    out, gx, gg = grads(lambda x, g: backend.grid_sample(x, g, **args, fill_value=fill_arg),
                        x, grid, go)
    ref, rgx, rgg = grads(lambda x, g: reference(x, g, **args, fill_value=fill_arg), x, grid, go)
    assert_close(out, ref, torch.float64, "output")
    assert_close(gx, rgx, torch.float64, "grad input", scale=max_abs(rgx))
    assert_close(gg, rgg, torch.float64, "grad grid", scale=max_abs(rgg))
    # Points far outside read the fill exactly; so do points just left of the image, whose
    # taps all fall outside it (pixel x in (-2, -1), or (-3, -2) for bicubic's wider stencil),
    # where the weights times the fill would not always sum to it exactly.
    expected = torch.as_tensor(fill_arg, dtype=torch.float64, device=backend.device)
    expected = expected.expand(shape[1])
    reach = 2 if mode == "bicubic" else 1
    pixel_x = torch.linspace(-reach - 0.95, -reach - 0.05, grid[..., 0].numel(),
                             dtype=torch.float64, device=backend.device)
    just_left = grid.detach().clone()
    just_left[..., 0] = ((2 * pixel_x + 1) / shape[-1] - 1).view_as(grid[..., 0])
    for outside in (torch.full_like(grid.detach(), 5.0), just_left):
        out_of_image = backend.grid_sample(x.detach(), outside, **args, fill_value=fill_arg)
        assert torch.equal(out_of_image.movedim(1, -1).reshape(-1, shape[1]),
                           expected.expand(out_of_image.numel() // shape[1], -1))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_fill_value_gradcheck(backend, mode):
    x, grid, _ = make((1, 2, 3, 4), (3, 3), 2, torch.float64, seed_of("fill-gradcheck", mode),
                      backend.device)
    assert torch.autograd.gradcheck(
        lambda x, g: backend.grid_sample(x, g, mode, fill_value=[0.5, -1.5]), (x, grid))


def random_affine(n, dims, *, seed, dtype=torch.float64, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return (torch.eye(dims, dims + 1, dtype=torch.float64)
            + 0.3 * torch.randn(n, dims, dims + 1, generator=gen, dtype=torch.float64)).to(device,
                                                                                           dtype)


def affine_reference(x, theta, size, fill_value=None, **args):
    dtype = compute_dtype(x.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        grid = F.affine_grid(theta.to(dtype), [*x.shape[:2], *size], args["align_corners"])
    return reference(x, grid, fill_value=fill_value, **args)


AFFINE_CASES = [  # (mode, dims, fill): what the fused 2-D op does not cover
    ("bilinear", 3, None), ("nearest", 3, None), ("bicubic", 2, None),
    ("bilinear", 2, [0.5, -1.0, 2.0]), ("nearest", 2, -0.5), ("bicubic", 2, 0.25),
    ("bilinear", 3, [1.0, 2.0, 3.0]),
]


# Each case with every padding it takes (a fill value takes zeros only) and align_corners.
AFFINE_PARITY_CASES = [
    pytest.param(m, d, f, p, a, id=f"{m}-{d}d-{'fill' if f is not None else 'nofill'}-{p}-"
                                   f"{'ac' if a else 'noac'}")
    for m, d, f in AFFINE_CASES for p in (PADDINGS if f is None else ("zeros",))
    for a in (False, True)]


@pytest.mark.parametrize("mode,dims,fill,padding_mode,align_corners", AFFINE_PARITY_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16],
                         ids=["float64", "float32", "bfloat16"])
def test_affine_general_parity(backend, mode, dims, fill, padding_mode, align_corners, dtype):
    shape, size = SHAPES[dims]["odd"]
    seed = seed_of("affine", mode, dims, padding_mode, align_corners)
    x = random_input(shape, seed=seed, dtype=dtype, device=backend.device).requires_grad_()
    theta = random_affine(shape[0], dims, seed=seed, dtype=dtype,
                          device=backend.device).requires_grad_()
    go = random_input((*shape[:2], *size), seed=seed + 1, dtype=dtype, device=backend.device)
    args = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    out, gx, gth = grads(lambda x, t: backend.affine_sample(
        x, t, size, **args, fill_value=fill), x, theta, go)
    ref, rgx, rgth = grads(lambda x, t: affine_reference(x, t, size, fill, **args), x, theta, go)
    assert_close(out, ref, dtype, "output")
    assert_close(gx, rgx, dtype, "grad input", scale=max_abs(rgx))
    assert_close(gth, rgth, dtype, "grad theta", scale=max_abs(rgth))


@pytest.mark.parametrize("mode,dims,fill", AFFINE_CASES,
                         ids=[f"{m}-{d}d-{'fill' if f is not None else 'nofill'}"
                              for m, d, f in AFFINE_CASES])
def test_affine_general_gradcheck(backend, mode, dims, fill):
    shape, size = ((1, 3, 3, 4), (2, 3)) if dims == 2 else ((1, 3, 2, 3, 3), (2, 2, 2))
    seed = seed_of("affine-gradcheck", mode, dims)
    x = random_input(shape, seed=seed, device=backend.device).requires_grad_()
    theta = random_affine(1, dims, seed=seed, device=backend.device).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, t: backend.affine_sample(
        x, t, size, mode=mode, fill_value=fill), (x, theta))


@pytest.mark.parametrize("dims", [2, 3])
def test_layouts(backend, dims):
    """channels_last(_3d) input keeps its layout; strided grids and thetas give the same values."""
    shape, size = SHAPES[dims]["odd"]
    seed = seed_of("layouts", dims)
    x = random_input(shape, seed=seed, device=backend.device)
    grid = random_grid(shape[0], size, dims, seed=seed, device=backend.device)
    want = reference(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    channels_last = torch.channels_last if dims == 2 else torch.channels_last_3d
    x_cl = x.contiguous(memory_format=channels_last).requires_grad_()
    out = backend.grid_sample(x_cl, grid)
    assert out.is_contiguous(memory_format=channels_last)
    assert_close(out, want, torch.float64, "channels_last output")
    (gx,) = torch.autograd.grad(out.sum(), x_cl)
    assert gx.is_contiguous(memory_format=channels_last)
    # A grid with its coordinates strided and its points transposed.
    strided = torch.stack([grid, torch.zeros_like(grid)], dim=-1).flatten(-2)[..., ::2]
    strided = strided.transpose(1, 2).contiguous().transpose(1, 2)
    assert not strided.is_contiguous()
    assert_close(backend.grid_sample(x, strided), want, torch.float64, "strided grid")
    theta = random_affine(shape[0], dims, seed=seed, device=backend.device)
    theta_t = theta.transpose(1, 2).contiguous().transpose(1, 2)
    assert_close(backend.affine_sample(x, theta_t, size),
                 affine_reference(x, theta, size, mode="bilinear", padding_mode="zeros",
                                  align_corners=False), torch.float64, "strided theta")


INPUT_LAYOUTS = ("channels_last", "channel-strided", "x-strided")


def laid_out(x, layout):
    """x with the same values in another memory layout: channels_last(_3d), every other channel
    of a larger tensor (spatial strides as contiguous, a longer channel stride), or every other
    pixel along x."""
    if layout == "channels_last":
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        return x.contiguous(memory_format=fmt)
    if layout == "channel-strided":
        return torch.stack([x, torch.zeros_like(x)], dim=2).flatten(1, 2)[:, ::2]
    return torch.stack([x, torch.zeros_like(x)], dim=-1).flatten(-2)[..., ::2]


@pytest.mark.parametrize("mode,dims", MODE_DIMS, ids=[f"{m}-{d}d" for m, d in MODE_DIMS])
@pytest.mark.parametrize("layout", INPUT_LAYOUTS)
def test_input_layouts(backend, mode, dims, layout):
    """Every mode samples input in any layout, and takes the gradients to it, as from contiguous
    input (float32: the kernels' vector paths)."""
    if backend.name == "triton" and not TritonGeneralOps.has_kernel(dims, mode):
        pytest.skip(f"no {dims}-D {mode} kernel on this backend")
    shape, size = SHAPES[dims]["odd"]
    x, grid, go = make(shape, size, dims, torch.float32, seed_of("input-layouts", mode, dims),
                       backend.device)
    # Most points well inside, where every tap is, and some outside.
    grid = (grid.detach() * 0.8).requires_grad_()
    strided = laid_out(x.detach(), layout).requires_grad_()
    assert not strided.is_contiguous()
    args = dict(mode=mode, padding_mode="zeros", align_corners=False)
    out, gx, gg = grads(lambda x, g: backend.grid_sample(x, g, **args), strided, grid, go)
    ref, rgx, rgg = grads(lambda x, g: reference(x, g, **args), x, grid, go)
    assert_close(out, ref, torch.float32, "output")
    assert_close(gx, rgx, torch.float32, "grad input", scale=max_abs(rgx))
    assert_close(gg, rgg, torch.float32, "grad grid", scale=max_abs(rgg))


def with_rows_apart(t, dim):
    """t's values with a gap after each run along `dim`, so that the rows of dim - 1 no longer
    lie back to back in memory."""
    sizes = list(t.shape)
    sizes[dim] += 1
    apart = torch.zeros(sizes, dtype=t.dtype, device=t.device).narrow(dim, 0, t.shape[dim])
    apart.copy_(t)
    assert apart.stride(dim - 1) != apart.size(dim) * apart.stride(dim)
    return apart


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
def test_rows_apart_bitwise(backend, mode):
    """A grid and grad_output whose output rows lie apart in memory give bit for bit the values
    and gradients of contiguous ones (with a deterministic backward): the CPU kernels take
    back-to-back output rows as one long row of points, and cannot where the rows lie apart."""
    if backend.name == "triton" and not TritonGeneralOps.has_kernel(2, mode):
        pytest.skip(f"no 2-D {mode} kernel on this backend")
    # 6 output rows of 300 points: the CPU kernels take them as 2 rows of 900.
    x, grid, go = make((3, 2, 9, 11), (6, 300), 2, torch.float32, seed_of("rows-apart", mode),
                       backend.device)
    # Each row but the last ends on the taps one pixel west of where the next row begins: the
    # CPU backward carries a pixel's east taps into the next pixel's west ones, which must not
    # happen across output rows that a merged row holds.
    grid = grid.detach()
    last = torch.tensor([-0.3, 0.1], dtype=grid.dtype, device=grid.device)  # taps inside
    grid[:, :-1, -1] = last
    grid[:, 1:, 0] = last + torch.tensor([2 / x.shape[3], 0.0], dtype=grid.dtype,
                                         device=grid.device)
    grid.requires_grad_()
    grid_apart = with_rows_apart(grid.detach(), 2).requires_grad_()
    go_apart = with_rows_apart(go, 3)
    args = dict(mode=mode, padding_mode="zeros", align_corners=False)
    with reproducibly(backend):
        together = grads(lambda x, g: backend.grid_sample(x, g, **args), x, grid, go)
        apart = grads(lambda x, g: backend.grid_sample(x, g, **args), x, grid_apart, go_apart)
    assert_bitwise_identical([together, apart])
    _, rgx, rgg = grads(lambda x, g: reference(x, g, **args), x, grid, go)
    assert_close(together[1], rgx, torch.float32, "grad input", scale=max_abs(rgx))
    assert_close(together[2], rgg, torch.float32, "grad grid", scale=max_abs(rgg))


def lane_group_grid(out_size, dtype, device):
    """Affine maps, one per image, whose runs of 8 neighbouring output points read their taps
    in each way the CPU kernels' lane groups know (csrc/cpu/affine_grid_sample_cpu.cpp): within
    8 input columns and 1 or 2 rows, within 16 columns, beyond, mirrored, partly outside; the
    last rows' windows would pass the plane's end, and rows end in part groups. 8 images: the
    CPU backward then takes all of an image's channels in one work unit, in blocks of 4."""
    turn = torch.tensor(0.25, dtype=torch.float64)
    thetas = torch.tensor([
        [[1.0, 0.0, 0.02], [0.0, 1.0, 0.03]],  # near identity: 8 columns, 1 or 2 rows
        [[turn.cos(), -turn.sin(), 0.0], [turn.sin(), turn.cos(), 0.0]],  # turned: 2 rows
        [[1.8, 0.0, 0.1], [0.0, 1.0, 0.0]],  # stretched: 16 columns
        [[3.5, 0.0, 0.0], [0.0, 1.0, 0.0]],  # beyond 16 columns
        [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],  # mirrored
        [[1.6, 0.2, 0.0], [-0.1, 1.5, 0.0]],  # zoomed out: taps outside
        [[0.7, -0.1, -0.05], [0.1, 0.8, 0.1]],  # zoomed in, turned
        [[1.2, 0.3, 0.0], [-0.3, -1.1, 0.0]],  # turned and flipped in y
    ], dtype=torch.float64)
    grid = F.affine_grid(thetas, (len(thetas), 1, *out_size), align_corners=False)
    return grid.to(device, dtype)


@pytest.mark.parametrize("rows", ["back-to-back", "apart"])
def test_point_results_do_not_depend_on_neighbours(backend, rows):
    """Each point's output and grid gradient are the same bits whatever points surround it (the
    CPU kernels take 8 neighbouring points at a time, from windows of the input rows or by
    gathers, with the same arithmetic): the grid's points without its first column give bit
    for bit the rest of its results. And every way the lane groups read taps matches PyTorch,
    with the input's rows back to back or apart in memory (a row stride other than the width)."""
    x = random_input((8, 5, 20, 37), seed=seed_of("lanes"), dtype=torch.float32,
                     device=backend.device)
    if rows == "apart":
        x = with_rows_apart(x, 3)
    x.requires_grad_()
    grid = lane_group_grid((30, 45), torch.float32, backend.device).requires_grad_()
    go = random_input((8, 5, 30, 45), seed=seed_of("lanes", "go"), dtype=torch.float32,
                      device=backend.device)
    shifted = grid.detach()[:, :, 1:].requires_grad_()
    args = dict(mode="bilinear", padding_mode="zeros", align_corners=False)
    out, gx, gg = grads(lambda x, g: backend.grid_sample(x, g, **args), x, grid, go)
    out_shifted, _, gg_shifted = grads(lambda x, g: backend.grid_sample(x, g, **args), x,
                                       shifted, go[..., 1:])
    assert torch.equal(out[..., 1:], out_shifted)
    assert torch.equal(gg[:, :, 1:], gg_shifted)
    _, rgx, rgg = grads(lambda x, g: reference(x, g, **args), x, grid, go)
    ref = reference(x.detach().double(), grid.detach().double(), **args)
    assert_close(out, ref, torch.float32, "output")
    assert_close(gx, rgx, torch.float32, "grad input", scale=max_abs(rgx))
    assert_close(gg, rgg, torch.float32, "grad grid", scale=max_abs(rgg))


@pytest.mark.parametrize("dims", [2, 3])
def test_empty(backend, dims):
    shape, size = SHAPES[dims]["odd"]
    for n, c, out_size in ((0, 3, size), (2, 0, size), (2, 3, (0,) * dims)):
        x = torch.randn(n, c, *shape[2:], dtype=torch.float64, device=backend.device,
                        requires_grad=True)
        grid = torch.zeros(n, *out_size, dims, dtype=torch.float64, device=backend.device,
                           requires_grad=True)
        out = backend.grid_sample(x, grid)
        assert out.shape == (n, c, *out_size)
        gx, gg = torch.autograd.grad(out.sum(), (x, grid), allow_unused=True)
        assert gx is None or torch.count_nonzero(gx) == 0
        assert gg is None or torch.count_nonzero(gg) == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("mode,dims", MODE_DIMS, ids=[f"{m}-{d}d" for m, d in MODE_DIMS])
def test_non_finite_grid(backend, mode, dims, value):
    """A point whose coordinate is not finite (after padding for nearest and bilinear) is NaN in
    every channel, adds nothing to grad_input and NaN to its grid gradient (zero for nearest)."""
    shape, size = SHAPES[dims]["odd"]
    x, grid, go = make(shape, size, dims, torch.float64, seed_of("nan", mode, dims), backend.device)
    bad = grid.detach().clone()
    bad.view(-1, dims)[0, 0] = value  # image 0, first point, x coordinate
    bad.requires_grad_()
    out, gx, gg = grads(lambda x, g: backend.grid_sample(x, g, mode), x, bad, go)
    first = (0, slice(None), *([0] * dims))
    assert out[first].isnan().all()
    assert not out.isnan().view(-1)[1:].any() or out[1].isfinite().all()
    # The point's taps take nothing: grad_input equals that of the grid without it.
    keep = torch.ones(size, dtype=torch.bool)
    keep.view(-1)[0] = False
    go_without = go.clone()
    go_without[first] = 0
    _, rgx, _ = grads(lambda x, g: backend.grid_sample(x, g, mode),
                      x, grid, go_without)
    assert_close(gx, rgx, torch.float64, "grad input", scale=max_abs(rgx))
    point_grad = gg.view(shape[0], -1, dims)[0, 0]
    assert (point_grad.isnan().all() if mode != "nearest" else torch.count_nonzero(point_grad) == 0)
    assert gg.view(shape[0], -1, dims)[:, 1:].isfinite().all()


def test_results_do_not_depend_on_thread_count(backend, num_threads):
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for dims in (2, 3):
            shape, size = SHAPES[dims]["odd"]
            x, grid, go = make(shape, size, dims, torch.float32, seed_of("threads", dims),
                               backend.device)
            results.append(grads(lambda x, g: backend.grid_sample(x, g),
                                 x, grid, go))
    for a, b in zip(results[:2], results[2:]):
        for got, want in zip(a, b):
            assert torch.equal(got, want)


@pytest.mark.parametrize("dims", [2, 3])
def test_repeated_backward_is_bitwise_identical(backend, dims):
    """A dense grid has no inverse map, so grad_input is a scatter: the CPU kernels keep one image
    per thread; the CUDA kernels, under torch.use_deterministic_algorithms(True), gather it from
    tap records sorted by input pixel. Either way every run gives the same bits (in emulation,
    with the blocks in another order each time), equal to the reference. Points crowd into a
    small region, so that many taps share input pixels."""
    shape, size = ((2, 3, 6, 7), (17, 19)) if dims == 2 else ((2, 2, 4, 5, 3), (5, 7, 9))
    x, grid, go = make(shape, size, dims, torch.float32, seed_of("repeat", dims), backend.device)
    with torch.no_grad():
        grid.mul_(0.4)
    mode = "bicubic" if dims == 2 and backend.name != "triton" else "bilinear"
    runs = repeated_runs(
        backend, lambda: grads(lambda x, g: backend.grid_sample(x, g, mode), x, grid, go), 3)
    assert_bitwise_identical(runs)
    _, rgx, rgg = grads(lambda x, g: reference(x, g, mode=mode, padding_mode="zeros",
                                               align_corners=False), x, grid, go)
    assert_close(runs[0][1], rgx, torch.float32, "grad input", scale=max_abs(rgx))
    assert_close(runs[0][2], rgg, torch.float32, "grad grid", scale=max_abs(rgg))


@pytest.mark.parametrize("dims", [2, 3])
def test_nearest_copies_negative_zero(backend, dims):
    """Nearest sampling copies the sampled value bit for bit, -0.0 included (as ATen)."""
    x = torch.full((1, 2, *([3] * dims)), -0.0, dtype=torch.float64, device=backend.device)
    grid = random_grid(1, (4,) * dims, dims, seed=7, spread=0.9, device=backend.device)
    out = backend.grid_sample(x, grid, "nearest")
    assert out.signbit().all()


@pytest.mark.parametrize("dims", [2, 3])
def test_opcheck_and_compile(backend, dims):
    shape, size = SHAPES[dims]["odd"]
    x = random_input(shape, seed=1, device=backend.device)
    grid = random_grid(shape[0], size, dims, seed=2, device=backend.device)
    theta = random_affine(shape[0], dims, seed=3, device=backend.device)
    fill = torch.arange(shape[1], dtype=torch.float64, device=backend.device)
    if backend.name == "triton" and dims == 3:
        pytest.skip("Triton has no 3-D kernels")
    opcheck(backend.general_ops.grid_sample.default,
            (x, grid, "bilinear", "zeros", False, fill))
    opcheck(backend.general_ops.affine_sample.default,
            (x.requires_grad_(), theta.requires_grad_(), list(size), "nearest", "border", True,
             None))
    mode = "bicubic" if dims == 2 and backend.name != "triton" else "bilinear"
    compiled = torch.compile(lambda x, g: backend.grid_sample(x, g, mode, fill_value=fill),
                             fullgraph=True)
    assert_close(compiled(x, grid), reference(x, grid, mode=mode, padding_mode="zeros",
                                              align_corners=False, fill_value=fill),
                 torch.float64, "compiled")


def test_autocast(backend):
    x = torch.randn(2, 3, 5, 6, dtype=torch.bfloat16, device=backend.device)
    grid = random_grid(2, (4, 4), 2, seed=4, dtype=torch.bfloat16, device=backend.device)
    mode = "bilinear" if backend.name == "triton" else "bicubic"
    with torch.autocast(backend.device, dtype=torch.bfloat16):
        out = backend.grid_sample(x, grid, mode, fill_value=1.0)
    assert out.dtype == torch.float32
    assert_close(out, reference(x.float(), grid.float(), mode=mode, padding_mode="zeros",
                                align_corners=False, fill_value=1.0), torch.float32, "autocast")


SIZE_FORMS = {
    "numpy": lambda s: [np.int64(v) for v in s],
    "tensor": lambda s: [torch.tensor(v) for v in s],
    "full-numpy": lambda s: [2, 3, *[np.int32(v) for v in s]],
}


@pytest.mark.parametrize("form", SIZE_FORMS.values(), ids=SIZE_FORMS.keys())
@pytest.mark.parametrize("dims", [2, 3])
def test_size_integer_forms(backend, dims, form):
    shape, size = SHAPES[dims]["odd"]
    x = random_input(shape, seed=5, device=backend.device)
    theta = random_affine(shape[0], dims, seed=6, device=backend.device)
    out = backend.affine_sample(x, theta, form(size))
    assert out.shape == (*shape[:2], *size)
    assert_close(out, affine_reference(x, theta, size, mode="bilinear", padding_mode="zeros",
                                       align_corners=False), torch.float64, "output")


def _bad(**overrides):
    args = dict(input=torch.randn(2, 3, 4, 5), grid=torch.zeros(2, 3, 3, 2), mode="bilinear",
                padding_mode="zeros", align_corners=False, fill_value=None, backend="cpu")
    args.update(overrides)
    return args


BAD_GRID_SAMPLE = {
    "grid-rank": (_bad(grid=torch.zeros(2, 3, 2)), ValueError, "grid must have shape"),
    "grid-last-dim": (_bad(grid=torch.zeros(2, 3, 3, 3)), ValueError, r"\(N, Ho, Wo, 2\)"),
    "grid-3d-last-dim": (_bad(input=torch.randn(2, 3, 4, 5, 6), grid=torch.zeros(2, 3, 3, 3, 2)),
                         ValueError, r"\(N, Do, Ho, Wo, 3\)"),
    "grid-batch": (_bad(grid=torch.zeros(3, 3, 3, 2)), ValueError, "grid has batch 3"),
    "grid-dtype": (_bad(grid=torch.zeros(2, 3, 3, 2, dtype=torch.float64)), TypeError,
                   "grid must have the dtype"),
    "input-rank": (_bad(input=torch.randn(3, 4, 5)), ValueError, "input must be 4-D"),
    "mode": (_bad(mode="bicubicc"), ValueError, "mode must be one of"),
    "bicubic-3d": (_bad(input=torch.randn(2, 3, 4, 5, 6), grid=torch.zeros(2, 3, 3, 3, 3),
                        mode="bicubic"), NotImplementedError, "bicubic.*4-D"),
    "fill-length": (_bad(fill_value=[1.0, 2.0]), ValueError, r"one per channel \(3\)"),
    "fill-padding": (_bad(fill_value=1.0, padding_mode="border"), ValueError,
                     "fill_value needs padding_mode='zeros'"),
    "fill-type": (_bad(fill_value="red"), TypeError, "fill_value must be"),
    "fill-bool": (_bad(fill_value=True), TypeError, "fill_value must be"),
    "fill-mixed": (_bad(fill_value=[1.0, "a", 2.0]), TypeError, "fill_value must be"),
    "fill-grad": (_bad(fill_value=torch.ones(3, requires_grad=True)), ValueError,
                  "fill_value does not take gradients"),
    # CPU tensors: "needs CUDA tensors" with the CUDA kernels built, else "is unavailable".
    "backend-cuda": (_bad(backend="cuda"), (ValueError, RuntimeError), "backend='cuda'"),
    "backend-triton": (_bad(backend="triton", mode="bicubic"), NotImplementedError,
                       "backend 'triton' has no kernel for 4-D input, mode 'bicubic'"),
    "backend-name": (_bad(backend="gpu"), ValueError, "backend must be one of"),
}


@pytest.mark.parametrize("args,error,message", BAD_GRID_SAMPLE.values(), ids=BAD_GRID_SAMPLE.keys())
def test_bad_grid_sample_arguments(args, error, message):
    args = dict(args)
    with pytest.raises(error, match=message):
        stn_ext.grid_sample(args.pop("input"), args.pop("grid"), **args)


BAD_AFFINE = {
    "theta-3d-shape": (dict(input=torch.randn(2, 3, 4, 5, 6), theta=torch.zeros(2, 2, 3)),
                       ValueError, r"theta must have shape \(N, 3, 4\)"),
    "size-3d-length": (dict(input=torch.randn(2, 3, 4, 5, 6), theta=torch.zeros(2, 3, 4),
                            size=(4, 5)), ValueError, r"\(Do, Ho, Wo\)"),
    "size-float": (dict(input=torch.randn(2, 3, 4, 5), theta=torch.zeros(2, 2, 3),
                        size=(4.0, 5)), TypeError, "size must hold integers"),
    "size-float-tensor": (dict(input=torch.randn(2, 3, 4, 5), theta=torch.zeros(2, 2, 3),
                               size=(torch.tensor(4.0), 5)), TypeError, "size must hold integers"),
    "fill-device": (dict(input=torch.randn(2, 3, 4, 5), theta=torch.zeros(2, 2, 3),
                         fill_value=torch.ones(3, device="meta")), ValueError,
                    "fill_value is on meta"),
}


@pytest.mark.parametrize("args,error,message", BAD_AFFINE.values(), ids=BAD_AFFINE.keys())
def test_bad_affine_arguments(args, error, message):
    args = dict(args)
    with pytest.raises(error, match=message):
        stn_ext.affine_grid_sample(args.pop("input"), args.pop("theta"), args.pop("size", None),
                                   backend="cpu", **args)


def test_registered_ops_check_arguments():
    """Direct torch.ops callers get a clear error from the C++ checks, not a crash."""
    x = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match="fill_value must be 1-D with one value per channel"):
        torch.ops.stn_ext.grid_sample(x, torch.zeros(2, 3, 3, 2), "bilinear", "zeros", False,
                                      torch.ones(2))
    with pytest.raises(ValueError, match="grid must be"):
        torch.ops.stn_ext.grid_sample(x, torch.zeros(2, 3, 3, 3), "bilinear", "zeros", False, None)
    with pytest.raises(ValueError, match="out_size must have 2 entries"):
        torch.ops.stn_ext.affine_sample(x, torch.zeros(2, 2, 3), [3], "bilinear", "zeros", False,
                                        None)
    with pytest.raises(NotImplementedError, match="bicubic"):
        torch.ops.stn_ext.grid_sample(torch.randn(1, 1, 2, 2, 2), torch.zeros(1, 1, 1, 1, 3),
                                      "bicubic", "zeros", False, None)
    with pytest.raises(ValueError, match="bicubic is stn_ext::affine_sample's"):
        torch.ops.stn_ext.affine_grid_sample(x, torch.zeros(2, 2, 3), 3, 3, "bicubic", "zeros",
                                             False)
