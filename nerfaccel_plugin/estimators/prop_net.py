"""Proposal-network estimator (mip-NeRF 360 style coarse-to-fine sampling)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from ..data_specs import RayIntervals
from ..pdf import importance_sampling, searchsorted
from ..volrend import render_transmittance_from_density
from .base import AbstractEstimator


class PropNetEstimator(AbstractEstimator):
    """Samples rays in stages, each stage resampling where the previous proposal network put mass.

    Args:
        optimizer: Optimizer of the proposal networks (needed for :meth:`update_every_n_steps`
            with ``requires_grad=True``).
        scheduler: Optional learning-rate scheduler stepped after each update.
    """

    def __init__(
        self,
        optimizer: Optional[torch.optim.Optimizer] = None,
        scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None,
    ) -> None:
        super().__init__()
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.prop_cache: list[tuple[RayIntervals, Optional[Tensor]]] = []

    @torch.no_grad()
    def sampling(
        self,
        prop_sigma_fns: Sequence[Callable],
        prop_samples: Sequence[int],
        num_samples: int,
        n_rays: int,
        near_plane: float,
        far_plane: float,
        sampling_type: Literal["uniform", "lindisp"] = "lindisp",
        stratified: bool = False,
        requires_grad: bool = False,
    ) -> tuple[Float[Tensor, "n_rays num_samples"], Float[Tensor, "n_rays num_samples"]]:
        """Samples ``num_samples`` intervals per ray through the proposal stages.

        Args:
            prop_sigma_fns: One function per stage,
                ``(t_starts (n_rays, s), t_ends (n_rays, s)) -> sigmas (n_rays, s)``.
            prop_samples: Samples drawn at each stage (same length as ``prop_sigma_fns``).
            num_samples: Samples drawn in the end.
            n_rays: Number of rays.
            near_plane: Near distance (> 0 for ``"lindisp"``).
            far_plane: Far distance.
            sampling_type: Spacing of the initial samples: ``"uniform"`` in ``t`` or ``"lindisp"`` (uniform in 1/t).
            stratified: Jitter samples (training).
            requires_grad: Keep the proposal outputs for :meth:`compute_loss` (gradients flow into the
                proposal networks).

        Returns:
            ``(t_starts, t_ends)``, each ``(n_rays, num_samples)``.
        """
        if len(prop_sigma_fns) != len(prop_samples):
            raise ValueError(
                f"`prop_sigma_fns` ({len(prop_sigma_fns)}) and `prop_samples` ({len(prop_samples)}) "
                "must have the same length."
            )
        if sampling_type not in ("uniform", "lindisp"):
            raise ValueError(f"`sampling_type` must be 'uniform' or 'lindisp', got {sampling_type!r}.")
        if sampling_type == "lindisp" and near_plane <= 0:
            raise ValueError(f"`near_plane` must be > 0 for sampling_type='lindisp', got {near_plane}.")
        if not far_plane > near_plane:
            raise ValueError(f"`far_plane` ({far_plane}) must be greater than `near_plane` ({near_plane}).")
        device = self.device
        cdfs = torch.cat([torch.zeros((n_rays, 1), device=device), torch.ones((n_rays, 1), device=device)], dim=-1)
        intervals = RayIntervals(vals=cdfs)
        for level_fn, level_samples in zip(prop_sigma_fns, prop_samples, strict=True):
            intervals, _ = importance_sampling(intervals, cdfs, level_samples, stratified)
            t_vals = _transform_stot(sampling_type, intervals.vals, near_plane, far_plane)
            t_starts, t_ends = t_vals[..., :-1], t_vals[..., 1:]
            with torch.set_grad_enabled(requires_grad):
                sigmas = level_fn(t_starts, t_ends)
                if sigmas.shape != t_starts.shape:
                    raise ValueError(
                        f"proposal function returned shape {tuple(sigmas.shape)}; expected {tuple(t_starts.shape)}."
                    )
                trans, _ = render_transmittance_from_density(t_starts, t_ends, sigmas)
                cdfs = 1.0 - torch.cat([trans, torch.zeros_like(trans[:, :1])], dim=-1)
                if requires_grad:
                    self.prop_cache.append((intervals, cdfs))
        intervals, _ = importance_sampling(intervals, cdfs, num_samples, stratified)
        t_vals = _transform_stot(sampling_type, intervals.vals, near_plane, far_plane)
        if requires_grad:
            self.prop_cache.append((intervals, None))
        return t_vals[..., :-1], t_vals[..., 1:]

    @torch.enable_grad()
    def compute_loss(self, trans: Float[Tensor, "n_rays num_samples"], loss_scaler: float = 1.0) -> Float[Tensor, ""]:
        """Proposal loss: each proposal histogram must bound the final weights from above.

        Args:
            trans: ``(n_rays, num_samples)`` transmittance of the final samples (from the radiance field).
            loss_scaler: Multiplier of the loss.

        Returns:
            Scalar loss (0 when nothing is cached). Clears the cache.
        """
        if len(self.prop_cache) == 0:
            return torch.zeros((), device=self.device)
        intervals, _ = self.prop_cache.pop()
        cdfs = (1.0 - torch.cat([trans, torch.zeros_like(trans[:, :1])], dim=-1)).detach()
        loss = torch.zeros((), device=trans.device)
        while self.prop_cache:
            prop_intervals, prop_cdfs = self.prop_cache.pop()
            loss = loss + _pdf_loss(intervals, cdfs, prop_intervals, prop_cdfs).mean()
        return loss * loss_scaler

    @torch.enable_grad()
    def update_every_n_steps(
        self, trans: Float[Tensor, "n_rays num_samples"], requires_grad: bool = False, loss_scaler: float = 1.0
    ) -> float:
        """Takes one optimizer step on the proposal loss when ``requires_grad``; else steps the scheduler.

        Args:
            trans: ``(n_rays, num_samples)`` transmittance of the final samples (from the radiance field), for
                :meth:`compute_loss`.
            requires_grad: Whether to update the proposal networks now: pass the value given to the
                :meth:`sampling` call whose samples ``trans`` belongs to (e.g. from
                :func:`get_proposal_requires_grad_fn`).
            loss_scaler: Multiplier of the loss.

        Returns:
            The proposal loss as a float (0.0 when no update happened).

        Raises:
            RuntimeError: ``requires_grad`` without cached proposal outputs or without an ``optimizer``.
        """
        if requires_grad:
            return self._update(trans=trans, loss_scaler=loss_scaler)
        if self.scheduler is not None:
            self.scheduler.step()
        return 0.0

    @torch.enable_grad()
    def _update(self, trans: Tensor, loss_scaler: float = 1.0) -> float:
        if len(self.prop_cache) == 0:
            raise RuntimeError("No cached proposal outputs: call sampling(..., requires_grad=True) first.")
        if self.optimizer is None:
            raise RuntimeError("PropNetEstimator needs an `optimizer` to update the proposal networks.")
        loss = self.compute_loss(trans, loss_scaler)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return float(loss.item())


def get_proposal_requires_grad_fn(target: float = 5.0, num_steps: int = 1000) -> Callable[[int], bool]:
    """Schedule of when to train the proposal networks: every step at first, then every ``target`` steps.

    The gap between gradient steps grows linearly from 0 to ``target`` over ``num_steps`` steps.

    Args:
        target: Final number of steps between two proposal-network updates.
        num_steps: Training steps over which the gap grows to ``target``.

    Returns:
        ``fn(step) -> bool`` (stateful: call it once per training step).
    """
    steps_since_last = 0

    def proposal_requires_grad_fn(step: int) -> bool:
        nonlocal steps_since_last
        wanted_gap = min(step / num_steps, 1.0) * target
        requires_grad = steps_since_last > wanted_gap
        steps_since_last = 0 if requires_grad else steps_since_last
        steps_since_last += 1
        return requires_grad

    return proposal_requires_grad_fn


def _transform_stot(
    transform_type: Literal["uniform", "lindisp"], s_vals: Tensor, t_min: float, t_max: float
) -> Tensor:
    """Maps normalized ``s`` in [0, 1] to distance ``t`` (linear in ``t`` or in ``1/t``)."""
    if transform_type == "uniform":
        return t_min + s_vals * (t_max - t_min)
    inv_min, inv_max = 1.0 / t_min, 1.0 / t_max
    return 1.0 / (inv_min + s_vals * (inv_max - inv_min))


def _pdf_loss(
    query: RayIntervals, cdfs_query: Tensor, key: RayIntervals, cdfs_key: Tensor, eps: float = 1e-7
) -> Tensor:
    """Penalizes query interval mass not covered by the key (proposal) mass over the enclosing key edges."""
    ids_left, ids_right = searchsorted(key, query)
    if query.vals.dim() > 1:
        w = cdfs_query[..., 1:] - cdfs_query[..., :-1]
        ids_left, ids_right = ids_left[..., :-1], ids_right[..., 1:]
    else:
        w = cdfs_query[query.is_right] - cdfs_query[query.is_left]
        ids_left, ids_right = ids_left[query.is_left], ids_right[query.is_right]
    w_key = cdfs_key.gather(-1, ids_right) - cdfs_key.gather(-1, ids_left)
    return torch.clamp(w - w_key, min=0) ** 2 / (w + eps)
