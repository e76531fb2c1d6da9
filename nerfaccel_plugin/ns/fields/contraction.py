"""nerfaccel's scene contraction as a Nerfstudio ``SpatialDistortion``."""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float
from nerfstudio.field_components.spatial_distortions import SpatialDistortion
from torch import Tensor

from ...contraction import contract


class AabbContraction(SpatialDistortion):
    """Contracts world points with :func:`nerfaccel_plugin.contract`, in Nerfstudio's ``[-2, 2]`` convention.

    Nerfstudio's hash fields map a distorted position ``p`` to ``(p + 2) / 4`` before hashing, so this module
    returns ``4 * contract(x) - 2``: the fields then see exactly nerfaccel's contracted coordinates in
    ``[0, 1]^3`` (the scene box in ``[0.25, 0.75]^3``, the unbounded outside in the shell).

    Args:
        aabb: ``(6,)`` or ``(2, 3)`` scene box.
        order: ``"l2"`` (mip-NeRF 360 sphere) or ``"linf"`` (cube, the whole box stays linear).
    """

    def __init__(self, aabb: Tensor, order: Literal["l2", "linf"] = "l2") -> None:
        super().__init__()
        self.register_buffer("aabb", aabb.detach().reshape(-1).float().clone(), persistent=False)
        self.order = order

    def forward(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:  # type: ignore[override]
        """Contracts ``positions`` (``(*bs, 3)``) into ``[-2, 2]^3``."""
        if not isinstance(positions, torch.Tensor):
            raise TypeError("AabbContraction only supports point positions (no Gaussians / integrated encodings).")
        aabb = self.aabb.to(device=positions.device, dtype=positions.dtype)
        return contract(positions, aabb, ord=self.order) * 4.0 - 2.0
