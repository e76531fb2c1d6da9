"""pdf family: searchsorted and importance_sampling against the reference and nerfacc 0.5.2's rule."""

from __future__ import annotations

import math

import pytest
import torch
from ops_helpers import close, packed

from nerfaccel_plugin import _torch_impl as R


def _sorted_vals(counts: list[int], device: str, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    packed_info, n = packed(counts, False, device)
    vals = torch.rand(n, dtype=dtype, device=device)
    ray_ids = torch.repeat_interleave(torch.arange(len(counts), device=device), packed_info[:, 1])
    vals = torch.cumsum(vals, 0)  # ascending everywhere
    vals = vals + ray_ids.to(dtype)  # per-ray offset keeps ranges distinct
    return vals, packed_info


def test_searchsorted(K):
    ext, device = K
    counts = [0, 1, 2, 5, 30, 0, 17]
    sv, spi = _sorted_vals(counts, device)
    q_counts = [3, 4, 0, 6, 50, 2, 9]
    qpi, nq = packed(q_counts, False, device)
    lo, hi = sv.min().item() - 1, sv.max().item() + 1
    qv = torch.rand(nq, device=device) * (hi - lo) + lo
    qv[:3] = sv[5:8]  # exact hits
    ref = R._searchsorted(sv, spi, qv, qpi)
    got = ext._searchsorted(sv, spi, qv, qpi)
    assert torch.equal(got[0].cpu(), ref[0].cpu()) and torch.equal(got[1].cpu(), ref[1].cpu())


@pytest.mark.parametrize("stratified", [False, True])
def test_importance_sampling(K, stratified):
    ext, device = K
    counts = [0, 1, 2, 9, 33, 5, 2]
    packed_info, n = packed(counts, False, device)
    ray_ids = torch.repeat_interleave(torch.arange(len(counts), device=device), packed_info[:, 1])
    edges = torch.rand(n, device=device).cumsum(0)
    w = torch.rand(n, device=device)
    w[::4] = 0.0  # flat CDF pieces
    cdfs = w.cumsum(0) - w.cumsum(0)[packed_info[ray_ids, 0]]
    n_per_ray = torch.tensor([4, 3, 0, 1, 64, 7, 2], device=device)
    bias = torch.rand(len(counts), device=device) if stratified else torch.full((len(counts),), 0.5, device=device)
    ref = R._importance_sampling(edges, cdfs, packed_info, n_per_ray, bias)
    got = ext._importance_sampling(edges, cdfs, packed_info, n_per_ray, bias)
    assert torch.equal(got[1].cpu(), ref[1].cpu()) and torch.equal(got[3].cpu(), ref[3].cpu())
    close(got[0], ref[0], atol=1e-5)
    close(got[2], ref[2], atol=1e-5)


@pytest.mark.parametrize("n_uniform", [1, 2, 16])
def test_importance_sampling_n_uniform(K, n_uniform):
    """``n_uniform`` (the batched layout, every ray has edges): same outputs as the per-ray form, sizes known on the
    host; a ray without edges (value checks off) gets an all-zero row of the right size."""
    ext, device = K
    counts = [3, 1, 2, 9, 33, 5, 2, 0]
    packed_info, n = packed(counts, False, device)
    ray_ids = torch.repeat_interleave(torch.arange(len(counts), device=device), packed_info[:, 1])
    edges = torch.rand(n, device=device).cumsum(0)
    w = torch.rand(n, device=device)
    w[::4] = 0.0
    cdfs = w.cumsum(0) - w.cumsum(0)[packed_info[ray_ids, 0]]
    n_per_ray = torch.full((len(counts),), n_uniform, device=device)
    bias = torch.rand(len(counts), device=device)
    got = ext._importance_sampling(edges, cdfs, packed_info, n_per_ray, bias, n_uniform)
    assert got[0].shape == (len(counts) * n_uniform,) and got[2].shape == (len(counts) * (n_uniform + 1),)
    ref = R._importance_sampling(edges, cdfs, packed_info[:-1], n_per_ray[:-1], bias[:-1], n_uniform)
    close(got[0][: -n_uniform], ref[0], atol=1e-5)
    close(got[2][: -(n_uniform + 1)], ref[2], atol=1e-5)
    assert not got[0][-n_uniform:].any() and not got[2][-(n_uniform + 1) :].any()
    assert torch.equal(got[1][:-1].cpu(), ref[1].cpu()) and torch.equal(got[3][:-1].cpu(), ref[3].cpu())
    assert got[1][-1].tolist() == [(len(counts) - 1) * n_uniform, n_uniform]


def _nerfacc_searchsorted(sorted_vals, spi, query_vals, qpi):
    """nerfacc 0.5.2's searchsorted_kernel (pdf.cu), written out per query: upper_bound over [base, last) with
    !(v > q), then left = max(min(p - 1, last), base), right = max(min(p, last), base)."""
    left = torch.zeros(query_vals.numel(), dtype=torch.long)
    right = torch.zeros_like(left)
    for r in range(spi.shape[0]):
        base, cnt = int(spi[r, 0]), int(spi[r, 1])
        last = base + cnt - 1
        for i in range(int(qpi[r, 0]), int(qpi[r, 0] + qpi[r, 1])):
            lo, hi = base, last
            while lo < hi:
                mid = lo + (hi - lo) // 2
                if not (sorted_vals[mid] > query_vals[i]):
                    lo = mid + 1
                else:
                    hi = mid
            left[i] = max(min(lo - 1, last), base)
            right[i] = max(min(lo, last), base)
    return left, right


def test_searchsorted_follows_nerfacc_rule(K):  # noqa: N803
    """Below the range (base, base), at or above the last entry (last - 1, last), one-entry chunks (base, base),
    exact hits, NaN and infinite queries: the same indices as nerfacc 0.5.2's kernel."""
    ext, device = K
    sv = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 5.0, 6.0])
    spi = torch.tensor([[0, 4], [4, 1], [5, 1], [6, 2], [8, 0]])
    q = [
        [-5.0, 0.999, 1.0, 1.5, 2.0, 3.5, 4.0, 9.0, math.inf, -math.inf, math.nan],
        [0.0, 10.0, 11.0],
        [25.0],
        [4.0, 5.0, 5.5, 6.0, 7.0],
        [1.0],
    ]
    qv = torch.tensor([x for row in q for x in row])
    counts = torch.tensor([len(row) for row in q])
    qpi = torch.stack([counts.cumsum(0) - counts, counts], -1)
    want = _nerfacc_searchsorted(sv, spi, qv, qpi)
    got = ext._searchsorted(sv.to(device), spi.to(device), qv.to(device), qpi.to(device))
    # nerfacc leaves the index of an empty chunk at its (here out-of-range) start; both builds clamp it to numel - 1
    want[0][-1] = want[1][-1] = sv.numel() - 1
    assert got[0].cpu().tolist() == want[0].tolist()
    assert got[1].cpu().tolist() == want[1].tolist()
    assert got[0].cpu().tolist()[:2] == [0, 0] and got[1].cpu().tolist()[:2] == [0, 0]  # below: (base, base)
    assert got[0].cpu().tolist()[8] == 2 and got[1].cpu().tolist()[8] == 3  # above: (last - 1, last)


def test_searchsorted_random_matches_nerfacc_rule(K):  # noqa: N803
    ext, device = K
    counts = [0, 1, 2, 5, 30, 0, 17]
    sv, spi = _sorted_vals(counts, "cpu")
    qpi, nq = packed([3, 4, 0, 6, 50, 2, 9], False)
    qv = torch.rand(nq) * (sv.max() - sv.min() + 2) + sv.min() - 1
    qv[:3] = sv[5:8]  # exact hits
    want = _nerfacc_searchsorted(sv, spi, qv, qpi)
    got = ext._searchsorted(sv.to(device), spi.to(device), qv.to(device), qpi.to(device))
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])


