"""Input checks shared by the public ops.

Every check raises ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong shape, device or
value) with a message that names the argument and says how to fix it. Value checks that need to
read tensor contents (NaN, sortedness, index ranges) synchronize with the GPU; set
``NERFACCEL_SKIP_VALUE_CHECKS=1`` to skip them once a pipeline is known to be correct.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from typing import Optional

import torch
from torch import Tensor

_override: contextvars.ContextVar[Optional[bool]] = contextvars.ContextVar("nerfaccel_value_checks", default=None)


def value_checks_enabled() -> bool:
    """Whether checks that read tensor values run (see :func:`value_checks`; else the environment)."""
    forced = _override.get()
    if forced is not None:
        return forced
    return os.environ.get("NERFACCEL_SKIP_VALUE_CHECKS", "0") not in ("1", "true", "True")


@contextlib.contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Turns the value checks (NaN, sortedness, index ranges) on or off inside a ``with`` block.

    Those checks read tensor contents, which on a GPU costs a host synchronization each. Code that
    builds its inputs with nerfaccel's own samplers (such as the Nerfstudio models, per training step)
    can skip them; type, dtype, shape and device checks always run. Overrides
    ``NERFACCEL_SKIP_VALUE_CHECKS`` for the current thread / task.

    Args:
        enabled: ``False`` to skip the value checks in the block, ``True`` to force them on.
    """
    token = _override.set(bool(enabled))
    try:
        yield
    finally:
        _override.reset(token)


def tensor(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}.")
    return x


def floating(name: str, x: object) -> Tensor:
    x = tensor(name, x)
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {x.dtype}; convert it with `.float()`.")
    return x


def integer(name: str, x: object) -> Tensor:
    x = tensor(name, x)
    if x.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"`{name}` must be an integer tensor (int64 preferred), got dtype {x.dtype}; use `.long()`.")
    return x


def ndim(name: str, x: Tensor, dims: int | tuple[int, ...], shape_doc: str) -> None:
    allowed = (dims,) if isinstance(dims, int) else dims
    if x.dim() not in allowed:
        raise ValueError(f"`{name}` must have shape {shape_doc}, got {tuple(x.shape)}.")


def last_dim(name: str, x: Tensor, size: int, shape_doc: str) -> None:
    if x.dim() == 0 or x.shape[-1] != size:
        raise ValueError(f"`{name}` must have shape {shape_doc}, got {tuple(x.shape)}.")


def same_device(**tensors: Optional[Tensor]) -> torch.device:
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {k: v.device for k, v in present.items()}
    first_name, first = next(iter(devices.items()))
    for name, dev in devices.items():
        if dev != first:
            raise ValueError(
                f"`{name}` is on {dev} but `{first_name}` is on {first}: all inputs must be on the same device "
                f"(move them with `.to({str(first)!r})`)."
            )
    return first


def same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"`{name_a}` {tuple(a.shape)} and `{name_b}` {tuple(b.shape)} must have the same shape.")


def finite(name: str, x: Tensor) -> None:
    if value_checks_enabled() and x.numel() > 0 and not bool(torch.isfinite(x).all()):
        raise ValueError(f"`{name}` contains NaN or infinite values; filter those rays out before calling.")


def not_nan(name: str, x: Tensor) -> None:
    if value_checks_enabled() and x.numel() > 0 and bool(torch.isnan(x).any()):
        raise ValueError(f"`{name}` contains NaN values; filter them out before calling.")


def rays(rays_o: object, rays_d: object) -> tuple[Tensor, Tensor]:
    rays_o = floating("rays_o", rays_o)
    rays_d = floating("rays_d", rays_d)
    ndim("rays_o", rays_o, 2, "(n_rays, 3)")
    last_dim("rays_o", rays_o, 3, "(n_rays, 3)")
    ndim("rays_d", rays_d, 2, "(n_rays, 3)")
    last_dim("rays_d", rays_d, 3, "(n_rays, 3)")
    same_shape("rays_o", rays_o, "rays_d", rays_d)
    same_device(rays_o=rays_o, rays_d=rays_d)
    finite("rays_o", rays_o)
    finite("rays_d", rays_d)
    if value_checks_enabled() and rays_d.numel() > 0 and bool((rays_d.abs().amax(dim=-1) == 0).any()):
        raise ValueError("`rays_d` contains zero-length directions; every ray needs a non-zero (normalized) direction.")
    return rays_o, rays_d


def aabbs(name: str, x: object) -> Tensor:
    x = floating(name, x)
    ndim(name, x, 2, "(m, 6)")
    last_dim(name, x, 6, "(m, 6)")
    if value_checks_enabled() and x.numel() > 0 and not bool((x[:, 3:] > x[:, :3]).all()):
        raise ValueError(f"`{name}` must have max > min on every axis ({{xmin, ymin, zmin, xmax, ymax, zmax}}).")
    return x


def packed_info(x: object, n: int, name: str = "packed_info") -> Tensor:
    """Checks an ``(n_rays, 2)`` ``(start, count)`` tensor describing chunks of ``n`` flat samples.

    With value checks on, every chunk must lie within ``[0, n]`` and no two non-empty chunks may
    share a sample (chunks need not be in order; empty chunks may start anywhere in ``[0, n]``).
    """
    x = integer(name, x)
    ndim(name, x, 2, "(n_rays, 2)")
    last_dim(name, x, 2, "(n_rays, 2)")
    if value_checks_enabled() and x.numel() > 0:
        starts, counts = x[:, 0].long(), x[:, 1].long()
        if bool((counts < 0).any()) or bool((starts < 0).any()) or bool((starts + counts > n).any()):
            raise ValueError(
                f"`{name}` has negative or out-of-range (start, count) pairs for {n} samples; build it with "
                "`pack_info(ray_indices, n_rays)`."
            )
        _no_overlap(name, starts, counts)
    return x.long()


def _no_overlap(name: str, starts: Tensor, counts: Tensor) -> None:
    """Raises when two non-empty chunks share a sample (one pass when chunks are in order, else a sort)."""
    nonempty = counts > 0
    s, c = starts[nonempty], counts[nonempty]
    if s.numel() < 2 or bool((s[1:] >= s[:-1] + c[:-1]).all()):
        return
    order = torch.argsort(s, stable=True)
    s_sorted, c_sorted = s[order], c[order]
    bad = s_sorted[1:] < s_sorted[:-1] + c_sorted[:-1]
    if bool(bad.any()):
        k = int(torch.nonzero(bad)[0, 0])
        rows = torch.nonzero(nonempty)[:, 0][order]
        i, j = int(rows[k]), int(rows[k + 1])
        raise ValueError(
            f"`{name}` has overlapping chunks: ray {i} (start {int(starts[i])}, count {int(counts[i])}) and ray {j} "
            f"(start {int(starts[j])}, count {int(counts[j])}) share samples. Each sample must belong to at most one "
            "ray: build it with `pack_info(ray_indices, n_rays)`, or give each ray (start, count) with "
            "start[i + 1] >= start[i] + count[i]."
        )


def ray_indices(x: object, n: int, n_rays: Optional[int], name: str = "ray_indices", sorted_: bool = True) -> Tensor:
    x = integer(name, x)
    ndim(name, x, 1, "(n_samples,)")
    if x.shape[0] != n:
        raise ValueError(f"`{name}` has {x.shape[0]} entries but there are {n} samples; they must match.")
    if value_checks_enabled() and n > 0:
        if bool((x < 0).any()):
            raise ValueError(f"`{name}` contains negative ray indices.")
        if n_rays is not None and bool((x >= n_rays).any()):
            raise ValueError(f"`{name}` contains indices >= n_rays={n_rays}; pass the right `n_rays`.")
        if sorted_ and n > 1 and bool((x[1:] < x[:-1]).any()):
            raise ValueError(f"`{name}` must be sorted (samples of each ray contiguous); sort samples by ray first.")
    return x.long()


def compute_dtype(x: Tensor) -> torch.dtype:
    """float16/bfloat16 inputs are computed (and returned) in float32; float32/float64 are kept."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
