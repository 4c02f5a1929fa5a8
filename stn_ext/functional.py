"""The public op: stn_ext.affine_grid_sample, its argument checks and backend choice."""
import importlib.util
import os
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .ops import AUTOCAST_DEVICE_TYPES

MODES = ("bilinear", "nearest")
PADDING_MODES = ("zeros", "border", "reflection")
BACKENDS = ("auto", "cpu", "cuda", "triton", "torch")
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

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


def _output_size(input: torch.Tensor, size) -> Tuple[int, int]:
    if size is None:
        return input.shape[2], input.shape[3]
    if not isinstance(size, (tuple, list, torch.Size)) or len(size) not in (2, 4):
        raise ValueError(f"size must be None, (Ho, Wo) or (N, C, Ho, Wo), got {size!r}")
    if any(isinstance(s, bool) or not isinstance(s, (int, torch.SymInt)) for s in size):
        raise TypeError(f"size must hold integers, got {size!r}")
    if any(s < 0 for s in size):
        raise ValueError(f"size must be non-negative, got {tuple(size)}")
    if len(size) == 4 and (size[0] != input.shape[0] or size[1] != input.shape[1]):
        raise ValueError(f"size {tuple(size)} must have the input's N and C "
                         f"({input.shape[0]}, {input.shape[1]})")
    return size[-2], size[-1]


def _check_tensors(input, theta) -> None:
    for name, t in (("input", input), ("theta", theta)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if input.dim() != 4:
        raise ValueError(f"input must be 4-D (N, C, H, W), got shape {tuple(input.shape)}")
    if input.shape[2] == 0 or input.shape[3] == 0:
        raise ValueError(f"input must have non-empty spatial dimensions, got shape "
                         f"{tuple(input.shape)}")
    if theta.dim() != 3 or theta.shape[1:] != (2, 3):
        raise ValueError(f"theta must have shape (N, 2, 3), got {tuple(theta.shape)}")
    if theta.shape[0] != input.shape[0]:
        raise ValueError(f"theta has batch {theta.shape[0]} but input has batch {input.shape[0]}")
    if input.dtype not in DTYPES:
        raise TypeError(f"input must be float16, bfloat16, float32 or float64, got {input.dtype}")
    if theta.dtype != input.dtype:
        raise TypeError(f"theta must have the dtype of input ({input.dtype}), got {theta.dtype}")
    if theta.device != input.device:
        raise ValueError(f"theta is on {theta.device} but input is on {input.device}")


def _check_options(mode, padding_mode, align_corners) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if not isinstance(align_corners, bool):
        raise TypeError(f"align_corners must be a bool, got {align_corners!r}")


def checked_arguments(input, theta, size, mode, padding_mode,
                      align_corners) -> Tuple[torch.Tensor, torch.Tensor, int, int]:
    """(input, theta, out_h, out_w) as every backend's op takes them, after autocast; raises a
    clear error for bad arguments before any kernel runs."""
    if (isinstance(input, torch.Tensor) and isinstance(theta, torch.Tensor)
            and input.device.type in AUTOCAST_DEVICE_TYPES
            and torch.is_autocast_enabled(input.device.type)):
        # As F.grid_sample under autocast: sample in float32, whatever precision theta came in.
        input, theta = _float32_if_reduced(input), _float32_if_reduced(theta)
    _check_tensors(input, theta)
    _check_options(mode, padding_mode, align_corners)
    out_h, out_w = _output_size(input, size)
    return input, theta, out_h, out_w


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


def affine_grid_sample(input: torch.Tensor, theta: torch.Tensor,
                       size: Optional[Union[Sequence[int], torch.Size]] = None, *,
                       mode: str = "bilinear", padding_mode: str = "zeros",
                       align_corners: bool = False, backend: str = "auto") -> torch.Tensor:
    """Warp ``input`` by the affine maps ``theta`` in one fused op.

    Equals ``F.grid_sample(input, F.affine_grid(theta, (N, C, Ho, Wo), align_corners), mode,
    padding_mode, align_corners)`` without building the grid, in the forward and backward passes.

    Args:
        input: (N, C, H, W) floating tensor, any strides (channels_last stays channels_last).
        theta: (N, 2, 3) tensor of the input's dtype and device, mapping output coordinates in
            [-1, 1] to input coordinates, as for ``F.affine_grid``.
        size: output (Ho, Wo), or the (N, C, Ho, Wo) that ``F.affine_grid`` takes; None keeps
            the input's H, W.
        mode: "bilinear" or "nearest".
        padding_mode: "zeros", "border" or "reflection".
        align_corners: as in ``F.affine_grid``/``F.grid_sample``.
        backend: "auto" (the compiled kernel of the tensors' device), "cpu", "cuda", "triton",
            or "torch" (PyTorch's own two ops, for reference).
    """
    input, theta, out_h, out_w = checked_arguments(input, theta, size, mode, padding_mode,
                                                   align_corners)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    backend = _resolve_backend(backend, input.device)
    if backend == "torch":
        grid = F.affine_grid(theta, [input.shape[0], input.shape[1], out_h, out_w],
                             align_corners=align_corners)
        return F.grid_sample(input, grid, mode=mode, padding_mode=padding_mode,
                             align_corners=align_corners)
    if backend == "triton":
        from . import triton_kernels
        return triton_kernels.affine_grid_sample(input, theta, out_h, out_w, mode,
                                                 padding_mode, align_corners)
    return torch.ops.stn_ext.affine_grid_sample(input, theta, out_h, out_w, mode, padding_mode,
                                                align_corners)
