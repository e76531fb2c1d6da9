"""Rendering and scan functions against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

import nerfaccel_plugin as nacc

# Every test once on the PyTorch reference and once on the C++ build (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("semantic_backend")

ALPHAS = [0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9]
RAY_IDS = [0, 0, 0, 1, 1, 2, 2]
PACKED = [[0, 3], [3, 2], [5, 2]]


def _t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def test_scans_hand_values():
    x = _t([1.0, 2, 3, 4, 5, 6, 7, 8, 9])
    info = torch.tensor([[0, 2], [2, 3], [5, 4]])
    torch.testing.assert_close(nacc.inclusive_sum(x, info), _t([1.0, 3, 3, 7, 12, 6, 13, 21, 30]))
    torch.testing.assert_close(nacc.exclusive_sum(x, info), _t([0.0, 1, 0, 3, 7, 0, 6, 13, 21]))
    torch.testing.assert_close(nacc.inclusive_prod(x, info), _t([1.0, 2, 3, 12, 60, 6, 42, 336, 3024]))
    torch.testing.assert_close(nacc.exclusive_prod(x, info), _t([1.0, 1, 1, 3, 12, 1, 6, 42, 336]))
    idx = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2])
    torch.testing.assert_close(nacc.inclusive_sum(x, indices=idx), nacc.inclusive_sum(x, info))
    torch.testing.assert_close(nacc.exclusive_prod(x, indices=idx), nacc.exclusive_prod(x, info))


def test_scans_batched_hand_values():
    x = _t([[1.0, 2, 3], [4, 5, 6]])
    torch.testing.assert_close(nacc.inclusive_sum(x), _t([[1.0, 3, 6], [4, 9, 15]]))
    torch.testing.assert_close(nacc.exclusive_sum(x), _t([[0.0, 1, 3], [0, 4, 9]]))
    torch.testing.assert_close(nacc.inclusive_prod(x), _t([[1.0, 2, 6], [4, 20, 120]]))
    torch.testing.assert_close(nacc.exclusive_prod(x), _t([[1.0, 1, 2], [1, 4, 20]]))


def test_scan_gap_in_packed_info_leaves_zeros():
    x = _t([1.0, 2, 3, 4])
    info = torch.tensor([[0, 1], [2, 2]])  # element 1 belongs to no ray
    torch.testing.assert_close(nacc.inclusive_sum(x, info), _t([1.0, 0, 3, 7]))


@pytest.mark.parametrize("form", ["ray_indices", "packed_info"])
def test_weights_from_alpha_hand_values(form):
    kw = {"ray_indices": torch.tensor(RAY_IDS)} if form == "ray_indices" else {"packed_info": torch.tensor(PACKED)}
    weights, trans = nacc.render_weight_from_alpha(_t(ALPHAS), **kw)
    torch.testing.assert_close(trans, _t([1.0, 0.6, 0.12, 1.0, 0.2, 1.0, 1.0]))
    torch.testing.assert_close(weights, _t([0.4, 0.48, 0.012, 0.8, 0.02, 0.0, 0.9]))
    torch.testing.assert_close(nacc.render_transmittance_from_alpha(_t(ALPHAS), **kw), trans)


def test_weights_from_density_hand_values():
    sig = ALPHAS
    t0 = _t([0.0, 1, 2, 3, 4, 5, 6])
    t1 = t0 + 1.0
    weights, trans, alphas = nacc.render_weight_from_density(t0, t1, _t(sig), ray_indices=torch.tensor(RAY_IDS))
    exp_alpha = [1 - math.exp(-s) for s in sig]
    exp_trans = [1.0, math.exp(-0.4), math.exp(-1.2), 1.0, math.exp(-0.8), 1.0, 1.0]
    torch.testing.assert_close(alphas, _t(exp_alpha))
    torch.testing.assert_close(trans, _t(exp_trans))
    torch.testing.assert_close(weights, _t([a * t for a, t in zip(exp_alpha, exp_trans, strict=True)]))
    trans2, alphas2 = nacc.render_transmittance_from_density(t0, t1, _t(sig), ray_indices=torch.tensor(RAY_IDS))
    torch.testing.assert_close(trans2, trans)
    torch.testing.assert_close(alphas2, alphas)


def test_interval_length_matters():
    # Same density, twice the interval: alpha = 1 - exp(-2 sigma).
    w, _, a = nacc.render_weight_from_density(_t([[0.0, 1.0]]), _t([[2.0, 1.5]]), _t([[0.5, 0.5]]))
    torch.testing.assert_close(a, _t([[1 - math.exp(-1.0), 1 - math.exp(-0.25)]]))
    torch.testing.assert_close(w[0, 1], _t(math.exp(-1.0) * (1 - math.exp(-0.25))))


def test_visibility_early_stop_and_alpha_threshold():
    kw = {"ray_indices": torch.tensor(RAY_IDS)}
    vis = nacc.render_visibility_from_alpha(_t(ALPHAS), early_stop_eps=0.3, alpha_thre=0.2, **kw)
    assert vis.tolist() == [True, True, False, True, False, False, True]
    vis = nacc.render_visibility_from_alpha(_t(ALPHAS), early_stop_eps=0.15, alpha_thre=0.0, **kw)
    # trans = [1, .6, .12, 1, .2, 1, 1]
    assert vis.tolist() == [True, True, False, True, True, True, True]
    t0 = _t([0.0, 1, 2, 3, 4, 5, 6])
    vis = nacc.render_visibility_from_density(t0, t0 + 1, _t(ALPHAS), early_stop_eps=0.35, alpha_thre=0.2, **kw)
    # trans = [1, e^-.4=.67, e^-1.2=.30, 1, e^-.8=.45, 1, 1]; alpha = [.33, .55, .095, .55, .095, 0, .59]
    assert vis.tolist() == [True, True, False, True, False, False, True]


def test_prefix_trans_multiplies():
    prefix = _t([0.5] * 7)
    w, t = nacc.render_weight_from_alpha(_t(ALPHAS), ray_indices=torch.tensor(RAY_IDS), prefix_trans=prefix)
    torch.testing.assert_close(t, _t([0.5, 0.3, 0.06, 0.5, 0.1, 0.5, 0.5]))
    torch.testing.assert_close(w, _t([0.2, 0.24, 0.006, 0.4, 0.01, 0.0, 0.45]))


def test_accumulate_and_rendering_hand_values():
    weights = _t([0.4, 0.48, 0.012, 0.8, 0.02, 0.0, 0.9])
    values = _t([[1.0], [2.0], [3.0], [1.0], [1.0], [5.0], [2.0]])
    out = nacc.accumulate_along_rays(weights, values, torch.tensor(RAY_IDS), n_rays=4)
    torch.testing.assert_close(out, _t([[0.4 + 0.96 + 0.036], [0.82], [1.8], [0.0]]))
    opac = nacc.accumulate_along_rays(weights, None, torch.tensor(RAY_IDS), n_rays=3)
    torch.testing.assert_close(opac, _t([[0.892], [0.82], [0.9]]))

    t0 = _t([0.0, 1.0, 0.0])
    t1 = _t([1.0, 2.0, 1.0])
    ray_ids = torch.tensor([0, 0, 2])
    rgb = _t([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]])
    alphas = _t([0.5, 1.0, 0.25])
    colors, opacity, depth, extras = nacc.rendering(
        t0, t1, ray_ids, n_rays=3, rgb_alpha_fn=lambda *_: (rgb, alphas), render_bkgd=_t([1.0, 1.0, 1.0])
    )
    # ray 0: w = [0.5, 0.5]; ray 1: empty -> background; ray 2: w = 0.25
    torch.testing.assert_close(opacity, _t([[1.0], [0.0], [0.25]]))
    torch.testing.assert_close(colors, _t([[0.5, 0.5, 0.0], [1.0, 1.0, 1.0], [0.75, 0.75, 1.0]]))
    torch.testing.assert_close(depth, _t([[1.0], [0.0], [0.5]]))
    assert set(extras) == {"weights", "trans", "rgbs", "alphas"}


def test_rendering_batched_matches_packed():
    t0 = torch.linspace(0, 1, 8).repeat(3, 1)
    t1 = t0 + 1 / 7
    sig = torch.rand(3, 8) * 5
    rgb = torch.rand(3, 8, 3)
    cb, ob, db, _ = nacc.rendering(t0, t1, rgb_sigma_fn=lambda *_: (rgb, sig))
    ray_ids = torch.arange(3).repeat_interleave(8)
    cp, op, dp, _ = nacc.rendering(
        t0.reshape(-1), t1.reshape(-1), ray_ids, n_rays=3, rgb_sigma_fn=lambda *_: (rgb.reshape(-1, 3), sig.reshape(-1))
    )
    torch.testing.assert_close(cb, cp)
    torch.testing.assert_close(ob, op)
    torch.testing.assert_close(db, dp)


def test_half_precision_is_upcast():
    w16, t16 = nacc.render_weight_from_alpha(_t(ALPHAS, torch.float16), ray_indices=torch.tensor(RAY_IDS))
    assert w16.dtype == torch.float32
    w32, _ = nacc.render_weight_from_alpha(_t(ALPHAS), ray_indices=torch.tensor(RAY_IDS))
    torch.testing.assert_close(w16, w32, atol=1e-3, rtol=1e-3)


def test_distortion_hand_value():
    # One ray, two samples: w = [0.5, 0.5], mids 0.5 and 1.5, widths 1.
    w = _t([[0.5, 0.5]])
    loss = nacc.distortion(w, _t([[0.0, 1.0]]), _t([[1.0, 2.0]]))
    # sum_ij w_i w_j |m_i - m_j| = 2 * 0.25 * 1 = 0.5 ; 1/3 sum w^2 d = 1/3 * 0.5 = 1/6
    torch.testing.assert_close(loss, _t([0.5 + 1 / 6]))


def test_searchsorted_hand_values_nerfacc_rule():
    """nerfacc 0.5 (pdf.cu) searches s[b .. l-1]: below the range (b, b), at or above s[l] (l - 1, l)."""
    from nerfaccel_plugin import _torch_impl

    s = nacc.RayIntervals(vals=_t([0.0, 1.0, 2.0, 10.0, 20.0, 5.0]), packed_info=torch.tensor([[0, 3], [3, 2], [5, 1]]))
    q_vals = _t([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 15.0, 25.0, 4.0, 6.0])
    q_info = torch.tensor([[0, 6], [6, 3], [9, 2]])
    want_left = [0, 0, 0, 1, 1, 1, 3, 3, 3, 5, 5]
    want_right = [0, 1, 1, 2, 2, 2, 3, 4, 4, 5, 5]
    ref = _torch_impl._searchsorted(s.vals, s.packed_info, q_vals, q_info)
    assert ref[0].tolist() == want_left and ref[1].tolist() == want_right
    left, right = nacc.searchsorted(s, nacc.RayIntervals(vals=q_vals, packed_info=q_info))  # active backend
    assert left.tolist() == want_left and right.tolist() == want_right


def test_searchsorted_query_layout_decides_the_index_kind():
    """As in nerfacc: batched queries get per-ray indices, flattened queries flat indices, whatever the sequence."""
    key_b = nacc.RayIntervals(vals=_t([[0.0, 1.0, 2.0], [10.0, 20.0, 30.0]]))
    key_p = nacc.RayIntervals(vals=key_b.vals.reshape(-1), packed_info=torch.tensor([[0, 3], [3, 3]]))
    q_b = nacc.RayIntervals(vals=_t([[-1.0, 1.5], [25.0, 40.0]]))
    q_p = nacc.RayIntervals(vals=q_b.vals.reshape(-1), packed_info=torch.tensor([[0, 2], [2, 2]]))
    per_ray = ([[0, 1], [1, 1]], [[0, 2], [2, 2]])
    flat = ([0, 1, 4, 4], [0, 2, 5, 5])
    for key in (key_b, key_p):
        left, right = nacc.searchsorted(key, q_b)
        assert (left.tolist(), right.tolist()) == per_ray
        left, right = nacc.searchsorted(key, q_p)
        assert (left.tolist(), right.tolist()) == flat
    # (B, R, n) batched layouts: each row of the leading dimensions is a ray
    left, right = nacc.searchsorted(
        nacc.RayIntervals(vals=key_b.vals.reshape(2, 1, 3)), nacc.RayIntervals(vals=q_b.vals.reshape(2, 1, 2))
    )
    assert left.shape == (2, 1, 2) and left.reshape(2, 2).tolist() == per_ray[0]
    assert right.reshape(2, 2).tolist() == per_ray[1]


def test_proposal_loss_hand_value():
    """_pdf_loss with a query edge below the proposal's first edge: with nerfacc's (b, b) rule the proposal mass
    over [0.0, 0.1] is 0, so that interval is penalised (the old (b, b + 1) rule gave it 0.3 and no loss)."""
    from nerfaccel_plugin.estimators.prop_net import _pdf_loss

    key = nacc.RayIntervals(vals=_t([[0.2, 0.5, 1.0]]))
    query = nacc.RayIntervals(vals=_t([[0.0, 0.1, 0.6, 1.0]]))
    loss = _pdf_loss(query, _t([[0.0, 0.1, 0.5, 1.0]]), key, _t([[0.0, 0.3, 1.0]]))
    # w = [0.1, 0.4, 0.5]; enclosing proposal mass [0, 1.0, 0.7]; loss = relu(w - w_key)^2 / (w + 1e-7)
    torch.testing.assert_close(loss, _t([[0.1**2 / (0.1 + 1e-7), 0.0, 0.0]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contract_reference_at_infinity(dtype):
    """Infinite coordinates give the limit of the contraction (was NaN: [inf, 0, 0] -> [nan, .5, .5]) with a
    finite (zero) gradient; huge finite points no longer overflow the L2 norm (they gave the centre, 0.5)."""
    from nerfaccel_plugin._torch_impl import _contract

    inf = float("inf")
    aabb = _t([-1.0, -2.0, -1.0, 3.0, 2.0, 1.0], dtype)  # centre (1, 0, 0), half extent (2, 2, 1)
    x = _t([[inf, 0, 0], [-inf, inf, 0.5], [inf, inf, -inf], [1.0, 6e30, 4e30], [1.0, 0.0, 0.5]], dtype)
    x.requires_grad_(True)
    r2, r3 = 0.5 / math.sqrt(2.0), 0.5 / math.sqrt(3.0)
    want = {
        "l2": [[1.0, 0.5, 0.5], [0.5 - r2, 0.5 + r2, 0.5], [0.5 + r3, 0.5 + r3, 0.5 - r3], [0.5, 0.8, 0.9]],
        "linf": [[1.0, 0.5, 0.5], [0.0, 1.0, 0.5], [1.0, 1.0, 0.0], [0.5, 0.875, 1.0]],
    }
    for ord_, rows in want.items():
        y = _contract(x, aabb, ord_)
        torch.testing.assert_close(y[:4], _t(rows, dtype))
        torch.testing.assert_close(y[4], _t([0.5, 0.5, 0.625], dtype))  # inside: linear, (x - c) / half / 4 + 1/2
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.isfinite(g).all()
        assert (g[:3] == 0).all()
        torch.testing.assert_close(g[4], _t([0.125, 0.125, 0.25], dtype))
    # A NaN coordinate makes the whole point NaN, also next to an infinity (as in the kernels).
    nan = float("nan")
    for ord_ in ("l2", "linf"):
        y = _contract(_t([[nan, 0, 0], [nan, inf, 0], [0.5, 0.0, 0.0]], dtype), aabb, ord_)
        assert torch.isnan(y[:2]).all() and torch.isfinite(y[2]).all()
