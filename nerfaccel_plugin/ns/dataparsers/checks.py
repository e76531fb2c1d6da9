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
