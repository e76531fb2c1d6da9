"""Occupancy-grid estimator (instant-NGP style empty-space skipping)."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Optional, Union

import torch
import torch.distributed as dist
from jaxtyping import Float, Int
from torch import Tensor

from .. import _validation as check
from .._backend import get_op
from ..grid import _enlarge_aabb, traverse_grids_samples
from ..pack import pack_info
from ..volrend import render_transmittance_from_density, render_visibility_from_alpha
from .base import AbstractEstimator


class OccGridEstimator(AbstractEstimator):
    """Occupancy grid over a region of interest, with optional nested coarser levels.

    Level ``i`` covers ``roi_aabb`` scaled by ``2**i`` about its centre, at the same resolution, so
    a multi-level grid reaches far beyond the region of interest at coarser cells (for unbounded
    real captures). Each cell holds an EMA of the field's occupancy (``density * step``) and a bit
    telling whether it is occupied; :meth:`sampling` only places samples in occupied cells.

    The grid is part of the module's ``state_dict`` (``occs`` and ``binaries``), so checkpoints
    restore it. Under ``torch.distributed`` the update is all-reduced by default, so every rank holds
    the same grid (see ``sync_distributed``).

    Args:
        roi_aabb: ``(6,)`` region of interest ``{xmin, ymin, zmin, xmax, ymax, zmax}``.
        resolution: Cells per axis: an int (cube) or three ints. Default: 128.
        levels: Number of nested levels. Default: 1.
        **kwargs: ``sync_distributed`` (keyword only, beyond nerfacc's arguments): whether the grid update
            combines the ranks' evaluations under ``torch.distributed`` (one collective per update). ``None``
            (default) follows ``NERFACCEL_GRID_SYNC`` (on unless it is ``0``); ``True`` / ``False`` override
            it. With syncing off every rank updates its own grid from its own evaluations, and the ranks'
            grids drift apart unless you synchronize them yourself. The attribute of the same name can be
            changed later. Any other keyword is ignored with a warning (``contraction_type`` raises).
    """

    DIM: int = 3

    def __init__(
        self,
        roi_aabb: Union[Sequence[float], Tensor],
        resolution: Union[int, Sequence[int], Tensor] = 128,
        levels: int = 1,
        **kwargs,
    ) -> None:
        super().__init__()
        if "contraction_type" in kwargs:
            raise ValueError(
                "`contraction_type` is not supported (as in nerfacc >= 0.4): contract points in your field with "
                "`nerfaccel_plugin.contract` and use a multi-level grid (`levels > 1`) for unbounded scenes."
            )
        sync_distributed = kwargs.pop("sync_distributed", None)
        if sync_distributed is not None and not isinstance(sync_distributed, bool):
            raise TypeError(f"`sync_distributed` must be True, False or None, got {sync_distributed!r}.")
        self.sync_distributed: Optional[bool] = sync_distributed
        if kwargs:
            warnings.warn(f"OccGridEstimator ignores unknown arguments: {sorted(kwargs)}", stacklevel=2)
        if isinstance(resolution, int):
            resolution = [resolution] * self.DIM
        if isinstance(resolution, Tensor):
            resolution = resolution.tolist()
        resolution = [int(r) for r in resolution]
        if len(resolution) != self.DIM or min(resolution) < 1:
            raise ValueError(f"`resolution` must be a positive int or {self.DIM} positive ints, got {resolution}.")
        if isinstance(roi_aabb, Tensor):
            roi_aabb = roi_aabb.detach().float().cpu()
        else:
            roi_aabb = torch.tensor(list(roi_aabb), dtype=torch.float32)
        roi_aabb = roi_aabb.reshape(-1)
        if roi_aabb.shape[0] != 2 * self.DIM or not bool(torch.isfinite(roi_aabb).all()):
            raise ValueError(
                f"`roi_aabb` must be 6 finite numbers {{xmin, ymin, zmin, xmax, ymax, zmax}}, got {roi_aabb}."
            )
        if not bool((roi_aabb[3:] > roi_aabb[:3]).all()):
            raise ValueError(f"`roi_aabb` is empty (max must exceed min on every axis): {roi_aabb.tolist()}.")
        if int(levels) < 1:
            raise ValueError(f"`levels` must be >= 1, got {levels}.")
        levels = int(levels)
        aabbs = torch.stack([_enlarge_aabb(roi_aabb, 2**i) for i in range(levels)], dim=0)
        self.cells_per_lvl = int(math.prod(resolution))
        self.levels = levels
        self.register_buffer("resolution", torch.tensor(resolution, dtype=torch.int32))
        self.register_buffer("aabbs", aabbs)
        self.register_buffer("occs", torch.zeros(levels * self.cells_per_lvl))
        self.register_buffer("binaries", torch.zeros([levels] + resolution, dtype=torch.bool))
        coords = torch.stack(
            torch.meshgrid([torch.arange(r, dtype=torch.long) for r in resolution], indexing="ij"), dim=-1
        ).reshape(self.cells_per_lvl, self.DIM)
        self.register_buffer("grid_coords", coords, persistent=False)
        self.register_buffer("grid_indices", torch.arange(self.cells_per_lvl), persistent=False)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        """Checks a loaded grid before it replaces this one: shapes, finite occupancies in range (>= -1, the mark of
        an invisible cell), a boolean occupancy bitfield. A grid that fails is refused with a clear error; one that
        marks every cell empty with all-zero occupancies (never updated, or zeroed) loads with a warning."""
        where = prefix.rstrip(".") or "OccGridEstimator"
        occs, binaries = state_dict.get(prefix + "occs"), state_dict.get(prefix + "binaries")
        if isinstance(occs, Tensor):
            if tuple(occs.shape) != tuple(self.occs.shape):
                raise ValueError(
                    f"{where}: the loaded occupancy grid `occs` has shape {tuple(occs.shape)}, this estimator "
                    f"{tuple(self.occs.shape)} (levels x resolution^3): the checkpoint was trained with another "
                    "grid resolution or level count; build the model with the checkpoint's settings."
                )
            if not occs.is_floating_point():
                raise ValueError(f"{where}: the loaded occupancy grid `occs` is {occs.dtype}, not floating point.")
            if not bool(torch.isfinite(occs).all()):
                bad = int((~torch.isfinite(occs)).sum())
                raise ValueError(
                    f"{where}: the loaded occupancy grid has {bad} NaN or infinite cells of {occs.numel()}: the "
                    "checkpoint is damaged (or training diverged before it was saved); load an earlier checkpoint."
                )
            if occs.numel() and float(occs.min()) < -1.0:
                raise ValueError(
                    f"{where}: the loaded occupancy grid has values down to {float(occs.min()):g}; occupancies are "
                    ">= 0 (or -1 for cells marked invisible): the checkpoint is damaged."
                )
        if isinstance(binaries, Tensor):
            if tuple(binaries.shape) != tuple(self.binaries.shape):
                raise ValueError(
                    f"{where}: the loaded occupancy bitfield `binaries` has shape {tuple(binaries.shape)}, this "
                    f"estimator {tuple(self.binaries.shape)}: the checkpoint was trained with another grid "
                    "resolution or level count; build the model with the checkpoint's settings."
                )
            if binaries.dtype != torch.bool:
                raise ValueError(f"{where}: the loaded occupancy bitfield `binaries` is {binaries.dtype}, not bool.")
            if isinstance(occs, Tensor) and occs.numel() and not bool(binaries.any()) and not bool(occs.any()):
                warnings.warn(
                    f"{where}: the loaded occupancy grid is all zeros (every cell empty): nothing renders until "
                    "the grid is updated by training. It was saved before its first update, or zeroed.",
                    RuntimeWarning,
                    stacklevel=4,
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @torch.no_grad()
    def sampling(
        self,
        rays_o: Float[Tensor, "n_rays 3"],
        rays_d: Float[Tensor, "n_rays 3"],
        sigma_fn: Optional[Callable] = None,
        alpha_fn: Optional[Callable] = None,
        near_plane: float = 0.0,
        far_plane: float = 1e10,
        t_min: Optional[Float[Tensor, " n_rays"]] = None,
        t_max: Optional[Float[Tensor, " n_rays"]] = None,
        render_step_size: float = 1e-3,
        early_stop_eps: float = 1e-4,
        alpha_thre: float = 0.0,
        stratified: bool = False,
        cone_angle: float = 0.0,
    ) -> tuple[Int[Tensor, " n_samples"], Float[Tensor, " n_samples"], Float[Tensor, " n_samples"]]:
        """Samples along rays, skipping empty and (optionally) occluded space. Not differentiable.

        Args:
            rays_o: ``(n_rays, 3)`` ray origins.
            rays_d: ``(n_rays, 3)`` normalized ray directions.
            sigma_fn: Optional ``(t_starts, t_ends, ray_indices) -> sigmas (n,)``; with it, samples behind
                opaque matter or in low-opacity space are dropped. Give at most one of ``sigma_fn`` / ``alpha_fn``.
            alpha_fn: Optional ``(t_starts, t_ends, ray_indices) -> alphas (n,)``; as ``sigma_fn``.
            near_plane: Marching starts here (and at ``t_min`` when larger). Default 0.
            far_plane: Marching ends here (and at ``t_max`` when smaller). Default 1e10.
            t_min: Optional ``(n_rays,)`` per-ray start.
            t_max: Optional ``(n_rays,)`` per-ray end.
            render_step_size: Marching step. Default 1e-3.
            early_stop_eps: With a field function, drop samples once transmittance falls below this.
            alpha_thre: With a field function, drop samples with opacity below this (capped at the grid's
                mean occupancy, as in nerfacc, so a young grid does not drop everything).
            stratified: Randomly offset each ray's start by up to one step (training).
            cone_angle: Steps grow as ``cone_angle * t`` (e.g. 1/256 for real scenes); 0 for constant steps.

        Returns:
            ``(ray_indices, t_starts, t_ends)`` of the samples, each ``(n_samples,)``, sorted by ray then ``t``.
        """
        if sigma_fn is not None and alpha_fn is not None:
            raise ValueError("Give only one of `sigma_fn` and `alpha_fn`.")
        rays_o, rays_d = check.rays(rays_o, rays_d)
        if rays_o.device != self.aabbs.device:
            raise ValueError(
                f"rays are on {rays_o.device} but the estimator is on {self.aabbs.device}; move one with `.to()`."
            )
        n_rays = rays_o.shape[0]
        near_planes = torch.full_like(rays_o[:, 0], float(near_plane))
        far_planes = torch.full_like(rays_o[:, 0], float(far_plane))
        if t_min is not None:
            near_planes = torch.maximum(near_planes, _per_ray("t_min", t_min, rays_o).to(near_planes))
        if t_max is not None:
            far_planes = torch.minimum(far_planes, _per_ray("t_max", t_max, rays_o).to(far_planes))
        if stratified:
            near_planes = near_planes + torch.rand_like(near_planes) * render_step_size
        ray_indices, t_starts, t_ends = traverse_grids_samples(
            rays_o, rays_d, self.binaries, self.aabbs, near_planes, far_planes, render_step_size, cone_angle
        )
        if (alpha_thre > 0.0 or early_stop_eps > 0.0) and (sigma_fn is not None or alpha_fn is not None):
            # min(alpha_thre, visible mean) stays on the device (a float() would sync); applied below.
            thre = torch.clamp(self._visible_mean(), max=alpha_thre)
            packed_info = pack_info(ray_indices, n_rays)
            if sigma_fn is not None:
                sigmas = sigma_fn(t_starts, t_ends, ray_indices)
                if sigmas.shape != t_starts.shape:
                    raise ValueError(
                        f"`sigma_fn` must return shape {tuple(t_starts.shape)}, got {tuple(sigmas.shape)}."
                    )
                trans, alphas = render_transmittance_from_density(t_starts, t_ends, sigmas, packed_info=packed_info)
                masks = trans >= early_stop_eps
            else:
                alphas = alpha_fn(t_starts, t_ends, ray_indices)
                if alphas.shape != t_starts.shape:
                    raise ValueError(
                        f"`alpha_fn` must return shape {tuple(t_starts.shape)}, got {tuple(alphas.shape)}."
                    )
                masks = render_visibility_from_alpha(alphas, packed_info=packed_info, early_stop_eps=early_stop_eps)
            # As render_visibility_from_*(alpha_thre=thre): the opacity test applies only when thre > 0.
            masks = masks & ((alphas >= thre) | (thre <= 0))
            # One host sync for the kept count (a data-dependent size), then plain gathers.
            keep = torch.nonzero(masks)[:, 0]
            ray_indices, t_starts, t_ends = ray_indices[keep], t_starts[keep], t_ends[keep]
        return ray_indices, t_starts, t_ends

    @torch.no_grad()
    def update_every_n_steps(
        self,
        step: int,
        occ_eval_fn: Callable,
        occ_thre: float = 1e-2,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        n: int = 16,
    ) -> None:
        """Updates the grid every ``n`` training steps.

        Args:
            step: Current training step.
            occ_eval_fn: ``(x (N, 3)) -> occupancy (N, 1) or (N,)``, typically ``density(x) * render_step_size``.
            occ_thre: Cells with occupancy above ``min(occ_thre, mean occupancy)`` are marked occupied.
            ema_decay: Decay of a cell's previous occupancy at each update.
            warmup_steps: Before this step every cell is evaluated; afterwards a quarter of the cells at
                random plus up to as many occupied cells.
            n: Update period in steps.
        """
        if not self.training:
            raise RuntimeError(
                "update_every_n_steps() is for training (call .train() first); to refresh the grid during "
                "inference call `_update(step, occ_eval_fn)` directly."
            )
        if step % n == 0:
            self._update(
                step=step, occ_eval_fn=occ_eval_fn, occ_thre=occ_thre, ema_decay=ema_decay, warmup_steps=warmup_steps
            )

    @torch.no_grad()
    def _get_all_cells(self) -> list[Tensor]:
        return [self.grid_indices] * self.levels

    @torch.no_grad()
    def _sample_uniform_and_occupied_cells(self, n: int) -> list[Tensor]:
        lvl_indices = []
        for lvl in range(self.levels):
            device = self.occs.device
            uniform = torch.randint(self.cells_per_lvl, (n,), device=device)
            # n occupied cells without a host sync (a nonzero would need one to size its output): the k-th
            # occupied cell is searchsorted(cumsum(binaries), k, right=True). With at most n occupied cells each is
            # taken (then again, cyclically, to fill the n slots); with more, n are drawn at random with
            # replacement, as nerfacc does. Without any occupied cell the slots hold cells that are evaluated like
            # the uniform ones. Duplicates are harmless: the EMA update reduces them with max.
            flat = self.binaries[lvl].flatten()
            if device.type == "cpu":
                # No host sync to avoid on a CPU: the same cells from the same draws by indexing the list of
                # occupied cells (nonzero), about 10x faster than a binary search per slot.
                occupied_ids = torch.nonzero(flat)[:, 0]
                total = torch.tensor(occupied_ids.numel())
            else:
                cum = torch.cumsum(flat, 0)
                total = cum[-1]
            k = torch.arange(n, device=device)
            drawn = (torch.rand(n, device=device) * total).long().clamp(max=total - 1)
            rank = torch.where(total <= n, k % total.clamp(min=1), drawn)
            if device.type != "cpu":
                occupied = torch.searchsorted(cum, rank, right=True).clamp(max=self.cells_per_lvl - 1)
            elif occupied_ids.numel():
                occupied = occupied_ids[rank]
            else:
                occupied = torch.full_like(rank, self.cells_per_lvl - 1)
            lvl_indices.append(torch.cat([uniform, occupied], dim=0))
        return lvl_indices

    @torch.no_grad()
    def _update(
        self,
        step: int,
        occ_eval_fn: Callable,
        occ_thre: float = 1e-2,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
    ) -> None:
        """One EMA update of the occupancy values followed by re-binarization."""
        if step < warmup_steps:
            lvl_indices = self._get_all_cells()
        else:
            lvl_indices = self._sample_uniform_and_occupied_cells(self.cells_per_lvl // 4)
        res = self.resolution.to(self.occs.dtype)
        occs = self.occs
        ema = get_op("_grid_ema_update", occs.device)
        # Under torch.distributed every rank evaluates its own random cells (their seeds differ). The fresh
        # values are combined first (max over ranks), then one EMA step runs on the union of evaluated cells, so
        # every rank applies the same update: the result a single process evaluating all of them would get.
        distributed = (
            self._sync_enabled() and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        )
        fresh = torch.full_like(occs, -torch.inf) if distributed else None
        for lvl, indices in enumerate(lvl_indices):
            coords = self.grid_coords.index_select(0, indices)  # ~3x faster than [indices] on a CPU
            x = (coords + torch.rand_like(coords, dtype=occs.dtype)) / res
            x = self.aabbs[lvl, :3] + x * (self.aabbs[lvl, 3:] - self.aabbs[lvl, :3])
            occ = occ_eval_fn(x)
            if not isinstance(occ, Tensor) or occ.reshape(-1).shape[0] != x.shape[0]:
                raise ValueError(
                    f"`occ_eval_fn` must return a tensor of {x.shape[0]} occupancies, shape (N,) or (N, 1); "
                    f"got {getattr(occ, 'shape', type(occ).__name__)}."
                )
            occ = torch.nan_to_num(occ.reshape(-1).detach().to(occs.dtype), nan=0.0)
            cell_ids = (lvl * self.cells_per_lvl + indices).contiguous()
            if fresh is not None:
                fresh.scatter_reduce_(0, cell_ids, occ, "amax")
            else:
                occs = ema(occs.contiguous(), cell_ids, occ.contiguous(), float(ema_decay))
        if fresh is not None:
            dist.all_reduce(fresh, op=dist.ReduceOp.MAX)
            cell_ids = torch.nonzero(fresh > -torch.inf)[:, 0]
            occs = ema(occs.contiguous(), cell_ids, fresh[cell_ids].contiguous(), float(ema_decay))
        self.occs.copy_(occs)
        thre = torch.clamp(self._visible_mean(), max=occ_thre)
        self.binaries.copy_((self.occs > thre).view(self.binaries.shape))

    def _visible_mean(self) -> Tensor:
        """Mean occupancy of the cells not marked invisible (``occs >= 0``), as nerfacc 0.5.3; 0 when none is."""
        visible = self.occs >= 0
        n = visible.sum()
        return torch.where(visible, self.occs, torch.zeros_like(self.occs)).sum() / n.clamp(min=1)

    def _sync_enabled(self) -> bool:
        """Whether the update combines the ranks' evaluations (``sync_distributed``, else ``NERFACCEL_GRID_SYNC``)."""
        if self.sync_distributed is not None:
            return bool(self.sync_distributed)
        return os.environ.get("NERFACCEL_GRID_SYNC", "1").strip().lower() not in ("0", "false", "no", "off")

    @torch.no_grad()
    def mark_invisible_cells(
        self,
        K: Float[Tensor, "... 3 3"],
        c2w: Float[Tensor, "n 3 4"],
        width: int,
        height: int,
        near_plane: float = 0.0,
        chunk: int = 32**3,
    ) -> None:
        """Marks cells no camera sees, and cells too close to a camera, as invisible (occupancy -1).

        Invisible cells are never sampled nor updated. Call once before training when the cameras are fixed.
        A cell (its centre) is seen by a camera when it projects inside the image in front of it; as in
        nerfacc 0.5.3 it stays visible only when some camera sees it at a depth ``>= near_plane`` and no
        camera sees it closer than ``near_plane`` (space in view between a camera and its near plane is
        empty). Cells that stay visible keep their occupancy (negative values become 0). Cameras use the
        OpenCV convention (x right, y down, looking along +z), as in nerfacc; for OpenGL / Nerfstudio poses
        flip the y and z axes of ``c2w`` first.

        Args:
            K: ``(3, 3)``, ``(1, 3, 3)`` or ``(n, 3, 3)`` intrinsics.
            c2w: ``(n, 3, 4)`` or ``(n, 4, 4)`` camera-to-world poses.
            width: Image width in pixels.
            height: Image height in pixels.
            near_plane: Depth along the optical axis below which a camera sees only empty space.
            chunk: Cells processed at once.
        """
        K = check.floating("K", K).to(self.occs)
        c2w = check.floating("c2w", c2w).to(self.occs)
        if c2w.dim() != 3 or c2w.shape[1:] not in ((3, 4), (4, 4)):
            raise ValueError(f"`c2w` must be (n, 3, 4) or (n, 4, 4), got {tuple(c2w.shape)}.")
        n_cams = c2w.shape[0]
        if K.shape not in ((3, 3), (1, 3, 3), (n_cams, 3, 3)):
            raise ValueError(f"`K` must be (3, 3), (1, 3, 3) or ({n_cams}, 3, 3), got {tuple(K.shape)}.")
        K = K.reshape(-1, 3, 3).expand(n_cams, 3, 3)
        rot = c2w[:, :3, :3]
        trans = c2w[:, :3, 3:]
        w2c_rot = rot.transpose(1, 2)
        w2c_t = -w2c_rot @ trans
        res = self.resolution.to(self.occs.dtype)
        for lvl in range(self.levels):
            for start in range(0, self.cells_per_lvl, chunk):
                idx = self.grid_indices[start : start + chunk]
                x = (self.grid_coords[idx].to(self.occs.dtype) + 0.5) / res
                xw = self.aabbs[lvl, :3] + x * (self.aabbs[lvl, 3:] - self.aabbs[lvl, :3])  # [m, 3]
                xc = w2c_rot @ xw.T[None] + w2c_t  # [n, 3, m]
                uvd = K @ xc
                depth = uvd[:, 2, :]
                uv = uvd[:, :2, :] / depth.clamp(min=1e-8)[:, None, :]
                in_image = (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
                seen = (in_image & (depth >= near_plane)).any(dim=0)
                too_near = (in_image & (depth < near_plane)).any(dim=0)
                visible = seen & ~too_near
                cells = lvl * self.cells_per_lvl + idx
                self.occs[cells] = torch.where(
                    visible, self.occs[cells].clamp(min=0), torch.full_like(self.occs[cells], -1.0)
                )
        self.binaries &= (self.occs >= 0).view(self.binaries.shape)


def _per_ray(name: str, x: object, rays_o: Tensor) -> Tensor:
    """Checks a per-ray ``t_min`` / ``t_max``: a float tensor of shape ``(n_rays,)`` on the rays' device."""
    x = check.floating(name, x)
    n_rays = rays_o.shape[0]
    if x.shape != (n_rays,):
        hint = f" (use `{name}.reshape(-1)`)" if x.numel() == n_rays else ""
        raise ValueError(
            f"`{name}` must have shape ({n_rays},), one value per ray of `rays_o`, got {tuple(x.shape)}{hint}."
        )
    check.same_device(rays_o=rays_o, **{name: x})
    check.not_nan(name, x)
    return x
