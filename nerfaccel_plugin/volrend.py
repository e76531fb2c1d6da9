"""Packed volume rendering: weights, transmittance, visibility and accumulation along rays.

All functions accept batched ``(..., n_samples)`` tensors (any number of leading dimensions; a 1-D
tensor is one ray) or flattened ``(all_samples,)`` tensors with either ``packed_info`` or
``ray_indices`` (+ ``n_rays``), like nerfacc 0.5. Flattened samples must be sorted by ray. Weights,
transmittance and opacity are computed by one fused primitive per call (one pass per ray in the
kernels) rather than a scan followed by a gather.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from . import _validation as check
from ._backend import op as dispatch
from .pack import pack_info


def _layout(
    ref_name: str,
    ref: Tensor,
    packed_info: Optional[Tensor],
    ray_indices: Optional[Tensor],
    n_rays: Optional[int],
) -> tuple[Optional[Tensor], Optional[torch.Size]]:
    """Returns ``(packed_info, batched_shape)`` describing the sample layout of ``ref``.

    Without ``packed_info`` and ``ray_indices`` the samples are batched ``(..., n_samples)`` (any number of
    leading dimensions, as in nerfacc: a 1-D tensor is one ray): ``(None, ref.shape)``, and the ops get the rows
    ``(n_rays, n_samples)`` without a packed_info. Otherwise ``(packed_info, None)`` for flat samples.
    """
    if packed_info is None and ray_indices is None:
        if ref.dim() == 0:
            raise ValueError(
                f"`{ref_name}` must be batched with shape (..., n_samples), or flattened (all_samples,) together "
                "with `packed_info` or `ray_indices`; got a 0-d tensor."
            )
        return None, ref.shape
    if ref.dim() != 1:
        raise ValueError(
            f"`{ref_name}` must be flattened with shape (all_samples,) when `packed_info` or `ray_indices` is "
            f"given, got {tuple(ref.shape)}; for batched (..., n_samples) samples pass neither."
        )
    if packed_info is None:
        check.same_device(**{ref_name: ref, "ray_indices": ray_indices})
        ray_indices = check.ray_indices(ray_indices, ref.shape[0], n_rays)
        packed_info = pack_info(ray_indices, n_rays)
    else:
        check.same_device(**{ref_name: ref, "packed_info": packed_info})
        packed_info = check.packed_info(packed_info, ref.shape[0])
    return packed_info, None


def _flat(x: Tensor, dtype: torch.dtype, batched: Optional[torch.Size] = None) -> Tensor:
    """Flat ``(all_samples,)`` samples, or the rows ``(n_rays, n_samples)`` of batched ones."""
    if batched is not None:
        return x.to(dtype).reshape(math.prod(batched[:-1]), batched[-1]).contiguous()
    return x.reshape(-1).to(dtype).contiguous()


def render_transmittance_from_alpha(
    alphas: Float[Tensor, "..."],
    packed_info: Optional[Int[Tensor, "n_rays 2"]] = None,
    ray_indices: Optional[Int[Tensor, " all_samples"]] = None,
    n_rays: Optional[int] = None,
    prefix_trans: Optional[Float[Tensor, "..."]] = None,
) -> Float[Tensor, "..."]:
    """Transmittance ``T_i = prod_{j<i} (1 - alpha_j)`` from opacities.

    Args:
        alphas: Opacities, flattened ``(all_samples,)`` or batched ``(..., n_samples)``.
        packed_info: ``(n_rays, 2)`` int ``(start, count)`` chunks of flattened samples.
        ray_indices: ``(all_samples,)`` sorted ray index of each sample (alternative to ``packed_info``).
        n_rays: Number of rays (with ``ray_indices``); inferred from them when None.
        prefix_trans: Optional transmittance to multiply in, same shape as ``alphas``.

    Returns:
        Transmittance ``(...)``, the shape of ``alphas``. Differentiable w.r.t. ``alphas`` and ``prefix_trans``.

    Example:
        >>> alphas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
        >>> render_transmittance_from_alpha(alphas, ray_indices=torch.tensor([0, 0, 0, 1, 1, 2, 2]))
        tensor([1.0000, 0.6000, 0.1200, 1.0000, 0.2000, 1.0000, 1.0000])
    """
    return render_weight_from_alpha(alphas, packed_info, ray_indices, n_rays, prefix_trans)[1]


def render_transmittance_from_density(
    t_starts: Float[Tensor, "..."],
    t_ends: Float[Tensor, "..."],
    sigmas: Float[Tensor, "..."],
    packed_info: Optional[Int[Tensor, "n_rays 2"]] = None,
    ray_indices: Optional[Int[Tensor, " all_samples"]] = None,
    n_rays: Optional[int] = None,
    prefix_trans: Optional[Float[Tensor, "..."]] = None,
) -> tuple[Float[Tensor, "..."], Float[Tensor, "..."]]:
    """Transmittance ``T_i = exp(-sum_{j<i} sigma_j delta_j)`` and opacity from densities.

    Args:
        t_starts: Sample starts, flattened ``(all_samples,)`` or batched ``(..., n_samples)``.
        t_ends: Sample ends, same shape.
        sigmas: Densities, same shape.
        packed_info: ``(n_rays, 2)`` int ``(start, count)`` chunks of flattened samples.
        ray_indices: ``(all_samples,)`` sorted ray index of each sample (alternative to ``packed_info``).
        n_rays: Number of rays (with ``ray_indices``); inferred from them when None.
        prefix_trans: Optional transmittance to multiply in, same shape as ``sigmas``.

    Returns:
        ``(trans, alphas)``, each ``(...)``, the shape of ``sigmas``. Differentiable w.r.t. ``sigmas``,
        ``t_starts``, ``t_ends`` and ``prefix_trans``.
    """
    _, trans, alphas = render_weight_from_density(
        t_starts, t_ends, sigmas, packed_info, ray_indices, n_rays, prefix_trans
    )
    return trans, alphas


def render_weight_from_alpha(
    alphas: Float[Tensor, "..."],
    packed_info: Optional[Int[Tensor, "n_rays 2"]] = None,
    ray_indices: Optional[Int[Tensor, " all_samples"]] = None,
    n_rays: Optional[int] = None,
    prefix_trans: Optional[Float[Tensor, "..."]] = None,
) -> tuple[Float[Tensor, "..."], Float[Tensor, "..."]]:
    """Rendering weights ``w_i = T_i alpha_i`` from opacities, with ``T_i = prod_{j<i} (1 - alpha_j)``.

    Differentiable w.r.t. ``alphas`` (exact also where ``alpha = 1``) and ``prefix_trans``.

    Args:
        alphas: Opacities, flattened ``(all_samples,)`` or batched ``(..., n_samples)``.
        packed_info: ``(n_rays, 2)`` int ``(start, count)`` chunks of flattened samples.
        ray_indices: ``(all_samples,)`` sorted ray index of each sample (alternative to ``packed_info``).
        n_rays: Number of rays (with ``ray_indices``); inferred from them when None.
        prefix_trans: Optional transmittance to multiply in, same shape as ``alphas``.

    Returns:
        ``(weights, trans)``, each ``(...)``, the shape of ``alphas``.

    Example:
        >>> alphas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
        >>> w, t = render_weight_from_alpha(alphas, ray_indices=torch.tensor([0, 0, 0, 1, 1, 2, 2]))
        >>> w
        tensor([0.4000, 0.4800, 0.0120, 0.8000, 0.0200, 0.0000, 0.9000])
    """
    alphas = check.floating("alphas", alphas)
    packed_info, batched = _layout("alphas", alphas, packed_info, ray_indices, n_rays)
    dtype = check.compute_dtype(alphas)
    weights, trans = dispatch("render_weight_from_alpha", alphas.device)(_flat(alphas, dtype, batched), packed_info)
    if batched is not None:
        weights, trans = weights.reshape(batched), trans.reshape(batched)
    if prefix_trans is not None:
        prefix_trans = check.floating("prefix_trans", prefix_trans)
        check.same_shape("prefix_trans", prefix_trans, "alphas", alphas)
        trans = trans * prefix_trans
        weights = weights * prefix_trans
    return weights, trans


def render_weight_from_density(
    t_starts: Float[Tensor, "..."],
    t_ends: Float[Tensor, "..."],
    sigmas: Float[Tensor, "..."],
    packed_info: Optional[Int[Tensor, "n_rays 2"]] = None,
    ray_indices: Optional[Int[Tensor, " all_samples"]] = None,
    n_rays: Optional[int] = None,
    prefix_trans: Optional[Float[Tensor, "..."]] = None,
) -> tuple[Float[Tensor, "..."], Float[Tensor, "..."], Float[Tensor, "..."]]:
    """Rendering weights ``w_i = T_i (1 - exp(-sigma_i delta_i))`` from densities, ``delta_i = t_end_i - t_start_i``.

    Differentiable w.r.t. ``sigmas``, ``t_starts``, ``t_ends`` and ``prefix_trans``.

    Args:
        t_starts: Sample starts, flattened ``(all_samples,)`` or batched ``(..., n_samples)``.
        t_ends: Sample ends, same shape.
        sigmas: Densities, same shape.
        packed_info: ``(n_rays, 2)`` int ``(start, count)`` chunks of flattened samples.
        ray_indices: ``(all_samples,)`` sorted ray index of each sample (alternative to ``packed_info``).
        n_rays: Number of rays (with ``ray_indices``); inferred from them when None.
        prefix_trans: Optional transmittance to multiply in, same shape as ``sigmas``.

    Returns:
        ``(weights, trans, alphas)``, each ``(...)``, the shape of ``sigmas``.

    Example:
        >>> t_starts = torch.arange(7.0); t_ends = t_starts + 1
        >>> sigmas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
        >>> ray_indices = torch.tensor([0, 0, 0, 1, 1, 2, 2])
        >>> w, t, a = render_weight_from_density(t_starts, t_ends, sigmas, ray_indices=ray_indices)
        >>> w
        tensor([0.3297, 0.3691, 0.0287, 0.5507, 0.0428, 0.0000, 0.5934])
    """
    t_starts = check.floating("t_starts", t_starts)
    t_ends = check.floating("t_ends", t_ends)
    sigmas = check.floating("sigmas", sigmas)
    check.same_shape("t_starts", t_starts, "sigmas", sigmas)
    check.same_shape("t_ends", t_ends, "sigmas", sigmas)
    check.same_device(t_starts=t_starts, t_ends=t_ends, sigmas=sigmas)
    packed_info, batched = _layout("sigmas", sigmas, packed_info, ray_indices, n_rays)
    dtype = check.compute_dtype(sigmas)
    weights, trans, alphas = dispatch("render_weight_from_density", sigmas.device)(
        _flat(t_starts, dtype, batched), _flat(t_ends, dtype, batched), _flat(sigmas, dtype, batched), packed_info
    )
    if batched is not None:
        weights, trans, alphas = weights.reshape(batched), trans.reshape(batched), alphas.reshape(batched)
    if prefix_trans is not None:
        prefix_trans = check.floating("prefix_trans", prefix_trans)
        check.same_shape("prefix_trans", prefix_trans, "sigmas", sigmas)
        trans = trans * prefix_trans
        weights = weights * prefix_trans
    return weights, trans, alphas


@torch.no_grad()
def render_visibility_from_alpha(
    alphas: Float[Tensor, "..."],
    packed_info: Optional[Int[Tensor, "n_rays 2"]] = None,
    ray_indices: Optional[Int[Tensor, " all_samples"]] = None,
    n_rays: Optional[int] = None,
    early_stop_eps: float = 1e-4,
    alpha_thre: float = 0.0,
    prefix_trans: Optional[Float[Tensor, "..."]] = None,
) -> Bool[Tensor, "..."]:
    """Which samples matter: ``T_i >= early_stop_eps`` and, if ``alpha_thre > 0``, ``alpha_i >= alpha_thre``.

    Args:
        alphas: Opacities, flattened ``(all_samples,)`` or batched ``(..., n_samples)``.
        packed_info: ``(n_rays, 2)`` int ``(start, count)`` chunks of flattened samples.
        ray_indices: ``(all_samples,)`` sorted ray index of each sample (alternative to ``packed_info``).
        n_rays: Number of rays (with ``ray_indices``); inferred from them when None.
        early_stop_eps: Samples whose transmittance is below this are dropped (early ray termination).
        alpha_thre: Samples with opacity below this are dropped (empty space); 0 keeps them all.
        prefix_trans: Optional transmittance to multiply in, same shape as ``alphas``.

    Returns:
        Boolean mask ``(...)``, the shape of ``alphas``. Not differentiable.

    Example:
        >>> alphas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
        >>> render_visibility_from_alpha(alphas, ray_indices=torch.tensor([0, 0, 0, 1, 1, 2, 2]),
        ...                              early_stop_eps=0.3, alpha_thre=0.2)
        tensor([ True,  True, False,  True, False, False,  True])
    """
    trans = render_transmittance_from_alpha(alphas, packed_info, ray_indices, n_rays, prefix_trans)
    vis = trans >= early_stop_eps
    if alpha_thre > 0:
        vis = vis & (alphas >= alpha_thre)
    return vis


@torch.no_grad()
def render_visibility_from_density(
    t_starts: Float[Tensor, "..."],
    t_ends: Float[Tensor, "..."],
    sigmas: Float[Tensor, "..."],
    packed_info: Optional[Int[Tensor, "n_rays 2"]] = None,
    ray_indices: Optional[Int[Tensor, " all_samples"]] = None,
    n_rays: Optional[int] = None,
    early_stop_eps: float = 1e-4,
    alpha_thre: float = 0.0,
    prefix_trans: Optional[Float[Tensor, "..."]] = None,
) -> Bool[Tensor, "..."]:
    """Which samples matter, from densities: ``T_i >= early_stop_eps`` and, if ``alpha_thre > 0``,
    ``alpha_i = 1 - exp(-sigma_i delta_i) >= alpha_thre``.

    Args:
        t_starts: Sample starts, flattened ``(all_samples,)`` or batched ``(..., n_samples)``.
        t_ends: Sample ends, same shape.
        sigmas: Densities, same shape.
        packed_info: ``(n_rays, 2)`` int ``(start, count)`` chunks of flattened samples.
        ray_indices: ``(all_samples,)`` sorted ray index of each sample (alternative to ``packed_info``).
        n_rays: Number of rays (with ``ray_indices``); inferred from them when None.
        early_stop_eps: Samples whose transmittance is below this are dropped (early ray termination).
        alpha_thre: Samples with opacity below this are dropped (empty space); 0 keeps them all.
        prefix_trans: Optional transmittance to multiply in, same shape as ``sigmas``.

    Returns:
        Boolean mask ``(...)``, the shape of ``sigmas``. Not differentiable.
    """
    trans, alphas = render_transmittance_from_density(
        t_starts, t_ends, sigmas, packed_info, ray_indices, n_rays, prefix_trans
    )
    vis = trans >= early_stop_eps
    if alpha_thre > 0:
        vis = vis & (alphas >= alpha_thre)
    return vis


def accumulate_along_rays(
    weights: Float[Tensor, "..."],
    values: Optional[Float[Tensor, "... d"]] = None,
    ray_indices: Optional[Int[Tensor, " all_samples"]] = None,
    n_rays: Optional[int] = None,
) -> Float[Tensor, "... d"]:
    """Weighted sum of ``values`` along each ray (sum of ``weights`` when ``values`` is None).

    Args:
        weights: Batched ``(..., n_samples)`` (summed over the last dimension; a 1-D tensor is one ray), or
            flattened ``(all_samples,)`` with ``ray_indices``.
        values: ``(..., n_samples, D)`` or ``(all_samples, D)``; None accumulates the weights (D = 1).
        ray_indices: ``(all_samples,)`` ray index of each sample (any order).
        n_rays: Number of rays; required with ``ray_indices``.

    Returns:
        ``(n_rays, D)`` with ``ray_indices``, else ``(..., D)`` (``(D,)`` for 1-D ``weights``).
        Differentiable w.r.t. ``weights`` and ``values``.
    """
    weights = check.floating("weights", weights)
    if values is not None:
        values = check.floating("values", values)
        if values.dim() != weights.dim() + 1 or values.shape[:-1] != weights.shape:
            raise ValueError(
                f"`values` must have shape {tuple(weights.shape)} + (D,) to match `weights`, got {tuple(values.shape)}."
            )
        check.same_device(weights=weights, values=values)
    if ray_indices is None:
        if weights.dim() == 0:
            raise ValueError("`weights` must be batched (..., n_samples) when `ray_indices` is None, got a 0-d tensor.")
        dtype = check.compute_dtype(weights)
        if values is not None:
            dtype = torch.promote_types(dtype, check.compute_dtype(values))
        w = weights.to(dtype)
        src = w[..., None] if values is None else w[..., None] * values.to(dtype)
        return src.sum(dim=-2)
    if n_rays is None:
        raise ValueError("`n_rays` must be given together with `ray_indices`.")
    if weights.dim() != 1:
        raise ValueError(f"`weights` must be flattened (all_samples,) with `ray_indices`, got {tuple(weights.shape)}.")
    check.same_device(weights=weights, ray_indices=ray_indices)
    ray_indices = check.ray_indices(ray_indices, weights.shape[0], n_rays, sorted_=False)
    dtype = check.compute_dtype(weights)
    if values is not None and values.dtype != weights.dtype:
        dtype = torch.promote_types(dtype, check.compute_dtype(values))
    vals = None if values is None else values.to(dtype).contiguous()
    return dispatch("accumulate_along_rays", weights.device)(
        weights.to(dtype).contiguous(), vals, ray_indices, int(n_rays)
    )


def rendering(
    t_starts: Float[Tensor, "..."],
    t_ends: Float[Tensor, "..."],
    ray_indices: Optional[Int[Tensor, " all_samples"]] = None,
    n_rays: Optional[int] = None,
    rgb_sigma_fn: Optional[Callable] = None,
    rgb_alpha_fn: Optional[Callable] = None,
    render_bkgd: Optional[Float[Tensor, " 3"]] = None,
) -> tuple[Float[Tensor, "... 3"], Float[Tensor, "... 1"], Float[Tensor, "... 1"], dict[str, Float[Tensor, "..."]]]:
    """Renders rays through a radiance field given as ``rgb_sigma_fn`` or ``rgb_alpha_fn``.

    Args:
        t_starts: Sample starts, ``(all_samples,)`` (with ``ray_indices``) or batched ``(..., n_samples)``.
        t_ends: Sample ends, same shape.
        ray_indices: ``(all_samples,)`` sorted ray index of each sample, for flattened samples.
        n_rays: Number of rays (with ``ray_indices``); inferred from ``ray_indices`` when None.
        rgb_sigma_fn: ``(t_starts, t_ends, ray_indices) -> (rgbs (..., 3), sigmas (...))``.
        rgb_alpha_fn: ``(t_starts, t_ends, ray_indices) -> (rgbs (..., 3), alphas (...))``.
        render_bkgd: Optional ``(3,)`` (or ``(n_rays, 3)``) background colour.

    Returns:
        ``(colors (n_rays, 3), opacities (n_rays, 1), depths (n_rays, 1), extras)`` (``(..., 3)`` etc. for
        batched samples); ``extras`` holds
        ``weights``, ``alphas``, ``trans``, ``rgbs`` and, for ``rgb_sigma_fn``, ``sigmas``. Depth is the
        weight-averaged sample midpoint (0 for rays with no opacity). Differentiable w.r.t. the field outputs.
    """
    t_starts = check.floating("t_starts", t_starts)
    t_ends = check.floating("t_ends", t_ends)
    check.same_shape("t_starts", t_starts, "t_ends", t_ends)
    if ray_indices is not None:
        check.same_shape("t_starts", t_starts, "ray_indices", ray_indices)
        if n_rays is None:
            n_rays = int(ray_indices.max().item()) + 1 if ray_indices.numel() > 0 else 0
    if rgb_sigma_fn is None and rgb_alpha_fn is None:
        raise ValueError("rendering: pass `rgb_sigma_fn` or `rgb_alpha_fn` (the radiance field to render).")
    if rgb_sigma_fn is not None and rgb_alpha_fn is not None:
        raise ValueError("rendering: pass only one of `rgb_sigma_fn` and `rgb_alpha_fn`.")
    packed_info = None
    if ray_indices is not None:
        check.same_device(t_starts=t_starts, ray_indices=ray_indices)
        ray_indices = check.ray_indices(ray_indices, t_starts.shape[0], n_rays)
        packed_info = pack_info(ray_indices, n_rays)
    if rgb_sigma_fn is not None:
        rgbs, sigmas = rgb_sigma_fn(t_starts, t_ends, ray_indices)
        _check_field_output("rgb_sigma_fn", rgbs, sigmas, t_starts, "sigmas")
        weights, trans, alphas = render_weight_from_density(t_starts, t_ends, sigmas, packed_info=packed_info)
        extras = {"weights": weights, "alphas": alphas, "trans": trans, "sigmas": sigmas, "rgbs": rgbs}
    else:
        rgbs, alphas = rgb_alpha_fn(t_starts, t_ends, ray_indices)
        _check_field_output("rgb_alpha_fn", rgbs, alphas, t_starts, "alphas")
        weights, trans = render_weight_from_alpha(alphas, packed_info=packed_info)
        extras = {"weights": weights, "trans": trans, "rgbs": rgbs, "alphas": alphas}
    colors = accumulate_along_rays(weights, rgbs, ray_indices, n_rays)
    opacities = accumulate_along_rays(weights, None, ray_indices, n_rays)
    mids = ((t_starts + t_ends) * 0.5)[..., None].to(weights.dtype)
    depths = accumulate_along_rays(weights, mids, ray_indices, n_rays)
    depths = depths / opacities.clamp_min(torch.finfo(depths.dtype).eps)
    if render_bkgd is not None:
        render_bkgd = check.floating("render_bkgd", render_bkgd)
        colors = colors + render_bkgd * (1.0 - opacities)
    return colors, opacities, depths, extras


def _check_field_output(fn: str, rgbs: Tensor, other: Tensor, t_starts: Tensor, other_name: str) -> None:
    if not isinstance(rgbs, Tensor) or not isinstance(other, Tensor):
        raise TypeError(f"`{fn}` must return a pair of tensors (rgbs, {other_name}).")
    if rgbs.shape != t_starts.shape + (3,):
        raise ValueError(f"`{fn}` returned rgbs of shape {tuple(rgbs.shape)}; expected {tuple(t_starts.shape) + (3,)}.")
    if other.shape != t_starts.shape:
        raise ValueError(
            f"`{fn}` returned {other_name} of shape {tuple(other.shape)}; expected {tuple(t_starts.shape)} "
            "(squeeze the trailing dimension)."
        )
