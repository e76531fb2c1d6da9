"""Nerfstudio model and pipeline of the nerfaccel methods, and the model config's parts."""

from .. import compat as ns_compat  # noqa: F401  (registers the checkpoint safe globals on import)
from .config import (
    FieldConfig,
    HashFieldConfig,
    MlpFieldConfig,
    NerfaccelModelConfig,
    OccupancySamplerConfig,
    ProposalSamplerConfig,
    SamplerConfig,
    TimeHashFieldConfig,
)
from .nerfaccel_model import NerfaccelModel
from .pipeline import NerfaccelPipeline, NerfaccelPipelineConfig

__all__ = [
    "FieldConfig",
    "HashFieldConfig",
    "MlpFieldConfig",
    "NerfaccelModel",
    "NerfaccelModelConfig",
    "NerfaccelPipeline",
    "NerfaccelPipelineConfig",
    "OccupancySamplerConfig",
    "ProposalSamplerConfig",
    "SamplerConfig",
    "TimeHashFieldConfig",
]
