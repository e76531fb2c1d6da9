"""Ray / box intersection and ray marching through multi-level occupancy grids."""

from __future__ import annotations

import math
from typing import Optional

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from . import _validation as check
from ._backend import op as dispatch
from .data_specs import RayIntervals, RaySamples


@torch.no_grad()
def ray_aabb_intersect(
    rays_o: Float[Tensor, "n_rays 3"],
    rays_d: Float[Tensor, "n_rays 3"],
    aabbs: Float[Tensor, "m 6"],
    near_plane: float = -float("inf"),
    far_plane: float = float("inf"),
    miss_value: float = float("inf"),
) -> tuple[Float[Tensor, "n_rays m"], Float[Tensor, "n_rays m"], Bool[Tensor, "n_rays m"]]:
    """Intersects every ray with every axis-aligned box.

    Args:
        rays_o: ``(n_rays, 3)`` ray origins.
        rays_d: ``(n_rays, 3)`` ray directions (need not be normalized; ``t`` is in units of ``|d|``).
        aabbs: ``(m, 6)`` boxes ``{xmin, ymin, zmin, xmax, ymax, zmax}``.
        near_plane: Intersections are clipped to start no earlier than this.
        far_plane: Intersections are clipped to end no later than this.
        miss_value: Value of ``t_mins`` and ``t_maxs`` for pairs that do not intersect.

    Returns:
        ``(t_mins, t_maxs, hits)``, each ``(n_rays, m)``. A pair hits when the clipped interval is
        non-empty and the box is not entirely behind the origin. Axis-parallel rays are exact.
    """
    rays_o, rays_d = check.rays(rays_o, rays_d)
    aabbs = check.aabbs("aabbs", aabbs)
    check.same_device(rays_o=rays_o, rays_d=rays_d, aabbs=aabbs)
    dtype = check.compute_dtype(rays_o)
    return dispatch("ray_aabb_intersect", rays_o.device)(
        rays_o.to(dtype).contiguous(),
        rays_d.to(dtype).contiguous(),
        aabbs.to(dtype).contiguous(),
        float(near_plane),
        float(far_plane),
        float(miss_value),
    )


def _intervals_from_samples(
    ray_indices: Tensor, t_starts: Tensor, t_ends: Tensor, n_rays: int
) -> tuple[RayIntervals, RaySamples]:
    """Builds packed ``RayIntervals`` (shared edges between touching samples) and ``RaySamples``."""
    device = t_starts.device
    n = t_starts.shape[0]
    sample_counts = (
        torch.bincount(ray_indices, minlength=n_rays) if n > 0 else torch.zeros(n_rays, dtype=torch.long, device=device)
    )
    sample_packed = torch.stack([torch.cumsum(sample_counts, 0) - sample_counts, sample_counts], dim=-1)
    samples = RaySamples(vals=(t_starts + t_ends) * 0.5, packed_info=sample_packed, ray_indices=ray_indices)
    # A sample continues the previous one when it belongs to the same ray and starts where it ended.
    cont = torch.zeros(n, dtype=torch.bool, device=device)
    if n > 1:
        cont[1:] = (ray_indices[1:] == ray_indices[:-1]) & (t_starts[1:] == t_ends[:-1])
    n_edges = 2 - cont.long()
    end_pos = torch.cumsum(n_edges, 0) - 1
    left_pos = end_pos - 1
    total = int(end_pos[-1].item()) + 1 if n > 0 else 0
    vals = t_starts.new_zeros(total)
    edge_rays = torch.zeros(total, dtype=torch.long, device=device)
    is_left = torch.zeros(total, dtype=torch.bool, device=device)
    is_right = torch.zeros(total, dtype=torch.bool, device=device)
    vals[left_pos] = t_starts
    vals[end_pos] = t_ends
    edge_rays[left_pos] = ray_indices
    edge_rays[end_pos] = ray_indices
    is_left[left_pos] = True
    is_right[end_pos] = True
    edge_counts = torch.bincount(edge_rays, minlength=n_rays) if total > 0 else torch.zeros_like(sample_counts)
    edge_packed = torch.stack([torch.cumsum(edge_counts, 0) - edge_counts, edge_counts], dim=-1)
    intervals = RayIntervals(
        vals=vals, packed_info=edge_packed, ray_indices=edge_rays, is_left=is_left, is_right=is_right
    )
    return intervals, samples


def traverse_grids_samples(
    rays_o: Float[Tensor, "n_rays 3"],
    rays_d: Float[Tensor, "n_rays 3"],
    binaries: Bool[Tensor, "m rx ry rz"],
    aabbs: Float[Tensor, "m 6"],
    near_planes: Optional[Float[Tensor, " n_rays"]] = None,
    far_planes: Optional[Float[Tensor, " n_rays"]] = None,
    step_size: float = 1e-3,
    cone_angle: float = 0.0,
) -> tuple[Int[Tensor, " n_samples"], Float[Tensor, " n_samples"], Float[Tensor, " n_samples"]]:
    """Like :func:`traverse_grids` but returns the flat ``(ray_indices, t_starts, t_ends)`` directly.

    This skips building :class:`RayIntervals` and is what :class:`OccGridEstimator` uses. Same marching
    rule as :func:`traverse_grids`. Not differentiable.

    Args:
        rays_o: ``(n_rays, 3)`` ray origins.
        rays_d: ``(n_rays, 3)`` normalized ray directions.
        binaries: ``(m, resx, resy, resz)`` bool occupancy of each grid level.
        aabbs: ``(m, 6)`` box of each level ``{xmin, ymin, zmin, xmax, ymax, zmax}``.
        near_planes: ``(n_rays,)`` where marching starts; default 0.
        far_planes: ``(n_rays,)`` where marching ends; default infinity.
        step_size: Marching step (> 0).
        cone_angle: Steps grow as ``cone_angle * t`` once that exceeds ``step_size``; 0 for constant steps.

    Returns:
        ``(ray_indices, t_starts, t_ends)`` of the kept samples, each ``(n_samples,)``, sorted by ray then ``t``
        (int64 ray indices; distances in the dtype of ``rays_o``, float32 for half precision).
    """
    rays_o, rays_d = check.rays(rays_o, rays_d)
    binaries = check.tensor("binaries", binaries)
    if binaries.dtype != torch.bool:
        raise TypeError(f"`binaries` must be a bool tensor (occupied cells), got {binaries.dtype}; use `grid > thre`.")
    check.ndim("binaries", binaries, 4, "(m, resx, resy, resz)")
    aabbs = check.aabbs("aabbs", aabbs)
    if aabbs.shape[0] != binaries.shape[0]:
        raise ValueError(f"`aabbs` has {aabbs.shape[0]} boxes but `binaries` has {binaries.shape[0]} levels.")
    check.same_device(rays_o=rays_o, rays_d=rays_d, binaries=binaries, aabbs=aabbs)
    if not (isinstance(step_size, (int, float)) and step_size > 0 and math.isfinite(step_size)):
        raise ValueError(f"`step_size` must be a finite number > 0, got {step_size!r}.")
    if not (cone_angle >= 0 and math.isfinite(cone_angle)):
        raise ValueError(f"`cone_angle` must be a finite number >= 0, got {cone_angle!r}.")
    n_rays = rays_o.shape[0]
    dtype = check.compute_dtype(rays_o)
    if near_planes is None:
        near_planes = torch.zeros(n_rays, device=rays_o.device, dtype=dtype)
    if far_planes is None:
        far_planes = torch.full((n_rays,), float("inf"), device=rays_o.device, dtype=dtype)
    for name, planes in (("near_planes", near_planes), ("far_planes", far_planes)):
        check.floating(name, planes)
        if planes.shape != (n_rays,):
            raise ValueError(f"`{name}` must have shape ({n_rays},) (one per ray), got {tuple(planes.shape)}.")
        check.same_device(rays_o=rays_o, **{name: planes})
        check.not_nan(name, planes)
    check.finite("near_planes", near_planes)
    return dispatch("traverse_grids", rays_o.device)(
        rays_o.to(dtype).contiguous(),
        rays_d.to(dtype).contiguous(),
        binaries.contiguous(),
        aabbs.to(dtype).contiguous(),
        near_planes.to(dtype).contiguous(),
        far_planes.to(dtype).contiguous(),
        float(step_size),
        float(cone_angle),
    )


@torch.no_grad()
def traverse_grids(
    rays_o: Float[Tensor, "n_rays 3"],
    rays_d: Float[Tensor, "n_rays 3"],
    binaries: Bool[Tensor, "m rx ry rz"],
    aabbs: Float[Tensor, "m 6"],
    near_planes: Optional[Float[Tensor, " n_rays"]] = None,
    far_planes: Optional[Float[Tensor, " n_rays"]] = None,
    step_size: Optional[float] = 1e-3,
    cone_angle: Optional[float] = 0.0,
) -> tuple[RayIntervals, RaySamples]:
    """Marches rays through multiple occupancy grids, keeping samples in occupied cells.

    Each ray marches from its near plane with step ``max(step_size, cone_angle * t)``; a sample is
    kept when its midpoint lies in ``[near, far)``, inside a grid's box, and in an occupied cell of
    the finest (lowest-index) grid containing it. Not differentiable.

    Args:
        rays_o: ``(n_rays, 3)`` ray origins.
        rays_d: ``(n_rays, 3)`` normalized ray directions.
        binaries: ``(m, resx, resy, resz)`` bool occupancy of each grid level.
        aabbs: ``(m, 6)`` box of each level ``{xmin, ymin, zmin, xmax, ymax, zmax}``.
        near_planes: ``(n_rays,)`` where marching starts; default 0.
        far_planes: ``(n_rays,)`` where marching ends; default infinity.
        step_size: Marching step (> 0; nerfacc's ``step_size <= 0`` cell-boundary mode is not supported).
        cone_angle: Steps grow as ``cone_angle * t`` once that exceeds ``step_size``; 0 for constant steps.

    Returns:
        ``(intervals, samples)``: packed :class:`RayIntervals` (touching samples share an edge; use
        ``vals[is_left]`` / ``vals[is_right]`` for starts / ends) and packed :class:`RaySamples` of the
        midpoints, both sorted by ray then ``t``.
    """
    ray_indices, t_starts, t_ends = traverse_grids_samples(
        rays_o,
        rays_d,
        binaries,
        aabbs,
        near_planes,
        far_planes,
        1e-3 if step_size is None else step_size,
        0.0 if cone_angle is None else cone_angle,
    )
    return _intervals_from_samples(ray_indices, t_starts, t_ends, rays_o.shape[0])


def _enlarge_aabb(aabb: Float[Tensor, " 6"], factor: float) -> Float[Tensor, " 6"]:
    """Scales a box about its centre by ``factor``."""
    center = (aabb[:3] + aabb[3:]) / 2
    extent = (aabb[3:] - aabb[:3]) / 2
    return torch.cat([center - extent * factor, center + extent * factor])


def _query(x: Float[Tensor, "n 3"], data: Tensor, base_aabb: Float[Tensor, " 6"]) -> tuple[Tensor, Bool[Tensor, " n"]]:
    """Looks up grid values at points for grids whose boxes double in size per level.

    Args:
        x: ``(n, 3)`` points.
        data: ``(m, resx, resy, resz)`` grid values.
        base_aabb: ``(6,)`` box of level 0.

    Returns:
        ``(values, inside)``: the value at each point from the finest level containing it (0 outside
        every level) and whether the point is inside some level.
    """
    lo, hi = base_aabb[:3], base_aabb[3:]
    xn = (x - lo) / (hi - lo) - 0.5  # level-0 box -> [-0.5, 0.5]
    mag = xn.abs().amax(dim=-1)
    # level l covers |xn| < 0.5 * 2^l
    level = torch.ceil(torch.log2(torch.clamp(mag * 2.0, min=1e-12))).clamp(min=0).long()
    level = torch.where(mag * 2.0 < 1.0, torch.zeros_like(level), level)
    inside = level < data.shape[0]
    level = level.clamp(max=data.shape[0] - 1)
    scale = torch.pow(2.0, level.to(x.dtype))
    unit = xn / scale[:, None] + 0.5
    res = torch.tensor(data.shape[1:], device=x.device)
    idx = torch.minimum(torch.clamp((unit * res).long(), min=0), res - 1)
    values = data[level, idx[:, 0], idx[:, 1], idx[:, 2]]
    values = torch.where(inside, values, torch.zeros_like(values))
    return values, inside
