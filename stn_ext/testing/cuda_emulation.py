"""The CUDA kernels of stn_ext, run on the CPU: how CI (no GPU) executes every CUDA line.

The kernels and launchers of csrc/cuda/ are compiled a second time as host C++ with
csrc/testing/cuda_emulation.h standing in for the CUDA runtime: grids of blocks whose threads run
as concurrent host threads with real barriers, warp shuffles, shared memory and racing atomics
(see that header). The result is a separate library, ``stn_ext_cuda_emulation``, whose ops have
the schemas of the ``stn_ext`` ops and take CPU tensors:

    from stn_ext.testing import cuda_emulation
    out = cuda_emulation.affine_grid_sample(input, theta, size, mode="bilinear",
                                            padding_mode="zeros", align_corners=False)

runs the CUDA forward kernel, and through autograd its backward kernels (the deterministic ones
under ``torch.use_deterministic_algorithms(True)``, as on a GPU); ``grid_sample`` and
``affine_sample`` run the general ops' CUDA kernels (dense grids, 3-D, bicubic, fill values).

The first use builds the library with ``torch.utils.cpp_extension.load`` (cached under
``TORCH_EXTENSIONS_DIR``, about a minute on 2 cores); ``python -m stn_ext.testing.cuda_emulation``
builds it ahead of time. It needs the source tree (csrc/ beside the package), as with
``pip install -e .``.
"""
import contextlib
import pathlib

import torch

from .. import ops
from ..functional import (checked_affine_arguments, checked_arguments,
                          checked_grid_arguments)

NAMESPACE = "stn_ext_cuda_emulation"
CSRC = pathlib.Path(__file__).resolve().parents[2] / "csrc"
SOURCES = [CSRC / "affine_grid_sample.cpp", CSRC / "grid_sample.cpp",
           CSRC / "testing" / "cuda_emulation.cpp",
           CSRC / "testing" / "grid_sample_cuda_emulation.cpp"]
# The grid-y limit of CUDA devices, which the emulated device has unless a test lowers it.
CUDA_MAX_GRID_Y = 65535


_loaded = False  # a plain flag, not a cache: torch.compile traces _ops() as a constant then


def load(verbose: bool = False) -> None:
    """Builds (once, then from the cache) and loads the emulation library, and registers its
    ops' fake kernels, autocast and autograd."""
    global _loaded
    if _loaded:
        return
    missing = [str(path) for path in SOURCES if not path.exists()]
    if missing:
        raise RuntimeError(f"the CUDA emulation is built from stn_ext's source tree, which is "
                           f"not here (missing {', '.join(missing)}); use a source checkout "
                           f"installed with pip install -e .")
    from torch.utils.cpp_extension import load as load_extension
    load_extension(name=NAMESPACE, sources=[str(path) for path in SOURCES],
                   extra_include_paths=[str(CSRC)],
                   extra_cflags=["-O2", "-std=c++20", "-DSTN_EXT_CUDA_EMULATION"],
                   extra_ldflags=["-lpthread"], is_python_module=False, verbose=verbose)
    ops.register_sampling_op("affine_grid_sample", python_autograd=True, namespace=NAMESPACE)
    ops.register_general_ops(python_autograd=True, namespace=NAMESPACE)
    _loaded = True


def _ops():
    if not _loaded:
        load()
    return getattr(torch.ops, NAMESPACE)


def forward_op():
    """The emulated CUDA forward op (schema of stn_ext::affine_grid_sample)."""
    return _ops().affine_grid_sample.default


def backward_op():
    """The emulated CUDA backward op (schema of stn_ext::affine_grid_sample_backward)."""
    return _ops().affine_grid_sample_backward.default


def affine_grid_sample(input: torch.Tensor, theta: torch.Tensor, size=None, *,
                       mode: str = "bilinear", padding_mode: str = "zeros",
                       align_corners: bool = False) -> torch.Tensor:
    """stn_ext.affine_grid_sample computed by the CUDA kernels, emulated, on CPU tensors."""
    input, theta, out_h, out_w = checked_arguments(input, theta, size, mode, padding_mode,
                                                   align_corners)
    _cpu_tensors(input)
    return forward_op()(input, theta, out_h, out_w, mode, padding_mode, align_corners)


def _cpu_tensors(input: torch.Tensor) -> None:
    if input.device.type != "cpu":
        raise ValueError(f"the CUDA emulation takes CPU tensors, got tensors on {input.device}")


def grid_sample(input: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear",
                padding_mode: str = "zeros", align_corners: bool = False, *,
                fill_value=None) -> torch.Tensor:
    """stn_ext.grid_sample computed by the general ops' CUDA kernels, emulated, on CPU tensors."""
    input, grid, fill = checked_grid_arguments(input, grid, mode, padding_mode, align_corners,
                                               fill_value)
    _cpu_tensors(input)
    return _ops().grid_sample(input, grid, mode, padding_mode, align_corners, fill)


def affine_sample(input: torch.Tensor, theta: torch.Tensor, size=None, *,
                  mode: str = "bilinear", padding_mode: str = "zeros",
                  align_corners: bool = False, fill_value=None) -> torch.Tensor:
    """stn_ext.affine_grid_sample computed by the general ops' CUDA kernel (stn_ext::affine_sample,
    any rank, mode and fill), emulated, on CPU tensors."""
    input, theta, out_size, fill = checked_affine_arguments(input, theta, size, mode,
                                                            padding_mode, align_corners,
                                                            fill_value)
    _cpu_tensors(input)
    return _ops().affine_sample(input, theta, list(out_size), mode, padding_mode, align_corners,
                                fill)

def launch_count() -> int:
    """Kernel launches since the library was loaded."""
    return _ops().launch_count()


def launched_threads() -> int:
    """Threads of all kernel launches (grid size times block size) since the library was
    loaded."""
    return _ops().launched_threads()


def atomic_adds() -> int:
    """Atomic additions (gpuAtomicAdd) of all kernel launches since the library was loaded."""
    return _ops().atomic_adds()


@contextlib.contextmanager
def device_limits(*, max_grid_y: int = CUDA_MAX_GRID_Y, force_64bit_indexing: bool = False,
                  block_order_seed: int = 0, stage_small_images: bool = True,
                  capturing_graph: bool = False):
    """Within the block, the emulated device has these limits: a lower grid-y limit (so that
    small batches take the kernels' grid-stride loops), 64-bit indexing where 32 bits would do,
    blocks run in a shuffled order (seed > 0) instead of index order, (stage_small_images
    False) small images sent to the kernels of large ones, and (capturing_graph) its stream
    capturing a CUDA graph, so that the launchers may not wait for the device."""
    _ops().set_device_limits(max_grid_y, force_64bit_indexing, block_order_seed,
                             stage_small_images, capturing_graph)
    try:
        yield
    finally:
        _ops().set_device_limits(CUDA_MAX_GRID_Y, False, 0, True, False)


if __name__ == "__main__":
    load(verbose=True)
    print(f"stn_ext CUDA emulation built and loaded: torch.ops.{NAMESPACE}")
