"""Blender / D-NeRF dataparsers with input checks and a fallback to nerfaccel's embedded scene.

``ns-train nerfaccel-lego`` with no arguments reads Nerfstudio's download location ``data/blender/lego``
when it exists and otherwise generates the embedded scene (:func:`nerfaccel_plugin.scene.get_scene`),
so training works on a fresh machine without any download. Any folder given explicitly is checked up
front (folder, transforms file, every image readable) and a bad one is reported with the offending path.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.dataparsers.blender_dataparser import Blender as BlenderDataParser
from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
from nerfstudio.data.dataparsers.dnerf_dataparser import DNeRF as DNeRFDataParser
from nerfstudio.data.dataparsers.dnerf_dataparser import DNeRFDataParserConfig
from nerfstudio.data.scene_box import SceneBox
from PIL import Image
from rich.console import Console

from .checks import CheckImages, check_camera_angle, check_pose, check_time, checked_once, register_validator

CONSOLE = Console(width=120)

DEFAULT_BLENDER = Path("data/blender/lego")
DEFAULT_DNERF = Path("data/dnerf/lego")
_DATA_OPTION = "--data"


def _image_path(folder: Path, file_path: str) -> Path:
    """The image file of a frame, by exactly the rule of Nerfstudio's Blender and D-NeRF parsers (which load it):
    every ``"./"`` is removed and ``.png`` is always appended, so ``r_0.png`` means ``r_0.png.png``."""
    return folder / Path(file_path.replace("./", "") + ".png")


def validate_blender_folder(
    folder: Path, need_time: bool = False, check_images: Literal["full", "header", "none"] = "full"
) -> None:
    """Checks a Blender / D-NeRF folder before anything is loaded or written.

    Args:
        folder: Folder with ``transforms_train.json`` (and optionally ``_val`` / ``_test``).
        need_time: Require a ``time`` on every frame (D-NeRF).
        check_images: ``"full"`` decodes every referenced image (catches truncated files), ``"header"`` only
            checks that each exists and has a readable image header (fast), ``"none"`` skips images.

    Raises:
        FileNotFoundError: The folder, its ``transforms_train.json`` or an image is missing.
        ValueError: A transforms file or an image cannot be read, or a field is missing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Data folder {folder} does not exist (set it with {_DATA_OPTION} PATH).")
    if not (folder / "transforms_train.json").is_file():
        raise FileNotFoundError(
            f"No transforms file: {folder / 'transforms_train.json'} is missing; a Blender-format folder needs "
            "transforms_train.json (and optionally transforms_val.json / transforms_test.json)."
        )
    for split in ("train", "val", "test"):
        path = folder / f"transforms_{split}.json"
        if not path.is_file():
            continue
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"Cannot read transforms file {path}: {err}") from err
        if not isinstance(meta, dict) or "camera_angle_x" not in meta or not meta.get("frames"):
            raise ValueError(f"Transforms file {path} needs `camera_angle_x` and a non-empty `frames` list.")
        check_camera_angle(meta["camera_angle_x"], path)
        first: dict[tuple, Path] = {}  # (width, height, channels) -> the first image that has it
        with_time = 0
        for i, frame in enumerate(meta["frames"]):
            if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
                raise ValueError(f"{path}: frame {i} needs `file_path` and `transform_matrix`.")
            check_pose(frame["transform_matrix"], path, i)
            if "time" in frame:
                with_time += 1
                check_time(frame["time"], path, i)
            elif need_time:
                raise ValueError(
                    f"{path}: frame {i} has no `time` (nerfaccel-dnerf needs one per frame, in [0, 1]); for a "
                    "static scene use nerfaccel-lego."
                )
            if check_images == "none":
                continue
            image = _image_path(folder, frame["file_path"])
            if not image.is_file():
                raise FileNotFoundError(f"Image {image} (frame {i} of {path}) is missing.")
            try:
                with Image.open(image) as img:
                    if check_images == "full":
                        img.load()
                    shape = (*img.size, len(img.getbands()))
            except Exception as err:  # PIL raises many types for corrupt files
                raise ValueError(f"Image {image} (frame {i} of {path}) is unreadable: {err}") from err
            if first and shape not in first:
                (other_shape, other), *_ = first.items()
                raise ValueError(
                    f"Images of the {split} split differ in size or channels: {other} is {_describe(other_shape)}, "
                    f"{image} (frame {i}) is {_describe(shape)}. Every image of a split must have the same size "
                    "and the same channels (all RGB or all RGBA)."
                )
            first.setdefault(shape, image)
        if with_time and not need_time:
            _warn_unused_time(folder, path, with_time, len(meta["frames"]))


def _describe(shape: tuple) -> str:
    width, height, channels = shape
    name = {1: "grey", 2: "grey+alpha", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels}-channel")
    return f"{width}x{height} {name}"


_TIME_WARNED: set = set()


def _warn_unused_time(folder: Path, path: Path, n: int, total: int) -> None:
    if str(folder.resolve()) in _TIME_WARNED:  # once per folder and process
        return
    _TIME_WARNED.add(str(folder.resolve()))
    warnings.warn(
        f"nerfaccel: {path} gives a `time` for {n} of {total} frames, but this method trains a static scene and "
        "ignores it; for a dynamic (D-NeRF) scene use nerfaccel-dnerf.",
        UserWarning,
        stacklevel=3,
    )


def _check_box(bound: float) -> None:
    if not bound > 0:
        raise ValueError(
            f"Empty scene box: --pipeline.datamanager.dataparser.scene-bound must be > 0, got {bound} (on the "
            "ns-train command line: `nerfaccel-blender-data --scene-bound B` after the method's options)."
        )


def _resolve(
    data: Path, default: Path, fallback: bool, dynamic: bool, resolution: Optional[int], views: Optional[int]
) -> Path:
    if Path(data).exists():
        return Path(data)
    if fallback and Path(data) == default:
        from ...scene import get_scene

        kind = "dynamic" if dynamic else "static"
        CONSOLE.print(
            f"[bold yellow]nerfaccel: {default} not found - using the embedded {kind} scene "
            f"(pass --data PATH for your own data).[/bold yellow]"
        )
        return Path(get_scene(dynamic=dynamic, resolution=resolution, views=views))
    raise FileNotFoundError(f"Data folder {data} does not exist (set it with {_DATA_OPTION} PATH).")


def _split_with_fallback(folder: Path, split: str) -> str:
    if (folder / f"transforms_{split}.json").is_file():
        return split
    for other in ("test", "val", "train"):
        if (folder / f"transforms_{other}.json").is_file():
            CONSOLE.print(f"nerfaccel: {folder / f'transforms_{split}.json'} missing - using the {other} split.")
            return other
    raise FileNotFoundError(f"No transforms file in {folder} (expected transforms_train.json).")


def _generate(parser, base: type, split: str) -> DataparserOutputs:
    """Resolves the data folder (fallback), validates it once, then runs Nerfstudio's parser ``base``."""
    cfg = parser.config
    _check_box(cfg.scene_bound)
    folder = _resolve(
        cfg.data, parser._default, cfg.embedded_fallback, parser._dynamic, cfg.embedded_resolution, cfg.embedded_views
    )
    # Fully checked once per process: ns-train already did it before writing anything (the trainer config's
    # save_config), ns-eval / ns-viewer / ns-render do it here.
    key = ("blender", str(folder.resolve()), parser._dynamic)
    checked_once(key, lambda: validate_blender_folder(folder, need_time=parser._dynamic))
    parser.data = folder
    cfg.data = folder
    outputs = base._generate_dataparser_outputs(parser, split=_split_with_fallback(folder, split))
    cams = outputs.cameras
    for name in ("fx", "fy", "cx", "cy"):  # numpy float64 intrinsics would make float64 camera paths (ns-render)
        setattr(cams, name, getattr(cams, name).float())
    b = float(cfg.scene_bound)
    outputs.scene_box = SceneBox(aabb=torch.tensor([[-b, -b, -b], [b, b, b]], dtype=torch.float32))
    return outputs


def _validate_blender_config(config: object, folder: Path, check_images: CheckImages, dynamic: bool) -> None:
    """The inputs of a Blender / D-NeRF parser config (ours or Nerfstudio's) read from ``folder``."""
    default = DEFAULT_DNERF if dynamic else DEFAULT_BLENDER
    if hasattr(config, "scene_bound"):
        _check_box(config.scene_bound)  # type: ignore[attr-defined]
        if not folder.exists() and getattr(config, "embedded_fallback", False) and folder == default:
            return  # the embedded scene is generated when the parser runs
    if check_images == "full":
        key = ("blender", str(folder.resolve()), dynamic)
        checked_once(key, lambda: validate_blender_folder(folder, need_time=dynamic, check_images="full"))
    else:
        validate_blender_folder(folder, need_time=dynamic, check_images=check_images)


register_validator(BlenderDataParserConfig, lambda c, f, i: _validate_blender_config(c, f, i, dynamic=False))
register_validator(DNeRFDataParserConfig, lambda c, f, i: _validate_blender_config(c, f, i, dynamic=True))


@dataclass
class NerfaccelBlenderDataParserConfig(BlenderDataParserConfig):
    """Nerfstudio's Blender dataparser, with checks and the embedded-scene fallback."""

    _target: type = field(default_factory=lambda: NerfaccelBlenderDataParser)
    data: Path = DEFAULT_BLENDER
    """Blender-format folder. When this is the default and it does not exist, the embedded scene is used."""
    alpha_color: Optional[str] = None
    """Background composited into RGBA images at load time. ``None`` keeps the alpha channel so the model can
    train on random backgrounds (instant-ngp's trick, see the model's ``background_color``)."""
    scene_bound: float = 1.5
    """Half-size of the scene box (cube ``[-b, b]^3``); the Blender scenes fit in 1.5."""
    embedded_fallback: bool = True
    """Use the embedded scene when ``data`` is the default path and does not exist."""
    embedded_resolution: Optional[int] = None
    """Image size of the embedded scene (``None``: the scene package's default)."""
    embedded_views: Optional[int] = None
    """Training views of the embedded scene (``None``: the scene package's default)."""

    def validate_inputs(self, folder: Optional[Path] = None, check_images: CheckImages = "full") -> None:
        """Checks the scene box option and the folder (``folder``, default ``data``) as the parser will read it.

        Args:
            folder: The folder ``--data`` names, when it replaces ``data``.
            check_images: ``"full"`` decodes every image, ``"header"`` opens each, ``"none"`` skips images.

        Raises:
            FileNotFoundError: The folder, a transforms file or an image is missing.
            ValueError: A transforms file, a frame or an image is unreadable or malformed, or the box is empty.
        """
        _validate_blender_config(self, Path(folder if folder is not None else self.data), check_images, False)

    def __post_init__(self) -> None:
        _check_box(self.scene_bound)
        if Path(self.data) != DEFAULT_BLENDER:  # cheap checks at the command line; full decode when parsing
            validate_blender_folder(Path(self.data), need_time=False, check_images="header")


class NerfaccelBlenderDataParser(BlenderDataParser):
    """Blender dataparser that resolves the embedded-scene fallback and validates the folder."""

    config: NerfaccelBlenderDataParserConfig
    _dynamic = False
    _default = DEFAULT_BLENDER

    def _generate_dataparser_outputs(self, split: str = "train") -> DataparserOutputs:
        return _generate(self, BlenderDataParser, split)


@dataclass
class NerfaccelDNeRFDataParserConfig(DNeRFDataParserConfig):
    """Nerfstudio's D-NeRF dataparser, with checks and the embedded dynamic-scene fallback."""

    _target: type = field(default_factory=lambda: NerfaccelDNeRFDataParser)
    data: Path = DEFAULT_DNERF
    """D-NeRF-format folder. When this is the default and it does not exist, the embedded dynamic scene is used."""
    alpha_color: Optional[str] = None  # type: ignore[assignment]
    """Background composited at load time; ``None`` keeps RGBA for random-background training."""
    scene_bound: float = 1.5
    """Half-size of the scene box (cube ``[-b, b]^3``)."""
    embedded_fallback: bool = True
    """Use the embedded dynamic scene when ``data`` is the default path and does not exist."""
    embedded_resolution: Optional[int] = None
    """Image size of the embedded scene (``None``: the scene package's default)."""
    embedded_views: Optional[int] = None
    """Training views of the embedded scene (``None``: the scene package's default)."""

    def validate_inputs(self, folder: Optional[Path] = None, check_images: CheckImages = "full") -> None:
        """Checks the scene box option and the folder (``folder``, default ``data``) as the parser will read it.

        Args:
            folder: The folder ``--data`` names, when it replaces ``data``.
            check_images: ``"full"`` decodes every image, ``"header"`` opens each, ``"none"`` skips images.

        Raises:
            FileNotFoundError: The folder, a transforms file or an image is missing.
            ValueError: A transforms file, a frame or an image is unreadable or malformed, or the box is empty.
        """
        _validate_blender_config(self, Path(folder if folder is not None else self.data), check_images, True)

    def __post_init__(self) -> None:
        _check_box(self.scene_bound)
        if Path(self.data) != DEFAULT_DNERF:
            validate_blender_folder(Path(self.data), need_time=True, check_images="header")


class NerfaccelDNeRFDataParser(DNeRFDataParser):
    """D-NeRF dataparser that resolves the embedded-scene fallback and validates the folder."""

    config: NerfaccelDNeRFDataParserConfig
    _dynamic = True
    _default = DEFAULT_DNERF

    def _generate_dataparser_outputs(self, split: str = "train") -> DataparserOutputs:
        return _generate(self, DNeRFDataParser, split)
