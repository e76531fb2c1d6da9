"""Compiled kernels for nerfaccel: lazy build, cache, loading and ``torch.library`` registration.

The kernel sources live in ``cuda/`` (installed as ``nerfaccel_plugin.csrc``). The same sources build
two extensions:

* ``cpp``: the CPU extension, compiled with the system C++ compiler (OpenMP over rays);
* ``cuda``: the CUDA extension, compiled with nvcc.

Nothing is compiled at import. :func:`load_backend` builds an extension on first use (or finds it
prebuilt by ``NERFACCEL_BUILD_EXT=1 pip install --no-build-isolation .``, by ``nerfaccel-build``, or
in the cache from an earlier run) and loads it: loading registers its kernels for the ``torch.ops.nerfaccel.*``
operators (defined in :mod:`nerfaccel_plugin._ops`) with the dispatcher.
"""

from __future__ import annotations

from typing import Any


class ExtensionUnavailable(RuntimeError):
    """An extension cannot be used (no compiler, failed build, no CUDA toolkit, ...).

    Args:
        reason: Short human-readable explanation (includes the build log path when a build failed).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


KINDS = ("cpp", "cuda")


def load_backend(kind: str) -> Any:
    """Loads extension ``kind`` (building it on first use), which registers its kernels with the dispatcher.

    Args:
        kind: ``"cpp"`` (CPU kernels) or ``"cuda"`` (CUDA kernels).

    Returns:
        The loaded extension module (build metadata only: ``source_hash``, ``device_type``).

    Raises:
        ExtensionUnavailable: The extension cannot be built or loaded; ``reason`` says why.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    from .. import _ops  # noqa: F401 - the operator schemas must exist before the kernels register
    from . import build

    return build.get_module(kind)  # builds or loads; raises ExtensionUnavailable


def build_status(kind: str) -> str:
    """Short human text on the state of extension ``kind`` (not attempted / loaded / failed and why)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    from . import build

    return build.status(kind)


__all__ = ["ExtensionUnavailable", "KINDS", "build_status", "load_backend"]
