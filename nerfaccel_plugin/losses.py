"""Regularization losses on rendering weights."""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from . import _validation as check
from .scan import exclusive_sum


def distortion(
    weights: Float[Tensor, "..."],
    t_starts: Float[Tensor, "..."],
    t_ends: Float[Tensor, "..."],
    ray_indices: Optional[Int[Tensor, " all_samples"]] = None,
    n_rays: Optional[int] = None,
) -> Float[Tensor, " n_rays"]:
    """mip-NeRF 360 distortion loss per ray.

    ``L = sum_{i,j} w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (t_end_i - t_start_i)`` with ``m`` the
    sample midpoints, computed in O(n) per ray with scans (samples must be sorted along each ray).

    Args:
        weights: ``(n_rays, n_samples)``, or ``(all_samples,)`` with ``ray_indices``.
        t_starts: Sample starts, same shape.
        t_ends: Sample ends, same shape.
        ray_indices: ``(all_samples,)`` sorted ray index of each sample, for flattened inputs.
        n_rays: Number of rays (with ``ray_indices``); inferred when None.

    Returns:
        ``(n_rays,)`` loss per ray (average it for a scalar). Differentiable w.r.t. all float inputs.
    """
    weights = check.floating("weights", weights)
    t_starts = check.floating("t_starts", t_starts)
    t_ends = check.floating("t_ends", t_ends)
    check.same_shape("t_starts", t_starts, "weights", weights)
    check.same_shape("t_ends", t_ends, "weights", weights)
    dtype = check.compute_dtype(weights)
    weights, t_starts, t_ends = weights.to(dtype), t_starts.to(dtype), t_ends.to(dtype)
    mids = (t_starts + t_ends) * 0.5
    intervals = t_ends - t_starts
    if ray_indices is None:
        if weights.dim() != 2:
            raise ValueError(
                f"`weights` must be (n_rays, n_samples) without `ray_indices`, got {tuple(weights.shape)}."
            )
        w_before = exclusive_sum(weights)
        wm_before = exclusive_sum(weights * mids)
        inter = 2.0 * (weights * (mids * w_before - wm_before)).sum(dim=-1)
        intra = (weights**2 * intervals).sum(dim=-1) / 3.0
        return inter + intra
    if weights.dim() != 1:
        raise ValueError(f"`weights` must be flattened (all_samples,) with `ray_indices`, got {tuple(weights.shape)}.")
    if n_rays is None:
        n_rays = int(ray_indices.max().item()) + 1 if ray_indices.numel() > 0 else 0
    ray_indices = check.ray_indices(ray_indices, weights.shape[0], n_rays)
    w_before = exclusive_sum(weights, indices=ray_indices)
    wm_before = exclusive_sum(weights * mids, indices=ray_indices)
    per_sample = 2.0 * weights * (mids * w_before - wm_before) + weights**2 * intervals / 3.0
    out = torch.zeros(n_rays, dtype=per_sample.dtype, device=per_sample.device)
    return out.index_add(0, ray_indices, per_sample)
