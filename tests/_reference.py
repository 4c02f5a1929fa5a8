"""Shared helpers of the stn_ext tests: the PyTorch reference, test inputs and tolerances.

Imported by the test modules (pytest puts tests/ on sys.path); fixtures live in conftest.py.
"""
import contextlib
import itertools
import math
import warnings
import zlib
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import stn_ext
from stn_ext.testing import cuda_emulation

MODES = ("bilinear", "nearest")
PADDING_MODES = ("zeros", "border", "reflection")
CONFIGS = [dict(mode=m, padding_mode=p, align_corners=a)
           for m, p, a in itertools.product(MODES, PADDING_MODES, (False, True))]
CONFIG_IDS = [f"{c['mode']}-{c['padding_mode']}-{'ac' if c['align_corners'] else 'noac'}"
              for c in CONFIGS]
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
REDUCED = (torch.float16, torch.bfloat16)


class Backend(NamedTuple):
    """One implementation of the op under test: a `backend=` of stn_ext.affine_grid_sample, or
    "cuda-emulated" (the CUDA kernels run on the CPU, stn_ext.testing.cuda_emulation)."""
    name: str
    device: str  # where its tensors live

    @property
    def emulated(self) -> bool:
        return self.name == "cuda-emulated"

    @property
    def slow(self) -> bool:
        """Emulated or interpreted (Triton on CPU tensors): such backends run a reduced matrix
        (see conftest.py)."""
        return self.emulated or (self.name == "triton" and self.device == "cpu")

    def sample(self, input, theta, size=None, **config) -> torch.Tensor:
        """The public op of this backend."""
        if self.emulated:
            return cuda_emulation.affine_grid_sample(input, theta, size, **config)
        return stn_ext.affine_grid_sample(input, theta, size, backend=self.name, **config)

    def grid_sample(self, input, grid, mode="bilinear", padding_mode="zeros",
                    align_corners=False, *, fill_value=None) -> torch.Tensor:
        """This backend's general dense-grid op (stn_ext::grid_sample)."""
        if self.emulated:
            return cuda_emulation.grid_sample(input, grid, mode, padding_mode, align_corners,
                                              fill_value=fill_value)
        return stn_ext.grid_sample(input, grid, mode, padding_mode, align_corners,
                                   fill_value=fill_value, backend=self.name)

    def affine_sample(self, input, theta, size=None, **config) -> torch.Tensor:
        """stn_ext.affine_grid_sample on this backend; emulated: the general op's CUDA kernel
        (stn_ext::affine_sample) for every rank, mode and fill."""
        if self.emulated:
            return cuda_emulation.affine_sample(input, theta, size, **config)
        return stn_ext.affine_grid_sample(input, theta, size, backend=self.name, **config)

    @property
    def general_ops(self):
        """The namespace of this backend's general ops (grid_sample, affine_sample)."""
        if self.emulated:
            cuda_emulation.load()
            return getattr(torch.ops, cuda_emulation.NAMESPACE)
        return torch.ops.stn_ext

    @property
    def forward_op(self):
        """The registered forward op of this backend (schema of stn_ext::affine_grid_sample)."""
        return self._ops()[0]

    @property
    def backward_op(self):
        """The registered backward op (schema of stn_ext::affine_grid_sample_backward)."""
        return self._ops()[1]

    def _ops(self):
        if self.emulated:
            return cuda_emulation.forward_op(), cuda_emulation.backward_op()
        prefix = "triton_" if self.name == "triton" else ""
        if prefix:
            import stn_ext.triton_kernels  # noqa: F401  (registers the Triton ops)
        return (getattr(torch.ops.stn_ext, f"{prefix}affine_grid_sample").default,
                getattr(torch.ops.stn_ext, f"{prefix}affine_grid_sample_backward").default)


# The ATen ops (torch.profiler names) that, run around a backward kernel, are kernel launches of
# their own on a GPU: a fill of a gradient buffer or a reduction of partials, and casts.
FILL_AND_REDUCE_PASSES = ("aten::zero_", "aten::fill_", "aten::zeros", "aten::zeros_like",
                          "aten::sum")
CAST_PASSES = ("aten::to", "aten::_to_copy", "aten::copy_")


class Tol(NamedTuple):
    rtol: float
    atol: float


# Why these tolerances (the reference is PyTorch's F.affine_grid + F.grid_sample):
# - float64: both sides compute the same formulas; only the summation order of the affine map
#   and of the gradient reductions differs, which costs a few ulp (measured <= ~1e-14 on O(1)
#   data), so 1e-12 still catches any real difference.
# - float32: the source pixel coordinate is (grid + 1) * W / 2, so a rounding difference of a
#   few ulp in the grid becomes ~1e-6 px for the sizes used here, and bilinear interpolation
#   turns a coordinate error d into at most d * |x_i - x_j| (~8 for randn data): measured
#   worst ~5e-6, hence 2e-5 absolute plus 1e-5 relative.
# - float16 / bfloat16: the op computes in float32 and rounds the result once, so it is compared
#   with the float32 composition of the upcast inputs; the difference is the output rounding,
#   half an ulp (2^-11 for float16, 2^-8 for bfloat16, relative), plus the float32 error above.
#   Two ulp relative leaves room for a float32 difference flipping a rounding.
TOLERANCES = {
    torch.float64: Tol(rtol=1e-12, atol=1e-12),
    torch.float32: Tol(rtol=1e-5, atol=2e-5),
    torch.float16: Tol(rtol=2 * 2.0 ** -10, atol=2e-5),
    torch.bfloat16: Tol(rtol=2 * 2.0 ** -7, atol=2e-5),
}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision the reference runs in: float32 for half/bfloat16 (as the op does)."""
    return torch.float32 if dtype in REDUCED else dtype


def out_hw(input_shape: Sequence[int], size) -> Tuple[int, int]:
    return tuple(input_shape[2:]) if size is None else tuple(size[-2:])


def reference(input: torch.Tensor, theta: torch.Tensor, size=None, *, mode="bilinear",
              padding_mode="zeros", align_corners=False) -> torch.Tensor:
    """The spec: F.grid_sample(input, F.affine_grid(theta, (N, C, Ho, Wo))), differentiable,
    in float32 for half/bfloat16 tensors (upcast by .to, so gradients flow back to them)."""
    dtype = compute_dtype(input.dtype)
    input, theta = input.to(dtype), theta.to(dtype)
    n, c = input.shape[:2]
    with warnings.catch_warnings():
        # affine_grid warns about 1-pixel outputs with align_corners=True; that case is tested
        # on purpose (both place the single pixel at 0).
        warnings.simplefilter("ignore", UserWarning)
        grid = F.affine_grid(theta, [n, c, *out_hw(input.shape, size)],
                             align_corners=align_corners)
    return F.grid_sample(input, grid, mode=mode, padding_mode=padding_mode,
                         align_corners=align_corners)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype,
                 what: str = "", scale: Optional[float] = None, extra_atol: float = 0.0) -> None:
    """Compare with the tolerance of `dtype`. `scale` multiplies the absolute tolerance for
    results that are sums over many pixels (gradients): their rounding error is relative to the
    magnitude of the summands, not of the (possibly cancelling) sum. `extra_atol` adds a
    case-specific error bound (see test_extreme_thetas)."""
    tol = TOLERANCES[dtype]
    atol = (tol.atol + extra_atol) * (1.0 if scale is None else max(1.0, scale))
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    torch.testing.assert_close(actual.to(expected.device, torch.float64),
                               expected.to(torch.float64), rtol=tol.rtol, atol=atol,
                               msg=lambda m: f"{what} ({dtype}): {m}")


def max_abs(t: torch.Tensor) -> float:
    return float(t.detach().abs().max()) if t.numel() else 0.0


def assert_same_run(got: torch.Tensor, want: torch.Tensor, backend: Backend, what: str = ""):
    """Two runs of the same kernels on the same values: identical bits for the CPU kernels
    (deterministic by design); the CUDA and Triton kernels accumulate the input gradient with
    atomics in any order, so there only rounding may differ."""
    if backend.name == "cpu":
        assert torch.equal(got, want), f"{what}: not bitwise identical"
    else:
        assert_close(got, want, got.dtype, what, scale=max_abs(want))


def pixel_coords(theta: torch.Tensor, in_hw, size_hw, align_corners: bool) -> torch.Tensor:
    """Unnormalised source pixel coordinates (x, y) of every output pixel, in float64, as
    grid_sample computes them before padding: shape (N, Ho, Wo, 2)."""
    th = theta.detach().to("cpu", torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        grid = F.affine_grid(th, [th.shape[0], 1, *size_hw], align_corners=align_corners)
    wh = torch.tensor([in_hw[1], in_hw[0]], dtype=torch.float64)
    if align_corners:
        return (grid + 1) / 2 * (wh - 1)
    return ((grid + 1) * wh - 1) / 2


def kink_distance(theta, in_hw, size_hw, align_corners) -> float:
    """Distance of the nearest source coordinate from a multiple of 0.5 pixel. Every place where
    the op is discontinuous or not differentiable is there: bilinear cell edges and the clip of
    border padding at integers, nearest-rounding ties and reflection axes (at 0 / size-1 or
    -0.5 / size-0.5) at integers or half-integers."""
    coords = pixel_coords(theta, in_hw, size_hw, align_corners)
    # With align_corners, a 1-pixel axis maps every point to 0: constant, so no kink.
    moving = [d for d, size in ((0, in_hw[1]), (1, in_hw[0])) if size > 1 or not align_corners]
    coords = coords[..., moving]
    coords = coords[coords.abs() < 1e6]  # beyond that, multiples of 0.5 are not resolvable
    if coords.numel() == 0:
        return math.inf
    twice = 2 * coords
    return float((twice - twice.round()).abs().min()) / 2


def random_theta(n: int, in_hw, size_hw, align_corners: bool, *, seed: int,
                 dtype=torch.float64, center=None, spread: float = 0.3, margin: float = 1e-4,
                 device="cpu") -> torch.Tensor:
    """Random thetas around `center` (default: the identity; rotation, scale, shear and shift
    mixed), redrawn with a fixed seed sequence until no sample point lies within `margin` px of
    a kink (see kink_distance): there, rounding differences of ~1e-6 px may legitimately flip a
    nearest pick, and the finite differences of gradcheck (eps 1e-6 in theta moves points by
    ~1e-5 px) would straddle it."""
    center = torch.eye(2, 3) if center is None else center
    for attempt in range(200):
        gen = torch.Generator().manual_seed(seed * 1009 + attempt)
        theta = center.to(torch.float64) + spread * torch.randn(
            n, 2, 3, generator=gen, dtype=torch.float64)
        theta = theta.to(dtype)  # round first: the check must see the values the op gets
        if kink_distance(theta, in_hw, size_hw, align_corners) > margin:
            return theta.to(device)
    raise AssertionError("could not draw a theta away from kinks")


def seed_of(*parts) -> int:
    """A fixed seed per test case (stable across runs and processes, unlike hash())."""
    return zlib.crc32(repr(parts).encode()) % 100_003


def random_input(shape, *, seed: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device, dtype)


def triton_interpreter_problem():
    """Why Triton's interpreter cannot run our kernels in this environment, or None. Triton 3.6's
    interpreter cannot take a runtime loop bound under NumPy >= 2.4 (its int() of a 1-element
    array: triton-lang/triton#9171, fixed by #9172; Triton 3.8 has the fix)."""
    import stn_ext.triton_kernels as triton_kernels
    if not triton_kernels.INTERPRETED:
        return None

    @triton_kernels.triton.jit
    def loop_to(n):
        for _ in range(0, n):
            pass

    try:
        loop_to[(1,)](1)
    except Exception as error:  # noqa: BLE001 (whatever the interpreter raises)
        return f"this Triton's interpreter cannot loop to a runtime bound: {error!r}"
    return None


@contextlib.contextmanager
def deterministic_mode():
    """torch.use_deterministic_algorithms(True) within the block, then what it was."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def reproducibly(backend: Backend):
    """A context in which the backend's backward is deterministic: on backends whose default
    backward uses atomics (all but cpu), torch.use_deterministic_algorithms(True)."""
    return contextlib.nullcontext() if backend.name == "cpu" else deterministic_mode()


def repeated_runs(backend: Backend, run, times: int) -> list:
    """`times` results of run(), reproducibly(backend), in emulation with the blocks in another
    order each time."""
    runs = []
    with reproducibly(backend):
        for block_order_seed in range(times):
            order = (cuda_emulation.device_limits(block_order_seed=block_order_seed)
                     if backend.emulated else contextlib.nullcontext())
            with order:
                runs.append(run())
    return runs


def assert_bitwise_identical(runs: list) -> None:
    """Every run's tensors have the bits of the first run's."""
    for again in runs[1:]:
        for a, b in zip(runs[0], again):
            assert torch.equal(a, b)


def run(backend: Backend, input, theta, size=None, **config) -> torch.Tensor:
    return backend.sample(input, theta, size, **config)


def grads(fn, input, theta, grad_output):
    """(output, d input, d theta) of fn(input, theta) for the given upstream gradient;
    a gradient is None where that argument does not require grad."""
    out = fn(input, theta)
    wrt = [t for t in (input, theta) if t.requires_grad]
    got = torch.autograd.grad(out, wrt, grad_output.to(out.dtype)) if wrt else ()
    it = iter(got)
    return (out, next(it) if input.requires_grad else None,
            next(it) if theta.requires_grad else None)


def expected_memory_format(input: torch.Tensor) -> torch.memory_format:
    """The documented layout rule for outputs and input gradients."""
    if input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def make_case(backend: Backend, shape, size, config: dict, dtype, seed: int, *,
              requires_grad: bool = False, **theta_kwargs):
    """A random input and a kink-free random theta for one test case, on the backend's device."""
    x = random_input(shape, seed=seed, dtype=dtype, device=backend.device)
    theta = random_theta(shape[0], shape[2:], out_hw(shape, size), config["align_corners"],
                         seed=seed, dtype=dtype, device=backend.device, **theta_kwargs)
    return x.requires_grad_(requires_grad), theta.requires_grad_(requires_grad)


# (input shape, size): square and non-square, up- and down-sampling, batch 1 and larger,
# 1-pixel input and output edges.
SHAPES = {
    "square": ((2, 3, 8, 8), None),
    "up-nonsquare": ((2, 3, 5, 7), (9, 13)),
    "down-nonsquare": ((3, 2, 12, 10), (5, 4)),
    "batch1": ((1, 4, 6, 9), (7, 6)),
    "in-H1": ((2, 3, 1, 9), (4, 6)),
    "in-W1": ((2, 3, 7, 1), (5, 3)),
    "in-1x1": ((2, 3, 1, 1), (3, 4)),
    "out-H1": ((2, 3, 6, 7), (1, 5)),
    "out-W1": ((2, 3, 6, 7), (4, 1)),
    "out-1x1": ((2, 3, 6, 7), (1, 1)),
    "channels6": ((2, 6, 5, 7), (6, 5)),  # more channels than the CPU kernels' channel block
}
