"""Nerfstudio's ``nerfstudio-data`` parser (real captures, ``ns-process-data`` output) with up-front input checks.

``nerfaccel-ngp`` and ``nerfaccel-360`` use :class:`NerfaccelNerfstudioDataParserConfig`: the stock parser,
plus checks of the folder, ``transforms.json``, every frame's image (and mask) and the scene box, reported with
the offending file or option. Image paths are computed by the stock parser's own ``_get_fname`` (downscaled
``images_<n>`` folders included), so the checks look at exactly the files it will load.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig
from PIL import Image

from .checks import CheckImages, check_pose, checked_once, register_validator

_INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "h", "w")


def check_scene_scale(scene_scale: float) -> None:
    """The nerfstudio-data scene box is ``[-scene_scale, scene_scale]^3``; it must not be empty."""
    if not scene_scale > 0:
        raise ValueError(
            f"Empty scene box: --pipeline.datamanager.dataparser.scene-scale must be > 0, got {scene_scale} "
            "(on the ns-train command line: `nerfstudio-data --scene-scale S` after the method's options)."
        )


def _check_image(path: Path, what: str, where: str, check_images: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} ({where}) is missing.")
    if check_images == "none":
        return
    try:
        with Image.open(path) as img:
            if check_images == "full":
                img.load()
    except Exception as err:  # PIL raises many types for corrupt files
        raise ValueError(f"{what} {path} ({where}) is unreadable: {err}") from err


def validate_nerfstudio_folder(
    data: Path,
    config: NerfstudioDataParserConfig | None = None,
    check_images: Literal["full", "header", "none"] = "full",
) -> None:
    """Checks a nerfstudio-data folder (or its ``transforms.json``) before anything is loaded or written.

    Args:
        data: Folder with ``transforms.json``, or the path of a transforms file.
        config: The parser config (its ``downscale_factor`` decides which image files are read); default options
            when ``None``.
        check_images: ``"full"`` decodes every image and mask, ``"header"`` only opens them, ``"none"`` checks
            that they exist.

    Raises:
        FileNotFoundError: The folder, ``transforms.json``, an image or a mask is missing.
        ValueError: ``transforms.json`` or an image cannot be read, or a frame lacks a required field.
    """
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"Data folder {data} does not exist (set it with --data PATH).")
    transforms = data if data.suffix == ".json" else data / "transforms.json"
    if not transforms.is_file():
        raise FileNotFoundError(
            f"No transforms file: {transforms} is missing; a nerfstudio-data folder needs transforms.json "
            "(`ns-process-data` writes it). Set the folder with --data PATH."
        )
    try:
        meta = json.loads(transforms.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"Cannot read transforms file {transforms}: {err}") from err
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"Transforms file {transforms} needs a non-empty `frames` list.")
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise ValueError(f"{transforms}: frame {i} needs `file_path` and `transform_matrix`.")
        check_pose(frame["transform_matrix"], transforms, i)
        missing = [k for k in _INTRINSICS if k not in meta and k not in frame]
        if missing:
            raise ValueError(f"{transforms}: frame {i} has no {', '.join(missing)} (per frame or for all frames).")
    with_mask = sum("mask_path" in f for f in frames)
    if with_mask not in (0, len(frames)):
        raise ValueError(f"{transforms}: `mask_path` is given for {with_mask} of {len(frames)} frames (all or none).")

    cfg = copy.copy(config) if config is not None else NerfstudioDataParserConfig()
    cfg.data = data
    data_dir = transforms.parent
    if cfg.downscale_factor is None:  # the parser opens the first frame's full-size image to pick the factor
        _check_image(data_dir / Path(frames[0]["file_path"]), "Image", f"frame 0 of {transforms}", "header")
    parser = Nerfstudio(cfg)  # its own _get_fname: same files, same images_<n> folder as it will load
    for i, frame in enumerate(frames):
        where = f"frame {i} of {transforms}"
        _check_image(parser._get_fname(Path(frame["file_path"]), data_dir), "Image", where, check_images)
        if "mask_path" in frame:
            mask = parser._get_fname(Path(frame["mask_path"]), data_dir, downsample_folder_prefix="masks_")
            _check_image(mask, "Mask", where, check_images)
        if "depth_file_path" in frame:
            depth = parser._get_fname(Path(frame["depth_file_path"]), data_dir, downsample_folder_prefix="depths_")
            _check_image(depth, "Depth file", where, "none")


def _validate_nerfstudio_config(config: NerfstudioDataParserConfig, folder: Path, check_images: CheckImages) -> None:
    """The inputs of a nerfstudio-data parser config (ours or Nerfstudio's) read from ``folder``."""
    check_scene_scale(config.scene_scale)
    if check_images == "full":
        checked_once(
            ("nerfstudio", str(folder.resolve()), config.downscale_factor),
            lambda: validate_nerfstudio_folder(folder, config, check_images="full"),
        )
    else:
        validate_nerfstudio_folder(folder, config, check_images=check_images)


register_validator(NerfstudioDataParserConfig, _validate_nerfstudio_config)


@dataclass
class NerfaccelNerfstudioDataParserConfig(NerfstudioDataParserConfig):
    """Nerfstudio's nerfstudio-data parser, with input checks (folder, transforms.json, images, scene box)."""

    _target: type = field(default_factory=lambda: NerfaccelNerfstudioDataParser)

    def validate_inputs(self, folder: Path | None = None, check_images: CheckImages = "full") -> None:
        """Checks the scene box option and the folder (``folder``, default ``data``) as the parser will read it.

        Args:
            folder: The folder ``--data`` names, when it replaces ``data``.
            check_images: ``"full"`` decodes every image and mask, ``"header"`` opens each, ``"none"`` skips them.

        Raises:
            FileNotFoundError: The folder, ``transforms.json``, an image or a mask is missing.
            ValueError: ``transforms.json``, a frame or an image is unreadable or malformed, or the box is empty.
        """
        _validate_nerfstudio_config(self, Path(folder if folder is not None else self.data), check_images)

    def __post_init__(self) -> None:
        check_scene_scale(self.scene_scale)
        if Path(self.data) != Path():  # cheap checks at the command line; full decode before anything is written
            validate_nerfstudio_folder(Path(self.data), self, check_images="header")


class NerfaccelNerfstudioDataParser(Nerfstudio):
    """nerfstudio-data parser that validates its folder (once per process) before Nerfstudio's parsing."""

    config: NerfaccelNerfstudioDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        cfg = self.config
        check_scene_scale(cfg.scene_scale)
        data = Path(cfg.data)
        checked_once(
            ("nerfstudio", str(data.resolve()), cfg.downscale_factor),
            lambda: validate_nerfstudio_folder(data, cfg, check_images="full"),
        )
        return super()._generate_dataparser_outputs(split, **kwargs)
