"""Configuration of the nerfaccel model, built from typed parts.

:class:`NerfaccelModelConfig` holds the options every method shares and two parts:

* ``field``: :class:`HashFieldConfig` (Nerfstudio's NerfactoField, a hash grid + small MLPs),
  :class:`MlpFieldConfig` (the original NeRF MLP) or :class:`TimeHashFieldConfig` (a time-conditioned hash grid);
* ``sampler``: :class:`OccupancySamplerConfig` (occupancy-grid marching) or :class:`ProposalSamplerConfig`
  (proposal networks).

Each method's config picks one of each, so ``ns-train <method> --help`` lists only the options that act on that
method (``--pipeline.model.field.max-res``, ``--pipeline.model.sampler.grid-resolution``), and combinations that do
not exist (a contracted time-conditioned field, proposal options on an occupancy-grid method) cannot be written.
Scene contraction belongs to the fields that support it.

Every option is checked when its config is built, in ``__post_init__``: tyro constructs the configs from the
command line before ``ns-train`` writes ``config.yml``, so a bad value stops the run with an error naming the option
as typed (``--pipeline.model.sampler.grid-resolution must be >= 1, got 0``) and nothing is written.

``config.yml`` files written before the parts existed hold one flat config of 54 options (``field_type``,
``sampler`` and ``contraction`` as strings); :meth:`NerfaccelModelConfig.__setstate__` converts them when YAML
(or pickle) restores such a config (:func:`migrate_flat_options`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Optional

import tyro
from nerfstudio.configs.base_config import PrintableConfig
from nerfstudio.models.base_model import ModelConfig

if TYPE_CHECKING:
    import torch

    from ..samplers import OccupancyGridSampler, ProposalSampler

MODEL_PREFIX = "--pipeline.model."
"""How the model's options are spelled on the ``ns-train`` command line."""


def _flag(prefix: str, name: str) -> str:
    return prefix + name.replace("_", "-")


class _Checker:
    """Collects the problems of one config, each naming the option as typed on the command line."""

    def __init__(self, config: Any, prefix: str) -> None:
        self.config, self.prefix, self.problems = config, prefix, []

    def value(self, name: str) -> Any:
        return getattr(self.config, name)

    def fail(self, name: str, rule: str) -> None:
        self.problems.append(f"{_flag(self.prefix, name)} {rule}, got {self.value(name)!r}")

    def integer(self, name: str, minimum: int) -> None:
        value = self.value(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(name, f"must be an integer >= {minimum}")

    def number(
        self, name: str, low: float = -math.inf, high: float = math.inf, low_open: bool = False, high_open=False
    ) -> None:
        value = self.value(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(name, "must be a finite number")
            return
        if value < low or (low_open and value == low) or value > high or (high_open and value == high):
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            bounds = f"{left}{low:g}, {high:g}{right}"
            if high == math.inf:
                bounds = f"> {low:g}" if low_open else f">= {low:g}"
            self.fail(name, f"must be {'in ' if high != math.inf else ''}{bounds}")

    def counts(self, name: str, minimum: int = 1) -> None:
        value = self.value(name)
        if not value or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in value):
            self.fail(name, f"needs at least one value, each an integer >= {minimum}")

    def raise_if_any(self) -> None:
        if self.problems:
            raise ValueError(
                "invalid model option"
                + ("s" if len(self.problems) > 1 else "")
                + ": "
                + "; ".join(self.problems)
                + ". Fix the value(s) on the command line (or in config.yml)."
            )


# ---------------------------------------------------------------------------------------------------------------
# Fields


@dataclass
class FieldConfig(PrintableConfig):
    """The radiance field of a nerfaccel method (a part of :class:`NerfaccelModelConfig`)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, prefix: str = MODEL_PREFIX + "field.") -> None:
        """Raises ``ValueError`` naming every invalid option (as ``prefix`` + option on the command line)."""
        check = _Checker(self, prefix)
        self._check(check)
        check.raise_if_any()

    def _check(self, check: _Checker) -> None:
        pass

    def contraction_order(self) -> Literal["none", "l2", "linf"]:
        """The scene contraction of the field's inputs (also used by proposal networks)."""
        return "none"

    def time_samples(self) -> int:
        """Random times per occupancy-grid update (time-conditioned fields; 0 for static ones)."""
        return 0

    def make(self, aabb: torch.Tensor, num_images: int, implementation: str, contraction: Any) -> torch.nn.Module:
        """Builds the Nerfstudio field.

        Args:
            aabb: ``(2, 3)`` scene box.
            num_images: Training images (appearance embeddings).
            implementation: Hash-grid backend, ``"tcnn"`` or ``"torch"``.
            contraction: Nerfstudio spatial distortion for :meth:`contraction_order`, or ``None``.

        Returns:
            The field module.
        """
        raise NotImplementedError


def _check_hash_grid(check: _Checker) -> None:
    for name in ("num_levels", "base_res", "features_per_level", "hidden_dim", "hidden_dim_color"):
        check.integer(name, 1)
    check.integer("num_layers_color", 1)
    check.integer("geo_feat_dim", 0)
    check.integer("max_res", max(1, int(check.value("base_res")) if isinstance(check.value("base_res"), int) else 1))
    log2 = check.value("log2_hashmap_size")
    if isinstance(log2, bool) or not isinstance(log2, int) or not 1 <= log2 <= 30:
        check.fail("log2_hashmap_size", "must be an integer in [1, 30]")


@dataclass
class HashFieldConfig(FieldConfig):
    """Multiresolution hash grid + small MLPs (Nerfstudio's ``NerfactoField``)."""

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
    contraction: Literal["none", "l2", "linf"] = "none"
    """Scene contraction of field inputs: ``none`` (bounded scenes; points outside the box are empty), ``linf``
    (cube, instant-ngp style) or ``l2`` (sphere, mip-NeRF 360)."""
    hash_implementation: Literal["auto", "tcnn", "torch"] = "auto"
    """Hash-grid backend: ``auto`` uses tiny-cuda-nn when it is installed and the model is on a GPU, Nerfstudio's
    torch ``HashEncoding`` otherwise. The two store different parameters, so a checkpoint loads only into the
    backend it was trained with (``torch`` gives checkpoints that load anywhere)."""
    cpu_hash_kernel: bool = True
    """Run hash encodings on CPU tensors through nerfaccel's fused C++ kernel (same parameters and results as
    Nerfstudio's torch path, several times faster); tiny-cuda-nn / GPU encodings are untouched."""

    def _check(self, check: _Checker) -> None:
        _check_hash_grid(check)
        check.integer("appearance_embedding_dim", 0)

    def contraction_order(self) -> Literal["none", "l2", "linf"]:
        return self.contraction

    def make(self, aabb, num_images, implementation, contraction):  # noqa: ANN001, ANN201 - see FieldConfig.make
        from nerfstudio.fields.nerfacto_field import NerfactoField

        return NerfactoField(
            aabb=aabb,
            num_images=num_images,
            num_layers=2,
            hidden_dim=self.hidden_dim,
            geo_feat_dim=self.geo_feat_dim,
            num_levels=self.num_levels,
            base_res=self.base_res,
            max_res=self.max_res,
            log2_hashmap_size=self.log2_hashmap_size,
            features_per_level=self.features_per_level,
            num_layers_color=self.num_layers_color,
            hidden_dim_color=self.hidden_dim_color,
            appearance_embedding_dim=self.appearance_embedding_dim,
            use_average_appearance_embedding=True,  # eval / novel views: the mean embedding, not zeros
            spatial_distortion=contraction,
            implementation=implementation,
        )


@dataclass
class TimeHashFieldConfig(FieldConfig):
    """Hash grid conditioned on time, for dynamic scenes (:class:`~nerfaccel_plugin.ns.fields.TimeHashField`).
    Bounded scenes only (no contraction)."""

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
    time_frequencies: int = 6
    """Frequencies of the time encoding."""
    grid_time_samples: int = 2
    """Random times per occupancy-grid update (the maximum occupancy is kept), so the grid covers the whole
    sequence."""
    hash_implementation: Literal["auto", "tcnn", "torch"] = "auto"
    """Hash-grid backend: ``auto`` uses tiny-cuda-nn when it is installed and the model is on a GPU, Nerfstudio's
    torch ``HashEncoding`` otherwise (``torch`` gives checkpoints that load anywhere)."""
    cpu_hash_kernel: bool = True
    """Run hash encodings on CPU tensors through nerfaccel's fused C++ kernel."""

    def _check(self, check: _Checker) -> None:
        _check_hash_grid(check)
        check.integer("time_frequencies", 0)
        check.integer("grid_time_samples", 1)

    def time_samples(self) -> int:
        return self.grid_time_samples

    def make(self, aabb, num_images, implementation, contraction):  # noqa: ANN001, ANN201 - see FieldConfig.make
        from ..fields.dynamic_field import TimeHashField

        return TimeHashField(
            aabb=aabb,
            num_levels=self.num_levels,
            base_res=self.base_res,
            max_res=self.max_res,
            log2_hashmap_size=self.log2_hashmap_size,
            features_per_level=self.features_per_level,
            time_frequencies=self.time_frequencies,
            hidden_dim=self.hidden_dim,
            geo_feat_dim=self.geo_feat_dim,
            hidden_dim_color=self.hidden_dim_color,
            num_layers_color=self.num_layers_color,
            implementation=implementation,
        )


# Nerfstudio's NeRFEncoding computes sin(2*pi * 2^k * x); the original NeRF (and nerfacc's vanilla example,
# ``SinusoidalEncoder``) uses sin(2^k * x) on raw positions and directions, k = 0 .. L-1. Shifting Nerfstudio's
# exponents by -log2(2*pi) gives exactly the original bands: with L = 10 the top band is 512 rad per unit,
# instead of 2*pi * 512 (~3217) rad per unit, which no 8x256 MLP resolves on a [-1.5, 1.5] scene (aliasing, slow
# convergence).
_NERF_FREQ_SHIFT = -math.log2(2.0 * math.pi)


@dataclass
class MlpFieldConfig(FieldConfig):
    """The original NeRF MLP with positional encoding (Nerfstudio's ``NeRFField``)."""

    num_layers: int = 8
    """Layers of the trunk."""
    layer_width: int = 256
    """Width of the trunk."""
    position_frequencies: int = 10
    """Positional-encoding frequencies of positions: sin/cos(2^k x), k < this, as the original."""
    direction_frequencies: int = 4
    """Positional-encoding frequencies of directions: sin/cos(2^k d), k < this."""
    original_frequencies: bool = True
    """Bands as the original paper and nerfacc, sin(2^k x); ``False`` gives Nerfstudio's NeRFEncoding bands
    sin(2 pi 2^k x) (what nerfaccel-vanilla used before; set it in the config.yml of such a run)."""
    contraction: Literal["none", "l2", "linf"] = "none"
    """Scene contraction of field inputs: ``none``, ``linf`` (cube) or ``l2`` (sphere)."""

    def _check(self, check: _Checker) -> None:
        check.integer("num_layers", 1)
        check.integer("layer_width", 1)
        check.integer("position_frequencies", 0)
        check.integer("direction_frequencies", 0)

    def contraction_order(self) -> Literal["none", "l2", "linf"]:
        return self.contraction

    def make(self, aabb, num_images, implementation, contraction):  # noqa: ANN001, ANN201 - see FieldConfig.make
        from nerfstudio.field_components.encodings import NeRFEncoding
        from nerfstudio.fields.vanilla_nerf_field import NeRFField

        shift = _NERF_FREQ_SHIFT if self.original_frequencies else 0.0
        return NeRFField(  # bands sin(2^k x) as the original NeRF, see _NERF_FREQ_SHIFT
            position_encoding=NeRFEncoding(
                in_dim=3,
                num_frequencies=self.position_frequencies,
                min_freq_exp=shift,
                max_freq_exp=self.position_frequencies - 1.0 + shift,
                include_input=True,
            ),
            direction_encoding=NeRFEncoding(
                in_dim=3,
                num_frequencies=self.direction_frequencies,
                min_freq_exp=shift,
                max_freq_exp=self.direction_frequencies - 1.0 + shift,
                include_input=True,
            ),
            base_mlp_num_layers=self.num_layers,
            base_mlp_layer_width=self.layer_width,
            head_mlp_layer_width=max(self.layer_width // 2, 8),
            skip_connections=(self.num_layers // 2,) if self.num_layers > 2 else (),
            spatial_distortion=contraction,
        )


# ---------------------------------------------------------------------------------------------------------------
# Samplers


@dataclass
class SamplerConfig(PrintableConfig):
    """Where the samples of a nerfaccel method go (a part of :class:`NerfaccelModelConfig`)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, prefix: str = MODEL_PREFIX + "sampler.") -> None:
        """Raises ``ValueError`` naming every invalid option (as ``prefix`` + option on the command line)."""
        check = _Checker(self, prefix)
        self._check(check)
        check.raise_if_any()

    def _check(self, check: _Checker) -> None:
        pass


@dataclass
class OccupancySamplerConfig(SamplerConfig):
    """Occupancy-grid ray marching that skips empty space (:class:`..samplers.OccupancyGridSampler`)."""

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
    """Stop marching a ray once its transmittance falls below this."""
    near_plane: float = 0.0
    """Where marching starts along each ray."""
    far_plane: float = 1e10
    """Where marching stops; the grid bounds it anyway."""
    update_every: int = 16
    """Occupancy-grid update period in steps."""
    warmup_steps: int = 256
    """Until this step every grid cell is re-evaluated at each update (then a random quarter + occupied cells)."""
    occ_thre: float = 0.01
    """A cell is occupied when its occupancy (density x step) exceeds min(this, mean occupancy)."""
    ema_decay: float = 0.95
    """Decay of a cell's previous occupancy at each update."""
    eval_march_steps: int = 64
    """At evaluation / in the viewer / ``ns-render``: march rays in segments of this many steps and stop each ray
    once its transmittance is below ``early_stop_eps``, so samples hidden behind surfaces are never evaluated
    (0: evaluate every sample in occupied cells at once)."""

    def _check(self, check: _Checker) -> None:
        check.integer("grid_resolution", 1)
        check.integer("grid_levels", 1)
        if self.render_step_size is not None:
            check.number("render_step_size", 0.0, low_open=True)
        check.integer("samples_per_diagonal", 1)
        check.number("cone_angle", 0.0)
        check.number("alpha_thre", 0.0, 1.0, high_open=True)
        check.number("occ_thre", 0.0, 1.0, high_open=True)
        check.number("early_stop_eps", 0.0, 1.0, high_open=True)
        check.number("near_plane", 0.0)
        check.number("far_plane", 0.0, low_open=True)
        if not check.problems and self.far_plane <= self.near_plane:
            check.fail("far_plane", f"must be greater than --pipeline.model.sampler.near-plane ({self.near_plane})")
        check.integer("update_every", 1)
        check.integer("warmup_steps", 0)
        check.number("ema_decay", 0.0, 1.0)
        check.integer("eval_march_steps", 0)

    def step_size(self, aabb: torch.Tensor) -> float:
        """The marching step: ``render_step_size``, or the box's diagonal over ``samples_per_diagonal``."""
        if self.render_step_size is not None:
            return float(self.render_step_size)
        import torch

        extent = aabb.reshape(2, 3)[1] - aabb.reshape(2, 3)[0]
        return float(torch.linalg.norm(extent).item()) / self.samples_per_diagonal

    def make(self, aabb: torch.Tensor, density_fn: Any, time_samples: int = 0) -> OccupancyGridSampler:
        """Builds the sampler on the ``(2, 3)`` scene box ``aabb`` for the field's ``density_fn``.

        Args:
            aabb: Scene box.
            density_fn: The field's density function (grid updates).
            time_samples: Random times per grid update (time-conditioned fields), else 0.

        Returns:
            The sampler.
        """
        from ..samplers import OccupancyGridSampler

        return OccupancyGridSampler(
            aabb.reshape(-1),
            density_fn=density_fn,
            resolution=self.grid_resolution,
            levels=self.grid_levels,
            render_step_size=self.step_size(aabb),
            near_plane=self.near_plane,
            far_plane=self.far_plane,
            alpha_thre=self.alpha_thre,
            early_stop_eps=self.early_stop_eps,
            cone_angle=self.cone_angle,
            occ_thre=self.occ_thre,
            ema_decay=self.ema_decay,
            update_every=self.update_every,
            warmup_steps=self.warmup_steps,
            time_samples=time_samples,
        )


@dataclass
class ProposalSamplerConfig(SamplerConfig):
    """Proposal networks (mip-NeRF 360, :class:`~nerfaccel_plugin.ns.samplers.ProposalSampler`)."""

    num_proposal_samples: tuple[int, ...] = (256, 96)
    """Samples per ray at each proposal stage."""
    num_samples: int = 48
    """Final samples per ray."""
    near_plane: float = 0.2
    """Near distance of proposal sampling."""
    far_plane: float = 1e3
    """Far distance of proposal sampling (contracted space reaches to infinity)."""
    sampling_type: Literal["uniform", "lindisp"] = "lindisp"
    """Initial proposal spacing: ``lindisp`` (uniform in disparity, unbounded scenes) or ``uniform``."""
    hash_levels: int = 5
    """Hash-grid levels of each proposal network."""
    max_res: tuple[int, ...] = (128, 256)
    """Finest hash-grid resolution of each proposal network (one per stage)."""
    log2_hashmap_size: int = 17
    """log2 hash-table size of the proposal networks."""
    requires_grad_target: float = 5.0
    """Eventually the proposal networks get a gradient every this many steps."""
    requires_grad_steps: int = 1000
    """Steps over which that gap grows from 1."""
    interlevel_loss_mult: float = 1.0
    """Weight of the proposal (interlevel) loss."""
    distortion_loss_mult: float = 0.0
    """Weight of the mip-NeRF 360 distortion loss (0 disables it)."""

    def _check(self, check: _Checker) -> None:
        check.counts("num_proposal_samples")
        check.integer("num_samples", 1)
        check.number("near_plane", 0.0)
        check.number("far_plane", 0.0, low_open=True)
        if not check.problems and self.far_plane <= self.near_plane:
            check.fail("far_plane", f"must be greater than --pipeline.model.sampler.near-plane ({self.near_plane})")
        check.integer("hash_levels", 1)
        check.counts("max_res")
        if self.max_res and self.num_proposal_samples and len(self.max_res) != len(self.num_proposal_samples):
            check.fail(
                "max_res",
                f"needs one value per proposal stage ({len(self.num_proposal_samples)}, as "
                "--pipeline.model.sampler.num-proposal-samples)",
            )
        log2 = self.log2_hashmap_size
        if isinstance(log2, bool) or not isinstance(log2, int) or not 1 <= log2 <= 30:
            check.fail("log2_hashmap_size", "must be an integer in [1, 30]")
        check.number("requires_grad_target", 1.0)
        check.integer("requires_grad_steps", 0)
        check.number("interlevel_loss_mult", 0.0)
        check.number("distortion_loss_mult", 0.0)

    def make(self, aabb: torch.Tensor, implementation: str, contraction: Any) -> ProposalSampler:
        """Builds the proposal networks and the sampler.

        Args:
            aabb: ``(2, 3)`` scene box.
            implementation: Hash-grid backend of the proposal networks, ``"tcnn"`` or ``"torch"``.
            contraction: The field's spatial distortion, or ``None``.

        Returns:
            The sampler.
        """
        from nerfstudio.fields.density_fields import HashMLPDensityField

        from ..samplers import ProposalSampler

        nets = [
            HashMLPDensityField(
                aabb,
                spatial_distortion=contraction,
                num_levels=self.hash_levels,
                max_res=res,
                log2_hashmap_size=self.log2_hashmap_size,
                hidden_dim=16,
                use_linear=False,
                implementation=implementation,
            )
            for res in self.max_res
        ]
        return ProposalSampler(
            nets,
            num_proposal_samples=self.num_proposal_samples,
            num_samples=self.num_samples,
            near_plane=self.near_plane,
            far_plane=self.far_plane,
            sampling_type=self.sampling_type,
            requires_grad_target=self.requires_grad_target,
            requires_grad_steps=self.requires_grad_steps,
        )


# ---------------------------------------------------------------------------------------------------------------
# The model config


def _model_class() -> type:
    from .nerfaccel_model import NerfaccelModel

    return NerfaccelModel


@dataclass
class NerfaccelModelConfig(ModelConfig):
    """Configuration of :class:`~nerfaccel_plugin.ns.models.NerfaccelModel`: the shared options, a ``field`` part and
    a ``sampler`` part. Every default is chosen for quality and speed (see each option)."""

    _target: type = dataclasses.field(default_factory=_model_class)
    # Nerfstudio's ModelConfig options that do nothing here are kept (config.yml files name them) but hidden from
    # the command line: the samplers bound the rays (no collider), there is no text prompt, and the losses are
    # weighted by the options of the parts.
    enable_collider: tyro.conf.Suppress[bool] = False
    """Nerfstudio's near/far collider is not needed: the occupancy grid / proposal sampler bounds the rays."""
    collider_params: tyro.conf.Suppress[Optional[dict[str, float]]] = None
    """Unused (no collider)."""
    loss_coefficients: tyro.conf.Suppress[dict[str, float]] = dataclasses.field(
        default_factory=lambda: {"rgb_loss_coarse": 1.0, "rgb_loss_fine": 1.0}
    )
    """Unused (Nerfstudio's default, kept for config.yml files)."""
    prompt: tyro.conf.Suppress[Optional[str]] = None
    """Unused (no text prompt)."""
    eval_num_rays_per_chunk: int = 8192
    """Rays rendered at once when rendering whole images (eval, viewer, ns-render)."""
    field: FieldConfig = dataclasses.field(default_factory=HashFieldConfig)
    """The radiance field."""
    sampler: SamplerConfig = dataclasses.field(default_factory=OccupancySamplerConfig)
    """Where the samples go."""
    background_color: Literal["random", "white", "black"] = "random"
    """Background behind RGBA training images: ``random`` draws one colour per ray and step, so the field cannot
    bake a background into the object (instant-ngp's trick); the target image is composited on the same colour."""
    eval_background_color: Literal["white", "black"] = "white"
    """Background used for evaluation, rendering and the viewer (and for RGBA ground truth in metrics)."""
    compute_lpips: bool = True
    """Report LPIPS in eval when its weights are already on disk (never downloaded)."""
    value_checks: Literal["auto", "always", "never"] = "auto"
    """nerfaccel's input checks that read tensor values (NaN rays, sorted ray indices, index ranges) inside each
    forward pass: each is a host synchronization on a GPU, and the model builds those inputs with its own
    samplers. ``auto`` runs them on the CPU and skips them on a GPU; type, shape and device checks always run."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Checks every option of the model and its parts; ``ValueError`` names each bad one as typed on the
        command line. Runs when the config is built (also by tyro, before ``ns-train`` writes ``config.yml``) and
        again when the model is built, after any change made in Python."""
        if not isinstance(self.field, FieldConfig):
            raise TypeError(f"{MODEL_PREFIX}field must be a FieldConfig, got {type(self.field).__name__}")
        if not isinstance(self.sampler, SamplerConfig):
            raise TypeError(f"{MODEL_PREFIX}sampler must be a SamplerConfig, got {type(self.sampler).__name__}")
        check = _Checker(self, MODEL_PREFIX)
        check.integer("eval_num_rays_per_chunk", 1)
        check.raise_if_any()
        self.field.validate()
        self.sampler.validate()

    @property
    def hash_implementation(self) -> Literal["auto", "tcnn", "torch"]:
        """The field's hash-grid backend choice (``auto`` for fields without a hash grid); proposal networks
        follow it."""
        return getattr(self.field, "hash_implementation", "auto")

    @property
    def cpu_hash_kernel(self) -> bool:
        """Whether CPU hash encodings run on nerfaccel's kernel (the field's choice; on for fields without one)."""
        return getattr(self.field, "cpu_hash_kernel", True)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restores a config from YAML / pickle; a flat config of the old layout is converted to the parts."""
        if isinstance(state.get("sampler"), str) or "field_type" in state:
            state = migrate_flat_options(state)
        self.__dict__.update(state)


# Old flat option -> (part, new name). Options not listed stayed on the model config.
_FIELD_KEYS = {
    "hash": {
        **{k: k for k in ("num_levels", "base_res", "max_res", "log2_hashmap_size", "features_per_level")},
        **{k: k for k in ("hidden_dim", "geo_feat_dim", "hidden_dim_color", "num_layers_color")},
        **{k: k for k in ("appearance_embedding_dim", "contraction", "hash_implementation", "cpu_hash_kernel")},
    },
    "time-hash": {
        **{k: k for k in ("num_levels", "base_res", "max_res", "log2_hashmap_size", "features_per_level")},
        **{k: k for k in ("hidden_dim", "geo_feat_dim", "hidden_dim_color", "num_layers_color")},
        **{k: k for k in ("time_frequencies", "hash_implementation", "cpu_hash_kernel")},
        "occ_time_samples": "grid_time_samples",
    },
    "mlp": {
        "mlp_num_layers": "num_layers",
        "mlp_layer_width": "layer_width",
        "mlp_position_frequencies": "position_frequencies",
        "mlp_direction_frequencies": "direction_frequencies",
        "mlp_original_frequencies": "original_frequencies",
        "contraction": "contraction",
    },
}
_FIELD_CLASSES: dict[str, type[FieldConfig]] = {
    "hash": HashFieldConfig,
    "time-hash": TimeHashFieldConfig,
    "mlp": MlpFieldConfig,
}
_SAMPLER_KEYS = {
    "occupancy": {
        **{k: k for k in ("grid_resolution", "grid_levels", "render_step_size", "samples_per_diagonal")},
        **{k: k for k in ("cone_angle", "alpha_thre", "early_stop_eps", "near_plane", "far_plane", "occ_thre")},
        "occ_update_every": "update_every",
        "occ_warmup_steps": "warmup_steps",
        "occ_ema_decay": "ema_decay",
        "eval_march_steps": "eval_march_steps",
    },
    "proposal": {
        "num_proposal_samples": "num_proposal_samples",
        "num_samples": "num_samples",
        "proposal_near_plane": "near_plane",
        "proposal_far_plane": "far_plane",
        "proposal_sampling_type": "sampling_type",
        "proposal_hash_levels": "hash_levels",
        "proposal_max_res": "max_res",
        "proposal_log2_hashmap_size": "log2_hashmap_size",
        "proposal_requires_grad_target": "requires_grad_target",
        "proposal_requires_grad_steps": "requires_grad_steps",
        "interlevel_loss_mult": "interlevel_loss_mult",
        "distortion_loss_mult": "distortion_loss_mult",
    },
}
_SAMPLER_CLASSES: dict[str, type[SamplerConfig]] = {
    "occupancy": OccupancySamplerConfig,
    "proposal": ProposalSamplerConfig,
}
FLAT_OPTIONS: frozenset[str] = frozenset(
    {"field_type", "sampler"}
    | {k for keys in _FIELD_KEYS.values() for k in keys}
    | {k for keys in _SAMPLER_KEYS.values() for k in keys}
)
"""Options of the old flat layout that moved into the parts (or, ``field_type`` / ``sampler``, chose them)."""


def migrate_flat_options(state: dict[str, Any]) -> dict[str, Any]:
    """Converts the options of an old flat ``NerfaccelModelConfig`` (as restored from a ``config.yml`` written before
    the parts existed) into the current layout: the options of the chosen field and sampler go to their parts
    (renamed where the part's name is shorter: ``occ_update_every`` -> ``sampler.update_every``,
    ``mlp_num_layers`` -> ``field.num_layers``), the options of the parts not chosen are dropped.

    Args:
        state: The old config's attributes.

    Returns:
        The attributes of the current config (missing ones take their defaults).

    Raises:
        ValueError: ``field_type`` or ``sampler`` names no known part, or ``time-hash`` with a contraction.
    """
    field_type = state.get("field_type", "hash")
    sampler = state.get("sampler", "occupancy")
    if field_type not in _FIELD_CLASSES:
        raise ValueError(f"config.yml: unknown field_type {field_type!r}; expected one of {sorted(_FIELD_CLASSES)}")
    if sampler not in _SAMPLER_CLASSES:
        raise ValueError(f"config.yml: unknown sampler {sampler!r}; expected one of {sorted(_SAMPLER_CLASSES)}")
    if field_type == "time-hash" and state.get("contraction", "none") != "none":
        raise ValueError("config.yml: field_type 'time-hash' supports contraction 'none' only")
    field_args = {new: state[old] for old, new in _FIELD_KEYS[field_type].items() if old in state}
    sampler_args = {new: state[old] for old, new in _SAMPLER_KEYS[sampler].items() if old in state}
    if "num_proposal_samples" in sampler_args:
        sampler_args["num_proposal_samples"] = tuple(sampler_args["num_proposal_samples"])
    if "max_res" in sampler_args:
        sampler_args["max_res"] = tuple(sampler_args["max_res"])
    kept = {k: v for k, v in state.items() if k not in FLAT_OPTIONS and k != "contraction"}
    defaults = NerfaccelModelConfig()
    new = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(NerfaccelModelConfig)}
    new.update(kept)
    new["field"] = _FIELD_CLASSES[field_type](**field_args)
    new["sampler"] = _SAMPLER_CLASSES[sampler](**sampler_args)
    return new


__all__ = [
    "FieldConfig",
    "HashFieldConfig",
    "MlpFieldConfig",
    "NerfaccelModelConfig",
    "OccupancySamplerConfig",
    "ProposalSamplerConfig",
    "SamplerConfig",
    "TimeHashFieldConfig",
    "migrate_flat_options",
]
