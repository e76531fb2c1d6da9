"""Pure-PyTorch reference implementations of every primitive op.

This module is the source of truth for the semantics of nerfaccel's primitive ops. The C++ and CUDA
kernels (``cuda/``) implement the same functions, with the same names, arguments and outputs, and
are tested against these references. The functions here are written to be simple and obviously
right, but vectorized: there is no Python loop over rays or samples (the only loops run over
``log2(max samples per ray)`` scan steps, grid levels, or memory-bounded chunks of rays in the
traversal). ``_searchsorted`` and ``_importance_sampling`` build a dense ``[n_rays, max count]``
table, so one very long ray among many costs ``n_rays * max count`` memory here (not in the kernels).

Conventions shared by all primitives:

* ``packed_info`` is an int64 tensor ``[n_rays, 2]`` holding ``(start, count)`` of each ray's chunk
  in a flat tensor of samples. Chunks must not overlap. Elements that belong to no chunk produce 0
  in every output (zero transmittance, zero weight, zero scan value).
* The scans and the rendering primitives also take ``packed_info=None``: the inputs are then batched
  ``(n_rays, n)`` tensors, each row one ray (the layout the kernels read without building a packed_info).
* Float inputs may be float32 or float64; all arithmetic happens in the input dtype (the public
  wrappers upcast float16/bfloat16 to float32 before calling a primitive).
* Differentiable primitives are differentiable through ordinary autograd here; the kernels register
  explicit backward functions that must agree with autograd on these references.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = [
    "_ray_aabb_intersect",
    "_traverse_grids",
    "_inclusive_sum",
    "_exclusive_sum",
    "_inclusive_prod",
    "_exclusive_prod",
    "_render_weight_from_density",
    "_render_weight_from_alpha",
    "_accumulate_along_rays",
    "_searchsorted",
    "_importance_sampling",
    "_contract",
    "_uncontract",
    "_grid_ema_update",
]

# Upper bound on the number of candidate lattice points materialized at once by `_traverse_grids`.
_TRAVERSE_CHUNK = 1 << 23


# ---------------------------------------------------------------------------------------------
# Packed layout helpers
# ---------------------------------------------------------------------------------------------
def _chunk_layout(packed_info: Int[Tensor, "n_rays 2"]) -> tuple[Tensor, Tensor, Tensor]:
    """Expands ``packed_info`` into per-element ray ids, positions within the ray and flat indices.

    Returns:
        ``(ray_ids, pos, elem)``, each of shape ``[sum(counts)]``, in ray-major order: element
        ``elem[i]`` of the flat tensor is the ``pos[i]``-th sample of ray ``ray_ids[i]``.
    """
    starts, counts = packed_info[:, 0], packed_info[:, 1]
    n_rays = packed_info.shape[0]
    device = packed_info.device
    ray_ids = torch.repeat_interleave(torch.arange(n_rays, device=device), counts)
    offsets = torch.cumsum(counts, 0) - counts
    pos = torch.arange(ray_ids.numel(), device=device) - offsets[ray_ids]
    elem = starts[ray_ids] + pos
    return ray_ids, pos, elem


def _segmented_inclusive_scan(x: Tensor, pos: Tensor, op: str) -> Tensor:
    """Hillis-Steele inclusive scan of ``x`` where segments are contiguous runs of ``pos = 0, 1, ...``.

    Uses ``ceil(log2(max segment length))`` vectorized steps. For products the result is built from
    plain multiplications only (no division, no logarithms), so autograd gives the exact gradient
    even when some inputs are zero.
    """
    if x.numel() == 0:
        return x
    max_len = int(pos.max().item()) + 1
    identity = 0.0 if op == "sum" else 1.0
    d = 1
    while d < max_len:
        shifted = torch.cat([x.new_full((d,), identity), x[:-d]])
        combined = x + shifted if op == "sum" else x * shifted
        x = torch.where(pos >= d, combined, x)
        d *= 2
    return x


def _packed_scan(inputs: Tensor, packed_info: Tensor, op: str, exclusive: bool) -> Tensor:
    ray_ids, pos, elem = _chunk_layout(packed_info)
    x = inputs[elem]
    if exclusive:
        identity = 0.0 if op == "sum" else 1.0
        shifted = torch.cat([x.new_full((1,), identity), x[:-1]]) if x.numel() > 0 else x
        x = torch.where(pos > 0, shifted, torch.full_like(x, identity))
    y = _segmented_inclusive_scan(x, pos, op)
    return torch.zeros_like(inputs).index_put((elem,), y)


def _covered_mask(packed_info: Tensor, n: int) -> Tensor | None:
    """Boolean mask of elements that belong to some chunk, or None when every element does."""
    total = int(packed_info[:, 1].sum().item()) if packed_info.numel() > 0 else 0
    if total == n:
        return None
    _, _, elem = _chunk_layout(packed_info)
    mask = torch.zeros(n, dtype=torch.bool, device=packed_info.device)
    mask[elem] = True
    return mask


# ---------------------------------------------------------------------------------------------
# Scans
# ---------------------------------------------------------------------------------------------
def _batched_scan(inputs: Tensor, op: str, exclusive: bool) -> Tensor:
    """Scan of a batched ``(..., n)`` tensor along its last dimension (division-free products)."""
    if exclusive:
        identity = torch.zeros_like(inputs[..., :1]) if op == "sum" else torch.ones_like(inputs[..., :1])
        inputs = torch.cat([identity, inputs[..., :-1]], dim=-1)
    return torch.cumsum(inputs, dim=-1) if op == "sum" else torch.cumprod(inputs, dim=-1)


def _scan(inputs: Tensor, packed_info: Tensor | None, op: str, exclusive: bool) -> Tensor:
    if packed_info is None:
        return _batched_scan(inputs, op, exclusive)
    return _packed_scan(inputs, packed_info, op, exclusive)


def _inclusive_sum(
    inputs: Float[Tensor, " n"] | Float[Tensor, "n_rays s"], packed_info: Int[Tensor, "n_rays 2"] | None
) -> Float[Tensor, "..."]:
    """Per-chunk inclusive cumulative sum: ``out[i] = sum(inputs[start .. i])``."""
    return _scan(inputs, packed_info, "sum", exclusive=False)


def _exclusive_sum(
    inputs: Float[Tensor, " n"] | Float[Tensor, "n_rays s"], packed_info: Int[Tensor, "n_rays 2"] | None
) -> Float[Tensor, "..."]:
    """Per-chunk exclusive cumulative sum: ``out[i] = sum(inputs[start .. i-1])`` (0 for the first)."""
    return _scan(inputs, packed_info, "sum", exclusive=True)


def _inclusive_prod(
    inputs: Float[Tensor, " n"] | Float[Tensor, "n_rays s"], packed_info: Int[Tensor, "n_rays 2"] | None
) -> Float[Tensor, "..."]:
    """Per-chunk inclusive cumulative product: ``out[i] = prod(inputs[start .. i])``."""
    return _scan(inputs, packed_info, "prod", exclusive=False)


def _exclusive_prod(
    inputs: Float[Tensor, " n"] | Float[Tensor, "n_rays s"], packed_info: Int[Tensor, "n_rays 2"] | None
) -> Float[Tensor, "..."]:
    """Per-chunk exclusive cumulative product: ``out[i] = prod(inputs[start .. i-1])`` (1 for the first).

    The gradient is exact when inputs contain zeros (nerfacc 0.5's kernel divides by the input there).
    """
    return _scan(inputs, packed_info, "prod", exclusive=True)


def _rows_packed_info(x: Tensor) -> Tensor:
    """``packed_info`` of a batched ``(n_rays, n)`` tensor's rows in its flattened form."""
    r, s = x.shape
    starts = torch.arange(r, device=x.device, dtype=torch.long) * s
    return torch.stack([starts, torch.full_like(starts, s)], dim=-1)


# ---------------------------------------------------------------------------------------------
# Volume rendering
# ---------------------------------------------------------------------------------------------
def _render_weight_from_density(
    t_starts: Float[Tensor, " n"],
    t_ends: Float[Tensor, " n"],
    sigmas: Float[Tensor, " n"],
    packed_info: Int[Tensor, "n_rays 2"] | None,
) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"], Float[Tensor, " n"]]:
    """Weights, transmittance and opacity from densities.

    ``tau_i = sigma_i * (t_end_i - t_start_i)``, ``alpha_i = 1 - exp(-tau_i)``,
    ``T_i = exp(-sum_{j<i} tau_j)`` within the ray, ``w_i = T_i * alpha_i``.

    Returns:
        ``(weights, trans, alphas)``. Samples outside every chunk get ``trans = weights = 0``. With
        ``packed_info=None`` the inputs are batched ``(n_rays, n)`` and so are the outputs.
    """
    if packed_info is None:
        flat = [x.reshape(-1) for x in (t_starts, t_ends, sigmas)]
        outs = _render_weight_from_density(*flat, _rows_packed_info(sigmas))
        return tuple(o.reshape(sigmas.shape) for o in outs)
    sigmas_dt = sigmas * (t_ends - t_starts)
    alphas = 1.0 - torch.exp(-sigmas_dt)
    trans = torch.exp(-_exclusive_sum(sigmas_dt, packed_info))
    mask = _covered_mask(packed_info, sigmas.numel())
    if mask is not None:
        trans = trans * mask
    weights = trans * alphas
    return weights, trans, alphas


def _render_weight_from_alpha(
    alphas: Float[Tensor, " n"], packed_info: Int[Tensor, "n_rays 2"] | None
) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"]]:
    """Weights and transmittance from opacities: ``T_i = prod_{j<i}(1 - alpha_j)``, ``w_i = T_i * alpha_i``.

    Returns:
        ``(weights, trans)``. Samples outside every chunk get ``trans = weights = 0``. With ``packed_info=None``
        the inputs are batched ``(n_rays, n)`` and so are the outputs.
    """
    trans = _exclusive_prod(1.0 - alphas, packed_info)
    weights = trans * alphas
    return weights, trans


def _accumulate_along_rays(
    weights: Float[Tensor, " n"],
    values: Float[Tensor, "n d"] | None,
    ray_indices: Int[Tensor, " n"],
    n_rays: int,
) -> Float[Tensor, "n_rays d"]:
    """``out[r] = sum_{i: ray_indices[i] = r} weights[i] * values[i]`` (``values = 1`` when None)."""
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros((n_rays, src.shape[-1]), dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)


# ---------------------------------------------------------------------------------------------
# Ray / box geometry
# ---------------------------------------------------------------------------------------------
def _slab_intervals(rays_o: Tensor, rays_d: Tensor, aabbs: Tensor) -> tuple[Tensor, Tensor]:
    """Unclipped entry/exit distances of every ray through every box, ``[n_rays, n_boxes]`` each.

    Axis-parallel rays (a zero direction component) are handled exactly: on that axis the slab is
    ``(-inf, inf)`` when the origin lies within the box's extent (closed interval) and empty
    otherwise. A miss shows as ``t_min > t_max``.
    """
    o = rays_o[:, None, :]
    d = rays_d[:, None, :]
    lo = aabbs[None, :, :3]
    hi = aabbs[None, :, 3:]
    zero = d == 0
    safe_d = torch.where(zero, torch.ones_like(d), d)
    t1 = (lo - o) / safe_d
    t2 = (hi - o) / safe_d
    near_ax = torch.minimum(t1, t2)
    far_ax = torch.maximum(t1, t2)
    inside = (o >= lo) & (o <= hi)
    inf = torch.full_like(near_ax, math.inf)
    near_ax = torch.where(zero, torch.where(inside, -inf, inf), near_ax)
    far_ax = torch.where(zero, torch.where(inside, inf, -inf), far_ax)
    return near_ax.amax(dim=-1), far_ax.amin(dim=-1)


def _ray_aabb_intersect(
    rays_o: Float[Tensor, "n_rays 3"],
    rays_d: Float[Tensor, "n_rays 3"],
    aabbs: Float[Tensor, "m 6"],
    near_plane: float,
    far_plane: float,
    miss_value: float,
) -> tuple[Float[Tensor, "n_rays m"], Float[Tensor, "n_rays m"], Bool[Tensor, "n_rays m"]]:
    """Ray / axis-aligned box intersection, clipped to ``[near_plane, far_plane]``.

    ``t_min = max(slab entry, near_plane)`` and ``t_max = min(slab exit, far_plane)``; a pair hits
    when ``t_max > t_min`` and the box is not entirely behind the origin (slab exit > 0). Misses get
    ``miss_value`` in both outputs.
    """
    t_in, t_out = _slab_intervals(rays_o, rays_d, aabbs)
    t_min = torch.clamp(t_in, min=near_plane)
    t_max = torch.clamp(t_out, max=far_plane)
    hits = (t_max > t_min) & (t_out > 0)
    miss = torch.full_like(t_min, miss_value)
    return torch.where(hits, t_min, miss), torch.where(hits, t_max, miss), hits


# ---------------------------------------------------------------------------------------------
# Grid traversal
# ---------------------------------------------------------------------------------------------
def _lattice_t(k: Tensor, near: Tensor, step_size: float, cone_angle: float) -> Tensor:
    """Closed form of the marching lattice ``t_k`` (float64 in, float64 out).

    The march starts at ``t_0 = near`` and steps by ``dt_k = max(step_size, cone_angle * t_k)``:
    ``t_k = near + k * step_size`` while ``t_k < step_size / cone_angle``; after the first lattice
    point ``t_K`` past that threshold the steps grow geometrically, ``t_{K+j} = t_K * (1 + cone_angle)^j``.
    """
    if cone_angle <= 0.0:
        return near + k * step_size
    thresh = step_size / cone_angle
    n_uniform = torch.clamp(torch.ceil((thresh - near) / step_size), min=0.0)
    t_uniform = near + torch.minimum(k, n_uniform) * step_size
    extra = torch.clamp(k - n_uniform, min=0.0)
    return t_uniform * torch.pow(1.0 + cone_angle, extra)


def _lattice_k(t: Tensor, near: Tensor, step_size: float, cone_angle: float) -> Tensor:
    """Approximate inverse of :func:`_lattice_t` (real-valued ``k`` with ``t_k ~= t``)."""
    if cone_angle <= 0.0:
        return (t - near) / step_size
    thresh = step_size / cone_angle
    n_uniform = torch.clamp(torch.ceil((thresh - near) / step_size), min=0.0)
    t_k = near + n_uniform * step_size
    k_uniform = (t - near) / step_size
    k_geom = n_uniform + torch.log(torch.clamp(t / t_k, min=1e-30)) / math.log1p(cone_angle)
    return torch.where(t < t_k, k_uniform, k_geom)


def _first_mid_at_or_after(bound: Tensor, near: Tensor, step_size: float, cone_angle: float) -> Tensor:
    """Smallest ``k >= 0`` with ``(t_k + t_{k+1}) / 2 >= bound`` (float64, integral values)."""
    k = torch.clamp(torch.floor(_lattice_k(bound, near, step_size, cone_angle)) - 1.0, min=0.0)
    k = torch.where(torch.isfinite(k), k, torch.zeros_like(k))
    for _ in range(4):  # the estimate is within a couple of steps; settle it exactly
        mid = 0.5 * (_lattice_t(k, near, step_size, cone_angle) + _lattice_t(k + 1, near, step_size, cone_angle))
        k = torch.where(mid < bound, k + 1.0, k)
        prev = torch.clamp(k - 1.0, min=0.0)
        mid_prev = 0.5 * (
            _lattice_t(prev, near, step_size, cone_angle) + _lattice_t(prev + 1, near, step_size, cone_angle)
        )
        k = torch.where((k > 0) & (mid_prev >= bound), prev, k)
    return k


def _traverse_grids(
    rays_o: Float[Tensor, "n_rays 3"],
    rays_d: Float[Tensor, "n_rays 3"],
    binaries: Bool[Tensor, "levels rx ry rz"],
    aabbs: Float[Tensor, "levels 6"],
    near_planes: Float[Tensor, " n_rays"],
    far_planes: Float[Tensor, " n_rays"],
    step_size: float,
    cone_angle: float,
) -> tuple[Int[Tensor, " n_samples"], Float[Tensor, " n_samples"], Float[Tensor, " n_samples"]]:
    """Marches rays through a stack of occupancy grids and keeps the samples in occupied cells.

    Semantics (the kernels reproduce them exactly, computing positions in float64):

    * Each ray marches the lattice of :func:`_lattice_t` anchored at its ``near_planes`` value.
      Sample ``k`` is the interval ``[t_k, t_{k+1}]`` with midpoint ``m_k``.
    * A sample is kept when ``near <= m_k < far``, ``m_k`` lies within ``[t_min, t_max)`` of the
      union of the levels' boxes, and the point ``x = o + m_k * d`` falls in an occupied cell of the
      **lowest-index level whose box contains it**. The cell of ``x`` in level ``l`` is
      ``floor((x - lo_l) / (hi_l - lo_l) * res)`` per axis; ``x`` is in the box when every index is
      in ``[0, res)``.
    * Output is sorted by ray, then by ``t``.

    Returns:
        ``(ray_indices, t_starts, t_ends)`` of the kept samples, in the dtype of ``rays_o``.
    """
    device = rays_o.device
    out_dtype = rays_o.dtype
    n_rays = rays_o.shape[0]
    empty = (
        torch.zeros(0, dtype=torch.long, device=device),
        torch.zeros(0, dtype=out_dtype, device=device),
        torch.zeros(0, dtype=out_dtype, device=device),
    )
    if n_rays == 0 or binaries.numel() == 0:
        return empty
    o64, d64, aabbs64 = rays_o.double(), rays_d.double(), aabbs.double()
    near = near_planes.double()
    far = far_planes.double()
    t_in, t_out = _slab_intervals(o64, d64, aabbs64)  # [n_rays, levels]
    hit = (t_out > t_in) & (t_out > 0)
    lo = torch.where(hit, t_in, torch.full_like(t_in, math.inf)).amin(dim=-1)
    hi = torch.where(hit, t_out, torch.full_like(t_out, -math.inf)).amax(dim=-1)
    lo = torch.maximum(lo, near)
    hi = torch.minimum(hi, far)
    valid = torch.isfinite(lo) & (hi > lo)
    lo = torch.where(valid, lo, near)
    hi = torch.where(valid, hi, near)
    k_lo = _first_mid_at_or_after(lo, near, step_size, cone_angle)
    k_hi = _first_mid_at_or_after(hi, near, step_size, cone_angle)  # exclusive end
    counts = torch.where(valid, torch.clamp(k_hi - k_lo, min=0.0), torch.zeros_like(k_lo)).long()

    res = torch.tensor(binaries.shape[1:], device=device, dtype=torch.long)
    n_levels = binaries.shape[0]
    flat_bin = binaries.reshape(-1)
    cells_per_level = int(res.prod().item())

    out_rays, out_t0, out_t1 = [], [], []
    cum = torch.cumsum(counts, 0)
    total = int(cum[-1].item())
    start_ray = 0
    while start_ray < n_rays and total > 0:
        # Take as many rays as fit in the chunk budget (at least one).
        base = 0 if start_ray == 0 else int(cum[start_ray - 1].item())
        end_ray = int(torch.searchsorted(cum, torch.tensor(base + _TRAVERSE_CHUNK, device=device), right=True).item())
        end_ray = max(min(end_ray, n_rays), start_ray + 1)
        rays = torch.arange(start_ray, end_ray, device=device)
        c = counts[start_ray:end_ray]
        ray_ids = torch.repeat_interleave(rays, c)
        if ray_ids.numel() > 0:
            offsets = torch.cumsum(c, 0) - c
            local = torch.arange(ray_ids.numel(), device=device) - offsets[ray_ids - start_ray]
            k = k_lo[ray_ids] + local.double()
            nr = near[ray_ids]
            t0 = _lattice_t(k, nr, step_size, cone_angle)
            t1 = _lattice_t(k + 1.0, nr, step_size, cone_angle)
            mid = 0.5 * (t0 + t1)
            x = o64[ray_ids] + mid[:, None] * d64[ray_ids]
            occupied = torch.zeros_like(mid, dtype=torch.bool)
            assigned = torch.zeros_like(mid, dtype=torch.bool)
            for lvl in range(n_levels):  # loop over grid levels (a handful), not rays or samples
                box_lo, box_hi = aabbs64[lvl, :3], aabbs64[lvl, 3:]
                idx = torch.floor((x - box_lo) / (box_hi - box_lo) * res.double())
                inside = ((idx >= 0) & (idx < res.double())).all(dim=-1) & ~assigned
                idx = idx.clamp(min=0).long()
                idx = torch.minimum(idx, res - 1)
                cell = ((idx[:, 0] * res[1] + idx[:, 1]) * res[2] + idx[:, 2]) + lvl * cells_per_level
                occupied = occupied | (inside & flat_bin[cell])
                assigned = assigned | inside
            keep = occupied & (mid >= lo[ray_ids]) & (mid < hi[ray_ids])
            out_rays.append(ray_ids[keep])
            out_t0.append(t0[keep].to(out_dtype))
            out_t1.append(t1[keep].to(out_dtype))
        start_ray = end_ray
    if not out_rays:
        return empty
    return torch.cat(out_rays), torch.cat(out_t0), torch.cat(out_t1)


# ---------------------------------------------------------------------------------------------
# Sorted search and inverse-CDF sampling
# ---------------------------------------------------------------------------------------------
def _to_padded(vals: Tensor, packed_info: Tensor, fill: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Scatters packed values into a dense ``[n_rays, max_count]`` tensor padded with ``fill``."""
    ray_ids, pos, elem = _chunk_layout(packed_info)
    n_rays = packed_info.shape[0]
    width = int(packed_info[:, 1].max().item()) if n_rays > 0 else 0
    dense = vals.new_full((n_rays, max(width, 1)), fill)
    dense[ray_ids, pos] = vals[elem]
    return dense, ray_ids, pos, elem


def _searchsorted(
    sorted_vals: Float[Tensor, " e"],
    sorted_packed_info: Int[Tensor, "n_rays 2"],
    query_vals: Float[Tensor, " q"],
    query_packed_info: Int[Tensor, "n_rays 2"],
) -> tuple[Int[Tensor, " q"], Int[Tensor, " q"]]:
    """Per-ray search of queries in ascending sequences (nerfacc 0.5's rule).

    For a query ``v`` of ray ``r`` whose sequence is ``s[b .. l]`` (``l = b + c - 1``), the search runs
    over ``s[b .. l-1]`` (the last entry excluded): ``p = b + (number of entries of s[b .. l-1] that are
    <= v)``, so ``b <= p <= max(l, b)``. Then ``ids_left = max(min(p - 1, l), b)`` and
    ``ids_right = max(min(p, l), b)``: ``s[ids_left] <= v < s[ids_right]`` whenever
    ``s[b] <= v < s[l]``; a query below the range gives ``(b, b)``, one at or above ``s[l]`` gives
    ``(l - 1, l)`` (``(b, b)`` for a one-entry sequence). Rays with an empty sequence give ``b`` for
    both (clamped to a valid index when possible). Queries outside every chunk give 0.
    """
    q_ids = torch.zeros_like(query_vals, dtype=torch.long)
    if query_vals.numel() == 0 or query_packed_info.shape[0] == 0:
        return q_ids, q_ids.clone()
    counts = sorted_packed_info[:, 1]
    search_counts = torch.clamp(counts - 1, min=0)
    search_info = torch.stack([sorted_packed_info[:, 0], search_counts], dim=-1)
    dense, _, _, _ = _to_padded(sorted_vals, search_info, math.inf)
    q_dense, q_ray, q_pos, q_elem = _to_padded(query_vals, query_packed_info, 0.0)
    p = torch.searchsorted(dense.contiguous(), q_dense.contiguous(), right=True)  # [n_rays, max_q]
    # Padding (+inf) counts as <= an infinite or NaN query; never search past the ray's own entries.
    p = torch.minimum(p[q_ray, q_pos], search_counts[q_ray])
    base = sorted_packed_info[q_ray, 0]
    last = base + counts[q_ray] - 1
    p = base + p
    ids_left = torch.maximum(torch.minimum(p - 1, last), base)
    ids_right = torch.maximum(torch.minimum(p, last), base)
    if sorted_vals.numel() > 0:
        ids_right = ids_right.clamp(max=sorted_vals.numel() - 1)
        ids_left = ids_left.clamp(max=sorted_vals.numel() - 1)
    out_left = q_ids.clone()
    out_right = q_ids.clone()
    out_left[q_elem] = ids_left
    out_right[q_elem] = ids_right
    return out_left, out_right


def _importance_sampling(
    edge_vals: Float[Tensor, " e"],
    cdfs: Float[Tensor, " e"],
    packed_info: Int[Tensor, "n_rays 2"],
    n_per_ray: Int[Tensor, " n_rays"],
    bias: Float[Tensor, " n_rays"],
    n_uniform: int = -1,
) -> tuple[Float[Tensor, " s"], Int[Tensor, "n_rays 2"], Float[Tensor, " e2"], Int[Tensor, "n_rays 2"]]:
    """Inverse-transform sampling of piecewise-linear CDFs given at interval edges.

    ``n_uniform >= 0`` is a promise by the caller that every ray has edges and ``n_per_ray == n_uniform``
    (the batched layout): the compiled builds then size their outputs without reading the device (no host sync).
    The result is the same.

    For ray ``r`` with edges ``t[b .. l]`` and CDF values ``c[b .. l]`` (non-decreasing) and
    ``n = n_per_ray[r]`` new intervals:

    * sample ``j`` (``0 <= j < n``) sits at ``u_j = c[b] + (j + bias[r]) * (c[l] - c[b]) / n``,
      mapped through the inverse CDF: with ``p`` = number of ``c[b .. l-1]`` entries ``<= u_j``,
      ``p0 = clamp(b + p - 1, b, l)``, ``p1 = clamp(b + p, b, l)``, the sample is the linear
      interpolation between ``t[p0]`` and ``t[p1]`` (their midpoint when ``c[p1] - c[p0] < 1e-10``);
    * the ``n + 1`` new edges are the midpoints between consecutive samples, with the first and last
      extended by half the neighbouring gap and clipped to ``[t[b], t[l]]``; with ``n = 1`` the
      edges are ``t[b]`` and ``t[l]``;
    * rays with ``n = 0`` or no edges produce nothing.

    Returns:
        ``(sample_vals, sample_packed_info, new_edge_vals, new_edge_packed_info)``, packed per ray.
    """
    n_rays = packed_info.shape[0]
    counts = packed_info[:, 1]
    n = torch.where(counts > 0, n_per_ray.long(), torch.zeros_like(n_per_ray, dtype=torch.long))
    n = torch.clamp(n, min=0)
    s_counts = n
    e_counts = torch.where(n > 0, n + 1, torch.zeros_like(n))
    s_packed = torch.stack([torch.cumsum(s_counts, 0) - s_counts, s_counts], dim=-1)
    e_packed = torch.stack([torch.cumsum(e_counts, 0) - e_counts, e_counts], dim=-1)
    n_samples = int(s_counts.sum().item()) if n_rays > 0 else 0
    if n_samples == 0:
        return edge_vals.new_zeros(0), s_packed, edge_vals.new_zeros(0), e_packed

    s_ray, s_pos, _ = _chunk_layout(s_packed)
    b = packed_info[s_ray, 0]
    last = b + counts[s_ray] - 1
    c_lo = cdfs[b]
    c_hi = cdfs[last]
    u = c_lo + (s_pos.to(cdfs.dtype) + bias[s_ray].to(cdfs.dtype)) * (c_hi - c_lo) / n[s_ray].to(cdfs.dtype)

    # p = number of entries of c[b .. l-1] that are <= u (the last edge is excluded from the search).
    search_info = torch.stack([packed_info[:, 0], torch.clamp(counts - 1, min=0)], dim=-1)
    dense, _, _, _ = _to_padded(cdfs, search_info, math.inf)
    u_dense = u.new_zeros((n_rays, int(n.max().item())))
    u_dense[s_ray, s_pos] = u
    p = torch.searchsorted(dense.contiguous(), u_dense.contiguous(), right=True)[s_ray, s_pos]
    p0 = torch.minimum(torch.maximum(b + p - 1, b), last)
    p1 = torch.minimum(torch.maximum(b + p, b), last)
    cu0, cu1 = cdfs[p0], cdfs[p1]
    t0, t1 = edge_vals[p0], edge_vals[p1]
    du = cu1 - cu0
    flat = du < 1e-10
    safe_du = torch.where(flat, torch.ones_like(du), du)
    samples = torch.where(flat, 0.5 * (t0 + t1), t0 + (u - cu0) * (t1 - t0) / safe_du)

    # Edges: midpoints, first/last extended by half a gap and clipped to the ray's range.
    e_ray, e_pos, _ = _chunk_layout(e_packed)  # only rays with n > 0, hence with >= 1 edge
    e_first = edge_vals[packed_info[e_ray, 0]]
    e_last = edge_vals[packed_info[e_ray, 0] + counts[e_ray] - 1]
    s_base = s_packed[e_ray, 0]
    n_e = n[e_ray]
    j_left = torch.clamp(e_pos - 1, min=0)
    j_right = torch.minimum(e_pos, n_e - 1)
    left = samples[s_base + j_left]
    right = samples[s_base + j_right]
    mids = 0.5 * (left + right)
    s0 = samples[s_base]
    s1 = samples[s_base + torch.minimum(torch.ones_like(n_e), n_e - 1)]
    first = torch.maximum(s0 - 0.5 * (s1 - s0), e_first)
    sl = samples[s_base + n_e - 1]
    sl_prev = samples[s_base + torch.clamp(n_e - 2, min=0)]
    last_edge = torch.minimum(sl + 0.5 * (sl - sl_prev), e_last)
    single = n_e == 1
    first = torch.where(single, e_first, first)
    last_edge = torch.where(single, e_last, last_edge)
    edges = torch.where(e_pos == 0, first, torch.where(e_pos == n_e, last_edge, mids))
    return samples, s_packed, edges, e_packed


# ---------------------------------------------------------------------------------------------
# Scene contraction
# ---------------------------------------------------------------------------------------------
def _norm(x: Tensor, ord: str) -> Tensor:
    if ord == "linf":
        return x.abs().amax(dim=-1, keepdim=True)
    if ord == "l2":
        return torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    raise ValueError(f"ord must be 'l2' or 'linf', got {ord!r}")


def _contract(x: Float[Tensor, "n 3"], aabb: Float[Tensor, " 6"], ord: str) -> Float[Tensor, "n 3"]:
    """mip-NeRF 360 contraction of world points into the unit cube.

    The box is mapped linearly to ``[-1, 1]^3`` (``z = (x - center) / half_extent``); points with
    ``|z| <= 1`` stay where they are, the rest become ``(2 - 1/|z|) z/|z|`` (``|.|`` is the L2 or
    L-infinity norm), and the result ``[-2, 2]^3`` is mapped to ``[0, 1]^3`` (``y = z/4 + 1/2``).

    The norm is taken of ``z`` scaled by its largest magnitude, so huge finite points do not overflow;
    points with infinite coordinates get the limit: ``2 d/|d|`` with ``d`` the sign of the infinite
    coordinates and 0 elsewhere (``[inf, 0, 0] -> [1, 0.5, 0.5]``), with a zero gradient there. A point
    with a NaN coordinate maps to NaN in all three.
    """
    center = (aabb[:3] + aabb[3:]) * 0.5
    half = (aabb[3:] - aabb[:3]) * 0.5
    z = (x - center) / half
    inf_mask = torch.isinf(z)
    has_inf = inf_mask.any(dim=-1, keepdim=True)
    z_fin = torch.where(has_inf, torch.ones_like(z), z)  # finite stand-in for rows with an infinity (unused)
    scale = torch.clamp(z_fin.abs().amax(dim=-1, keepdim=True), min=1.0)
    u = z_fin / scale  # |u|_inf <= 1: its norm cannot overflow
    nu = _norm(u, ord)
    m = scale * nu  # |z|
    outside = m > 1.0
    # Outside branch on safe values only, so that the unselected branch has finite gradients too.
    nu_safe = torch.where(outside, nu, torch.ones_like(nu))
    m_safe = torch.where(outside, m, torch.full_like(m, 2.0))
    zc = torch.where(outside, (2.0 - 1.0 / m_safe) * (u / nu_safe), z_fin)
    direction = torch.where(inf_mask, torch.sign(z), torch.zeros_like(z))
    zc = torch.where(has_inf, 2.0 * direction / _norm(direction, ord).clamp(min=1.0), zc)
    # A NaN coordinate makes the whole point NaN (its norm is undefined), as in the compiled kernels.
    zc = torch.where(torch.isnan(z).any(dim=-1, keepdim=True), torch.full_like(zc, float("nan")), zc)
    return zc * 0.25 + 0.5


def _uncontract(y: Float[Tensor, "n 3"], aabb: Float[Tensor, " 6"], ord: str) -> Float[Tensor, "n 3"]:
    """Inverse of :func:`_contract`. Points on or beyond the outer shell (``|z| >= 2``) map to a
    large finite distance (``|z|`` is clamped to ``2 - 1e-6``)."""
    center = (aabb[:3] + aabb[3:]) * 0.5
    half = (aabb[3:] - aabb[:3]) * 0.5
    zc = (y - 0.5) * 4.0
    m = torch.clamp(_norm(zc, ord), min=1.0, max=2.0 - 1e-6)
    z = zc / (m * (2.0 - m))
    return z * half + center


# ---------------------------------------------------------------------------------------------
# Occupancy grid update
# ---------------------------------------------------------------------------------------------
def _grid_ema_update(
    occs: Float[Tensor, " c"], cell_ids: Int[Tensor, " k"], values: Float[Tensor, " k"], ema_decay: float
) -> Float[Tensor, " c"]:
    """EMA update of the occupancy values of the sampled cells.

    ``new[c] = max(occs[c] * ema_decay, max of values sampled in c)`` for every sampled cell ``c``
    whose value is non-negative; cells not sampled and cells marked invisible (``occs < 0``) are
    unchanged. Duplicate ``cell_ids`` are reduced deterministically with ``max``.
    """
    new = occs.clone()
    visible = occs[cell_ids] >= 0
    ids = cell_ids[visible]
    vals = values[visible].to(occs.dtype)
    new[ids] = occs[ids] * ema_decay
    return new.scatter_reduce(0, ids, vals, reduce="amax", include_self=True)
