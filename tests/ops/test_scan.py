"""scan family: inclusive/exclusive sums and products, packed and batched (``packed_info=None``)."""

from __future__ import annotations

import pytest
import torch
from ops_helpers import LAYOUTS, compare_fwd_bwd, device_of, layout, ref_dtype

import nerfaccel_plugin as nacc
from nerfaccel_plugin import _torch_impl as R

NAMES = ["_inclusive_sum", "_exclusive_sum", "_inclusive_prod", "_exclusive_prod"]


def _inputs(name: str, shape: tuple[int, ...], lay: str, device: str) -> torch.Tensor:
    if "prod" not in name:
        return torch.randn(shape, device=device)
    x = 1.0 - 1e-5 * torch.rand(shape, device=device)  # products stay away from underflow
    flat = x.view(-1)
    n = flat.numel()
    if n > 10:
        flat[torch.randint(0, n, (max(n // 20, 1),))] = 0.0  # zeros: exact gradients required
        if lay == "huge":
            flat[6:100_000] = torch.where(flat[6:100_000] == 0.0, 1.0, flat[6:100_000])  # a long run before the zeros
    return x


@pytest.mark.parametrize("lay", list(LAYOUTS))
@pytest.mark.parametrize("name", NAMES)
def test_scans_match_the_reference(K, name, lay):
    kernels, device = K
    packed_info, shape = layout(lay, device)
    x = _inputs(name, shape, lay, device)
    compare_fwd_bwd(
        lambda a: getattr(R, name)(a, packed_info),
        lambda a: getattr(kernels, name)(a, packed_info),
        [x],
        ref_dtype=ref_dtype(lay),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scans_keep_float64_and_float32(K, dtype):
    kernels, device = K
    x = torch.randn(10, dtype=dtype, device=device)
    info = torch.tensor([[0, 4], [4, 6]], device=device)
    for name in NAMES:
        out = getattr(kernels, name)(x, info)
        assert out.dtype == dtype
        torch.testing.assert_close(out.cpu(), getattr(R, name)(x.cpu(), info.cpu()))


def test_scan_backward_without_materialized_cotangent(K):
    """Only one output of a graph is used: the scan's backward gets a cotangent, an unused scan none."""
    kernels, device = K
    x = torch.rand(8, device=device, requires_grad=True)
    info = torch.tensor([[0, 8]], device=device)
    y = kernels._inclusive_sum(x, info)
    kernels._exclusive_prod(x, info)  # unused: no backward call at all
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g.cpu(), torch.arange(8, 0, -1, dtype=torch.float32))


# ------------------------------------------------------------------------------------------
# Semantics on every backend (the reference included), through the public API
# ------------------------------------------------------------------------------------------
def test_hand_values(backend):
    device = device_of(backend)
    x = torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8, 9], device=device)
    info = torch.tensor([[0, 2], [2, 3], [5, 4]], device=device)
    assert nacc.inclusive_sum(x, info).tolist() == [1, 3, 3, 7, 12, 6, 13, 21, 30]
    assert nacc.exclusive_sum(x, info).tolist() == [0, 1, 0, 3, 7, 0, 6, 13, 21]
    assert nacc.inclusive_prod(x, info).tolist() == [1, 2, 3, 12, 60, 6, 42, 336, 3024]
    assert nacc.exclusive_prod(x, info).tolist() == [1, 1, 1, 3, 12, 1, 6, 42, 336]


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4), (7,), (4, 0), ()])
def test_batched_forms_match_torch(backend, shape):
    device = device_of(backend)
    x = torch.rand(shape, device=device, dtype=torch.float64) + 0.5
    ones = torch.ones_like(x[..., :1]) if x.dim() else torch.ones(1, dtype=x.dtype, device=device)
    zeros = torch.zeros_like(ones)
    expect = {
        "inclusive_sum": torch.cumsum(x, -1) if x.dim() else x,
        "inclusive_prod": torch.cumprod(x, -1) if x.dim() else x,
        "exclusive_sum": torch.cumsum(torch.cat([zeros, x[..., :-1]], -1), -1) if x.dim() else zeros[0],
        "exclusive_prod": torch.cumprod(torch.cat([ones, x[..., :-1]], -1), -1) if x.dim() else ones[0],
    }
    for name, want in expect.items():
        got = getattr(nacc, name)(x)
        assert got.shape == x.shape
        torch.testing.assert_close(got, want)


def test_gradcheck(backend):
    device = device_of(backend)
    info = torch.tensor([[0, 3], [3, 0], [3, 4]], device=device)
    for name in ("inclusive_sum", "exclusive_sum", "inclusive_prod", "exclusive_prod"):
        fn = getattr(nacc, name)
        x = torch.rand(7, dtype=torch.float64, device=device, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, fn=fn: fn(a, info), (x,))
        assert torch.autograd.gradgradcheck(lambda a, fn=fn: fn(a, info), (x,))
        xb = torch.rand(3, 4, dtype=torch.float64, device=device, requires_grad=True)
        assert torch.autograd.gradcheck(fn, (xb,))
        assert torch.autograd.gradgradcheck(fn, (xb,))
