"""Python side of the C++ ops: fake (meta) kernels for tracing and autograd, registered with
torch.library so that torch.compile(fullgraph=True) and torch.library.opcheck work."""
import torch

from . import _C  # noqa: F401  (loading the library registers stn_ext::* and its kernels)


def output_memory_format(input: torch.Tensor) -> torch.memory_format:
    """Layout of outputs and input gradients: the C++ side's output_memory_format, mirrored."""
    channels_last = input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


@torch.library.register_fake("stn_ext::affine_grid_sample")
def _affine_grid_sample_fake(input, theta, out_h, out_w, mode, padding_mode, align_corners):
    return torch.empty((input.shape[0], input.shape[1], out_h, out_w), dtype=input.dtype,
                       device=input.device, memory_format=output_memory_format(input))


@torch.library.register_fake("stn_ext::affine_grid_sample_backward")
def _affine_grid_sample_backward_fake(grad_output, input, theta, mode, padding_mode,
                                      align_corners, output_mask):
    grad_input = (torch.empty(input.shape, dtype=input.dtype, device=input.device,
                              memory_format=output_memory_format(input))
                  if output_mask[0] else input.new_empty(0))
    grad_theta = (torch.empty((theta.shape[0], 2, 3), dtype=theta.dtype, device=theta.device)
                  if output_mask[1] else theta.new_empty(0))
    return grad_input, grad_theta


def _setup_context(ctx, inputs, output):
    input, theta, _out_h, _out_w, mode, padding_mode, align_corners = inputs
    ctx.save_for_backward(input, theta)
    ctx.sample_args = (mode, padding_mode, align_corners)


def _backward(ctx, grad_output):
    input, theta = ctx.saved_tensors
    need_input, need_theta = ctx.needs_input_grad[:2]
    grad_input, grad_theta = torch.ops.stn_ext.affine_grid_sample_backward(
        grad_output, input, theta, *ctx.sample_args, [need_input, need_theta])
    return (grad_input if need_input else None, grad_theta if need_theta else None,
            None, None, None, None, None)


torch.library.register_autograd("stn_ext::affine_grid_sample", _backward,
                                setup_context=_setup_context)

# Like F.grid_sample, run in float32 under autocast (sampling positions need the precision).
for _device_type in ("cpu", "cuda"):
    torch.library.register_autocast("stn_ext::affine_grid_sample", _device_type, torch.float32)
