"""Bad arguments raise a clear exception naming the argument, before any kernel runs, through
the public API and through the raw torch.ops (never a crash or a silently wrong result)."""
import numpy as np
import pytest
import torch

import stn_ext

OP = torch.ops.stn_ext.affine_grid_sample
BACKWARD = torch.ops.stn_ext.affine_grid_sample_backward
CUDA_KERNELS = torch._C._dispatch_has_kernel_for_dispatch_key("stn_ext::affine_grid_sample",
                                                              "CUDA")


def _x(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*(shape or (2, 3, 5, 6))).to(device, dtype)


def _theta(n=2, dtype=torch.float32, device="cpu"):
    return torch.eye(2, 3).repeat(n, 1, 1).to(device, dtype)


# id: (arguments of stn_ext.affine_grid_sample, exception type, message regex)
API_CASES = {
    "input-3d": (lambda: (_x(3, 5, 6), _theta(3)), {}, ValueError, r"input must be 4-D"),
    "input-6d": (lambda: (_x(2, 3, 4, 5, 6, 2), _theta()), {}, ValueError,
                 r"input must be 4-D \(N, C, H, W\) or 5-D"),
    "input-5d-theta-2x3": (lambda: (_x(2, 3, 4, 5, 6), _theta()), {}, ValueError,
                           r"theta must have shape \(N, 3, 4\) for 5-D input"),
    "input-not-tensor": (lambda: (np.zeros((2, 3, 5, 6), np.float32), _theta()), {}, TypeError,
                         r"input must be a torch\.Tensor"),
    "theta-not-tensor": (lambda: (_x(), [[1.0, 0, 0], [0, 1.0, 0]]), {}, TypeError,
                         r"theta must be a torch\.Tensor"),
    "theta-2d": (lambda: (_x(), _theta()[0]), {}, ValueError, r"theta must have shape \(N, 2, 3\)"),
    "theta-3x2": (lambda: (_x(), _theta().transpose(1, 2)), {}, ValueError,
                  r"theta must have shape \(N, 2, 3\)"),
    "theta-3x3": (lambda: (_x(), torch.eye(3).repeat(2, 1, 1)), {}, ValueError,
                  r"theta must have shape \(N, 2, 3\)"),
    "batch-mismatch": (lambda: (_x(), _theta(3)), {}, ValueError,
                       r"theta has batch 3 but input has batch 2"),
    "input-int64": (lambda: (_x(dtype=torch.int64), _theta(dtype=torch.int64)), {}, TypeError,
                    r"input must be float16, bfloat16, float32 or float64, got torch\.int64"),
    "input-uint8": (lambda: (_x(dtype=torch.uint8), _theta()), {}, TypeError,
                    r"input must be .*got torch\.uint8"),
    "input-bool": (lambda: (_x(dtype=torch.bool), _theta(dtype=torch.bool)), {}, TypeError,
                   r"input must be .*got torch\.bool"),
    "input-complex": (lambda: (_x(dtype=torch.complex64), _theta()), {}, TypeError,
                      r"input must be .*got torch\.complex64"),
    "theta-int": (lambda: (_x(), _theta(dtype=torch.int32)), {}, TypeError,
                  r"theta must have the dtype of input \(torch\.float32\), got torch\.int32"),
    "theta-bool": (lambda: (_x(), _theta(dtype=torch.bool)), {}, TypeError,
                   r"theta must have the dtype of input .*got torch\.bool"),
    "theta-float64": (lambda: (_x(), _theta(dtype=torch.float64)), {}, TypeError,
                      r"theta must have the dtype of input \(torch\.float32\), got torch\.float64"),
    "mode-area": (lambda: (_x(), _theta()), dict(mode="area"), ValueError,
                  r"mode must be one of \('bilinear', 'nearest', 'bicubic'\), got 'area'"),
    "mode-case": (lambda: (_x(), _theta()), dict(mode="Bilinear"), ValueError, r"mode must be"),
    "padding-mode": (lambda: (_x(), _theta()), dict(padding_mode="constant"), ValueError,
                     r"padding_mode must be one of .*got 'constant'"),
    "backend-unknown": (lambda: (_x(), _theta()), dict(backend="gpu"), ValueError,
                        r"backend must be one of .*got 'gpu'"),
    "align-corners-int": (lambda: (_x(), _theta()), dict(align_corners=1), TypeError,
                          r"align_corners must be a bool, got 1"),
    "align-corners-none": (lambda: (_x(), _theta()), dict(align_corners=None), TypeError,
                           r"align_corners must be a bool"),
    "align-corners-str": (lambda: (_x(), _theta()), dict(align_corners="True"), TypeError,
                          r"align_corners must be a bool"),
    "size-len1": (lambda: (_x(), _theta(), (4,)), {}, ValueError,
                  r"size must be None, \(Ho, Wo\) or \(N, C, Ho, Wo\)"),
    "size-len3": (lambda: (_x(), _theta(), (3, 4, 4)), {}, ValueError, r"size must be None"),
    "size-int": (lambda: (_x(), _theta(), 4), {}, ValueError, r"size must be None"),
    "size-float": (lambda: (_x(), _theta(), (4.0, 5)), {}, TypeError,
                   r"size must hold integers"),
    "size-bool": (lambda: (_x(), _theta(), (True, 5)), {}, TypeError, r"size must hold integers"),
    "size-negative": (lambda: (_x(), _theta(), (-1, 4)), {}, ValueError,
                      r"size must be non-negative, got \(-1, 4\)"),
    "size4-negative": (lambda: (_x(), _theta(), torch.Size([2, 3, 4, -2])), {}, ValueError,
                       r"size must be non-negative"),
    "size4-batch": (lambda: (_x(), _theta(), torch.Size([3, 3, 4, 4])), {}, ValueError,
                    r"size \(3, 3, 4, 4\) must have the input's N and C \(2, 3\)"),
    "size4-channels": (lambda: (_x(), _theta(), torch.Size([2, 1, 4, 4])), {}, ValueError,
                       r"size \(2, 1, 4, 4\) must have the input's N and C"),
    "input-H0": (lambda: (_x(2, 3, 0, 6), _theta()), {}, ValueError,
                 r"input must have non-empty spatial dimensions"),
    "input-W0": (lambda: (_x(2, 3, 5, 0), _theta()), dict(backend="cpu"), ValueError,
                 r"input must have non-empty spatial dimensions"),
    "theta-other-device": (lambda: (_x(), _theta(device="meta")), {}, ValueError,
                           r"theta is on meta but input is on cpu"),
    "input-other-device": (lambda: (_x(device="meta"), _theta()), {}, ValueError,
                           r"theta is on cpu but input is on meta"),
    "backend-cpu-meta": (lambda: (_x(device="meta"), _theta(device="meta")),
                         dict(backend="cpu"), ValueError,
                         r"backend='cpu' needs CPU tensors, got tensors on meta"),
    # Without CUDA kernels in the build the backend is unavailable; with them, CPU tensors are
    # the wrong device. Either way the message names the backend.
    "backend-cuda-cpu-tensors": (lambda: (_x(), _theta()), dict(backend="cuda"),
                                 ValueError if CUDA_KERNELS else RuntimeError,
                                 r"backend='cuda' needs CUDA tensors, got tensors on cpu"
                                 if CUDA_KERNELS else r"backend='cuda' is unavailable"),
}


@pytest.mark.parametrize("make,kwargs,exc,match", API_CASES.values(), ids=API_CASES.keys())
def test_public_api_rejects(make, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        stn_ext.affine_grid_sample(*make(), **kwargs)


def test_bad_input_fails_before_any_work():
    """The check runs first: a bad call neither builds an autograd graph nor half-runs."""
    x = _x().requires_grad_()
    with pytest.raises(TypeError, match="align_corners"):
        stn_ext.affine_grid_sample(x, _theta(), align_corners=0)
    assert x.grad is None


def test_empty_spatial_dims_are_refused_like_pytorch():
    """PyTorch refuses an input with an empty spatial dim too: the same inputs, both refuse."""
    x, theta = _x(2, 3, 0, 6), _theta()
    with pytest.raises((ValueError, RuntimeError)):
        torch.nn.functional.grid_sample(
            x, torch.nn.functional.affine_grid(theta, [2, 3, 4, 4], align_corners=False),
            align_corners=False)
    with pytest.raises(ValueError, match="input must have non-empty spatial dimensions"):
        stn_ext.affine_grid_sample(x, theta, (4, 4))


@pytest.mark.cuda
@pytest.mark.parametrize("case", ["theta-cpu", "input-cpu", "backend-cpu"])
def test_cuda_device_mismatch(case):
    x, theta = _x(device="cuda"), _theta(device="cuda")
    backend = "auto"
    if case == "theta-cpu":
        theta, match = theta.cpu(), r"theta is on cpu but input is on cuda"
    elif case == "input-cpu":
        x, match = x.cpu(), r"theta is on cuda:0 but input is on cpu"
    else:
        backend, match = "cpu", r"backend='cpu' needs CPU tensors"
    with pytest.raises(ValueError, match=match):
        stn_ext.affine_grid_sample(x, theta, backend=backend)


# --- the raw ops: the C++ checks keep direct callers safe ----------------------------------------

def _op_args(x=None, theta=None, out_h=4, out_w=4, mode="bilinear", padding_mode="zeros"):
    return (_x() if x is None else x, _theta() if theta is None else theta, out_h, out_w, mode,
            padding_mode, False)


RAW_CASES = {
    "input-3d": (lambda: _op_args(x=_x(3, 5, 6)), ValueError, r"input must be 4-D"),
    "input-H0": (lambda: _op_args(x=_x(2, 3, 0, 6)), ValueError,
                 r"input must have non-empty spatial dimensions"),
    "theta-2d": (lambda: _op_args(theta=_theta()[0]), ValueError,
                 r"theta must have shape \(N, 2, 3\)"),
    "theta-3x2": (lambda: _op_args(theta=_theta().transpose(1, 2)), ValueError,
                  r"theta must have shape \(N, 2, 3\)"),
    "batch-mismatch": (lambda: _op_args(theta=_theta(1)), ValueError,
                       r"theta has batch 1 but input has batch 2"),
    "input-int": (lambda: _op_args(x=_x(dtype=torch.int64), theta=_theta(dtype=torch.int64)),
                  TypeError, r"input must be a floating tensor"),
    "input-bool": (lambda: _op_args(x=_x(dtype=torch.bool), theta=_theta(dtype=torch.bool)),
                   TypeError, r"input must be a floating tensor"),
    "theta-dtype": (lambda: _op_args(theta=_theta(dtype=torch.float64)), TypeError,
                    r"theta must have the dtype of input"),
    "out-negative": (lambda: _op_args(out_h=-1), ValueError,
                     r"out_size must be non-negative, got \[-1, 4\]"),
    "mode": (lambda: _op_args(mode="area"), ValueError, r"mode must be 'bilinear', 'nearest' or"),
    "mode-bicubic": (lambda: _op_args(mode="bicubic"), ValueError,
                     r"affine_grid_sample takes mode 'bilinear' or 'nearest'"),
    "padding-mode": (lambda: _op_args(padding_mode="circular"), ValueError,
                     r"padding_mode must be 'zeros', 'border' or 'reflection'"),
    # Another device (meta stands in for a second device here): the dispatcher must not pick
    # the fake kernel and hand back an uninitialised tensor.
    "theta-other-device": (lambda: _op_args(theta=_theta(device="meta")),
                           (ValueError, RuntimeError), r"theta .*(device|meta)"),
}


@pytest.mark.parametrize("make,exc,match", RAW_CASES.values(), ids=RAW_CASES.keys())
def test_raw_op_rejects(make, exc, match):
    with pytest.raises(exc, match=match):
        OP(*make())


def _backward_args(grad_output=None, x=None, theta=None, mask=(True, True)):
    return (torch.randn(2, 3, 4, 4) if grad_output is None else grad_output,
            _x() if x is None else x, _theta() if theta is None else theta,
            "bilinear", "zeros", False, list(mask))


RAW_BACKWARD_CASES = {
    "grad-output-3d": (lambda: _backward_args(grad_output=torch.randn(3, 4, 4)), ValueError,
                       r"grad_output must have shape \(N, C, Ho, Wo\)"),
    "grad-output-channels": (lambda: _backward_args(grad_output=torch.randn(2, 1, 4, 4)),
                             ValueError, r"grad_output must have shape \(N, C, Ho, Wo\)"),
    "grad-output-batch": (lambda: _backward_args(grad_output=torch.randn(1, 3, 4, 4)),
                          ValueError, r"grad_output must have shape"),
    "grad-output-dtype": (lambda: _backward_args(grad_output=torch.randn(2, 3, 4, 4).double()),
                          TypeError, r"grad_output must have the dtype of input"),
    "input-3d": (lambda: _backward_args(x=_x(3, 5, 6)), ValueError, r"input must be 4-D"),
    "theta-shape": (lambda: _backward_args(theta=_theta()[:, :, :2]), ValueError,
                    r"theta must have shape \(N, 2, 3\)"),
    "mask-length": (lambda: _backward_args(mask=(True, True, True)), RuntimeError,
                    r"size of 2|fixed-size array"),
    "grad-output-other-device": (lambda: _backward_args(grad_output=torch.randn(2, 3, 4, 4,
                                                                                device="meta")),
                                 (ValueError, RuntimeError), r"grad_output .*(device|meta)"),
}


@pytest.mark.parametrize("make,exc,match", RAW_BACKWARD_CASES.values(),
                         ids=RAW_BACKWARD_CASES.keys())
def test_raw_backward_op_rejects(make, exc, match):
    with pytest.raises(exc, match=match):
        BACKWARD(*make())


@pytest.mark.parametrize("size", [(1, 1, 1, 2**31), (1, 1, 2**31, 1)], ids=["wide", "tall"])
def test_cpu_kernels_refuse_spatial_sizes_past_int32(size):
    """The CPU kernels index pixels with int32 in their row loops: an input wider or taller than
    that gets a clear error (an expanded tensor: the size without the memory), forward and
    backward, never a wrapped index."""
    x = torch.zeros(1, 1, 1, 1).expand(*size)
    theta = _theta(1)
    with pytest.raises(ValueError, match=r"CPU kernels take input spatial sizes up to"):
        OP(x, theta, 2, 2, "bilinear", "zeros", False)
    with pytest.raises(ValueError, match=r"CPU kernels take input spatial sizes up to"):
        BACKWARD(torch.zeros(1, 1, 2, 2), x, theta, "bilinear", "zeros", False, [True, True])


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])  # the row kernels, the general ones
@pytest.mark.parametrize("size", [(1, 1, 1, 2**31), (1, 1, 2**31, 1), (1, 1, 2**31, 1, 1)],
                         ids=["wide", "tall", "deep"])
def test_cpu_general_ops_refuse_spatial_sizes_past_int32(size, mode):
    """grid_sample's CPU kernels, the fused op's row kernels among them, have the same limit."""
    if mode == "bicubic" and len(size) == 5:
        pytest.skip("bicubic is 2-D")
    x = torch.zeros(1, 1, 1, 1, *([1] * (len(size) - 4))).expand(*size)
    grid = torch.zeros(1, *([2] * (len(size) - 2)), len(size) - 2)
    with pytest.raises(ValueError, match=r"CPU kernels take input spatial sizes up to"):
        stn_ext.grid_sample(x, grid, mode, backend="cpu")
