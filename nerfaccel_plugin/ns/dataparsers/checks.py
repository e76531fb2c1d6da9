"""Input checks that run before ``ns-train`` writes anything, for every dataparser the nerfaccel methods use.

Nerfstudio's ``ns-train`` saves ``outputs/.../config.yml`` before it builds the dataparser, so a bad folder
left a half-written run behind and was reported only later (a bare ``FileNotFoundError`` or a failure inside the
dataloader). The nerfaccel trainer config calls :func:`validate_dataparser_inputs` in ``save_config``, before the
output folder is created.

Each nerfaccel dataparser config validates itself (its ``validate_inputs`` method). Nerfstudio's own configs
(``blender-data``, ``dnerf-data``, ``nerfstudio-data``) cannot carry a method, so the modules that know how to
check them register a function with :func:`register_validator`. This module imports neither: it is the leaf the
dataparser modules import.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Literal, Optional

CheckImages = Literal["full", "header", "none"]
Validator = Callable[[object, Path, CheckImages], None]

_DONE: set = set()
_VALIDATORS: dict[type, Validator] = {}


def checked_once(key: Hashable, check: Callable[[], None]) -> None:
    """Runs ``check`` unless a check with the same ``key`` already passed in this process.

    ``ns-train`` validates everything before writing its config and then builds the dataparser in the same
    process; the full image decode should not run twice. A failing check is not remembered.

    Args:
        key: Identity of the check (e.g. the parser kind and the resolved folder).
        check: Raises when the inputs are bad.
    """
    if key in _DONE:
        return
    check()
    _DONE.add(key)


def register_validator(config_type: type, validator: Validator) -> None:
    """Registers the input check of a dataparser config class that cannot carry a ``validate_inputs`` method
    (Nerfstudio's own configs). Subclasses without their own method use it too.

    Args:
        config_type: The dataparser config class.
        validator: ``validator(config, folder, check_images)``; raises on bad input.
    """
    _VALIDATORS[config_type] = validator


def validate_dataparser_inputs(
    parser_config: object, data: Optional[Path] = None, check_images: CheckImages = "full"
) -> None:
    """Checks a dataparser config's inputs the way its parser will read them.

    The config's own ``validate_inputs(folder, check_images)`` runs when it has one, else a validator registered
    for its class (or a base class); parsers with neither are left to themselves.

    Args:
        parser_config: The dataparser config.
        data: ``--data`` / ``--pipeline.datamanager.data`` when given: it replaces the parser's own ``data``, as
            Nerfstudio's datamanager does.
        check_images: ``"full"`` decodes every image, ``"header"`` opens each, ``"none"`` skips images.

    Raises:
        FileNotFoundError: The folder, its transforms file or an image is missing.
        ValueError: A transforms file or image cannot be read, a field is missing, or an option is out of range.
    """
    folder = Path(data if data is not None else getattr(parser_config, "data", Path()))
    own = getattr(parser_config, "validate_inputs", None)
    if callable(own):
        own(folder, check_images)
        return
    for cls in type(parser_config).__mro__:
        validator = _VALIDATORS.get(cls)
        if validator is not None:
            validator(parser_config, folder, check_images)
            return


# Field checks shared by the dataparsers (no imports of theirs).
def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_camera_angle(value: object, path: Path) -> None:
    """``camera_angle_x`` of a transforms file: a number in (0, pi) radians (the horizontal field of view).

    Args:
        value: The value read from the file.
        path: The transforms file (named in the error).

    Raises:
        ValueError: Not a number, not finite, or outside (0, pi).
    """
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(
            f"{path}: `camera_angle_x` must be a number (the horizontal field of view in radians), got {value!r}."
        )
    if not 0 < value < math.pi:
        raise ValueError(
            f"{path}: `camera_angle_x` = {value} is not a field of view: it must be in (0, pi) radians "
            "(0 makes every ray of a view point the same way)."
        )


def check_pose(matrix: object, path: Path, index: int) -> None:
    """A frame's ``transform_matrix``: 4x4 finite numbers whose rotation part is not singular.

    Args:
        matrix: The value read from the file.
        path: The transforms file (named in the error).
        index: The frame's index in ``frames`` (named in the error).

    Raises:
        ValueError: Not a 4x4 list of numbers (a 3x4 matrix says how to fix it), NaN or infinite entries, or a
            singular rotation.
    """
    where = f"{path}: frame {index} `transform_matrix`"
    rows = matrix if isinstance(matrix, list) else None
    if rows is None or not all(isinstance(r, list) for r in rows):
        raise ValueError(f"{where} must be a 4x4 list of numbers, got {type(matrix).__name__}.")
    shape = f"{len(rows)}x{'/'.join(sorted({str(len(r)) for r in rows})) or 0}"
    if shape == "3x4":
        raise ValueError(f"{where} is 3x4; it must be a 4x4 camera-to-world matrix (add the row [0, 0, 0, 1]).")
    if shape != "4x4":
        raise ValueError(f"{where} is {shape}; it must be a 4x4 camera-to-world matrix.")
    if not all(_is_number(v) for r in rows for v in r):
        raise ValueError(f"{where} has entries that are not numbers.")
    if not all(math.isfinite(v) for r in rows for v in r):
        raise ValueError(f"{where} has NaN or infinite entries.")
    (a, b, c), (d, e, f), (g, h, k) = (r[:3] for r in rows[:3])
    det = a * (e * k - f * h) - b * (d * k - f * g) + c * (d * h - e * g)
    if abs(det) < 1e-8:
        raise ValueError(f"{where} has a singular rotation (determinant {det:g}); it is not a camera pose.")


def check_time(value: object, path: Path, index: int) -> None:
    """A D-NeRF frame's ``time``: a finite number.

    Args:
        value: The value read from the file.
        path: The transforms file (named in the error).
        index: The frame's index (named in the error).

    Raises:
        ValueError: Not a finite number.
    """
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"{path}: frame {index} `time` must be a finite number (in [0, 1]), got {value!r}.")
