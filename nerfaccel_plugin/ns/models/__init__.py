"""Nerfstudio model and pipeline of the nerfaccel methods."""

from .. import compat as ns_compat  # noqa: F401  (registers the checkpoint safe globals on import)
from .nerfaccel_model import NerfaccelModel, NerfaccelModelConfig
from .pipeline import NerfaccelPipeline, NerfaccelPipelineConfig

__all__ = ["NerfaccelModel", "NerfaccelModelConfig", "NerfaccelPipeline", "NerfaccelPipelineConfig"]
