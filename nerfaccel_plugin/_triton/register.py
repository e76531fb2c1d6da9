"""Registers the Triton kernels as the implementations of the ``nerfaccel::`` segmented ops for one device.

Usage (once the ops are defined, e.g. by ``nerfaccel_plugin._ops``)::

    from nerfaccel_plugin._triton.register import register
    register()                       # "cuda" kernels of nerfaccel::scan_fwd, ... ; [] and a reason without triton

Tests register the same functions for the "cpu" device of a test-only namespace and run them under
``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from . import unavailable_reason

OP_NAMES = (
    "scan_fwd",
    "scan_bwd",
    "render_weight_from_density_fwd",
    "render_weight_from_density_bwd",
    "render_weight_from_alpha_fwd",
    "render_weight_from_alpha_bwd",
    "accumulate_along_rays_fwd",
    "accumulate_along_rays_bwd",
)

# The schemas these kernels implement (the ops are defined elsewhere, by nerfaccel_plugin._ops; tests define them
# in a test-only namespace from this table).
SCHEMAS: dict[str, str] = {
    "scan_fwd": "(Tensor inputs, Tensor? packed_info, bool prod, bool exclusive) -> Tensor",
    "scan_bwd": "(Tensor grad, Tensor inputs, Tensor outputs, Tensor? packed_info, bool prod, bool exclusive) "
    "-> Tensor",
    "render_weight_from_density_fwd": "(Tensor t_starts, Tensor t_ends, Tensor sigmas, Tensor? packed_info, "
    "bool covers_all=False) -> (Tensor, Tensor, Tensor)",
    "render_weight_from_density_bwd": "(Tensor? grad_weights, Tensor? grad_trans, Tensor? grad_alphas, "
    "Tensor t_starts, Tensor t_ends, Tensor sigmas, Tensor trans, Tensor alphas, Tensor? packed_info, "
    "bool covers_all, bool need_t_grads) -> (Tensor, Tensor, Tensor)",
    "render_weight_from_alpha_fwd": "(Tensor alphas, Tensor? packed_info) -> (Tensor, Tensor)",
    "render_weight_from_alpha_bwd": "(Tensor? grad_weights, Tensor? grad_trans, Tensor alphas, Tensor trans, "
    "Tensor? packed_info) -> Tensor",
    "accumulate_along_rays_fwd": "(Tensor weights, Tensor? values, Tensor ray_indices, int n_rays) -> Tensor",
    "accumulate_along_rays_bwd": "(Tensor grad_out, Tensor weights, Tensor? values, Tensor ray_indices, "
    "bool need_weights_grad, bool need_values_grad) -> (Tensor, Tensor)",
}

_FLOATS = (torch.float32, torch.float64)


def _check(op: str, *tensors: torch.Tensor | None) -> None:
    """Clear errors for what the kernels do not take (the public wrappers upcast 16-bit floats first)."""
    dev = None
    for t in tensors:
        if t is None:
            continue
        if t.is_floating_point() and t.dtype not in _FLOATS:
            raise TypeError(
                f"nerfaccel::{op} (Triton): got a {t.dtype} tensor; the kernels take float32 or float64 "
                "(cast the inputs with .float() first)"
            )
        if dev is None:
            dev = t.device
        elif t.device != dev:
            raise ValueError(
                f"nerfaccel::{op} (Triton): tensors on {dev} and {t.device}; move every input to one device"
            )


def kernels() -> dict[str, Callable]:
    """The kernel function of every op name in :data:`OP_NAMES` (imports triton)."""
    from . import accumulate, scan, volrend

    def scan_fwd(inputs, packed_info, prod, exclusive):
        _check("scan_fwd", inputs, packed_info)
        return scan.scan_fwd(inputs, packed_info, prod, exclusive)

    def scan_bwd(grad, inputs, outputs, packed_info, prod, exclusive):
        _check("scan_bwd", grad, inputs, outputs, packed_info)
        return scan.scan_bwd(grad, inputs, outputs, packed_info, prod, exclusive)

    def density_fwd(t_starts, t_ends, sigmas, packed_info, covers_all=False):
        _check("render_weight_from_density_fwd", t_starts, t_ends, sigmas, packed_info)
        return volrend.render_weight_from_density_fwd(t_starts, t_ends, sigmas, packed_info, covers_all)

    def density_bwd(gw, gt, ga, t_starts, t_ends, sigmas, trans, alphas, packed_info, covers_all, need_t_grads):
        _check("render_weight_from_density_bwd", gw, gt, ga, t_starts, t_ends, sigmas, trans, alphas, packed_info)
        return volrend.render_weight_from_density_bwd(
            gw, gt, ga, t_starts, t_ends, sigmas, trans, alphas, packed_info, covers_all, need_t_grads
        )

    def alpha_fwd(alphas, packed_info):
        _check("render_weight_from_alpha_fwd", alphas, packed_info)
        return volrend.render_weight_from_alpha_fwd(alphas, packed_info)

    def alpha_bwd(gw, gt, alphas, trans, packed_info):
        _check("render_weight_from_alpha_bwd", gw, gt, alphas, trans, packed_info)
        return volrend.render_weight_from_alpha_bwd(gw, gt, alphas, trans, packed_info)

    def acc_fwd(weights, values, ray_indices, n_rays):
        _check("accumulate_along_rays_fwd", weights, values, ray_indices)
        return accumulate.accumulate_along_rays_fwd(weights, values, ray_indices, n_rays)

    def acc_bwd(grad_out, weights, values, ray_indices, need_weights_grad, need_values_grad):
        _check("accumulate_along_rays_bwd", grad_out, weights, values, ray_indices)
        return accumulate.accumulate_along_rays_bwd(
            grad_out, weights, values, ray_indices, need_weights_grad, need_values_grad
        )

    return {
        "scan_fwd": scan_fwd,
        "scan_bwd": scan_bwd,
        "render_weight_from_density_fwd": density_fwd,
        "render_weight_from_density_bwd": density_bwd,
        "render_weight_from_alpha_fwd": alpha_fwd,
        "render_weight_from_alpha_bwd": alpha_bwd,
        "accumulate_along_rays_fwd": acc_fwd,
        "accumulate_along_rays_bwd": acc_bwd,
    }


def register(namespace: str = "nerfaccel", device: str = "cuda") -> list[str]:
    """Registers the Triton kernels for ``device`` on the ops ``{namespace}::{name}`` of :data:`OP_NAMES`.

    The ops must already be defined (schemas in docs/triton.md). Without triton this is a no-op: it warns with the
    reason and returns ``[]``.

    Args:
        namespace: the torch.library namespace of the ops.
        device: the device type the kernels serve ("cuda"; "cpu" only under ``TRITON_INTERPRET=1``, for tests).

    Returns:
        The qualified names registered.
    """
    reason = unavailable_reason()
    if reason is not None:
        warnings.warn(f"nerfaccel: Triton kernels not registered: {reason}", RuntimeWarning, stacklevel=2)
        return []
    done = []
    for name, fn in kernels().items():
        qualname = f"{namespace}::{name}"
        torch.library.register_kernel(qualname, device, fn)
        done.append(qualname)
    return done
