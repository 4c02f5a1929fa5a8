"""stn_ext: fused affine-grid + grid-sample for spatial transformers, on CPU, CUDA and Triton."""
from .functional import affine_grid_sample, available_backends, grid_sample
from . import nn

__all__ = ["affine_grid_sample", "available_backends", "grid_sample", "nn"]
__version__ = "0.1.0"
