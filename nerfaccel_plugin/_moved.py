"""Old import paths of modules that moved, kept working for ``config.yml`` files and user code written before.

The Nerfstudio glue moved into :mod:`nerfaccel_plugin.ns` (the nerfacc-compatible core beneath it imports no
nerfstudio). A ``config.yml`` written by an earlier version names its classes by the old paths, e.g.
``!!python/object:nerfaccel_plugin.models.nerfaccel_model.NerfaccelModelConfig``; this finder makes such a name import
the module at its new path, so both names refer to the very same module object (no copies, no shims to keep in sync).
Nothing is imported until an old name is asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED: dict[str, str] = {
    "nerfaccel_plugin.samplers": "nerfaccel_plugin.ns.samplers",
    "nerfaccel_plugin.ns_compat": "nerfaccel_plugin.ns.compat",
    "nerfaccel_plugin.models": "nerfaccel_plugin.ns.models",
    "nerfaccel_plugin.fields": "nerfaccel_plugin.ns.fields",
    "nerfaccel_plugin.dataparsers": "nerfaccel_plugin.ns.dataparsers",
    "nerfaccel_plugin.method_configs._common": "nerfaccel_plugin.ns.trainer",
}
"""Old module name (or package prefix) -> new one."""


def new_name(fullname: str) -> str | None:
    """The current name of a module that was imported as ``fullname`` before it moved, or ``None``."""
    for old, new in MOVED.items():
        if fullname == old or fullname.startswith(old + "."):
            return new + fullname[len(old) :]
    return None


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):  # noqa: ANN001, ANN201 - importlib protocol
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:  # noqa: ANN001 - the module was executed under its new name
        return None


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201 - importlib protocol
        new = new_name(fullname)
        if new is None:
            return None
        spec = importlib.util.find_spec(new)
        if spec is None:
            return None
        is_package = spec.submodule_search_locations is not None
        return importlib.util.spec_from_loader(fullname, _Alias(new), is_package=is_package)


def install() -> None:
    """Installs the finder once (first on ``sys.meta_path`` so the old names never reach the file system)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
