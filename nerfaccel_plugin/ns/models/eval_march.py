"""Test-time rendering of the occupancy-grid sampler with early ray termination (eval, viewer, ``ns-render``).

Rays march in segments of ``march_steps`` steps (longer where cone stepping grows the step); after each segment the
field is evaluated on its samples, composited behind what the ray has already gathered, and rays whose
transmittance fell below the sampler's ``early_stop_eps`` or that left the grid stop. The result equals compositing
every sample up to the termination threshold, while samples hidden behind surfaces are never evaluated.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.fields.base_field import Field
from torch import Tensor

from ...grid import ray_aabb_intersect
from ...volrend import accumulate_along_rays, render_weight_from_density
from ..samplers import OccupancyGridSampler


@torch.no_grad()
def render_occupancy_eval(
    sampler: OccupancyGridSampler,
    field: Field,
    ray_bundle: RayBundle,
    background: Float[Tensor, "n 3"],
    march_steps: int,
) -> dict[str, Tensor]:
    """Renders ``ray_bundle`` through ``sampler`` and ``field`` in segments, stopping rays early.

    Args:
        sampler: The model's occupancy-grid sampler (its grid, planes, step size, cone angle, ``early_stop_eps``).
        field: The radiance field (density and RGB heads).
        ray_bundle: Rays, any batch shape (flattened here); ``nears`` / ``fars`` bound them when set.
        background: ``(n_rays, 3)`` colour behind each ray.
        march_steps: Steps per segment (> 0).

    Returns:
        ``rgb`` ``(n, 3)``, ``accumulation`` ``(n, 1)``, ``depth`` ``(n, 1)`` and ``num_samples_per_ray`` ``(n, 1)``
        (float, samples evaluated per ray).
    """
    flat = ray_bundle.flatten() if len(ray_bundle.shape) > 1 else ray_bundle
    rays_o, rays_d = flat.origins.reshape(-1, 3), flat.directions.reshape(-1, 3)
    n, device = rays_o.shape[0], rays_o.device
    box = sampler.occupancy_grid.aabbs[-1:].to(rays_o)
    t_in, t_out, hit = ray_aabb_intersect(rays_o, rays_d, box, near_plane=sampler.near_plane)
    t_end = t_out[:, 0]
    if sampler.far_plane is not None:
        t_end = t_end.clamp(max=float(sampler.far_plane))
    if flat.fars is not None:
        t_end = torch.minimum(t_end, flat.fars.reshape(-1).to(t_end))
    # Where the full march would start; segments start on its lattice (near + k * step), so with constant
    # steps the samples are exactly those of a single march. (With cone stepping each segment restarts the
    # step growth from its start: the same spacing up to rounding of where steps begin to grow.)
    t_near = torch.full_like(t_end, float(sampler.near_plane))
    if flat.nears is not None:
        t_near = torch.maximum(t_near, flat.nears.reshape(-1).to(t_near))
    step, cone = float(sampler.render_step_size), float(sampler.cone_angle)
    k = torch.floor((torch.maximum(t_in[:, 0], t_near) - t_near) / step).clamp(min=0)
    t_cur = t_near + k * step
    trans = torch.ones(n, device=device)
    rgb, depth = torch.zeros(n, 3, device=device), torch.zeros(n, device=device)
    num_samples = torch.zeros(n, dtype=torch.long, device=device)
    alive = torch.nonzero(hit[:, 0] & (t_cur < t_end)).reshape(-1)
    while alive.numel() > 0:
        lo = t_cur[alive]
        seg = march_steps * torch.clamp(lo * cone, min=step)
        hi = torch.minimum(lo + seg, t_end[alive])
        sub = flat[alive]
        sub.nears, sub.fars = lo[:, None], hi[:, None]
        samples, ri = sampler(sub)
        fo = field(samples)
        t0, t1 = samples.frustums.starts[:, 0], samples.frustums.ends[:, 0]
        m = alive.numel()
        weights, _, _ = render_weight_from_density(
            t0, t1, fo[FieldHeadNames.DENSITY][:, 0].float(), ray_indices=ri, n_rays=m
        )
        weights = weights * trans[alive][ri]  # behind what each ray already gathered
        rgb[alive] += accumulate_along_rays(weights, fo[FieldHeadNames.RGB].float(), ray_indices=ri, n_rays=m)
        depth[alive] += accumulate_along_rays(weights, ((t0 + t1) * 0.5)[:, None], ray_indices=ri, n_rays=m)[:, 0]
        trans[alive] -= accumulate_along_rays(weights, None, ray_indices=ri, n_rays=m)[:, 0]
        num_samples[alive] += torch.bincount(ri, weights=(t1 > t0).long(), minlength=m).long()
        t_cur[alive] = hi
        keep = (trans[alive] > sampler.early_stop_eps) & (hi < t_end[alive])
        alive = alive[keep]
    acc = (1.0 - trans).clamp(0.0, 1.0)[:, None]
    return {
        "rgb": rgb + background * (1.0 - acc),
        "accumulation": acc,
        "depth": depth[:, None] / acc.clamp(min=1e-10),
        "num_samples_per_ray": num_samples.float()[:, None],
    }
