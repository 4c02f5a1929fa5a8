"""The public op: stn_ext.affine_grid_sample, its argument checks and backend choice."""
import importlib.util
import operator
import os
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .ops import AUTOCAST_DEVICE_TYPES

MODES = ("bilinear", "nearest", "bicubic")  # bilinear is trilinear on 5-D input, as in PyTorch
PADDING_MODES = ("zeros", "border", "reflection")
BACKENDS = ("auto", "cpu", "cuda", "triton", "torch")
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# What each op runs on. The fused 2-D affine op (stn_ext::affine_grid_sample) covers modes
# FUSED_MODES on 4-D input without a fill value on every backend; everything else goes through
# the general ops (stn_ext::grid_sample, stn_ext::affine_sample), which have CPU and CUDA kernels
# for every combination. Triton runs both on 4-D input in modes FUSED_MODES, fill value or not
# (stn_ext::triton_grid_sample, ::triton_affine_sample), and has no kernel for the rest yet.
FUSED_MODES = ("bilinear", "nearest")
GENERAL_OP_BACKENDS = ("cpu", "cuda", "torch")

# Fixed for the life of the process; read once so that torch.compile sees plain constants.
_HAS_CUDA_KERNELS = torch._C._dispatch_has_kernel_for_dispatch_key(
    "stn_ext::affine_grid_sample", "CUDA")
_HAS_TRITON = importlib.util.find_spec("triton") is not None


def _triton_interpreted() -> bool:
    """TRITON_INTERPRET=1 runs Triton kernels on CPU tensors (read at call time, as Triton does)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def available_backends() -> list:
    """The backends that can run in this process, best first for CUDA tensors."""
    backends = []
    if torch.cuda.is_available() and _HAS_CUDA_KERNELS:
        backends.append("cuda")
    if _HAS_TRITON and (torch.cuda.is_available() or _triton_interpreted()):
        backends.append("triton")
    backends += ["cpu", "torch"]
    return backends


def _float32_if_reduced(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _size_entry(s, size):
    """An output size entry as F.affine_grid takes it: int, NumPy integer, 0-d integer tensor or
    SymInt."""
    if isinstance(s, bool):
        raise TypeError(f"size must hold integers, got {size!r}")
    if isinstance(s, (int, torch.SymInt)):  # as they come: torch.compile traces them
        return s
    if isinstance(s, torch.Tensor):
        if s.dim() == 0 and not s.is_floating_point() and not s.is_complex() \
                and s.dtype != torch.bool:
            return int(s)
        raise TypeError(f"size must hold integers, got {size!r}")
    try:
        return operator.index(s)  # NumPy integers
    except TypeError:
        raise TypeError(f"size must hold integers, got {size!r}") from None


def _output_size(input: torch.Tensor, size) -> tuple:
    """The output's spatial size: (Ho, Wo) for 4-D input, (Do, Ho, Wo) for 5-D."""
    dims = input.dim() - 2
    if size is None:
        return tuple(input.shape[2:])
    names = "(Ho, Wo) or (N, C, Ho, Wo)" if dims == 2 else "(Do, Ho, Wo) or (N, C, Do, Ho, Wo)"
    if not isinstance(size, (tuple, list, torch.Size)) or len(size) not in (dims, dims + 2):
        raise ValueError(f"size must be None, {names} for {input.dim()}-D input, got {size!r}")
    size = tuple(_size_entry(s, size) for s in size)
    if any(s < 0 for s in size):
        raise ValueError(f"size must be non-negative, got {size}")
    if len(size) == dims + 2 and (size[0] != input.shape[0] or size[1] != input.shape[1]):
        raise ValueError(f"size {size} must have the input's N and C "
                         f"({input.shape[0]}, {input.shape[1]})")
    return size[-dims:]


def _check_input(input) -> None:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() not in (4, 5):
        raise ValueError(f"input must be 4-D (N, C, H, W) or 5-D (N, C, D, H, W), got shape "
                         f"{tuple(input.shape)}")
    if any(s == 0 for s in input.shape[2:]):
        raise ValueError(f"input must have non-empty spatial dimensions, got shape "
                         f"{tuple(input.shape)}")
    if input.dtype not in DTYPES:
        raise TypeError(f"input must be float16, bfloat16, float32 or float64, got {input.dtype}")


def _check_coordinates(name: str, coords, input: torch.Tensor, shape: str, ok: bool) -> None:
    """grid or theta: a tensor of `shape` (ok says whether it has it) matching input."""
    if not isinstance(coords, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(coords).__name__}")
    if not ok:
        raise ValueError(f"{name} must have shape {shape} for {input.dim()}-D input, got "
                         f"{tuple(coords.shape)}")
    if coords.shape[0] != input.shape[0]:
        raise ValueError(f"{name} has batch {coords.shape[0]} but input has batch "
                         f"{input.shape[0]}")
    if coords.dtype != input.dtype:
        raise TypeError(f"{name} must have the dtype of input ({input.dtype}), got {coords.dtype}")
    if coords.device != input.device:
        raise ValueError(f"{name} is on {coords.device} but input is on {input.device}")


def _check_theta(input, theta) -> None:
    dims = input.dim() - 2
    ok = isinstance(theta, torch.Tensor) and theta.dim() == 3 and \
        tuple(theta.shape[1:]) == (dims, dims + 1)
    _check_coordinates("theta", theta, input, f"(N, {dims}, {dims + 1})", ok)


def _check_grid(input, grid) -> None:
    dims = input.dim() - 2
    ok = isinstance(grid, torch.Tensor) and grid.dim() == input.dim() and grid.shape[-1] == dims
    _check_coordinates("grid", grid, input,
                       "(N, Ho, Wo, 2)" if dims == 2 else "(N, Do, Ho, Wo, 3)", ok)


def _check_options(input, mode, padding_mode, align_corners) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if not isinstance(align_corners, bool):
        raise TypeError(f"align_corners must be a bool, got {align_corners!r}")
    if mode == "bicubic" and input.dim() != 4:
        raise NotImplementedError(f"mode='bicubic' takes 4-D input (as in PyTorch), got "
                                  f"{input.dim()}-D")


def _fill_tensor(fill_value, input: torch.Tensor, padding_mode: str) -> Optional[torch.Tensor]:
    """fill_value as the general ops take it: None, or a 1-D tensor of C values of the input's
    dtype and device."""
    if fill_value is None:
        return None
    if padding_mode != "zeros":
        raise ValueError(f"fill_value needs padding_mode='zeros' (border and reflection never "
                         f"read outside the input), got padding_mode={padding_mode!r}")
    channels = input.shape[1]
    if isinstance(fill_value, torch.Tensor):
        if fill_value.device != input.device:
            raise ValueError(f"fill_value is on {fill_value.device} but input is on "
                             f"{input.device}")
        if fill_value.requires_grad and torch.is_grad_enabled():
            raise ValueError("fill_value does not take gradients: pass it detached")
        fill = fill_value
    else:
        numbers = isinstance(fill_value, (int, float)) or (
            isinstance(fill_value, Sequence) and not isinstance(fill_value, (str, bytes))
            and all(isinstance(v, (int, float)) for v in fill_value))
        if not numbers or isinstance(fill_value, bool) or (
                isinstance(fill_value, Sequence) and any(isinstance(v, bool) for v in fill_value)):
            raise TypeError(f"fill_value must be None, a number, a sequence of C numbers or a "
                            f"tensor, got {fill_value!r}")
        fill = torch.tensor(fill_value, dtype=torch.float64)
    if fill.dim() == 0:
        fill = fill.expand(channels)
    if fill.dim() != 1 or fill.shape[0] != channels:
        raise ValueError(f"fill_value must be one number or one per channel ({channels}), got "
                         f"shape {tuple(fill.shape)}")
    return fill.to(input.device, input.dtype)


def _autocast(input, coords):
    """As F.grid_sample under autocast: sample in float32, whatever precision came in."""
    if (isinstance(input, torch.Tensor) and isinstance(coords, torch.Tensor)
            and input.device.type in AUTOCAST_DEVICE_TYPES
            and torch.is_autocast_enabled(input.device.type)):
        return _float32_if_reduced(input), _float32_if_reduced(coords)
    return input, coords


def checked_grid_arguments(input, grid, mode, padding_mode, align_corners, fill_value):
    """(input, grid, fill) as the general op stn_ext::grid_sample takes them, after autocast;
    raises a clear error for bad arguments before any kernel runs."""
    input, grid = _autocast(input, grid)
    _check_input(input)
    _check_grid(input, grid)
    _check_options(input, mode, padding_mode, align_corners)
    return input, grid, _fill_tensor(fill_value, input, padding_mode)


def checked_affine_arguments(input, theta, size, mode, padding_mode, align_corners, fill_value):
    """(input, theta, out_size, fill) as the general op stn_ext::affine_sample takes them, after
    autocast; raises a clear error for bad arguments before any kernel runs."""
    input, theta = _autocast(input, theta)
    _check_input(input)
    _check_theta(input, theta)
    _check_options(input, mode, padding_mode, align_corners)
    return input, theta, _output_size(input, size), _fill_tensor(fill_value, input, padding_mode)


def checked_arguments(input, theta, size, mode, padding_mode,
                      align_corners) -> Tuple[torch.Tensor, torch.Tensor, int, int]:
    """(input, theta, out_h, out_w) as every backend's fused op (stn_ext::affine_grid_sample)
    takes them, after autocast; raises a clear error for bad arguments before any kernel runs."""
    input, theta, out_size, _ = checked_affine_arguments(input, theta, size, mode, padding_mode,
                                                         align_corners, None)
    if not _is_fused(input, mode, None):
        raise NotImplementedError(f"the fused affine_grid_sample op takes 4-D input and mode "
                                  f"'bilinear' or 'nearest', got {input.dim()}-D input and "
                                  f"mode {mode!r}")
    return (input, theta, *out_size)


def _is_fused(input: torch.Tensor, mode: str, fill: Optional[torch.Tensor]) -> bool:
    return input.dim() == 4 and mode in FUSED_MODES and fill is None


def _triton_has_kernel(input: torch.Tensor, mode: str) -> bool:
    """Whether the Triton backend runs this general-op combination (any fill value)."""
    return input.dim() == 4 and mode in FUSED_MODES


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        if device.type == "cpu":
            return "cpu"
        if device.type == "cuda":
            return "cuda" if _HAS_CUDA_KERNELS else "triton" if _HAS_TRITON else "torch"
        return "torch"
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend='cpu' needs CPU tensors, got tensors on {device}")
    if backend == "cuda":
        if not _HAS_CUDA_KERNELS:
            raise RuntimeError("backend='cuda' is unavailable: stn_ext was built without its CUDA "
                               "kernels (reinstall with a CUDA toolkit and CUDA_HOME set)")
        if device.type != "cuda":
            raise ValueError(f"backend='cuda' needs CUDA tensors, got tensors on {device}")
    if backend == "triton":
        if not _HAS_TRITON:
            raise RuntimeError("backend='triton' is unavailable: Triton is not installed")
        if device.type != "cuda" and not (device.type == "cpu" and _triton_interpreted()):
            raise ValueError(f"backend='triton' needs CUDA tensors (or CPU tensors with "
                             f"TRITON_INTERPRET=1), got tensors on {device}")
    return backend


def _checked_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _resolve_general_backend(op: str, backend: str, device: torch.device,
                             combination: str, triton_has_kernel: bool = False) -> str:
    """The backend of a general op (stn_ext::grid_sample, stn_ext::affine_sample) call;
    triton_has_kernel: whether Triton runs this combination."""
    if backend == "triton" and triton_has_kernel:
        return _resolve_backend(backend, device)
    if backend not in GENERAL_OP_BACKENDS + ("auto",):
        raise NotImplementedError(
            f"stn_ext.{op}: backend {backend!r} has no kernel for {combination} yet; it runs "
            f"on backends {GENERAL_OP_BACKENDS} (see the README's backend table)")
    if backend == "auto" and device.type == "cuda":
        return "cuda" if _HAS_CUDA_KERNELS else "torch"
    return _resolve_backend(backend, device)


def _combination(input: torch.Tensor, mode: str, fill: Optional[torch.Tensor]) -> str:
    return (f"{input.dim()}-D input, mode {mode!r}"
            + (", fill_value" if fill is not None else ""))


def _torch_grid_sample(input, grid, mode, padding_mode, align_corners, fill):
    """PyTorch's own op; a fill value as F.grid_sample(input - fill, grid) + fill, which is what
    reading the fill outside the image amounts to (the weights sum to one)."""
    if fill is None:
        return F.grid_sample(input, grid, mode=mode, padding_mode=padding_mode,
                             align_corners=align_corners)
    f = fill.view(1, -1, *([1] * (input.dim() - 2)))
    return F.grid_sample(input - f, grid, mode=mode, padding_mode="zeros",
                         align_corners=align_corners) + f


def grid_sample(input: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear",
                padding_mode: str = "zeros", align_corners: bool = False, *,
                fill_value=None, backend: str = "auto") -> torch.Tensor:
    """Sample ``input`` at the points of ``grid``: ``F.grid_sample`` with the same arguments
    and semantics, a deterministic backward, and an optional constant fill.

    Args:
        input: (N, C, H, W) or (N, C, D, H, W) floating tensor, any strides (channels_last and
            channels_last_3d stay so).
        grid: (N, Ho, Wo, 2) or (N, Do, Ho, Wo, 3) normalised (x, y[, z]) sample coordinates in
            [-1, 1], of the input's dtype and device.
        mode: "bilinear" (trilinear on 5-D input), "nearest" or "bicubic" (4-D input).
        padding_mode: "zeros", "border" or "reflection".
        align_corners: as in ``F.grid_sample``.
        fill_value: None, a number, or one number per channel (sequence or tensor): taps outside
            the input read it instead of zero (padding_mode "zeros" only). Not differentiated.
        backend: "auto" (the compiled kernel of the tensors' device), "cpu", "cuda",
            "triton" (4-D input, bilinear or nearest; other combinations raise
            NotImplementedError), or "torch" (PyTorch's op). The CUDA and Triton backwards are
            deterministic under ``torch.use_deterministic_algorithms(True)`` (no atomics).
    """
    input, grid, fill = checked_grid_arguments(input, grid, mode, padding_mode, align_corners,
                                               fill_value)
    _checked_backend(backend)
    backend = _resolve_general_backend("grid_sample", backend, input.device,
                                       _combination(input, mode, fill),
                                       triton_has_kernel=_triton_has_kernel(input, mode))
    if backend == "torch":
        return _torch_grid_sample(input, grid, mode, padding_mode, align_corners, fill)
    if backend == "triton":
        from . import triton_kernels
        return triton_kernels.grid_sample(input, grid, mode, padding_mode, align_corners, fill)
    return torch.ops.stn_ext.grid_sample(input, grid, mode, padding_mode, align_corners, fill)


def affine_grid_sample(input: torch.Tensor, theta: torch.Tensor,
                       size: Optional[Union[Sequence[int], torch.Size]] = None, *,
                       mode: str = "bilinear", padding_mode: str = "zeros",
                       align_corners: bool = False, fill_value=None,
                       backend: str = "auto") -> torch.Tensor:
    """Warp ``input`` by the affine maps ``theta`` in one fused op.

    Equals ``F.grid_sample(input, F.affine_grid(theta, (N, C, *size), align_corners), mode,
    padding_mode, align_corners)`` without building the grid, in the forward and backward passes.

    Args:
        input: (N, C, H, W) or (N, C, D, H, W) floating tensor, any strides (channels_last and
            channels_last_3d stay so).
        theta: (N, 2, 3) for 4-D input, (N, 3, 4) for 5-D, of the input's dtype and device,
            mapping output coordinates in [-1, 1] to input coordinates, as for ``F.affine_grid``.
        size: output (Ho, Wo) / (Do, Ho, Wo), or the 4-D / 5-D size ``F.affine_grid`` takes
            (integers: int, NumPy integer, 0-d integer tensor); None keeps the input's size.
        mode: "bilinear" (trilinear on 5-D input), "nearest" or "bicubic" (4-D input).
        padding_mode: "zeros", "border" or "reflection".
        align_corners: as in ``F.affine_grid``/``F.grid_sample``.
        fill_value: as in :func:`grid_sample`.
        backend: "auto" (the compiled kernel of the tensors' device), "cpu", "cuda", "triton",
            or "torch" (PyTorch's own two ops, for reference). 4-D bilinear/nearest sampling
            runs on all of them; the rest (5-D, bicubic) on all but "triton" so far.
    """
    input, theta, out_size, fill = checked_affine_arguments(input, theta, size, mode,
                                                            padding_mode, align_corners, fill_value)
    _checked_backend(backend)
    if _is_fused(input, mode, fill):
        backend = _resolve_backend(backend, input.device)
    else:
        backend = _resolve_general_backend("affine_grid_sample", backend, input.device,
                                           _combination(input, mode, fill),
                                           triton_has_kernel=_triton_has_kernel(input, mode))
    if backend == "torch":
        grid = F.affine_grid(theta, [*input.shape[:2], *out_size], align_corners=align_corners)
        return _torch_grid_sample(input, grid, mode, padding_mode, align_corners, fill)
    if backend == "triton" and not _is_fused(input, mode, fill):
        from . import triton_kernels
        return triton_kernels.affine_sample(input, theta, out_size, mode, padding_mode,
                                            align_corners, fill)
    if not _is_fused(input, mode, fill):
        return torch.ops.stn_ext.affine_sample(input, theta, list(out_size), mode, padding_mode,
                                               align_corners, fill)
    if backend == "triton":
        from . import triton_kernels
        return triton_kernels.affine_grid_sample(input, theta, *out_size, mode, padding_mode,
                                                 align_corners)
    return torch.ops.stn_ext.affine_grid_sample(input, theta, *out_size, mode, padding_mode,
                                                align_corners)
