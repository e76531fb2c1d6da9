"""Nerfstudio samplers backed by nerfaccel's estimators, usable from any Nerfstudio model.

* :class:`OccupancyGridSampler` - a drop-in for Nerfstudio's ``VolumetricSampler``: marches rays through an
  :class:`~nerfaccel_plugin.OccGridEstimator`, skipping empty (and, with a density function, occluded) space,
  and returns *packed* samples (a flat list plus the ray index of each sample).
* :class:`ProposalSampler` - proposal-network sampling (mip-NeRF 360) through a
  :class:`~nerfaccel_plugin.PropNetEstimator`; returns ``(n_rays, num_samples)`` samples and gives the
  proposal loss.

Both provide ``get_training_callbacks`` that keep them up to date during training. Example (inside a
Nerfstudio ``Model``)::

    from nerfaccel_plugin.ns.samplers import OccupancyGridSampler

    def populate_modules(self):
        super().populate_modules()
        self.field = NerfactoField(self.scene_box.aabb, num_images=self.num_train_data)
        self.sampler = OccupancyGridSampler(self.scene_box.aabb.flatten(), density_fn=self.field.density_fn)

    def get_training_callbacks(self, attrs):
        return self.sampler.get_training_callbacks()

    def get_outputs(self, ray_bundle):
        ray_samples, ray_indices = self.sampler(ray_bundle)
        ...  # evaluate the field on ray_samples, composite with nerfaccel_plugin.render_weight_from_density
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Optional, Union

import torch
from jaxtyping import Float, Int
from nerfstudio.cameras.rays import Frustums, RayBundle, RaySamples
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.model_components.ray_samplers import Sampler
from torch import Tensor

from ..estimators.occ_grid import OccGridEstimator
from ..estimators.prop_net import PropNetEstimator, get_proposal_requires_grad_fn

DensityFn = Callable[..., Tensor]


def _scene_step_size(aabb: Tensor, samples_across: int) -> float:
    """Marching step so that about ``samples_across`` samples cover the box's diagonal."""
    aabb = aabb.reshape(-1)
    return float(torch.linalg.norm(aabb[3:] - aabb[:3]).item()) / float(samples_across)


class OccupancyGridSampler(Sampler):
    """Occupancy-grid ray marcher (drop-in for Nerfstudio's ``VolumetricSampler``).

    Args:
        aabb: ``(6,)`` or ``(2, 3)`` region of interest (Nerfstudio's ``scene_box.aabb`` works as is), or an
            existing :class:`~nerfaccel_plugin.OccGridEstimator` to wrap.
        density_fn: ``density_fn(positions (N, 3), times (N, 1) | None) -> (N, 1)``, e.g. a Nerfstudio
            field's ``density_fn``. Used to drop occluded / transparent samples during training and to update
            the grid. ``None`` disables both (then pass ``occ_eval_fn`` to the callbacks yourself).
        resolution: Grid cells per axis. Default 128.
        levels: Nested grid levels (``> 1`` for unbounded captures). Default 1.
        render_step_size: Marching step; ``None`` sets about 1000 steps across the box diagonal.
        near_plane: Where marching starts along each ray. Default 0.
        far_plane: Where marching stops (``None``: no limit).
        alpha_thre: Samples with opacity below this are skipped (training), once the grid's warm-up is over
            (a freshly initialised field has nearly uniform opacity, and skipping would drop every sample).
            Default 0.01.
        early_stop_eps: Marching stops once transmittance is below this (training). Default 1e-4.
        cone_angle: Step growth with distance (0: constant steps; 1/256 for real captures).
        occ_thre: Occupancy above which a cell is marked occupied when updating. Default 0.01.
        ema_decay: Decay of a cell's occupancy at each update. Default 0.95.
        update_every: Grid update period in training steps. Default 16.
        warmup_steps: Steps during which every cell is re-evaluated at each update. Default 256.
        time_samples: For time-conditioned fields: random times evaluated per update (their maximum
            occupancy is kept), so the grid covers the whole sequence. 0 for static fields.
    """

    def __init__(
        self,
        aabb: Union[Tensor, OccGridEstimator],
        density_fn: Optional[DensityFn] = None,
        resolution: Union[int, Sequence[int]] = 128,
        levels: int = 1,
        render_step_size: Optional[float] = None,
        near_plane: float = 0.0,
        far_plane: Optional[float] = None,
        alpha_thre: float = 0.01,
        early_stop_eps: float = 1e-4,
        cone_angle: float = 0.0,
        occ_thre: float = 0.01,
        ema_decay: float = 0.95,
        update_every: int = 16,
        warmup_steps: int = 256,
        time_samples: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(aabb, OccGridEstimator):
            self.occupancy_grid = aabb
        else:
            self.occupancy_grid = OccGridEstimator(roi_aabb=aabb.reshape(-1), resolution=resolution, levels=levels)
        roi = self.occupancy_grid.aabbs[0]
        self.render_step_size = render_step_size if render_step_size is not None else _scene_step_size(roi, 1000)
        self.density_fn = density_fn
        self.near_plane = near_plane
        self.far_plane = far_plane
        self.alpha_thre = alpha_thre
        self.early_stop_eps = early_stop_eps
        self.cone_angle = cone_angle
        self.occ_thre = occ_thre
        self.ema_decay = ema_decay
        self.update_every = update_every
        self.warmup_steps = warmup_steps
        self.time_samples = time_samples
        self._step = 0

    def _sigma_fn(self, origins: Tensor, directions: Tensor, times: Optional[Tensor]) -> Optional[Callable]:
        if self.density_fn is None or not self.training:
            return None
        density_fn = self.density_fn

        def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
            positions = origins[ray_indices] + directions[ray_indices] * ((t_starts + t_ends) * 0.5)[:, None]
            if times is None:
                return density_fn(positions).reshape(-1)
            return density_fn(positions, times[ray_indices]).reshape(-1)

        return sigma_fn

    def generate_ray_samples(self) -> RaySamples:
        """Not used: sampling and the density test are fused in :meth:`forward`."""
        raise RuntimeError("OccupancyGridSampler samples in forward(); call the sampler directly.")

    @torch.no_grad()
    def forward(
        self,
        ray_bundle: RayBundle,
        render_step_size: Optional[float] = None,
        near_plane: Optional[float] = None,
        far_plane: Optional[float] = None,
        alpha_thre: Optional[float] = None,
        cone_angle: Optional[float] = None,
    ) -> tuple[RaySamples, Int[Tensor, " n_samples"]]:
        """Samples the rays (stratified in training).

        Arguments left ``None`` take the values given to the constructor (the keyword names match
        ``VolumetricSampler.forward``).

        Args:
            ray_bundle: ``(n_rays,)`` rays; ``nears`` / ``fars`` are honoured when set, ``times`` are passed
                to the density function.
            render_step_size: Marching step.
            near_plane: Near plane.
            far_plane: Far plane.
            alpha_thre: Opacity threshold (training).
            cone_angle: Cone angle.

        Returns:
            ``(ray_samples, ray_indices)``: packed samples (``(n_samples,)`` frustums sorted by ray) and the
            ray each sample belongs to. A ray batch with no sample at all yields one zero-length sample on
            ray 0 so downstream code never sees empty tensors.
        """
        rays_o = ray_bundle.origins.reshape(-1, 3).contiguous()
        rays_d = ray_bundle.directions.reshape(-1, 3).contiguous()
        times = ray_bundle.times.reshape(-1, 1) if ray_bundle.times is not None else None
        t_min = ray_bundle.nears.reshape(-1).contiguous() if ray_bundle.nears is not None else None
        t_max = ray_bundle.fars.reshape(-1).contiguous() if ray_bundle.fars is not None else None
        far = self.far_plane if far_plane is None else far_plane
        ray_indices, starts, ends = self.occupancy_grid.sampling(
            rays_o=rays_o,
            rays_d=rays_d,
            sigma_fn=self._sigma_fn(rays_o, rays_d, times),
            near_plane=self.near_plane if near_plane is None else near_plane,
            far_plane=1e10 if far is None else far,
            t_min=t_min,
            t_max=t_max,
            render_step_size=self.render_step_size if render_step_size is None else render_step_size,
            early_stop_eps=self.early_stop_eps,
            alpha_thre=(self.alpha_thre if alpha_thre is None else alpha_thre) if self._warm() else 0.0,
            stratified=self.training,
            cone_angle=self.cone_angle if cone_angle is None else cone_angle,
        )
        if starts.shape[0] == 0:
            ray_indices = torch.zeros((1,), dtype=torch.long, device=rays_o.device)
            starts = torch.ones((1,), dtype=rays_o.dtype, device=rays_o.device)
            ends = starts.clone()
        ray_indices = ray_indices.long()
        flat = ray_bundle.flatten() if len(ray_bundle.shape) > 1 else ray_bundle
        camera_indices = flat.camera_indices[ray_indices] if flat.camera_indices is not None else None
        pixel_area = flat.pixel_area[ray_indices]
        ray_samples = RaySamples(
            frustums=Frustums(
                origins=rays_o[ray_indices],
                directions=rays_d[ray_indices],
                starts=starts[:, None],
                ends=ends[:, None],
                pixel_area=pixel_area,
            ),
            camera_indices=camera_indices,
            times=times[ray_indices] if times is not None else None,
        )
        return ray_samples, ray_indices

    @torch.no_grad()
    def occ_eval_fn(self, x: Float[Tensor, "n 3"]) -> Float[Tensor, " n"]:
        """Occupancy used to update the grid: ``density * render_step_size`` (max over random times).

        Args:
            x: ``(n, 3)`` points.

        Returns:
            ``(n,)`` occupancies.
        """
        if self.density_fn is None:
            raise RuntimeError("OccupancyGridSampler needs a `density_fn` to update the grid.")
        if self.time_samples <= 0:
            occ = self.density_fn(x).reshape(-1)
        else:
            occ = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for _ in range(self.time_samples):
                t = torch.rand(x.shape[0], 1, dtype=x.dtype, device=x.device)
                occ = torch.maximum(occ, self.density_fn(x, t).reshape(-1))
        return occ * self.render_step_size

    def _warm(self) -> bool:
        return (not self.training) or self._step >= self.warmup_steps

    def update_grid(self, step: int) -> None:
        """One grid update at ``step`` if ``step`` is a multiple of ``update_every`` (training mode only).

        Args:
            step: Training step.
        """
        self._step = int(step)
        if not self.occupancy_grid.training:
            return
        self.occupancy_grid.update_every_n_steps(
            step=step,
            occ_eval_fn=self.occ_eval_fn,
            occ_thre=self.occ_thre,
            ema_decay=self.ema_decay,
            warmup_steps=self.warmup_steps,
            n=self.update_every,
        )

    def get_training_callbacks(self) -> list[TrainingCallback]:
        """The callback that updates the grid before each training iteration."""
        return [
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=self.update_grid,
            )
        ]


class ProposalSampler(Sampler):
    """Proposal-network sampler (mip-NeRF 360 style) on :class:`~nerfaccel_plugin.PropNetEstimator`.

    The proposal networks are trained by the model's own optimizer: add :meth:`loss` (computed from the
    final samples' transmittance) to the model's loss dict and put ``proposal_networks`` parameters in a
    param group.

    Args:
        proposal_networks: One density network per stage, each mapping a Nerfstudio ``RaySamples`` to
            densities via ``get_density`` (e.g. ``HashMLPDensityField``) or a ``density_fn(positions)``.
        num_proposal_samples: Samples drawn at each proposal stage. Default ``(256, 96)``.
        num_samples: Final samples per ray. Default 48.
        near_plane: Near distance. Default 0.2.
        far_plane: Far distance. Default 1e3.
        sampling_type: Spacing of the initial samples, ``"lindisp"`` (uniform in disparity, for unbounded
            scenes) or ``"uniform"``.
        requires_grad_target: Proposal networks get a gradient every ``target`` steps eventually.
        requires_grad_steps: Steps over which that gap grows from 1 to ``target``.
    """

    def __init__(
        self,
        proposal_networks: Sequence[torch.nn.Module],
        num_proposal_samples: Sequence[int] = (256, 96),
        num_samples: int = 48,
        near_plane: float = 0.2,
        far_plane: float = 1e3,
        sampling_type: Literal["uniform", "lindisp"] = "lindisp",
        requires_grad_target: float = 5.0,
        requires_grad_steps: int = 1000,
    ) -> None:
        super().__init__(num_samples=num_samples)
        if len(proposal_networks) != len(num_proposal_samples):
            raise ValueError(
                f"{len(proposal_networks)} proposal networks but {len(num_proposal_samples)} `num_proposal_samples`."
            )
        self.proposal_networks = torch.nn.ModuleList(proposal_networks)
        self.num_proposal_samples = tuple(int(n) for n in num_proposal_samples)
        self.near_plane = near_plane
        self.far_plane = far_plane
        self.sampling_type = sampling_type
        self.estimator = PropNetEstimator()
        self._requires_grad_fn = get_proposal_requires_grad_fn(requires_grad_target, requires_grad_steps)
        self._requires_grad = False

    def _density_fn(self, net: torch.nn.Module) -> Callable[[Tensor, Optional[Tensor]], Tensor]:
        if hasattr(net, "density_fn"):
            return net.density_fn
        return lambda x, t=None: net(x)

    def generate_ray_samples(self) -> RaySamples:
        """Not used: call the sampler directly."""
        raise RuntimeError("ProposalSampler samples in forward(); call the sampler directly.")

    def step_cb(self, step: int) -> None:
        """Decides whether the proposal networks get a gradient at this step (call once per training step)."""
        self._requires_grad = bool(self._requires_grad_fn(step))

    def forward(self, ray_bundle: RayBundle) -> RaySamples:
        """Samples ``num_samples`` intervals per ray through the proposal stages.

        Args:
            ray_bundle: ``(n_rays,)`` rays.

        Returns:
            ``(n_rays, num_samples)`` ray samples.
        """
        rays_o = ray_bundle.origins.reshape(-1, 3)
        rays_d = ray_bundle.directions.reshape(-1, 3)
        times = ray_bundle.times.reshape(-1, 1) if ray_bundle.times is not None else None
        n_rays = rays_o.shape[0]

        def make_sigma_fn(net: torch.nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
            density_fn = self._density_fn(net)

            def sigma_fn(t_starts: Tensor, t_ends: Tensor) -> Tensor:
                positions = rays_o[:, None, :] + rays_d[:, None, :] * ((t_starts + t_ends) * 0.5)[..., None]
                t = times[:, None, :].expand(*positions.shape[:-1], 1) if times is not None else None
                return density_fn(positions, t).reshape(t_starts.shape)

            return sigma_fn

        requires_grad = self.training and self._requires_grad and torch.is_grad_enabled()
        if requires_grad:
            self.estimator.prop_cache.clear()
        t_starts, t_ends = self.estimator.sampling(
            prop_sigma_fns=[make_sigma_fn(net) for net in self.proposal_networks],
            prop_samples=self.num_proposal_samples,
            num_samples=int(self.num_samples),
            n_rays=n_rays,
            near_plane=self.near_plane,
            far_plane=self.far_plane,
            sampling_type=self.sampling_type,
            stratified=self.training,
            requires_grad=requires_grad,
        )
        flat = ray_bundle.flatten() if len(ray_bundle.shape) > 1 else ray_bundle
        n = t_starts.shape[-1]
        camera_indices = (
            flat.camera_indices[:, None, :].expand(n_rays, n, 1) if flat.camera_indices is not None else None
        )
        return RaySamples(
            frustums=Frustums(
                origins=rays_o[:, None, :].expand(n_rays, n, 3),
                directions=rays_d[:, None, :].expand(n_rays, n, 3),
                starts=t_starts[..., None],
                ends=t_ends[..., None],
                pixel_area=flat.pixel_area[:, None, :].expand(n_rays, n, 1),
            ),
            camera_indices=camera_indices,
            times=times[:, None, :].expand(n_rays, n, 1) if times is not None else None,
        )

    def loss(self, trans: Float[Tensor, "n_rays num_samples"]) -> Tensor:
        """Proposal loss from the final samples' transmittance (0 when this step trains no proposal).

        Args:
            trans: ``(n_rays, num_samples)`` transmittance of the samples returned by :meth:`forward`.

        Returns:
            Scalar loss.
        """
        return self.estimator.compute_loss(trans)

    def get_training_callbacks(self) -> list[TrainingCallback]:
        """The callback that schedules proposal-network training (before each iteration)."""
        return [
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=self.step_cb,
            )
        ]
