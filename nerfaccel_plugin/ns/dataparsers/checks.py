"""Input checks that run before ``ns-train`` writes anything, for every dataparser the nerfaccel methods use.

Nerfstudio's ``ns-train`` saves ``outputs/.../config.yml`` before it builds the dataparser, so a bad folder
left a half-written run behind and was reported only later (a bare ``FileNotFoundError`` or a failure inside the
dataloader). The nerfaccel trainer config calls :func:`validate_dataparser_inputs` in ``save_config``, before the
output folder is created; it resolves ``--data`` like Nerfstudio's datamanager does, checks the scene box option
and decodes every image the parser will load.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Literal, Optional

_DONE: set = set()


def checked_once(key: Hashable, check: Callable[[], None]) -> None:
    """Runs ``check`` unless a check with the same ``key`` already passed in this process.

    ``ns-train`` validates everything before writing its config and then builds the dataparser in the same
    process; the full image decode should not run twice. A failing check is not remembered.
    """
    if key in _DONE:
        return
    check()
    _DONE.add(key)


def validate_dataparser_inputs(
    parser_config: object, data: Optional[Path] = None, check_images: Literal["full", "header", "none"] = "full"
) -> None:
    """Checks a dataparser config's inputs the way its parser will read them.

    Covers nerfaccel's Blender / D-NeRF parsers (an embedded-scene fallback passes), nerfaccel's and Nerfstudio's
    ``nerfstudio-data`` parser, and Nerfstudio's ``blender-data`` / ``dnerf-data``; other parsers are left to
    themselves.

    Args:
        parser_config: The dataparser config.
        data: ``--data`` / ``--pipeline.datamanager.data`` when given: it replaces the parser's own ``data``, as
            Nerfstudio's datamanager does.
        check_images: ``"full"`` decodes every image, ``"header"`` opens each, ``"none"`` skips images.

    Raises:
        FileNotFoundError: The folder, its transforms file or an image is missing.
        ValueError: A transforms file or image cannot be read, a field is missing, or the scene box is empty.
    """
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
    from nerfstudio.data.dataparsers.dnerf_dataparser import DNeRFDataParserConfig
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from .blender import (
        DEFAULT_BLENDER,
        DEFAULT_DNERF,
        NerfaccelBlenderDataParserConfig,
        NerfaccelDNeRFDataParserConfig,
        _check_box,
        validate_blender_folder,
    )
    from .nerfstudio import check_scene_scale, validate_nerfstudio_folder

    folder = Path(data if data is not None else parser_config.data)  # type: ignore[attr-defined]
    if isinstance(parser_config, (NerfaccelBlenderDataParserConfig, NerfaccelDNeRFDataParserConfig)):
        _check_box(parser_config.scene_bound)
        dynamic = isinstance(parser_config, NerfaccelDNeRFDataParserConfig)
        default = DEFAULT_DNERF if dynamic else DEFAULT_BLENDER
        if not folder.exists() and parser_config.embedded_fallback and folder == default:
            return  # the embedded scene is generated when the parser runs
        key = ("blender", str(folder.resolve()), dynamic)
    elif isinstance(parser_config, (BlenderDataParserConfig, DNeRFDataParserConfig)):
        dynamic = isinstance(parser_config, DNeRFDataParserConfig)
        key = ("blender", str(folder.resolve()), dynamic)
    elif isinstance(parser_config, NerfstudioDataParserConfig):
        check_scene_scale(parser_config.scene_scale)
        if check_images == "full":
            checked_once(
                ("nerfstudio", str(folder.resolve()), parser_config.downscale_factor),
                lambda: validate_nerfstudio_folder(folder, parser_config, check_images="full"),
            )
        else:
            validate_nerfstudio_folder(folder, parser_config, check_images=check_images)
        return
    else:
        return
    if check_images == "full":
        checked_once(key, lambda: validate_blender_folder(folder, need_time=dynamic, check_images="full"))
    else:
        validate_blender_folder(folder, need_time=dynamic, check_images=check_images)
