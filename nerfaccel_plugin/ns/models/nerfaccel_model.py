"""The nerfaccel Nerfstudio model: Nerfstudio fields, nerfaccel samplers and packed volume rendering.

One model class serves all registered methods; each method's config (:mod:`.config`) picks the field part (hash grid,
vanilla MLP, time-conditioned hash grid, with its contraction) and the sampler part (occupancy grid or proposal
networks).
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import torch
from jaxtyping import Float
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.models.base_model import Model
from nerfstudio.utils import colormaps
from torch import Tensor
from torch.nn import Parameter

from ..._validation import value_checks
from ...volrend import accumulate_along_rays, render_weight_from_density
from .. import compat as ns_compat
from ..fields.contraction import AabbContraction
from ..fields.hash_encoding import use_nerfaccel_hash_encoding
from ..samplers import OccupancyGridSampler, ProposalSampler
from .config import NerfaccelModelConfig, OccupancySamplerConfig
from .eval_march import render_occupancy_eval

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
        cfg.validate()  # again: options may have been changed in Python since the config was built
        order = cfg.field.contraction_order()
        contraction = None if order == "none" else AabbContraction(aabb, order=order)
        self.field = cfg.field.make(aabb, self.num_train_data, impl, contraction)
        if isinstance(cfg.sampler, OccupancySamplerConfig):
            self.sampler = cfg.sampler.make(aabb, self.field.density_fn, time_samples=cfg.field.time_samples())
        else:
            self.sampler = cfg.sampler.make(aabb, impl, contraction)

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
        eval_march = isinstance(self.sampler, OccupancyGridSampler) and self.config.sampler.eval_march_steps > 0
        if eval_march and not self.training:
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

    def _render_occupancy_eval(self, ray_bundle: RayBundle, background: Tensor) -> dict[str, Tensor]:
        """Test-time occupancy-grid rendering with early ray termination (:mod:`.eval_march`)."""
        return render_occupancy_eval(
            self.sampler, self.field, ray_bundle, background, self.config.sampler.eval_march_steps
        )

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
            losses["interlevel_loss"] = self.config.sampler.interlevel_loss_mult * outputs["interlevel_loss"]
            if self.config.sampler.distortion_loss_mult > 0:
                from ...losses import distortion

                losses["distortion_loss"] = (
                    self.config.sampler.distortion_loss_mult
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
