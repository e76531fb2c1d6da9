"""Helpers of the per-family op tests (layouts, comparisons with the reference); fixtures are in conftest.py."""

from __future__ import annotations

import torch

RTOL, ATOL = 1e-5, 1e-6


def device_of(backend: str) -> str:
    return "cuda" if backend == "cuda" else "cpu"


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL, atol: float = ATOL) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    torch.testing.assert_close(a.cpu(), b.cpu(), rtol=rtol, atol=atol, equal_nan=True)


def packed(counts: list[int] | torch.Tensor, gaps: bool = False, device: str = "cpu") -> tuple[torch.Tensor, int]:
    """packed_info for the given counts; with ``gaps`` chunks are separated by uncovered elements."""
    counts = torch.as_tensor(counts, dtype=torch.long)
    gap = torch.randint(0, 3, counts.shape) if gaps else torch.zeros_like(counts)
    starts = torch.cumsum(counts + gap, 0) - counts
    n = int((counts + gap).sum())
    return torch.stack([starts, counts], -1).to(device), n


def random_counts(n_rays: int = 64, huge: int = 0) -> list[int]:
    counts = torch.randint(0, 40, (n_rays,)).tolist()
    counts[:4] = [0, 1, 0, 2]  # empty rays and a one-sample ray
    if huge:
        counts[5] = huge
    return counts


# Packed layouts, plus "batched" ((n_rays, n) rows without packed_info) and "reversed" (chunks out of order).
LAYOUTS = {
    "mixed": dict(counts=None, gaps=False),
    "gaps": dict(counts=None, gaps=True),
    "huge": dict(counts="huge", gaps=False),
    "no_rays": dict(counts=[], gaps=False),
    "all_empty": dict(counts=[0, 0, 0], gaps=False),
    "one_sample": dict(counts=[1], gaps=False),
    "reversed": dict(counts=None, gaps=True),
    "batched": dict(shape=(33, 17)),
    "batched_long": dict(shape=(2, 70_000)),
    "batched_empty": dict(shape=(5, 0)),
}


def layout(name: str, device: str) -> tuple[torch.Tensor | None, tuple[int, ...]]:
    """``(packed_info or None, shape of the samples)`` of layout ``name``."""
    spec = LAYOUTS[name]
    if "shape" in spec:
        return None, spec["shape"]
    counts = spec["counts"]
    if counts is None:
        counts = random_counts()
    elif counts == "huge":
        counts = random_counts(16, huge=200_000)
    info, n = packed(counts, spec["gaps"], device)
    if name == "reversed":
        info = info.flip(0).contiguous()
    return info, (n,)


def ref_dtype(name: str):
    """Long rays run in float32 against a float64 reference: a float32 running sum over 200k samples drifts by
    ~1e-2, so it checks that the kernels accumulate in double (as torch's CPU cumsum does)."""
    return torch.float64 if name == "huge" or name.startswith("batched") else None


def fwd_bwd(fn, inputs: list[torch.Tensor], cotangents: list[torch.Tensor] | None = None):
    """Runs fn, then backward with given (or fresh random) cotangents; returns outputs, grads, cotangents."""
    inputs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    float_outs = [o for o in outs if o.is_floating_point()]
    if cotangents is None:
        cotangents = [torch.randn_like(o) for o in float_outs]
    diff = [x for x in inputs if x.requires_grad]
    loss = sum((o * c.to(o.device)).sum() for o, c in zip(float_outs, cotangents, strict=True))
    grads = torch.autograd.grad(loss, diff, allow_unused=True) if loss.requires_grad else [None] * len(diff)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(diff, grads, strict=True)]
    return [o.detach() for o in outs], grads, cotangents


def compare_fwd_bwd(ref_fn, ker_fn, inputs, rtol=RTOL, atol=ATOL, ref_dtype=None):
    """Kernels vs reference, forward and backward (same cotangents).

    With ``ref_dtype`` (float64) the reference runs on copies of the float inputs and cotangents in that dtype, the
    exact answer that the float32 kernels (double accumulators) must reach, and its results are rounded to the
    kernels' dtype for the comparison.
    """
    if ref_dtype is None:
        ref_out, ref_grad, cot = fwd_bwd(ref_fn, inputs)
        ker_out, ker_grad, _ = fwd_bwd(ker_fn, inputs, cot)
    else:
        ker_out, ker_grad, cot = fwd_bwd(ker_fn, inputs)
        up = [x.to(ref_dtype) if x.is_floating_point() else x for x in inputs]
        ref_out, ref_grad, _ = fwd_bwd(ref_fn, up, [c.to(ref_dtype) for c in cot])
        ref_out = [r.to(k.dtype) for r, k in zip(ref_out, ker_out, strict=True)]
        ref_grad = [r.to(k.dtype) for r, k in zip(ref_grad, ker_grad, strict=True)]
    for a, b in zip(ker_out, ref_out, strict=True):
        close(a, b, rtol, atol)
    for a, b in zip(ker_grad, ref_grad, strict=True):
        close(a, b, rtol, atol)
