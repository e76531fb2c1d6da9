"""The Triton kernels, run by the interpreter on CPU tensors, against the PyTorch reference (``_torch_impl``).

Outputs are compared with the reference's outputs and gradients with the reference's autograd gradients, on
layouts with empty rays, 1-sample rays, rays longer than a tile and rays crossing tile edges (tiles of 8 here),
chunks out of order with samples outside every chunk, batched ``(n_rays, n)`` inputs, unsorted ray indices,
float32 and float64.
"""

from __future__ import annotations

import os

import pytest
import torch

from nerfaccel_plugin import _torch_impl as ref
from nerfaccel_plugin._triton import _common, accumulate, scan, volrend

COUNTS = [0, 1, 3, 8, 9, 17, 40, 0, 1, 2, 5]  # tiles of 8: empty, single, exact tile, crossing, multi-tile rays
TOL = {torch.float32: dict(rtol=1e-5, atol=2e-6), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def packed_layout(kind: str, gen: torch.Generator):
    """(packed_info for the reference, packed_info or None for the kernels, n, shape)."""
    counts = torch.tensor(COUNTS)
    if kind == "batched":
        rows, width = 6, 19  # 19 per row: rows cross tile edges at every offset
        pi = torch.stack([torch.arange(rows) * width, torch.full((rows,), width)], dim=-1)
        return pi, None, rows * width, (rows, width)
    if kind == "contiguous":
        starts = torch.cumsum(counts, 0) - counts
        pi = torch.stack([starts, counts], dim=-1)
        n = int(counts.sum())
        return pi, pi, n, (n,)
    # "gaps": chunks laid out in a shuffled order with 0-3 uncovered samples before each and some after all.
    order = torch.randperm(len(COUNTS), generator=gen)
    starts = torch.zeros(len(COUNTS), dtype=torch.long)
    pos = 0
    for r in order.tolist():
        pos += int(torch.randint(0, 4, (1,), generator=gen))
        starts[r] = pos
        pos += COUNTS[r]
    n = pos + 5
    pi = torch.stack([starts, counts], dim=-1)
    return pi, pi, n, (n,)


LAYOUTS = ["contiguous", "gaps", "batched"]


def _flat(t):
    return t.reshape(-1)


def _close(got, want, dtype, what):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    torch.testing.assert_close(got, want, **TOL[dtype], msg=lambda m: f"{what}: {m}")


SCANS = {
    (False, False): ref._inclusive_sum,
    (False, True): ref._exclusive_sum,
    (True, False): ref._inclusive_prod,
    (True, True): ref._exclusive_prod,
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scans(layout, dtype):
    gen = torch.Generator().manual_seed(1)
    pi_ref, pi, n, shape = packed_layout(layout, gen)
    x = (torch.rand(n, generator=gen, dtype=dtype) + 0.5).reshape(shape)
    x.view(-1)[[4, 30, 31]] = 0.0  # exact zeros: product gradients must stay exact
    g = torch.randn(n, generator=gen, dtype=dtype).reshape(shape)
    for (prod, exclusive), fn in SCANS.items():
        xr = _flat(x).clone().requires_grad_(True)
        want = fn(xr, pi_ref)
        want.backward(_flat(g))
        got = scan.scan_fwd(x, pi, prod, exclusive)
        what = f"{'prod' if prod else 'sum'} exclusive={exclusive} {layout}"
        _close(_flat(got), want.detach(), dtype, what)
        assert got.shape == x.shape
        gx = scan.scan_bwd(g, x, got, pi, prod, exclusive)
        _close(_flat(gx), xr.grad, dtype, what + " grad")


DENSITY_COTANGENTS = [(True, True, True, True), (True, False, False, False), (False, True, False, True),
                      (False, False, True, False), (False, False, False, True)]  # fmt: skip


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_render_weight_from_density(layout, dtype):
    gen = torch.Generator().manual_seed(2)
    pi_ref, pi, n, shape = packed_layout(layout, gen)
    ts = torch.rand(n, generator=gen, dtype=dtype)
    te = ts + 0.4 * torch.rand(n, generator=gen, dtype=dtype)
    sg = 3.0 * torch.rand(n, generator=gen, dtype=dtype)
    sg[[3, 20]] = 0.0
    sg[25] = 500.0  # opaque sample: transmittance drops to ~0 after it
    got = volrend.render_weight_from_density_fwd(ts.reshape(shape), te.reshape(shape), sg.reshape(shape), pi)
    cots = [torch.randn(n, generator=gen, dtype=dtype) for _ in range(3)]
    for has_w, has_t, has_a, need_t in DENSITY_COTANGENTS:
        leaves = [v.clone().requires_grad_(True) for v in (ts, te, sg)]
        want = ref._render_weight_from_density(*leaves, pi_ref)
        for o, w_, name in zip(got, want, ("weights", "trans", "alphas"), strict=True):
            _close(_flat(o), w_.detach(), dtype, f"{name} {layout}")
            assert o.shape == shape
        used = [c if h else None for c, h in zip(cots, (has_w, has_t, has_a), strict=True)]
        loss = sum((w_ * c).sum() for w_, c in zip(want, used, strict=True) if c is not None)
        if isinstance(loss, torch.Tensor):
            loss.backward()
        grads = volrend.render_weight_from_density_bwd(
            *[None if c is None else c.reshape(shape) for c in used],
            ts.reshape(shape), te.reshape(shape), sg.reshape(shape), got[1], got[2], pi, False, need_t,
        )  # fmt: skip
        what = f"density grads w={has_w} t={has_t} a={has_a} {layout}"
        for gv, leaf, name in zip(grads, leaves, ("t_starts", "t_ends", "sigmas"), strict=True):
            expect = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
            if name != "sigmas" and not need_t:
                assert gv.shape == (0,), f"{what}: unneeded {name} gradient must be empty"
                continue
            _close(_flat(gv), expect, dtype, f"{what} {name}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_render_weight_from_alpha(layout, dtype):
    gen = torch.Generator().manual_seed(3)
    pi_ref, pi, n, shape = packed_layout(layout, gen)
    al = torch.rand(n, generator=gen, dtype=dtype) * 0.5
    al[[5, 27, 40]] = 1.0  # fully opaque: exact gradients need products without division
    al[6] = 0.0
    got = volrend.render_weight_from_alpha_fwd(al.reshape(shape), pi)
    cots = [torch.randn(n, generator=gen, dtype=dtype) for _ in range(2)]
    for has_w, has_t in ((True, True), (True, False), (False, True), (False, False)):
        leaf = al.clone().requires_grad_(True)
        want = ref._render_weight_from_alpha(leaf, pi_ref)
        for o, w_, name in zip(got, want, ("weights", "trans"), strict=True):
            _close(_flat(o), w_.detach(), dtype, f"{name} {layout}")
        used = [c if h else None for c, h in zip(cots, (has_w, has_t), strict=True)]
        loss = sum((w_ * c).sum() for w_, c in zip(want, used, strict=True) if c is not None)
        if isinstance(loss, torch.Tensor):
            loss.backward()
        expect = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        ga = volrend.render_weight_from_alpha_bwd(
            *[None if c is None else c.reshape(shape) for c in used], al.reshape(shape), got[1], pi
        )
        _close(_flat(ga), expect, dtype, f"alpha grad w={has_w} t={has_t} {layout}")


@pytest.mark.parametrize("sorted_idx", [True, False])
@pytest.mark.parametrize("dim", [None, 1, 3, 5])
def test_accumulate_along_rays(sorted_idx, dim):
    gen = torch.Generator().manual_seed(4)
    for dtype in (torch.float32, torch.float64) if dim == 3 else (torch.float32,):
        n, n_rays = 70, 9  # ray 8 (and maybe others) get no sample
        idx = torch.randint(0, n_rays - 1, (n,), generator=gen)
        if sorted_idx:
            idx = idx.sort().values
            idx[20:45] = idx[20]  # one run much longer than a tile
            idx = idx.sort().values
        w = torch.rand(n, generator=gen, dtype=dtype, requires_grad=True)
        v = None if dim is None else torch.rand(n, dim, generator=gen, dtype=dtype, requires_grad=True)
        want = ref._accumulate_along_rays(w, v, idx, n_rays)
        go = torch.randn(want.shape, generator=gen, dtype=dtype)
        want.backward(go)
        vd = None if v is None else v.detach()
        got = accumulate.accumulate_along_rays_fwd(w.detach(), vd, idx, n_rays)
        _close(got, want.detach(), dtype, f"accumulate dim={dim} sorted={sorted_idx}")
        for need_w, need_v in ((True, True), (True, False), (False, True)):
            gw, gv = accumulate.accumulate_along_rays_bwd(go, w.detach(), vd, idx, need_w, need_v)
            if need_w:
                _close(gw, w.grad, dtype, "accumulate weights grad")
            else:
                assert gw.shape == (0,)
            if need_v and v is not None:
                _close(gv, v.grad, dtype, "accumulate values grad")
            else:
                assert gv.shape == (0,)


def test_accumulate_out_of_range_indices_are_not_written():
    idx = torch.tensor([0, 1, 7, -1, 2, 2])
    w = torch.arange(1.0, 7.0)
    out = accumulate.accumulate_along_rays_fwd(w, None, idx, 3)
    assert out.flatten().tolist() == [1.0, 2.0, 11.0]
    gw, _ = accumulate.accumulate_along_rays_bwd(torch.ones(3, 1), w, None, idx, True, False)
    assert gw.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]


def test_empty_inputs():
    e = torch.zeros(0)
    no_rays = torch.zeros((0, 2), dtype=torch.long)
    zero_counts = torch.tensor([[0, 0], [0, 0]])
    for pi in (no_rays, zero_counts, None):
        x = e if pi is not None else torch.zeros(0, 4)
        assert scan.scan_fwd(x, pi, False, True).shape == x.shape
        assert scan.scan_bwd(x, x, x, pi, True, False).shape == x.shape
        w, t, a = volrend.render_weight_from_density_fwd(x, x, x, pi)
        assert w.shape == t.shape == a.shape == x.shape
        g = volrend.render_weight_from_density_bwd(x, None, None, x, x, x, x, x, pi, False, True)
        assert [gi.shape for gi in g] == [x.shape] * 3
        assert volrend.render_weight_from_alpha_bwd(x, x, x, x, pi).shape == x.shape
    out = accumulate.accumulate_along_rays_fwd(e, torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 4)
    assert out.shape == (4, 3) and out.abs().sum() == 0
    # samples but every chunk empty: everything outside every chunk
    x = torch.rand(10)
    assert scan.scan_fwd(x, zero_counts, True, False).abs().sum() == 0
    w, t, a = volrend.render_weight_from_density_fwd(x, x + 1, x, zero_counts)
    assert w.abs().sum() == 0 and t.abs().sum() == 0
    torch.testing.assert_close(a, 1 - torch.exp(-x))


@pytest.mark.parametrize(
    ("n", "block"),
    [
        (6_000, 128),
        pytest.param(
            200_000,
            1024,
            marks=pytest.mark.skipif(
                os.environ.get("NERFACCEL_TRITON_SLOW", "0") != "1",
                reason="about 4 minutes in the interpreter (sequential scans); NERFACCEL_TRITON_SLOW=1 runs it",
            ),
        ),
    ],
)
def test_long_ray_float32_matches_float64(n, block):
    """A ray of n samples (carries across n / block tiles), float32 kernels vs the float64 reference. The
    interpreter scans each tile sequentially, a worse rounding order than the GPU's tree."""
    prev = _common.set_block_size(block)
    try:
        gen = torch.Generator().manual_seed(5)
        pi = torch.tensor([[0, 3], [3, n], [n + 3, 2]])
        total = n + 5
        ts = torch.rand(total, generator=gen, dtype=torch.float64) * 1e-3
        te = ts + 1e-4 * torch.rand(total, generator=gen, dtype=torch.float64)
        sg = torch.rand(total, generator=gen, dtype=torch.float64) * 0.5 * (200_000 / n)
        x = torch.rand(total, generator=gen, dtype=torch.float64)
        f32 = [v.float() for v in (ts, te, sg)]
        w64, t64, a64 = ref._render_weight_from_density(ts, te, sg, pi)
        w32, t32, a32 = volrend.render_weight_from_density_fwd(*f32, pi)
        assert float(t64[n]) < 0.5  # the transmittance really decays along the ray
        assert (t32.double() - t64).abs().max() < 1e-5
        assert (w32.double() - w64).abs().max() < 1e-5
        s64 = ref._inclusive_sum(x, pi)
        s32 = scan.scan_fwd(x.float(), pi, False, False)
        assert ((s32.double() - s64).abs() / s64.abs().clamp(min=1.0)).max() < 1e-5
    finally:
        _common.set_block_size(prev)
