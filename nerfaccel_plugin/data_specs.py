"""Containers for ray intervals and ray samples, in batched or flattened (packed) layout.

Same fields as nerfacc 0.5's ``RayIntervals`` / ``RaySamples`` so code that builds or reads them
works unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


@dataclass
class RaySamples:
    """Samples along rays, batched ``(..., n_samples)`` or flattened ``(all_samples,)``.

    Args:
        vals: Sample positions, batched ``(..., n_samples)`` or flattened ``(all_samples,)``.
        packed_info: ``(n_rays, 2)`` int64 ``(start, count)`` of each ray's chunk (flattened only).
        ray_indices: ``(all_samples,)`` ray index of each sample (flattened only).
    """

    vals: Float[Tensor, "..."]
    packed_info: Optional[Int[Tensor, "n_rays 2"]] = None
    ray_indices: Optional[Int[Tensor, " all_samples"]] = None

    @property
    def device(self) -> torch.device:
        """The device of the samples.

        Returns:
            ``vals.device``.
        """
        return self.vals.device


@dataclass
class RayIntervals:
    """Interval edges along rays, batched ``(..., n_edges)`` or flattened ``(all_edges,)``.

    In the flattened layout consecutive intervals of a ray may share an edge: ``is_left`` marks edges
    that start an interval and ``is_right`` edges that end one (an edge can be both), so
    ``vals[is_left]`` and ``vals[is_right]`` are the per-interval starts and ends.

    Args:
        vals: Edges, batched ``(..., n_edges)`` or flattened ``(all_edges,)``.
        packed_info: ``(n_rays, 2)`` int64 ``(start, count)`` of each ray's edges (flattened only).
        ray_indices: ``(all_edges,)`` ray index of each edge (flattened only).
        is_left: ``(all_edges,)`` bool, edge starts an interval (flattened only).
        is_right: ``(all_edges,)`` bool, edge ends an interval (flattened only).
    """

    vals: Float[Tensor, "..."]
    packed_info: Optional[Int[Tensor, "n_rays 2"]] = None
    ray_indices: Optional[Int[Tensor, " all_edges"]] = None
    is_left: Optional[Bool[Tensor, " all_edges"]] = None
    is_right: Optional[Bool[Tensor, " all_edges"]] = None

    @property
    def device(self) -> torch.device:
        """The device of the edges.

        Returns:
            ``vals.device``.
        """
        return self.vals.device
