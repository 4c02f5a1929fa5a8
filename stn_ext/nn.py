"""Modules built on the fused op."""
from typing import Optional, Tuple

import torch
from torch import nn

from .functional import affine_grid_sample


class SpatialTransformer(nn.Module):
    """A spatial transformer (Jaderberg et al., 2015): ``localization`` maps the input to
    features, ``regressor`` maps the flattened features to the 6 numbers of an affine theta, and
    the input is warped by it with :func:`stn_ext.affine_grid_sample`.

    The regressor's last ``nn.Linear`` is initialised to the identity transform, so training
    starts from an unwarped input.
    """

    def __init__(self, localization: nn.Module, regressor: nn.Module,
                 out_size: Optional[Tuple[int, int]] = None, *, mode: str = "bilinear",
                 padding_mode: str = "zeros", align_corners: bool = False,
                 backend: str = "auto"):
        super().__init__()
        self.localization = localization
        self.regressor = regressor
        self.out_size = out_size
        self.mode = mode
        self.padding_mode = padding_mode
        self.align_corners = align_corners
        self.backend = backend
        last = [m for m in regressor.modules() if isinstance(m, nn.Linear)]
        if not last or last[-1].out_features != 6:
            raise ValueError("regressor must end in an nn.Linear with 6 outputs (the theta)")
        with torch.no_grad():
            last[-1].weight.zero_()
            last[-1].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def theta(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, 2, 3) affine maps the module would apply to ``x``."""
        return self.regressor(self.localization(x).flatten(1)).view(-1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return affine_grid_sample(x, self.theta(x).to(x.dtype), self.out_size, mode=self.mode,
                                  padding_mode=self.padding_mode,
                                  align_corners=self.align_corners, backend=self.backend)
