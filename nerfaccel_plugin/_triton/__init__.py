"""Sample-parallel Triton kernels of the segmented ops (scans, volume rendering weights, accumulation).

They are the "cuda" implementations of the ``nerfaccel::`` ops (``scan_fwd/bwd``,
``render_weight_from_density_fwd/bwd``, ``render_weight_from_alpha_fwd/bwd``, ``accumulate_along_rays_fwd/bwd``);
:func:`nerfaccel_plugin._triton.register.register` registers them once the ops are defined. Under
``TRITON_INTERPRET=1`` (set before this package is imported) the same kernels run on CPU tensors, which is how CI
tests them. See docs/triton.md.

Importing this package does not import triton; :func:`available` says whether it can be.
"""

from __future__ import annotations

import importlib.util

__all__ = ["available", "unavailable_reason"]


def unavailable_reason() -> str | None:
    """Why the Triton kernels cannot be used here (None when they can)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (it ships with the CUDA builds of torch: pip install triton)"
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as err:  # pragma: no cover - a broken install
        return f"triton failed to import: {type(err).__name__}: {err}"
    return None


def available() -> bool:
    """Whether triton imports here."""
    return unavailable_reason() is None
