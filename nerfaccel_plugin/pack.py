"""Conversion between per-sample ray indices and per-ray ``packed_info``."""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Int
from torch import Tensor

from . import _layout
from . import _validation as check


@torch.no_grad()
def pack_info(ray_indices: Int[Tensor, " n_samples"], n_rays: Optional[int] = None) -> Int[Tensor, "n_rays 2"]:
    """Packs sorted per-sample ray indices into per-ray ``(start, count)`` pairs.

    Unlike nerfacc 0.5 this works on any device (nerfacc raises on CPU tensors).

    Args:
        ray_indices: ``(n_samples,)`` ray index of each sample, sorted (each ray's samples contiguous).
        n_rays: Number of rays. Inferred as ``max(ray_indices) + 1`` when None (0 for no samples).

    Returns:
        ``(n_rays, 2)`` int64 tensor of ``(start, count)`` per ray; rays without samples get count 0.

    Example:
        >>> pack_info(torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2]), n_rays=3)
        tensor([[0, 2], [2, 3], [5, 4]])
    """
    ray_indices = check.integer("ray_indices", ray_indices)
    check.ndim("ray_indices", ray_indices, 1, "(n_samples,)")
    if n_rays is None:
        n_rays = int(ray_indices.max().item()) + 1 if ray_indices.numel() > 0 else 0
    ray_indices = check.ray_indices(ray_indices, ray_indices.shape[0], n_rays)
    if ray_indices.numel():
        # Each ray's chunk from a binary search of the sorted indices: no host sync (bincount syncs to size its
        # output) and about twice as fast as bincount on a CPU. Out-of-range indices (possible with the value checks
        # off) fall outside every chunk. The chunks are marked as tiling [0, n_samples) (which lets the CUDA density
        # kernels skip their pass over samples outside every chunk) only when the value checks have verified the
        # indices' range; marking needs a host-known answer.
        bounds = torch.searchsorted(
            ray_indices.contiguous(), torch.arange(n_rays + 1, device=ray_indices.device, dtype=ray_indices.dtype)
        )
        starts, counts = bounds[:-1], bounds[1:] - bounds[:-1]
        tiles = check.value_checks_enabled()
    else:
        counts = torch.zeros(n_rays, dtype=torch.long, device=ray_indices.device)
        starts = counts
        tiles = True
    packed_info = torch.stack([starts, counts], dim=-1)
    if tiles:
        _layout.mark_covering(packed_info, ray_indices.shape[0])
    return packed_info


def unpack_info(packed_info: Int[Tensor, "n_rays 2"], n_samples: int) -> Int[Tensor, " n_samples"]:
    """Inverse of :func:`pack_info`: per-sample ray indices from ``(start, count)`` pairs.

    Args:
        packed_info: ``(n_rays, 2)`` int64 ``(start, count)`` covering ``n_samples`` samples in order.
        n_samples: Total number of samples.

    Returns:
        ``(n_samples,)`` int64 ray index of each sample.
    """
    packed_info = check.packed_info(packed_info, n_samples)
    counts = packed_info[:, 1]
    ray_ids = torch.repeat_interleave(torch.arange(packed_info.shape[0], device=packed_info.device), counts)
    if ray_ids.numel() != n_samples:
        raise ValueError(f"`packed_info` covers {ray_ids.numel()} samples but n_samples={n_samples}.")
    return ray_ids
