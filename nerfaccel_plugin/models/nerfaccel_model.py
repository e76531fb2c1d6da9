"""The nerfaccel Nerfstudio model: Nerfstudio fields, nerfaccel samplers and packed volume rendering.

One model class serves all registered methods; the method configs pick the field (hash grid, vanilla MLP,
time-conditioned hash grid), the sampler (occupancy grid or proposal networks) and the contraction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import torch
from jaxtyping import Float
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes
from nerfstudio.field_components.encodings import NeRFEncoding
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.fields.density_fields import HashMLPDensityField
from nerfstudio.fields.nerfacto_field import NerfactoField
from nerfstudio.fields.vanilla_nerf_field import NeRFField
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps
from torch import Tensor
from torch.nn import Parameter

from .. import ns_compat
from .._validation import value_checks
from ..fields.contraction import AabbContraction
from ..fields.dynamic_field import TimeHashField
from ..fields.hash_encoding import use_nerfaccel_hash_encoding
from ..grid import ray_aabb_intersect
from ..samplers import OccupancyGridSampler, ProposalSampler
from ..volrend import accumulate_along_rays, render_weight_from_density

_COLORS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


def _tcnn_usable(device: Optional[Union[str, torch.device]]) -> bool:
    """Whether tiny-cuda-nn can back a model on ``device``: it is installed and the model is on a CUDA GPU."""
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if not on_cuda or not torch.cuda.is_available():
        return False
    try:
        import tinycudann  # noqa: F401
    except ImportError:
        return False
    return True


def _hash_implementation(choice: str, device: Optional[Union[str, torch.device]]) -> Literal["tcnn", "torch"]:
    """The hash-grid backend: ``choice`` when explicit; for ``auto`` tiny-cuda-nn when it is installed and the
    model lives on a CUDA device, torch otherwise (no warning spam)."""
    if choice in ("tcnn", "torch"):
        return choice  # type: ignore[return-value]
    return "tcnn" if _tcnn_usable(device) else "torch"


def state_dict_hash_backend(keys) -> Literal["tcnn", "torch"]:
    """The hash-grid / MLP backend a model state dict was saved from, by its key layout: tiny-cuda-nn modules
    store their weights as ``...tcnn_encoding.params``, Nerfstudio's torch modules as ``hash_table`` and
    ``layers.<i>.weight``. Fields without hash grids (``mlp``) count as ``torch``."""
    return "tcnn" if any("tcnn_encoding" in k for k in keys) else "torch"


# Nerfstudio's NeRFEncoding computes sin(2*pi * 2^k * x); the original NeRF (and nerfacc's vanilla example,
# ``SinusoidalEncoder``) uses sin(2^k * x) on raw positions and directions, k = 0 .. L-1. Shifting Nerfstudio's
# exponents by -log2(2*pi) gives exactly the original bands: with L = 10 the top band is 512 rad per unit,
# instead of 2*pi * 512 (~3217) rad per unit, which no 8x256 MLP resolves on a [-1.5, 1.5] scene (aliasing, slow
# convergence).
_NERF_FREQ_SHIFT = -math.log2(2.0 * math.pi)


@dataclass
class NerfaccelModelConfig(ModelConfig):
    """Configuration of :class:`NerfaccelModel`. Every default is chosen for quality and speed (see each field)."""

    _target: type = field(default_factory=lambda: NerfaccelModel)
    enable_collider: bool = False
    """Nerfstudio's near/far collider is not needed: the occupancy grid / proposal sampler bounds the rays."""
    collider_params: Optional[dict[str, float]] = None
    """Unused (no collider)."""
    eval_num_rays_per_chunk: int = 8192
    """Rays rendered at once when rendering whole images (eval, viewer, ns-render)."""

    # --- what the model is made of ---------------------------------------------------------------------------
    field_type: Literal["hash", "mlp", "time-hash"] = "hash"
    """Radiance field: ``hash`` (Nerfstudio's NerfactoField, a multiresolution hash grid + small MLPs), ``mlp``
    (Nerfstudio's NeRFField: the original 8-layer MLP with positional encoding) or ``time-hash`` (hash grid
    conditioned on time, for dynamic scenes)."""
    sampler: Literal["occupancy", "proposal"] = "occupancy"
    """Where samples go: ``occupancy`` (occupancy-grid ray marching, empty space skipped) or ``proposal``
    (proposal networks, mip-NeRF 360)."""
    contraction: Literal["none", "l2", "linf"] = "none"
    """Scene contraction of field inputs: ``none`` (bounded scenes; points outside the box are empty), ``linf``
    (cube, instant-ngp style) or ``l2`` (sphere, mip-NeRF 360)."""

    # --- occupancy-grid sampling ------------------------------------------------------------------------------
    grid_resolution: int = 128
    """Occupancy-grid cells per axis (per level)."""
    grid_levels: int = 1
    """Nested occupancy-grid levels, each twice as large as the previous; >1 reaches into contracted space."""
    render_step_size: Optional[float] = None
    """Marching step; ``None`` derives it from the scene box: its diagonal divided by ``samples_per_diagonal``."""
    samples_per_diagonal: int = 1000
    """Steps across the scene box's diagonal when ``render_step_size`` is ``None`` (the CPU configs use 256)."""
    cone_angle: float = 0.0
    """Step growth with distance (0 for synthetic objects, 1/256 for real captures)."""
    alpha_thre: float = 0.01
    """Skip samples with opacity below this while training (capped by the grid's mean occupancy early on)."""
    early_stop_eps: float = 1e-4
    """Stop marching a ray once its transmittance falls below this (training)."""
    near_plane: float = 0.0
    """Where marching starts along each ray (occupancy sampler)."""
    far_plane: float = 1e10
    """Where marching stops (occupancy sampler); the grid bounds it anyway."""
    occ_update_every: int = 16
    """Occupancy-grid update period in steps."""
    occ_warmup_steps: int = 256
    """Until this step every grid cell is re-evaluated at each update (then a random quarter + occupied cells)."""
    occ_thre: float = 0.01
    """A cell is occupied when its occupancy (density x step) exceeds min(this, mean occupancy)."""
    occ_ema_decay: float = 0.95
    """Decay of a cell's previous occupancy at each update."""
    occ_time_samples: int = 2
    """Time-conditioned fields only: random times per grid update (max occupancy kept) so the grid covers the
    whole sequence."""

    # --- proposal sampling ------------------------------------------------------------------------------------
    num_proposal_samples: tuple[int, ...] = (256, 96)
    """Samples per ray at each proposal stage."""
    num_samples: int = 48
    """Final samples per ray (proposal sampler)."""
    proposal_near_plane: float = 0.2
    """Near distance of proposal sampling."""
    proposal_far_plane: float = 1e3
    """Far distance of proposal sampling (contracted space reaches to infinity)."""
    proposal_sampling_type: Literal["uniform", "lindisp"] = "lindisp"
    """Initial proposal spacing: ``lindisp`` (uniform in disparity, unbounded scenes) or ``uniform``."""
    proposal_hash_levels: int = 5
    """Hash-grid levels of each proposal network."""
    proposal_max_res: tuple[int, ...] = (128, 256)
    """Finest hash-grid resolution of each proposal network."""
    proposal_log2_hashmap_size: int = 17
    """log2 hash-table size of the proposal networks."""
    proposal_requires_grad_target: float = 5.0
    """Eventually the proposal networks get a gradient every this many steps."""
    proposal_requires_grad_steps: int = 1000
    """Steps over which that gap grows from 1."""
    interlevel_loss_mult: float = 1.0
    """Weight of the proposal (interlevel) loss."""
    distortion_loss_mult: float = 0.0
    """Weight of the mip-NeRF 360 distortion loss (0 disables it)."""

    # --- hash-grid field ----------------------------------------------------------------------------------------
    num_levels: int = 16
    """Hash-grid levels."""
    base_res: int = 16
    """Coarsest hash-grid resolution."""
    max_res: int = 2048
    """Finest hash-grid resolution."""
    log2_hashmap_size: int = 19
    """log2 of the hash-table size per level."""
    features_per_level: int = 2
    """Features per hash-grid level."""
    hidden_dim: int = 64
    """Width of the density MLP."""
    geo_feat_dim: int = 15
    """Geometry features passed from the density MLP to the colour MLP."""
    hidden_dim_color: int = 64
    """Width of the colour MLP."""
    num_layers_color: int = 3
    """Layers of the colour MLP."""
    appearance_embedding_dim: int = 0
    """Per-image appearance embedding (0 disables; useful for real captures with exposure changes)."""
    eval_march_steps: int = 64
    """Occupancy sampler at evaluation / in the viewer / ``ns-render``: march rays in segments of this many steps
    and stop each ray once its transmittance is below ``early_stop_eps``, so samples hidden behind surfaces are
    never evaluated (0: evaluate every sample in occupied cells at once)."""
    hash_implementation: Literal["auto", "tcnn", "torch"] = "auto"
    """Hash-grid backend: ``auto`` uses tiny-cuda-nn when it is installed and the model is on a GPU, Nerfstudio's
    torch ``HashEncoding`` otherwise. The two store different parameters, so a checkpoint loads only into the
    backend it was trained with (``torch`` gives checkpoints that load anywhere)."""
    cpu_hash_kernel: bool = True
    """Run hash encodings on CPU tensors through nerfaccel's fused C++ kernel (same parameters and results as
    Nerfstudio's torch path, several times faster); tiny-cuda-nn / GPU encodings are untouched."""
    value_checks: Literal["auto", "always", "never"] = "auto"
    """nerfaccel's input checks that read tensor values (NaN rays, sorted ray indices, index ranges) inside each
    forward pass: each is a host synchronization on a GPU, and the model builds those inputs with its own
    samplers. ``auto`` runs them on the CPU and skips them on a GPU; type, shape and device checks always run."""
    time_frequencies: int = 6
    """Frequencies of the time encoding (``time-hash`` field)."""

    # --- vanilla MLP field ------------------------------------------------------------------------------------
    mlp_num_layers: int = 8
    """Layers of the vanilla NeRF trunk."""
    mlp_layer_width: int = 256
    """Width of the vanilla NeRF trunk."""
    mlp_position_frequencies: int = 10
    """Positional-encoding frequencies of positions (vanilla NeRF): sin/cos(2^k x), k < this, as the original."""
    mlp_direction_frequencies: int = 4
    """Positional-encoding frequencies of directions (vanilla NeRF): sin/cos(2^k d), k < this."""
    mlp_original_frequencies: bool = True
    """Vanilla NeRF bands as the original paper and nerfacc, sin(2^k x); ``False`` gives Nerfstudio's NeRFEncoding
    bands sin(2 pi 2^k x) (what nerfaccel-vanilla used before; set it in the config.yml of such a run)."""

    # --- rendering and losses ---------------------------------------------------------------------------------
    background_color: Literal["random", "white", "black"] = "random"
    """Background behind RGBA training images: ``random`` draws one colour per ray and step, so the field cannot
    bake a background into the object (instant-ngp's trick); the target image is composited on the same colour."""
    eval_background_color: Literal["white", "black"] = "white"
    """Background used for evaluation, rendering and the viewer (and for RGBA ground truth in metrics)."""
    compute_lpips: bool = True
    """Report LPIPS in eval when its weights are already on disk (never downloaded)."""


class NerfaccelModel(Model):
    """Nerfstudio model running on nerfaccel's samplers and packed volume rendering.

    Args:
        config: The model configuration.
    """

    config: NerfaccelModelConfig

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Nerfstudio's device marker is never used in a forward; without a gradient flag DDP need not search
        # for unused parameters on every step (see ``pipeline.needs_unused_parameter_search``).
        self.device_indicator_param.requires_grad_(False)

    def populate_modules(self) -> None:
        """Builds the field, the sampler and the metrics."""
        super().populate_modules()
        cfg = self.config
        aabb = self.scene_box.aabb.detach().float()
        extent = aabb[1] - aabb[0]
        if not bool((extent > 0).all()) or not bool(torch.isfinite(aabb).all()):
            raise ValueError(f"Empty or invalid scene box {aabb.tolist()}: check the dataparser's scene box options.")
        impl = getattr(self, "_checkpoint_hash_implementation", None)
        if impl is None:
            impl = _hash_implementation(cfg.hash_implementation, self.kwargs.get("device"))
        self.hash_implementation = impl
        contraction = None if cfg.contraction == "none" else AabbContraction(aabb, order=cfg.contraction)

        if cfg.field_type == "hash":
            self.field = NerfactoField(
                aabb=aabb,
                num_images=self.num_train_data,
                num_layers=2,
                hidden_dim=cfg.hidden_dim,
                geo_feat_dim=cfg.geo_feat_dim,
                num_levels=cfg.num_levels,
                base_res=cfg.base_res,
                max_res=cfg.max_res,
                log2_hashmap_size=cfg.log2_hashmap_size,
                features_per_level=cfg.features_per_level,
                num_layers_color=cfg.num_layers_color,
                hidden_dim_color=cfg.hidden_dim_color,
                appearance_embedding_dim=cfg.appearance_embedding_dim,
                use_average_appearance_embedding=True,  # eval / novel views: the mean embedding, not zeros
                spatial_distortion=contraction,
                implementation=impl,
            )
        elif cfg.field_type == "mlp":
            shift = _NERF_FREQ_SHIFT if cfg.mlp_original_frequencies else 0.0
            self.field = NeRFField(  # bands sin(2^k x) as the original NeRF, see _NERF_FREQ_SHIFT
                position_encoding=NeRFEncoding(
                    in_dim=3,
                    num_frequencies=cfg.mlp_position_frequencies,
                    min_freq_exp=shift,
                    max_freq_exp=cfg.mlp_position_frequencies - 1.0 + shift,
                    include_input=True,
                ),
                direction_encoding=NeRFEncoding(
                    in_dim=3,
                    num_frequencies=cfg.mlp_direction_frequencies,
                    min_freq_exp=shift,
                    max_freq_exp=cfg.mlp_direction_frequencies - 1.0 + shift,
                    include_input=True,
                ),
                base_mlp_num_layers=cfg.mlp_num_layers,
                base_mlp_layer_width=cfg.mlp_layer_width,
                head_mlp_layer_width=max(cfg.mlp_layer_width // 2, 8),
                skip_connections=(cfg.mlp_num_layers // 2,) if cfg.mlp_num_layers > 2 else (),
                spatial_distortion=contraction,
            )
        elif cfg.field_type == "time-hash":
            if contraction is not None:
                raise ValueError("field_type='time-hash' supports contraction='none' only.")
            self.field = TimeHashField(
                aabb=aabb,
                num_levels=cfg.num_levels,
                base_res=cfg.base_res,
                max_res=cfg.max_res,
                log2_hashmap_size=cfg.log2_hashmap_size,
                features_per_level=cfg.features_per_level,
                time_frequencies=cfg.time_frequencies,
                hidden_dim=cfg.hidden_dim,
                geo_feat_dim=cfg.geo_feat_dim,
                hidden_dim_color=cfg.hidden_dim_color,
                num_layers_color=cfg.num_layers_color,
                implementation=impl,
            )
        else:
            raise ValueError(f"Unknown field_type {cfg.field_type!r}.")

        if cfg.sampler == "occupancy":
            step = cfg.render_step_size
            if step is None:
                step = float(torch.linalg.norm(extent).item()) / cfg.samples_per_diagonal
            if not step > 0:
                raise ValueError(f"--pipeline.model.render-step-size must be > 0, got {step}.")
            self.sampler = OccupancyGridSampler(
                aabb.reshape(-1),
                density_fn=self.field.density_fn,
                resolution=cfg.grid_resolution,
                levels=cfg.grid_levels,
                render_step_size=step,
                near_plane=cfg.near_plane,
                far_plane=cfg.far_plane,
                alpha_thre=cfg.alpha_thre,
                early_stop_eps=cfg.early_stop_eps,
                cone_angle=cfg.cone_angle,
                occ_thre=cfg.occ_thre,
                ema_decay=cfg.occ_ema_decay,
                update_every=cfg.occ_update_every,
                warmup_steps=cfg.occ_warmup_steps,
                time_samples=cfg.occ_time_samples if cfg.field_type == "time-hash" else 0,
            )
        elif cfg.sampler == "proposal":
            if len(cfg.proposal_max_res) != len(cfg.num_proposal_samples):
                raise ValueError("--pipeline.model.proposal-max-res needs one value per proposal stage.")
            nets = [
                HashMLPDensityField(
                    aabb,
                    spatial_distortion=contraction,
                    num_levels=cfg.proposal_hash_levels,
                    max_res=res,
                    log2_hashmap_size=cfg.proposal_log2_hashmap_size,
                    hidden_dim=16,
                    use_linear=False,
                    implementation=impl,
                )
                for res in cfg.proposal_max_res
            ]
            self.sampler = ProposalSampler(
                nets,
                num_proposal_samples=cfg.num_proposal_samples,
                num_samples=cfg.num_samples,
                near_plane=cfg.proposal_near_plane,
                far_plane=cfg.proposal_far_plane,
                sampling_type=cfg.proposal_sampling_type,
                requires_grad_target=cfg.proposal_requires_grad_target,
                requires_grad_steps=cfg.proposal_requires_grad_steps,
            )
        else:
            raise ValueError(f"Unknown sampler {cfg.sampler!r}.")

        if cfg.cpu_hash_kernel:  # Nerfstudio's torch HashEncoding -> nerfaccel's fused kernel on CPU tensors
            use_nerfaccel_hash_encoding(self)

        from torchmetrics.functional import structural_similarity_index_measure
        from torchmetrics.image import PeakSignalNoiseRatio

        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = structural_similarity_index_measure
        # LPIPS is an nn.Module with AlexNet's weights, present only when they are on disk. Kept out of the
        # module tree (a plain list), so the checkpoint's keys never depend on whether the weights were found
        # at training time, and the same checkpoint loads strictly wherever it is evaluated.
        self._lpips = [ns_compat.make_lpips()] if cfg.compute_lpips else [None]

    @property
    def lpips(self) -> Optional[torch.nn.Module]:
        """LPIPS metric (``None`` without AlexNet's weights on disk); not part of the state dict."""
        metric = self._lpips[0]
        if metric is not None:
            metric.to(self.device)
        return metric

    def rebuild_for_hash_implementation(self, implementation: Literal["tcnn", "torch"]) -> None:
        """Rebuilds the field, sampler and metrics on ``implementation`` (fresh parameters), on the same device and
        in the same train / eval mode; used to load a checkpoint of the other backend when the option is ``auto``."""
        device, training = self.device, self.training
        self._checkpoint_hash_implementation = implementation
        self.populate_modules()
        self.to(device)
        self.train(training)

    @property
    def occupancy_grid(self):
        """The :class:`~nerfaccel_plugin.OccGridEstimator` (occupancy sampler only)."""
        return getattr(self.sampler, "occupancy_grid", None)

    def get_training_callbacks(self, attrs: TrainingCallbackAttributes) -> list[TrainingCallback]:
        """The sampler's callbacks: the grid update, or the proposal-gradient schedule."""
        return self.sampler.get_training_callbacks()

    def get_param_groups(self) -> dict[str, list[Parameter]]:
        """``fields`` (the radiance field) and, with the proposal sampler, ``proposal_networks``."""
        groups = {"fields": list(self.field.parameters())}
        if isinstance(self.sampler, ProposalSampler):
            groups["proposal_networks"] = list(self.sampler.proposal_networks.parameters())
        return groups

    def _background(self, n: int, device: torch.device) -> Float[Tensor, "n 3"]:
        if self.training and self.config.background_color == "random":
            return torch.rand(n, 3, device=device)
        name = self.config.background_color if self.training else self.config.eval_background_color
        return torch.tensor(_COLORS[name], device=device).expand(n, 3)

    def get_outputs(self, ray_bundle: RayBundle) -> dict[str, Tensor]:
        """Renders a ``(n_rays,)`` ray bundle: ``rgb``, ``accumulation``, ``depth`` and sample statistics."""
        n_rays = ray_bundle.origins.reshape(-1, 3).shape[0]
        device = ray_bundle.origins.device
        background = self._background(n_rays, device)
        if isinstance(self.sampler, OccupancyGridSampler) and not self.training and self.config.eval_march_steps > 0:
            return self._render_occupancy_eval(ray_bundle, background)
        if isinstance(self.sampler, OccupancyGridSampler):
            ray_samples, ray_indices = self.sampler(ray_bundle)
            fo = self.field(ray_samples)
            t_starts = ray_samples.frustums.starts[:, 0]
            t_ends = ray_samples.frustums.ends[:, 0]
            weights, _, _ = render_weight_from_density(
                t_starts, t_ends, fo[FieldHeadNames.DENSITY][:, 0], ray_indices=ray_indices, n_rays=n_rays
            )
            rgb = accumulate_along_rays(weights, fo[FieldHeadNames.RGB], ray_indices=ray_indices, n_rays=n_rays)
            acc = accumulate_along_rays(weights, None, ray_indices=ray_indices, n_rays=n_rays)
            depth = accumulate_along_rays(
                weights, ((t_starts + t_ends) * 0.5)[:, None], ray_indices=ray_indices, n_rays=n_rays
            )
            ones = torch.ones_like(ray_indices, dtype=torch.float32)  # index_add: no host sync, unlike bincount
            num_samples = torch.zeros(n_rays, device=ray_indices.device).index_add_(0, ray_indices, ones)
            outputs: dict[str, Tensor] = {}
        else:
            ray_samples = self.sampler(ray_bundle)
            fo = self.field(ray_samples)
            t_starts = ray_samples.frustums.starts[..., 0]
            t_ends = ray_samples.frustums.ends[..., 0]
            weights, trans, _ = render_weight_from_density(t_starts, t_ends, fo[FieldHeadNames.DENSITY][..., 0])
            rgb = (weights[..., None] * fo[FieldHeadNames.RGB]).sum(dim=-2)
            acc = weights.sum(dim=-1, keepdim=True)
            depth = (weights * (t_starts + t_ends) * 0.5).sum(dim=-1, keepdim=True)
            num_samples = torch.full((n_rays,), float(t_starts.shape[-1]), device=device)
            outputs = {}
            if self.training:
                # The proposal loss is computed here, inside forward, so that under DDP the proposal networks'
                # parameters are reachable from the outputs (else DDP marks them unused and fails on backward).
                outputs = {"trans": trans, "weights": weights, "t_starts": t_starts, "t_ends": t_ends}
                outputs["interlevel_loss"] = self.sampler.loss(trans.detach())
        rgb = rgb + background * (1.0 - acc)
        depth = depth / acc.clamp(min=1e-10)
        outputs.update(
            {
                "rgb": rgb,
                "accumulation": acc,
                "depth": depth,
                # float (n, 1) like depth: the viewer and ns-render colormap it (integer tensors are refused)
                "num_samples_per_ray": num_samples[:, None],
            }
        )
        if self.training:
            outputs["background"] = background
        return outputs

    @torch.no_grad()
    def _render_occupancy_eval(self, ray_bundle: RayBundle, background: Tensor) -> dict[str, Tensor]:
        """Test-time occupancy-grid rendering with early ray termination.

        Rays march in segments of ``eval_march_steps`` steps (longer where cone stepping grows the step); after
        each segment the field is evaluated on its samples, composited behind what the ray has already
        gathered, and rays whose transmittance fell below ``early_stop_eps`` or that left the grid stop. The
        result equals compositing every sample up to the termination threshold.
        """
        sampler = self.sampler
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
            seg = self.config.eval_march_steps * torch.clamp(lo * cone, min=step)
            hi = torch.minimum(lo + seg, t_end[alive])
            sub = flat[alive]
            sub.nears, sub.fars = lo[:, None], hi[:, None]
            samples, ri = sampler(sub)
            fo = self.field(samples)
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

    def _gt(self, image: Tensor, background: Optional[Tensor]) -> Float[Tensor, "*bs 3"]:
        """Ground-truth RGB; RGBA images are composited on ``background`` (or the eval background)."""
        if image.shape[-1] < 4:
            return image[..., :3]
        if background is None:
            background = torch.tensor(_COLORS[self.config.eval_background_color], device=image.device)
        alpha = image[..., 3:4]
        return image[..., :3] * alpha + background.to(image) * (1.0 - alpha)

    def get_rgba_image(self, outputs: dict[str, Tensor], output_name: str = "rgb") -> Tensor:
        """RGBA ``(..., 4)`` of a render (``ns-render --rendered-output-names rgba``, ``ns-export`` point clouds).

        The rendered ``rgb`` is composited on the background (``eval_background_color`` outside training); this
        removes it again and returns the straight colour with the accumulation as alpha.
        """
        acc_name = output_name.replace("rgb", "accumulation")
        if acc_name not in outputs:
            raise NotImplementedError(f"no `{acc_name}` output to build an RGBA image of `{output_name}` from")
        rgb, acc = outputs[output_name], outputs[acc_name]
        if acc.dim() < rgb.dim():
            acc = acc.unsqueeze(-1)
        background = outputs.get("background")
        if background is None:
            background = torch.tensor(_COLORS[self.config.eval_background_color], device=rgb.device, dtype=rgb.dtype)
        foreground = rgb - background * (1.0 - acc)
        return torch.cat(((foreground / acc.clamp(min=1e-10)).clamp(0.0, 1.0), acc), dim=-1)

    def get_metrics_dict(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Training PSNR and the number of samples of the batch (drives the dynamic ray count)."""
        image = self._gt(batch["image"].to(self.device), outputs.get("background"))
        return {
            "psnr": self.psnr(outputs["rgb"].detach(), image),
            "num_samples_per_batch": outputs["num_samples_per_ray"].sum(),
        }

    def get_loss_dict(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor], metrics_dict: Optional[dict] = None
    ) -> dict[str, Tensor]:
        """Photometric MSE (on the same background as the render), plus proposal / distortion losses."""
        image = self._gt(batch["image"].to(self.device), outputs.get("background"))
        losses = {"rgb_loss": torch.nn.functional.mse_loss(outputs["rgb"], image)}
        if self.training and "interlevel_loss" in outputs:
            losses["interlevel_loss"] = self.config.interlevel_loss_mult * outputs["interlevel_loss"]
            if self.config.distortion_loss_mult > 0:
                from ..losses import distortion

                losses["distortion_loss"] = (
                    self.config.distortion_loss_mult
                    * distortion(outputs["weights"], outputs["t_starts"], outputs["t_ends"]).mean()
                )
        return losses

    def get_image_metrics_and_images(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> tuple[dict[str, float], dict[str, Tensor]]:
        """PSNR, SSIM (and LPIPS when available offline) of a full image, plus comparison images."""
        image = self._gt(batch["image"].to(self.device), None)
        rgb = outputs["rgb"]
        acc = colormaps.apply_colormap(outputs["accumulation"])
        depth = colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"])
        gt = torch.moveaxis(image, -1, 0)[None]
        pred = torch.moveaxis(rgb, -1, 0)[None].clamp(0, 1)
        metrics = {"psnr": float(self.psnr(pred, gt).item()), "ssim": float(self.ssim(pred, gt))}
        if self.lpips is not None:
            metrics["lpips"] = float(self.lpips(gt, pred))
        images = {"img": torch.cat([image, rgb], dim=1), "accumulation": acc, "depth": depth}
        return metrics, images

    def _value_checks_enabled(self, device: torch.device) -> bool:
        if self.config.value_checks == "auto":
            return device.type == "cpu"
        return self.config.value_checks == "always"

    def forward(self, ray_bundle: RayBundle) -> dict[str, Tensor]:  # type: ignore[override]
        """Runs the model on a ray bundle (no collider: the samplers bound the rays)."""
        with value_checks(self._value_checks_enabled(ray_bundle.origins.device)):
            return self.get_outputs(ray_bundle)


__all__ = ["NerfaccelModel", "NerfaccelModelConfig", "RaySamples"]
