"""Compiled kernels for nerfaccel: lazy build, cache, loading and ``torch.library`` registration.

The kernel sources live in ``cuda/`` (installed as ``nerfaccel_plugin.csrc``). The same sources build
two extensions:

* ``cpp``: the CPU extension, compiled with the system C++ compiler (OpenMP over rays);
* ``cuda``: the CUDA extension, compiled with nvcc.

Nothing is compiled at import. :func:`load_backend` builds an extension on first use (or finds it
prebuilt by ``NERFACCEL_BUILD_EXT=1 pip install --no-build-isolation .``, by ``nerfaccel-build``, or
in the cache from an earlier run), registers the ``torch.ops.nerfaccel.*`` ops and returns an object
with the primitive ops of :mod:`nerfaccel_plugin._torch_impl` (same names, arguments and outputs).
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
    """Returns the primitive ops implemented by extension ``kind``, building it on first use.

    Args:
        kind: ``"cpp"`` (CPU kernels) or ``"cuda"`` (CUDA kernels).

    Returns:
        An object exposing the primitives (``_traverse_grids``, ``_render_weight_from_density``, ...)
        with the reference signatures and autograd, plus ``available_ops`` (set of their names).

    Raises:
        ExtensionUnavailable: The extension cannot be built or loaded; ``reason`` says why.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    from . import build, ops

    build.get_module(kind)  # builds or loads; raises ExtensionUnavailable
    return ops.backend(kind)


def build_status(kind: str) -> str:
    """Short human text on the state of extension ``kind`` (not attempted / loaded / failed and why)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    from . import build

    return build.status(kind)


__all__ = ["ExtensionUnavailable", "KINDS", "build_status", "load_backend"]
