"""contract family: contraction and its inverse (mip-NeRF 360) against the reference."""

from __future__ import annotations

import math

import pytest
import torch
from ops_helpers import close, compare_fwd_bwd

from nerfaccel_plugin import _torch_impl as R


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ord", ["l2", "linf"])
@pytest.mark.parametrize("inverse", [False, True])
def test_contract(K, ord, inverse, dtype):
    ext, device = K
    aabb = torch.tensor([-1.0, -2.0, -0.5, 1.0, 2.0, 1.5], device=device, dtype=dtype)
    if inverse:
        # Near the outer shell the inverse is ill-conditioned (1 / (m (2 - m))): float32 stays inside
        # |z| < 1.4, float64 covers the whole cube.
        spread = 0.4 if dtype == torch.float32 else 0.95
        x = 0.5 + (torch.rand(2000, 3, device=device, dtype=dtype) - 0.5) * spread
        ref_fn, ker_fn = R._uncontract, ext._uncontract
    else:
        x = torch.randn(2000, 3, device=device, dtype=dtype) * 3
        ref_fn, ker_fn = R._contract, ext._contract
    compare_fwd_bwd(lambda a: ref_fn(a, aabb, ord), lambda a: ker_fn(a, aabb, ord), [x], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contract_at_infinity_is_the_limit(K, dtype):  # noqa: N803
    """Infinite coordinates give the point on the outer shell in their direction (was NaN), with gradient 0."""
    ext, device = K
    inf = math.inf
    aabb = torch.tensor([-1.0, -1, -1, 1, 1, 1], dtype=dtype, device=device)
    x = torch.tensor(
        [[inf, 0, 0], [-inf, 3, 0.5], [0, 0, inf], [inf, -inf, 0], [1e30, 0, 0], [math.nan, inf, 0], [0.5, 0, 0]],
        dtype=dtype,
        device=device,
    )
    h = 0.5 * 2**-0.5
    want_l2 = [[1, 0.5, 0.5], [0, 0.5, 0.5], [0.5, 0.5, 1], [0.5 + h, 0.5 - h, 0.5], [1, 0.5, 0.5]]
    want_linf = [[1, 0.5, 0.5], [0, 0.5, 0.5], [0.5, 0.5, 1], [1, 0, 0.5], [1, 0.5, 0.5]]
    for ord, want in (("l2", want_l2), ("linf", want_linf)):
        xg = x.clone().requires_grad_()
        y = ext._contract(xg, aabb, ord)
        (g,) = torch.autograd.grad(y, xg, torch.ones_like(y))
        close(y[:5].detach(), torch.tensor(want, dtype=dtype, device=device))
        assert torch.equal(g[:4].cpu(), torch.zeros(4, 3, dtype=dtype))
        assert float(g[4].abs().max()) < 1e-29  # (float32: |z|^2 overflows, the limit; float64: the formula)
        assert torch.isnan(y[5]).all()  # NaN stays NaN
        assert torch.isnan(R._contract(x[5:6], aabb, ord)).all()  # and so in the reference
        close(y[6].detach(), R._contract(x[6:], aabb, ord)[0])


