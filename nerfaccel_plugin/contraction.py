"""Scene contraction for unbounded scenes (mip-NeRF 360), as differentiable ops.

``contract`` maps world points into the unit cube: the scene box maps linearly onto the inner region
``[0.25, 0.75]^3`` (exactly the box for ``ord="linf"``; the ball inscribed in the box for
``ord="l2"``), and everything outside is squeezed into the shell up to the cube's faces, reached
only at infinity. Hash-grid fields take the result directly as normalized coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import torch
from jaxtyping import Float
from torch import Tensor

from . import _validation as check
from ._backend import op as dispatch

_ORDS = {"l2": "l2", "2": "l2", "linf": "linf", "inf": "linf"}


def _ord(ord: Union[str, int, float]) -> str:
    key = "inf" if isinstance(ord, float) and math.isinf(ord) else str(ord).lower()
    if key not in _ORDS:
        raise ValueError(f"`ord` must be 'l2' (or 2) or 'linf' (or 'inf', float('inf')), got {ord!r}.")
    return _ORDS[key]


def _aabb(aabb: Union[Float[Tensor, " 6"], Sequence[float]], like: Tensor) -> Tensor:
    if not isinstance(aabb, Tensor):
        aabb = torch.tensor(list(aabb), dtype=like.dtype, device=like.device)
    aabb = check.floating("aabb", aabb).reshape(-1)
    if aabb.shape[0] != 6:
        raise ValueError(f"`aabb` must have 6 values {{xmin, ymin, zmin, xmax, ymax, zmax}}, got {aabb.shape[0]}.")
    check.same_device(x=like, aabb=aabb)
    if check.value_checks_enabled() and not bool((aabb[3:] > aabb[:3]).all()):
        raise ValueError("`aabb` must have max > min on every axis.")
    return aabb


def contract(
    x: Float[Tensor, "... 3"], aabb: Union[Float[Tensor, " 6"], Sequence[float]], ord: Union[str, int, float] = "l2"
) -> Float[Tensor, "... 3"]:
    """Contracts world points into ``[0, 1]^3``.

    Args:
        x: ``(..., 3)`` points.
        aabb: ``(6,)`` scene box ``{xmin, ymin, zmin, xmax, ymax, zmax}``.
        ord: ``"l2"`` (mip-NeRF 360, a sphere) or ``"linf"`` (a cube: the whole box stays linear).

    Returns:
        ``(..., 3)`` contracted points. Differentiable w.r.t. ``x``. Points with infinite coordinates map to
        the limit on the cube's faces (``[inf, 0, 0]`` in a box centred at 0 gives ``[1, 0.5, 0.5]``) with a zero
        gradient.
    """
    x = check.floating("x", x)
    check.last_dim("x", x, 3, "(..., 3)")
    ord_ = _ord(ord)
    dtype = check.compute_dtype(x)
    box = _aabb(aabb, x).to(dtype)
    flat = x.reshape(-1, 3).to(dtype).contiguous()
    return dispatch("contract", x.device)(flat, box.contiguous(), ord_).reshape(x.shape[:-1] + (3,))


def uncontract(
    y: Float[Tensor, "... 3"], aabb: Union[Float[Tensor, " 6"], Sequence[float]], ord: Union[str, int, float] = "l2"
) -> Float[Tensor, "... 3"]:
    """Inverse of :func:`contract`. Points on the cube's outer faces map to a large finite distance.

    Args:
        y: ``(..., 3)`` contracted points in ``[0, 1]^3``.
        aabb: ``(6,)`` scene box used for contraction.
        ord: The norm used for contraction.

    Returns:
        ``(..., 3)`` world points. Differentiable w.r.t. ``y``.
    """
    y = check.floating("y", y)
    check.last_dim("y", y, 3, "(..., 3)")
    ord_ = _ord(ord)
    dtype = check.compute_dtype(y)
    box = _aabb(aabb, y).to(dtype)
    flat = y.reshape(-1, 3).to(dtype).contiguous()
    return dispatch("uncontract", y.device)(flat, box.contiguous(), ord_).reshape(y.shape[:-1] + (3,))
