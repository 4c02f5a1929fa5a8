"""Python side of the stn_ext ops: fake (meta) kernels for tracing, autocast, and the autograd
of the Triton ops, registered with torch.library so that torch.compile(fullgraph=True) and
torch.library.opcheck work. Every backend's op pair (forward, backward) shares the schema of the
C++ one and is registered here by register_sampling_op or register_general_op. The C++ ops'
autograd is C++ (csrc/autograd/): the Python autograd path's overhead is a large share of a
small call's time (benchmarks/results/log.md)."""
import torch

from . import _C  # noqa: F401  (loading the library registers stn_ext::* and its kernels)


def output_memory_format(input: torch.Tensor) -> torch.memory_format:
    """Layout of outputs and input gradients: the C++ side's output_memory_format, mirrored."""
    channels_last = torch.channels_last_3d if input.dim() == 5 else torch.channels_last
    keep = input.is_contiguous(memory_format=channels_last) and not input.is_contiguous()
    return channels_last if keep else torch.contiguous_format


# Devices whose autocast makes the ops run in float32, as F.grid_sample does.
AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")


def _check_device(name: str, tensor: torch.Tensor, input: torch.Tensor) -> None:
    torch._check(tensor.device == input.device,
                 lambda: f"stn_ext: {name} is on {tensor.device} but input is on {input.device}")


def _sampled(input, out_size):
    """The output of sampling `input` at out_size points per image, as the kernels lay it out."""
    return torch.empty((*input.shape[:2], *out_size), dtype=input.dtype, device=input.device,
                       memory_format=output_memory_format(input))


def _input_grad(input, wanted: bool):
    """grad_input as the backward kernels return it (empty when not asked for)."""
    return _sampled(input, input.shape[2:]) if wanted else input.new_empty(0)


def _forward_fake(input, theta, out_h, out_w, mode, padding_mode, align_corners):
    _check_device("theta", theta, input)
    return _sampled(input, (out_h, out_w))


def _backward_fake(grad_output, input, theta, mode, padding_mode, align_corners, output_mask):
    _check_device("theta", theta, input)
    _check_device("grad_output", grad_output, input)
    grad_theta = (torch.empty((theta.shape[0], 2, 3), dtype=theta.dtype, device=theta.device)
                  if output_mask[1] else theta.new_empty(0))
    return _input_grad(input, output_mask[0]), grad_theta


def _setup_context(ctx, inputs, output):
    input, theta, _out_h, _out_w, mode, padding_mode, align_corners = inputs
    ctx.save_for_backward(input, theta)
    ctx.sample_args = (mode, padding_mode, align_corners)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("stn_ext: double backward (gradients of gradients) is not supported")


def register_sampling_op(name: str, python_autograd: bool, namespace: str = "stn_ext") -> None:
    """Fake kernels and autocast for <namespace>::<name> and <namespace>::<name>_backward, and
    their autograd if ``python_autograd`` (ops whose kernels do not come with it)."""
    qualname = f"{namespace}::{name}"
    torch.library.register_fake(qualname)(_forward_fake)
    torch.library.register_fake(f"{qualname}_backward")(_backward_fake)
    # Like F.grid_sample, run in float32 under autocast (sampling positions need the precision).
    for device_type in AUTOCAST_DEVICE_TYPES:
        torch.library.register_autocast(qualname, device_type, torch.float32)
    if python_autograd:
        _register_autograd(qualname, getattr(getattr(torch.ops, namespace), f"{name}_backward"))


def _register_autograd(qualname: str, backward_op) -> None:
    """What csrc/autograd/ does for the C++ op, for an op pair without C++ autograd."""

    def backward(ctx, grad_output):
        input, theta = ctx.saved_tensors
        need_input, need_theta = ctx.needs_input_grad[:2]
        grad_input, grad_theta = backward_op(grad_output, input, theta, *ctx.sample_args,
                                             [need_input, need_theta])
        return (grad_input if need_input else None, grad_theta if need_theta else None,
                None, None, None, None, None)

    torch.library.register_autograd(qualname, backward, setup_context=_setup_context)
    # Without this, a double backward would silently see zero gradients.
    torch.library.register_autograd(f"{qualname}_backward", _no_double_backward)


register_sampling_op("affine_grid_sample", python_autograd=False)


# The general ops (stn_ext::grid_sample, stn_ext::affine_sample): any rank, mode and fill value.
# Their autograd is C++ too (csrc/autograd/); other backends' own general ops (Triton, the CUDA
# emulation) get it here.

def _general_backward_fake(grad_output, input, coords, mode, padding_mode, align_corners,
                           fill_value, output_mask):
    _check_device("grad_output", grad_output, input)
    grad_coords = torch.empty_like(coords, memory_format=torch.contiguous_format) \
        if output_mask[1] else coords.new_empty(0)
    return _input_grad(input, output_mask[0]), grad_coords


def _grid_sample_fake(input, grid, mode, padding_mode, align_corners, fill_value):
    _check_device("grid", grid, input)
    return _sampled(input, grid.shape[1:-1])


def _affine_sample_fake(input, theta, out_size, mode, padding_mode, align_corners, fill_value):
    _check_device("theta", theta, input)
    return _sampled(input, out_size)


# Per general op: its forward fake kernel and its number of arguments.
_GENERAL_OPS = {"grid_sample": (_grid_sample_fake, 6), "affine_sample": (_affine_sample_fake, 7)}


def register_general_ops(python_autograd: bool, namespace: str = "stn_ext") -> None:
    """Fake kernels and autocast of <namespace>::grid_sample and ::affine_sample (and their
    backward ops), and their autograd if ``python_autograd``: gradients to the input and to its
    coordinates (grid or theta), none to the options or the fill value."""
    for name in _GENERAL_OPS:
        register_general_op(name, f"{namespace}::{name}", python_autograd)


def register_general_op(kind: str, qualname: str, python_autograd: bool = True) -> None:
    """register_general_ops' work for one op pair, `qualname` and `qualname`_backward, with the
    schema of general op `kind` ("grid_sample" or "affine_sample"): for a backend's own ops."""
    forward_fake, arguments = _GENERAL_OPS[kind]
    namespace, name = qualname.split("::")
    _register_general_op(qualname, forward_fake, arguments,
                         getattr(getattr(torch.ops, namespace), f"{name}_backward"),
                         python_autograd)


def _register_general_op(qualname: str, forward_fake, arguments: int, backward_op,
                         python_autograd: bool) -> None:
    def setup_context(ctx, inputs, output):
        input, coords, *options = inputs
        ctx.save_for_backward(input, coords, options[-1])
        # The options after the output size, if any: mode, padding_mode, align_corners.
        ctx.sample_args = tuple(options[-4:-1])

    def backward(ctx, grad_output):
        input, coords, fill = ctx.saved_tensors
        need = [bool(n) for n in ctx.needs_input_grad[:2]]
        grad_input, grad_coords = backward_op(grad_output, input, coords, *ctx.sample_args,
                                              fill, need)
        return (grad_input if need[0] else None, grad_coords if need[1] else None,
                *([None] * (arguments - 2)))

    torch.library.register_fake(qualname)(forward_fake)
    torch.library.register_fake(f"{qualname}_backward")(_general_backward_fake)
    for device_type in AUTOCAST_DEVICE_TYPES:
        torch.library.register_autocast(qualname, device_type, torch.float32)
    if python_autograd:
        torch.library.register_autograd(qualname, backward, setup_context=setup_context)
        torch.library.register_autograd(f"{qualname}_backward", _no_double_backward)


register_general_ops(python_autograd=False)
