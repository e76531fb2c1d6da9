"""Dataparsers of the nerfaccel methods: Nerfstudio's Blender / D-NeRF parsers plus the embedded-scene fallback."""

from .blender import (
    NerfaccelBlenderDataParser,
    NerfaccelBlenderDataParserConfig,
    NerfaccelDNeRFDataParser,
    NerfaccelDNeRFDataParserConfig,
    validate_blender_folder,
)

__all__ = [
    "NerfaccelBlenderDataParser",
    "NerfaccelBlenderDataParserConfig",
    "NerfaccelDNeRFDataParser",
    "NerfaccelDNeRFDataParserConfig",
    "validate_blender_folder",
]
