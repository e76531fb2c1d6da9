"""Dataparsers of the nerfaccel methods: Nerfstudio's Blender / D-NeRF parsers plus the embedded-scene fallback,
Nerfstudio's nerfstudio-data parser with input checks, and the checks ``ns-train`` runs before writing anything."""

from .blender import (
    NerfaccelBlenderDataParser,
    NerfaccelBlenderDataParserConfig,
    NerfaccelDNeRFDataParser,
    NerfaccelDNeRFDataParserConfig,
    validate_blender_folder,
)
from .checks import validate_dataparser_inputs
from .nerfstudio import (
    NerfaccelNerfstudioDataParser,
    NerfaccelNerfstudioDataParserConfig,
    validate_nerfstudio_folder,
)

__all__ = [
    "NerfaccelBlenderDataParser",
    "NerfaccelBlenderDataParserConfig",
    "NerfaccelDNeRFDataParser",
    "NerfaccelDNeRFDataParserConfig",
    "NerfaccelNerfstudioDataParser",
    "NerfaccelNerfstudioDataParserConfig",
    "validate_blender_folder",
    "validate_dataparser_inputs",
    "validate_nerfstudio_folder",
]

from nerfstudio.plugins.registry_dataparser import DataParserSpecification  # noqa: E402

nerfaccel_blender_dataparser = DataParserSpecification(
    config=NerfaccelBlenderDataParserConfig(),
    description="Blender-format folder with input checks; falls back to nerfaccel's embedded scene.",
)
nerfaccel_dnerf_dataparser = DataParserSpecification(
    config=NerfaccelDNeRFDataParserConfig(),
    description="D-NeRF-format folder with input checks; falls back to nerfaccel's embedded dynamic scene.",
)
__all__ += ["nerfaccel_blender_dataparser", "nerfaccel_dnerf_dataparser"]
