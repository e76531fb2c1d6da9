"""Sorted search and inverse-transform (importance) sampling over batched or packed intervals."""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from . import _validation as check
from ._backend import op as dispatch
from .data_specs import RayIntervals, RaySamples
from .pack import pack_info


def _as_packed(
    name: str, spec: Union[RayIntervals, RaySamples], n_rays: Optional[int] = None
) -> tuple[Tensor, Tensor, bool]:
    """Returns ``(flat vals, packed_info, was_batched)`` for a RayIntervals / RaySamples.

    Batched ``vals`` may have any number of leading dimensions ``(..., n)``: each row of the flattened
    leading dimensions is one ray, as in nerfacc. ``n_rays`` (when known from the other argument) sizes
    the ``packed_info`` built from ``ray_indices`` alone, so trailing rays without entries still count.
    """
    if not isinstance(spec, (RayIntervals, RaySamples)):
        raise TypeError(f"`{name}` must be a RayIntervals or RaySamples, got {type(spec).__name__}.")
    vals = check.floating(f"{name}.vals", spec.vals)
    if vals.dim() >= 2 and spec.packed_info is None and spec.ray_indices is None:
        e = vals.shape[-1]
        r = math.prod(vals.shape[:-1])
        starts = torch.arange(r, device=vals.device, dtype=torch.long) * e
        return vals.reshape(-1), torch.stack([starts, torch.full_like(starts, e)], dim=-1), True
    if vals.dim() != 1:
        raise ValueError(
            f"`{name}.vals` must be batched (..., n) without `packed_info`/`ray_indices`, or flattened (all,) "
            f"with one of them; got {tuple(vals.shape)}."
        )
    if spec.packed_info is not None:
        check.same_device(**{f"{name}.vals": vals, f"{name}.packed_info": spec.packed_info})
        return vals, check.packed_info(spec.packed_info, vals.shape[0], name=f"{name}.packed_info"), False
    if spec.ray_indices is not None:
        check.same_device(**{f"{name}.vals": vals, f"{name}.ray_indices": spec.ray_indices})
        ray_indices = check.ray_indices(spec.ray_indices, vals.shape[0], n_rays, name=f"{name}.ray_indices")
        return vals, pack_info(ray_indices, n_rays), False
    raise ValueError(f"`{name}` is flattened, so it needs `packed_info` or `ray_indices`.")


def _n_rays(spec: object) -> Optional[int]:
    """Number of rays a spec states by its layout (None when only ``ray_indices`` give it)."""
    if not isinstance(spec, (RayIntervals, RaySamples)) or not isinstance(spec.vals, Tensor):
        return None
    if spec.packed_info is None and spec.ray_indices is None and spec.vals.dim() >= 2:
        return math.prod(spec.vals.shape[:-1])
    if isinstance(spec.packed_info, Tensor) and spec.packed_info.dim() == 2:
        return spec.packed_info.shape[0]
    return None


@torch.no_grad()
def searchsorted(
    sorted_sequence: Union[RayIntervals, RaySamples], values: Union[RayIntervals, RaySamples]
) -> tuple[Int[Tensor, "..."], Int[Tensor, "..."]]:
    """Per-ray searchsorted over batched or flattened sequences, with nerfacc 0.5's index rule.

    Returns ``(ids_left, ids_right)`` with ``sorted[ids_left] <= v < sorted[ids_right]`` for ``v``
    inside a ray's range; outside it the indices behave as if ``v`` were clipped into the range
    (below the first entry ``s[b]``: ``(b, b)``; at or above the last ``s[l]``: ``(l - 1, l)``).

    The layout of ``values`` decides the kind of index, as in nerfacc: for batched ``values``
    the indices count from the start of each ray's sequence (along the last dimension when
    ``sorted_sequence`` is batched too), for flattened ``values`` they index the flattened
    ``sorted_sequence.vals`` (``vals.reshape(-1)`` when it is batched).

    Args:
        sorted_sequence: Ascending values per ray (RayIntervals or RaySamples), batched ``(..., n)`` or
            flattened ``(all,)`` with ``packed_info`` or ``ray_indices``.
        values: Query values per ray, batched ``(..., m)`` or flattened ``(all_queries,)``; must have as
            many rays as ``sorted_sequence``.

    Returns:
        ``(ids_left, ids_right)``, two int64 tensors shaped like ``values.vals``. Not differentiable.

    Example:
        >>> s = RayIntervals(vals=torch.tensor([0.0, 1.0, 0.0, 1.0, 2.0]), packed_info=torch.tensor([[0, 2], [2, 3]]))
        >>> v = RayIntervals(vals=torch.tensor([0.5, 1.5, 2.5]), packed_info=torch.tensor([[0, 1], [1, 2]]))
        >>> searchsorted(s, v)
        (tensor([0, 3, 3]), tensor([1, 4, 4]))
    """
    s_vals, s_info, _ = _as_packed("sorted_sequence", sorted_sequence, _n_rays(values))
    q_vals, q_info, q_batched = _as_packed("values", values, s_info.shape[0])
    check.same_device(sorted_sequence=s_vals, values=q_vals)
    if s_info.shape[0] != q_info.shape[0]:
        raise ValueError(
            f"`sorted_sequence` has {s_info.shape[0]} rays but `values` has {q_info.shape[0]}; they must describe "
            "the same rays."
        )
    dtype = torch.promote_types(check.compute_dtype(s_vals), check.compute_dtype(q_vals))
    left, right = dispatch("searchsorted", s_vals.device)(
        s_vals.to(dtype).contiguous(), s_info, q_vals.to(dtype).contiguous(), q_info
    )
    if q_batched and q_vals.numel() > 0:
        # Batched queries: indices relative to the start of their ray's sequence (nerfacc's rule).
        ray_of_q = torch.arange(q_vals.numel(), device=q_vals.device) // values.vals.shape[-1]
        offset = s_info[ray_of_q, 0]
        left, right = (left - offset).clamp(min=0), (right - offset).clamp(min=0)
    shape = values.vals.shape
    return left.reshape(shape), right.reshape(shape)


@torch.no_grad()
def importance_sampling(
    intervals: RayIntervals,
    cdfs: Float[Tensor, "..."],
    n_intervals_per_ray: Union[Int[Tensor, " n_rays"], int],
    stratified: bool = False,
) -> tuple[RayIntervals, RaySamples]:
    """Inverse-transform sampling of new intervals from CDFs given at interval edges.

    Sample ``j`` of a ray sits at CDF value ``c0 + (j + b) (c1 - c0) / n`` (``b = 0.5``, or one
    uniform jitter per ray when ``stratified``); new edges are midpoints between samples, the first
    and last clipped to the ray's original range. Not differentiable.

    Args:
        intervals: Edges per ray (batched ``(n_rays, n_edges)`` or packed).
        cdfs: Non-decreasing CDF values at the edges, shaped like ``intervals.vals``.
        n_intervals_per_ray: New intervals per ray: an int (batched output) or an ``(n_rays,)`` tensor
            (packed output; 0 allowed).
        stratified: Jitter the samples (one random offset per ray).

    Returns:
        ``(intervals, samples)``. For an int ``n``: ``intervals.vals`` is ``(n_rays, n + 1)`` and
        ``samples.vals`` ``(n_rays, n)``. For a tensor: packed results with ``packed_info``,
        ``ray_indices`` and (for intervals) ``is_left`` / ``is_right``.

    Example:
        >>> iv = RayIntervals(vals=torch.tensor([0.0, 1.0, 0.0, 1.0, 2.0]), packed_info=torch.tensor([[0, 2], [2, 3]]))
        >>> new_iv, s = importance_sampling(iv, torch.tensor([0.0, 0.5, 0.0, 0.5, 1.0]), 2)
        >>> new_iv.vals
        tensor([[0.0000, 0.5000, 1.0000], [0.0000, 1.0000, 2.0000]])
        >>> s.vals
        tensor([[0.2500, 0.7500], [0.5000, 1.5000]])
    """
    if not isinstance(intervals, RayIntervals):
        raise TypeError(f"`intervals` must be a RayIntervals, got {type(intervals).__name__}.")
    cdfs = check.floating("cdfs", cdfs)
    check.same_shape("cdfs", cdfs, "intervals.vals", intervals.vals)
    vals, info, _ = _as_packed("intervals", intervals)
    check.same_device(intervals=vals, cdfs=cdfs)
    n_rays = info.shape[0]
    device = vals.device
    if isinstance(n_intervals_per_ray, Tensor):
        n_per_ray = check.integer("n_intervals_per_ray", n_intervals_per_ray).to(device).long().reshape(-1)
        if n_per_ray.shape[0] != n_rays:
            raise ValueError(f"`n_intervals_per_ray` has {n_per_ray.shape[0]} entries for {n_rays} rays.")
        if check.value_checks_enabled() and n_rays > 0 and bool((n_per_ray < 0).any()):
            raise ValueError("`n_intervals_per_ray` must be >= 0.")
        batched_n = None
    else:
        if int(n_intervals_per_ray) < 1:
            raise ValueError(f"`n_intervals_per_ray` must be >= 1, got {n_intervals_per_ray}.")
        batched_n = int(n_intervals_per_ray)
        if check.value_checks_enabled() and n_rays > 0 and bool((info[:, 1] == 0).any()):
            raise ValueError(
                "some rays have no edges, so an int `n_intervals_per_ray` cannot give a batched result; pass a "
                "per-ray tensor (0 for those rays) instead."
            )
        n_per_ray = torch.full((n_rays,), batched_n, device=device, dtype=torch.long)
    dtype = torch.promote_types(check.compute_dtype(vals), check.compute_dtype(cdfs))
    bias = (
        torch.rand(n_rays, device=device, dtype=dtype)
        if stratified
        else torch.full((n_rays,), 0.5, device=device, dtype=dtype)
    )
    samples, s_info, edges, e_info = dispatch("importance_sampling", device)(
        vals.to(dtype).contiguous(),
        cdfs.reshape(-1).to(dtype).contiguous(),
        info,
        n_per_ray,
        bias,
        -1 if batched_n is None else batched_n,  # batched: output sizes known on the host (no sync)
    )
    if batched_n is not None:
        return RayIntervals(vals=edges.reshape(n_rays, batched_n + 1)), RaySamples(
            vals=samples.reshape(n_rays, batched_n)
        )
    rays = torch.arange(n_rays, device=device)  # output_size: no host sync
    s_rays = torch.repeat_interleave(rays, s_info[:, 1], output_size=samples.shape[0])
    e_rays = torch.repeat_interleave(rays, e_info[:, 1], output_size=edges.shape[0])
    e_pos = torch.arange(e_rays.numel(), device=device) - e_info[e_rays, 0]
    is_left = e_pos < e_info[e_rays, 1] - 1
    is_right = e_pos > 0
    return (
        RayIntervals(vals=edges, packed_info=e_info, ray_indices=e_rays, is_left=is_left, is_right=is_right),
        RaySamples(vals=samples, packed_info=s_info, ray_indices=s_rays),
    )
