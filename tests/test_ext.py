"""Parity of the compiled kernels (C++ CPU and CUDA) with the pure-PyTorch reference.

Every primitive is compared forward and backward (shared random cotangents) on random inputs that
include the edge cases: empty rays, zero samples, rays that miss everything, one-sample rays, a ray
with a huge number of samples and elements outside every chunk. The huge ray and the accumulation run
in float32 against a float64 reference (the kernels accumulate in double). The same tests, gradcheck
(float64, through the registered ops), ``torch.library.opcheck`` of every op, the ``torch.compile``
smoke test and double backward run on CUDA tensors when a GPU is present and the CUDA extension loads
(skipped otherwise), plus a test on a non-default CUDA stream.

The C++ extension is built once per session (normally a cache hit). Without a C++ toolchain the
tests skip with the reason, unless ``NERFACCEL_REQUIRE_EXT=1`` (set by CI) makes that a failure.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from traverse_tolerance import check_traversal

from nerfaccel_plugin import _torch_impl as R

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]
RTOL, ATOL = 1e-5, 1e-6


def _load(kind: str):
    from nerfaccel_plugin import _ext

    try:
        return _ext.load_backend(kind)
    except _ext.ExtensionUnavailable as err:
        if os.environ.get("NERFACCEL_REQUIRE_EXT") == "1":
            pytest.fail(f"the {kind} extension must build here (NERFACCEL_REQUIRE_EXT=1): {err}")
        pytest.skip(f"{kind} extension unavailable: {err}")


@pytest.fixture(scope="session")
def cpp():
    return _load("cpp")


@pytest.fixture(scope="session")
def cuda_ext():
    return _load("cuda")


@pytest.fixture(params=DEVICES)
def K(request, cpp):  # noqa: N802 - short name for "kernels"
    """(kernels, device) for each device under test."""
    if request.param == "cuda":
        return request.getfixturevalue("cuda_ext"), "cuda"
    return cpp, "cpu"


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL, atol: float = ATOL) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    torch.testing.assert_close(a.cpu(), b.cpu(), rtol=rtol, atol=atol, equal_nan=True)


def _packed(counts: list[int] | torch.Tensor, gaps: bool = False, device: str = "cpu") -> tuple[torch.Tensor, int]:
    """packed_info for the given counts; with ``gaps`` chunks are separated by uncovered elements."""
    counts = torch.as_tensor(counts, dtype=torch.long)
    gap = torch.randint(0, 3, counts.shape) if gaps else torch.zeros_like(counts)
    starts = torch.cumsum(counts + gap, 0) - counts
    n = int((counts + gap).sum())
    return torch.stack([starts, counts], -1).to(device), n


def _counts(n_rays: int = 64, huge: int = 0) -> list[int]:
    counts = torch.randint(0, 40, (n_rays,)).tolist()
    counts[:4] = [0, 1, 0, 2]  # empty rays and a one-sample ray
    if huge:
        counts[5] = huge
    return counts


LAYOUTS = {
    "mixed": dict(counts=None, gaps=False),
    "gaps": dict(counts=None, gaps=True),
    "huge": dict(counts="huge", gaps=False),
    "no_rays": dict(counts=[], gaps=False),
    "all_empty": dict(counts=[0, 0, 0], gaps=False),
    "one_sample": dict(counts=[1], gaps=False),
}


def _layout(name: str, device: str) -> tuple[torch.Tensor, int]:
    spec = LAYOUTS[name]
    counts = spec["counts"]
    if counts is None:
        counts = _counts()
    elif counts == "huge":
        counts = _counts(16, huge=200_000)
    return _packed(counts, spec["gaps"], device)


def _fwd_bwd(fn, inputs: list[torch.Tensor], cotangents: list[torch.Tensor] | None = None):
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


def _compare_fwd_bwd(ref_fn, ker_fn, inputs, rtol=RTOL, atol=ATOL, ref_dtype=None):
    """Kernels vs reference, forward and backward (same cotangents).

    With ``ref_dtype`` (float64) the reference runs on copies of the float inputs and cotangents in that dtype, the
    exact answer that the float32 kernels (double accumulators) must reach, and its results are rounded to the
    kernels' dtype for the comparison.
    """
    if ref_dtype is None:
        ref_out, ref_grad, cot = _fwd_bwd(ref_fn, inputs)
        ker_out, ker_grad, _ = _fwd_bwd(ker_fn, inputs, cot)
    else:
        ker_out, ker_grad, cot = _fwd_bwd(ker_fn, inputs)
        up = [x.to(ref_dtype) if x.is_floating_point() else x for x in inputs]
        ref_out, ref_grad, _ = _fwd_bwd(ref_fn, up, [c.to(ref_dtype) for c in cot])
        ref_out = [r.to(k.dtype) for r, k in zip(ref_out, ker_out, strict=True)]
        ref_grad = [r.to(k.dtype) for r, k in zip(ref_grad, ker_grad, strict=True)]
    for a, b in zip(ker_out, ref_out, strict=True):
        _close(a, b, rtol, atol)
    for a, b in zip(ker_grad, ref_grad, strict=True):
        _close(a, b, rtol, atol)


def _ref_dtype(layout: str):
    """The "huge" layout (one ray of 200k samples) runs in float32 against a float64 reference: a float32 running
    sum over it drifts by ~1e-2, so it checks that the kernels accumulate in double (as torch's CPU cumsum does)."""
    return torch.float64 if layout == "huge" else None


# ---------------------------------------------------------------------------------------------
# Scans and rendering
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", ["_inclusive_sum", "_exclusive_sum", "_inclusive_prod", "_exclusive_prod"])
def test_scans(K, name, layout):
    ext, device = K
    packed_info, n = _layout(layout, device)
    if "prod" in name:
        x = 1.0 - 1e-5 * torch.rand(n, device=device)  # products stay away from underflow
        if n > 10:
            x[torch.randint(0, n, (max(n // 20, 1),))] = 0.0  # zeros: exact gradients required
            if layout == "huge":
                x[6:100_000] = torch.where(x[6:100_000] == 0.0, 1.0, x[6:100_000])  # a long run before the zeros
    else:
        x = torch.randn(n, device=device)
    _compare_fwd_bwd(
        lambda a: getattr(R, name)(a, packed_info),
        lambda a: getattr(ext, name)(a, packed_info),
        [x],
        ref_dtype=_ref_dtype(layout),
    )


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_render_weight_from_density(K, layout):
    ext, device = K
    packed_info, n = _layout(layout, device)
    t0 = torch.rand(n, device=device)
    t1 = t0 + 0.05 * torch.rand(n, device=device)
    sig = 10 * torch.rand(n, device=device)
    if layout == "huge":
        sig = sig * 1e-4  # keep transmittance from underflowing over 200k samples
    _compare_fwd_bwd(
        lambda a, b, c: R._render_weight_from_density(a, b, c, packed_info),
        lambda a, b, c: ext._render_weight_from_density(a, b, c, packed_info),
        [t0, t1, sig],
        ref_dtype=_ref_dtype(layout),
    )


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_fused_density_loops_of_the_cuda_kernels(cpp, layout):
    """The one-pass per-ray loops that the CUDA kernels run, compiled into the CPU build, against the reference.

    The CPU ops use two-pass loops (vectorised exponentials); without this test the GPU's density-rendering
    math would only ever run on a GPU.
    """
    from nerfaccel_plugin._ext import build

    module = build.get_module("cpp")
    packed_info, n = _layout(layout, "cpu")
    ref_dtype = _ref_dtype(layout) or torch.float32  # float32 inputs; float64 reference for the huge ray
    t0 = torch.rand(n)
    t1 = t0 + 0.05 * torch.rand(n)
    sig = 10 * torch.rand(n) * (1e-4 if layout == "huge" else 1.0)
    ref_inputs = [x.to(ref_dtype).requires_grad_() for x in (t0, t1, sig)]
    ref = R._render_weight_from_density(*ref_inputs, packed_info)
    fused = module.render_density_fwd_fused(t0, t1, sig, packed_info)
    for a, b in zip(fused, ref, strict=True):
        _close(a, b.detach().float())
    cots = [torch.randn(n) for _ in range(3)]
    ref_grads = torch.autograd.grad(ref, ref_inputs, [c.to(ref_dtype) for c in cots], allow_unused=True)
    w, trans, alphas = fused
    got = module.render_density_bwd_fused(*cots, t0, t1, sig, trans, alphas, packed_info)
    for a, b, x in zip(got, ref_grads, ref_inputs, strict=True):
        _close(a, (torch.zeros_like(x) if b is None else b).float())
    # and the two CPU variants agree with each other to rounding
    two_pass = module.render_density_fwd(t0, t1, sig, packed_info, False)
    for a, b in zip(fused, two_pass, strict=True):
        _close(a, b)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_render_weight_from_alpha(K, layout):
    ext, device = K
    packed_info, n = _layout(layout, device)
    alphas = torch.rand(n, device=device) * (1e-5 if layout == "huge" else 0.3)
    if n > 10:
        alphas[torch.randint(0, n, (3,))] = 1.0  # fully opaque samples: division-free gradient
    if layout == "huge":
        alphas[: 150_000 + 6] = torch.where(alphas[: 150_000 + 6] == 1.0, 0.0, alphas[: 150_000 + 6])  # long prefix
    _compare_fwd_bwd(
        lambda a: R._render_weight_from_alpha(a, packed_info),
        lambda a: ext._render_weight_from_alpha(a, packed_info),
        [alphas],
        ref_dtype=_ref_dtype(layout),
    )


@pytest.mark.parametrize("dim", [None, 1, 3])
@pytest.mark.parametrize("n, order", [(0, "unsorted"), (1, "unsorted"), (5000, "unsorted"), (40000, "sorted")])
def test_accumulate_along_rays(K, dim, n, order):
    ext, device = K
    n_rays = 37
    weights = torch.rand(n, device=device)
    ray_indices = torch.randint(0, n_rays, (n,), device=device)  # unsorted on purpose
    if order == "sorted":  # the samplers' layout; large enough for the CPU kernel's parallel pass
        ray_indices = torch.sort(torch.randint(0, 3 * n_rays // 4, (n,), device=device)).values
        ray_indices[ray_indices > 5] += 1  # an empty ray in the middle, empty rays at the end
    values = None if dim is None else torch.randn(n, dim, device=device)
    # The kernels sum in double (on CUDA also with atomics, for unsorted indices, in no fixed order) and round once:
    # compared with a float64 reference (index_add on the CPU) rounded to float32.
    if dim is None:
        _compare_fwd_bwd(
            lambda w: R._accumulate_along_rays(w.cpu(), None, ray_indices.cpu(), n_rays),
            lambda w: ext._accumulate_along_rays(w, None, ray_indices, n_rays),
            [weights],
            ref_dtype=torch.float64,
        )
    else:
        _compare_fwd_bwd(
            lambda w, v: R._accumulate_along_rays(w.cpu(), v.cpu(), ray_indices.cpu(), n_rays),
            lambda w, v: ext._accumulate_along_rays(w, v, ray_indices, n_rays),
            [weights, values],
            ref_dtype=torch.float64,
        )


def test_accumulate_zero_width_values(K):
    """values of shape [n, 0] (no data pointer) give [n_rays, 0] sums and zero weight gradients."""
    ext, device = K
    ray_indices = torch.tensor([0, 0, 1, 2], device=device)
    _compare_fwd_bwd(
        lambda w, v: R._accumulate_along_rays(w, v, ray_indices, 3),
        lambda w, v: ext._accumulate_along_rays(w, v, ray_indices, 3),
        [torch.rand(4, device=device), torch.rand(4, 0, device=device)],
    )
    out = ext._accumulate_along_rays(torch.rand(4, device=device), torch.rand(4, 0, device=device), ray_indices, 3)
    assert out.shape == (3, 0)


def test_out_of_range_indices_are_errors(K):
    """Both builds reject ray/cell indices outside their range (the CUDA build checks on the host)."""
    ext, device = K
    w = torch.rand(5, device=device)
    with pytest.raises(ValueError, match=r"ray_indices\[3\] = 7 is outside \[0, n_rays = 4\)"):
        ext._accumulate_along_rays(w, None, torch.tensor([0, 1, 1, 7, 2], device=device), 4)
    with pytest.raises(ValueError, match="ray_indices"):
        ext._accumulate_along_rays(w, torch.rand(5, 2, device=device), torch.tensor([0, 1, -1, 2, 2], device=device), 4)
    with pytest.raises(ValueError, match=r"cell_ids\[1\] = 9 is outside \[0, 8\)"):
        ext._grid_ema_update(
            torch.rand(8, device=device), torch.tensor([2, 9], device=device), torch.rand(2, device=device), 0.9
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_sorted_accumulation_matches_cpu_bit_for_bit(cpp, cuda_ext):
    """Sorted ray indices: one thread per ray sums in sample order without FMA, the same as the CPU kernel."""
    n, n_rays = 100_000, 3000
    ri = torch.sort(torch.randint(0, n_rays, (n,))).values
    w, v = torch.rand(n), torch.randn(n, 3)
    for values in (None, v):
        cpu = cpp._accumulate_along_rays(w, values, ri, n_rays)
        gpu = cuda_ext._accumulate_along_rays(w.cuda(), None if values is None else values.cuda(), ri.cuda(), n_rays)
        assert torch.equal(gpu.cpu(), cpu)


# ---------------------------------------------------------------------------------------------
# Geometry, traversal, search, sampling, contraction, grid update
# ---------------------------------------------------------------------------------------------
def _rays(n: int, device: str, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    o = (torch.rand(n, 3, dtype=dtype) * 4 - 2).to(device)
    d = torch.randn(n, 3, dtype=dtype)
    d[: n // 8, 1] = 0.0  # axis-parallel rays
    d[: n // 16, 2] = 0.0
    d = (d / d.norm(dim=-1, keepdim=True)).to(device)
    return o, d


def test_ray_aabb_intersect(K):
    ext, device = K
    o, d = _rays(500, device)
    aabbs = torch.tensor([[-1.0, -1, -1, 1, 1, 1], [0, 0, 0, 0.5, 0.5, 0.5], [3, 3, 3, 4, 4, 4]], device=device)
    for near, far, miss in [(0.0, 1e10, 1e10), (0.5, 2.0, -1.0)]:
        ref = R._ray_aabb_intersect(o, d, aabbs, near, far, miss)
        got = ext._ray_aabb_intersect(o, d, aabbs, near, far, miss)
        assert torch.equal(got[2].cpu(), ref[2].cpu())
        _close(got[0], ref[0])
        _close(got[1], ref[1])
    empty = ext._ray_aabb_intersect(o[:0], d[:0], aabbs, 0.0, 1e10, 0.0)
    assert empty[0].shape == (0, 3)


@pytest.mark.parametrize("cone_angle", [0.0, 0.004, 0.05])
@pytest.mark.parametrize("levels", [1, 3])
def test_traverse_grids(K, cone_angle, levels):
    ext, device = K
    res = (32, 24, 16)
    binaries = (torch.rand(levels, *res) > 0.6).to(device)
    aabbs = torch.tensor([[-1.0, -1, -1, 1, 1, 1]]) * torch.tensor([2.0**lvl for lvl in range(levels)])[:, None]
    aabbs = aabbs.to(device)
    o, d = _rays(300, device)
    o[-5:] = torch.tensor([10.0, 10.0, 10.0], device=device)  # rays that miss everything
    d[-5:] = torch.tensor([1.0, 0.0, 0.0], device=device)
    near = torch.rand(300, device=device) * 0.3
    near[:10] = 0.0
    far = torch.full((300,), 1e10, device=device)
    far[10:20] = 1.0
    # float32 rays march in float32: the samples may differ from the float64 reference only as docs/traversal.md
    # states (t within a few ulps; a sample in one output only when its midpoint is within a few ulps of a cell
    # plane or of far), checked by traverse_tolerance; float64 rays give exactly the reference's samples.
    got = ext._traverse_grids(o, d, binaries, aabbs, near, far, 0.01, cone_angle)
    stats = check_traversal(got, o, d, binaries, aabbs, near, far, 0.01, cone_angle)
    assert stats["n_ref"] > 100
    args64 = [x.double() for x in (o, d)] + [binaries, aabbs.double(), near.double(), far.double()]
    ref = R._traverse_grids(*[x.cpu() for x in args64], 0.01, cone_angle)
    got = ext._traverse_grids(*args64, 0.01, cone_angle)
    assert torch.equal(got[0].cpu(), ref[0].cpu())
    _close(got[1], ref[1])
    _close(got[2], ref[2])


def test_traverse_grids_empty(K):
    ext, device = K
    binaries = torch.zeros(1, 8, 8, 8, dtype=torch.bool, device=device)
    aabbs = torch.tensor([[-1.0, -1, -1, 1, 1, 1]], device=device)
    o, d = _rays(20, device)
    near, far = torch.zeros(20, device=device), torch.full((20,), 1e10, device=device)
    ri, t0, t1 = ext._traverse_grids(o, d, binaries, aabbs, near, far, 0.01, 0.0)
    assert ri.numel() == t0.numel() == t1.numel() == 0 and ri.dtype == torch.long
    ri, _, _ = ext._traverse_grids(o[:0], d[:0], binaries, aabbs, near[:0], far[:0], 0.01, 0.0)
    assert ri.numel() == 0


def _sorted_packed(counts: list[int], device: str, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    packed_info, n = _packed(counts, False, device)
    vals = torch.rand(n, dtype=dtype, device=device)
    ray_ids = torch.repeat_interleave(torch.arange(len(counts), device=device), packed_info[:, 1])
    vals = torch.cumsum(vals, 0)  # ascending everywhere
    vals = vals + ray_ids.to(dtype)  # per-ray offset keeps ranges distinct
    return vals, packed_info


def test_searchsorted(K):
    ext, device = K
    counts = [0, 1, 2, 5, 30, 0, 17]
    sv, spi = _sorted_packed(counts, device)
    q_counts = [3, 4, 0, 6, 50, 2, 9]
    qpi, nq = _packed(q_counts, False, device)
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
    packed_info, n = _packed(counts, False, device)
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
    _close(got[0], ref[0], atol=1e-5)
    _close(got[2], ref[2], atol=1e-5)


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
    _compare_fwd_bwd(lambda a: ref_fn(a, aabb, ord), lambda a: ker_fn(a, aabb, ord), [x], rtol=1e-5, atol=1e-5)


def test_grid_ema_update(K):
    ext, device = K
    occs = torch.rand(5000, device=device)
    occs[::7] = -1.0  # invisible cells
    cell_ids = torch.randint(0, 5000, (8000,), device=device)  # duplicates
    values = torch.rand(8000, device=device)
    ref = R._grid_ema_update(occs, cell_ids, values, 0.95)
    got = ext._grid_ema_update(occs, cell_ids, values, 0.95)
    assert torch.equal(got.cpu(), ref.cpu())
    empty = ext._grid_ema_update(occs, cell_ids[:0], values[:0], 0.95)
    assert torch.equal(empty.cpu(), occs.cpu())


def test_half_inputs_upcast(K):
    ext, device = K
    packed_info, n = _packed([3, 0, 5], False, device)
    alphas = (torch.rand(n, device=device) * 0.5).half()
    w, t = ext._render_weight_from_alpha(alphas, packed_info)
    assert w.dtype == torch.float32
    ref_w, _ = R._render_weight_from_alpha(alphas.float(), packed_info)
    _close(w, ref_w)


def test_bad_inputs_raise_clear_errors(cpp):
    """The registered ops check their arguments themselves: ValueError for shapes/ranges, TypeError for dtypes."""
    x = torch.rand(10)
    with pytest.raises(ValueError, match="packed_info"):
        torch.ops.nerfaccel.scan(x, torch.zeros(3, 3, dtype=torch.long), False, False)
    with pytest.raises(TypeError, match="int64"):
        torch.ops.nerfaccel.scan(x, torch.zeros(3, 2, dtype=torch.int32), False, False)
    with pytest.raises(TypeError, match="float32 or float64"):
        torch.ops.nerfaccel.scan(x.long(), torch.zeros(3, 2, dtype=torch.long), False, False)
    with pytest.raises(ValueError, match="ray_indices"):
        torch.ops.nerfaccel.accumulate_along_rays(x, None, torch.full((10,), 5, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="contiguous"):
        torch.ops.nerfaccel.scan(torch.rand(10, 2)[:, 0], torch.zeros(3, 2, dtype=torch.long), False, False)


@pytest.mark.parametrize("bad", [[[0, 4], [4, 7]], [[-1, 2], [1, 3]], [[0, -2], [0, 3]]])
def test_packed_info_out_of_range_is_rejected_on_cpu(cpp, bad):
    """Chunks that reach outside the flat tensor are an error, not an out-of-bounds read or write.

    The public functions check this in Python; the registered ops check it again on the CPU so that direct
    ``torch.ops.nerfaccel`` calls and ``NERFACCEL_SKIP_VALUE_CHECKS=1`` cannot corrupt memory.
    """
    x = torch.rand(10)
    pi = torch.tensor(bad, dtype=torch.long)
    ops = torch.ops.nerfaccel
    calls = {
        "scan": lambda: ops.scan(x, pi, False, False),
        "render_weight_from_alpha": lambda: ops.render_weight_from_alpha(x * 0.5, pi),
        "render_weight_from_density": lambda: ops.render_weight_from_density(x, x + 1, x, pi),
        "searchsorted (sorted)": lambda: ops.searchsorted(x, pi, torch.rand(10), torch.tensor([[0, 2], [2, 3]])),
        "searchsorted (query)": lambda: ops.searchsorted(x, torch.tensor([[0, 2], [2, 3]]), torch.rand(10), pi),
        "importance_sampling": lambda: ops.importance_sampling(x, x, pi, torch.tensor([2, 2]), torch.full((2,), 0.5)),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="addresses elements outside"):
            call()
        assert name  # (for the traceback)


# ---------------------------------------------------------------------------------------------
# gradcheck, opcheck, torch.compile
# ---------------------------------------------------------------------------------------------
def test_gradcheck(K):  # noqa: N803
    ext, device = K
    packed_info, n = _packed([3, 0, 1, 6], True, device)
    f64 = dict(dtype=torch.float64, device=device, requires_grad=True)
    x = torch.rand(n, **f64)
    for name in ["_inclusive_sum", "_exclusive_sum", "_inclusive_prod", "_exclusive_prod"]:
        assert torch.autograd.gradcheck(lambda a: getattr(ext, name)(a, packed_info), (x,))
    xz = x.detach().clone()
    xz[[1, 6]] = 0.0
    assert torch.autograd.gradcheck(lambda a: ext._exclusive_prod(a, packed_info), (xz.requires_grad_(),))
    t0 = torch.rand(n, dtype=torch.float64, device=device)
    t1 = (t0 + torch.rand(n, dtype=torch.float64, device=device)).requires_grad_()
    sig = torch.rand(n, **f64)
    assert torch.autograd.gradcheck(
        lambda a, b, c: ext._render_weight_from_density(a, b, c, packed_info), (t0.requires_grad_(), t1, sig)
    )
    assert torch.autograd.gradcheck(lambda a: ext._render_weight_from_alpha(a, packed_info), (x * 0.9,))
    ri = torch.randint(0, 4, (n,), device=device)
    vals = torch.rand(n, 2, **f64)
    assert torch.autograd.gradcheck(lambda w, v: ext._accumulate_along_rays(w, v, ri, 4), (x, vals))
    assert torch.autograd.gradcheck(lambda w: ext._accumulate_along_rays(w, None, ri, 4), (x,))
    aabb = torch.tensor([-1.0, -1, -1, 1, 1, 1], dtype=torch.float64, device=device)
    pts = (torch.randn(50, 3, dtype=torch.float64, device=device) * 2).requires_grad_()
    ys = (torch.rand(50, 3, dtype=torch.float64, device=device) * 0.8 + 0.1).requires_grad_()
    for ord in ["l2", "linf"]:
        assert torch.autograd.gradcheck(lambda a: ext._contract(a, aabb, ord), (pts,))
        assert torch.autograd.gradcheck(lambda a: ext._uncontract(a, aabb, ord), (ys,))


def _opcheck_cases(device: str = "cpu"):
    packed_info, n = _packed([3, 0, 1, 6], True, device)
    x = torch.rand(n, device=device, requires_grad=True)
    t0 = torch.rand(n, device=device)
    t1 = t0 + torch.rand(n, device=device)
    ri = torch.randint(0, 4, (n,), device=device)
    o, d = _rays(16, device)
    binaries = torch.rand(2, 8, 8, 8, device=device) > 0.5
    aabbs2 = torch.tensor([[-1.0, -1, -1, 1, 1, 1], [-2.0, -2, -2, 2, 2, 2]], device=device)
    sv, spi = _sorted_packed([2, 3, 0, 4], device)
    qpi, n_q = _packed([1, 3, 2, 0], False, device)
    cdfs = torch.rand(sv.numel(), device=device)
    tiled, n_tiled = _packed([4, 0, 2, 5], False, device)  # chunks that tile the samples: covers_all may be set
    t0_tiled = torch.rand(n_tiled, device=device)
    box = torch.tensor([-1.0, -1, -1, 1, 1, 1], device=device)
    ops = torch.ops.nerfaccel

    def dev(*shape, fn=torch.rand, **kwargs):
        return fn(*shape, device=device, **kwargs)

    _, trans, alphas = ops.render_weight_from_density(t0, t1, x.detach(), packed_info)
    return {
        "ray_aabb_intersect": (ops.ray_aabb_intersect, (o, d, aabbs2, 0.0, 1e10, 1e10)),
        "traverse_grids": (
            ops.traverse_grids,
            (o, d, binaries, aabbs2, dev(16, fn=torch.zeros), torch.full((16,), 1e10, device=device), 0.05, 0.0),
        ),
        "scan": (ops.scan, (x, packed_info, True, True)),
        "render_weight_from_density": (
            ops.render_weight_from_density,
            (t0, t1.requires_grad_(), x, packed_info),
        ),
        "render_weight_from_density_covers_all": (
            ops.render_weight_from_density,
            (t0_tiled, t0_tiled + 0.5, dev(n_tiled, requires_grad=True), tiled, True),
        ),
        "render_weight_from_alpha": (ops.render_weight_from_alpha, (x * 0.5, packed_info)),
        "accumulate_along_rays": (ops.accumulate_along_rays, (x, dev(n, 3, requires_grad=True), ri, 4)),
        "accumulate_along_rays_none": (ops.accumulate_along_rays, (x, None, ri, 4)),
        "searchsorted": (ops.searchsorted, (sv, spi, dev(n_q) * 4, qpi)),
        "importance_sampling": (
            ops.importance_sampling,
            (sv, cdfs, spi, torch.tensor([2, 0, 1, 3], device=device), torch.full((4,), 0.5, device=device)),
        ),
        "contract": (ops.contract, (dev(20, 3, fn=torch.randn, requires_grad=True), box, False, False)),
        "grid_ema_update": (
            ops.grid_ema_update,
            (dev(64), torch.randint(0, 64, (30,), device=device), dev(30), 0.9),
        ),
        "scan_sum": (ops.scan, (x, packed_info, False, False)),
        "uncontract": (ops.contract, ((dev(20, 3) * 0.8 + 0.1).requires_grad_(), box, True, True)),
        # the backward ops are registered too (double backward goes through them)
        "scan_backward": (
            ops.scan_backward,
            (dev(n, fn=torch.randn, requires_grad=True), x.detach(), x.detach().cumprod(0), packed_info, True, True),
        ),
        "render_weight_from_density_backward": (
            ops.render_weight_from_density_backward,
            (
                *[dev(n, fn=torch.randn, requires_grad=True) for _ in range(3)],
                t0,
                t1,
                x.detach(),
                trans,
                alphas,
                packed_info,
            ),
        ),
        "render_weight_from_alpha_backward": (
            ops.render_weight_from_alpha_backward,
            (dev(n, fn=torch.randn, requires_grad=True), dev(n, fn=torch.randn), x.detach() * 0.5, trans, packed_info),
        ),
        "accumulate_along_rays_backward": (
            ops.accumulate_along_rays_backward,
            (dev(4, 3, fn=torch.randn, requires_grad=True), x.detach(), dev(n, 3), ri),
        ),
        "contract_backward": (
            ops.contract_backward,
            (dev(20, 3, fn=torch.randn, requires_grad=True), dev(20, 3, fn=torch.randn), box, False, False),
        ),
    }


OPCHECK_CASES = [
    "ray_aabb_intersect",
    "traverse_grids",
    "scan",
    "render_weight_from_density",
    "render_weight_from_density_covers_all",
    "render_weight_from_alpha",
    "accumulate_along_rays",
    "accumulate_along_rays_none",
    "searchsorted",
    "importance_sampling",
    "contract",
    "grid_ema_update",
    "scan_sum",
    "uncontract",
    "scan_backward",
    "render_weight_from_density_backward",
    "render_weight_from_alpha_backward",
    "accumulate_along_rays_backward",
    "contract_backward",
]


# Second derivatives of the packed-ray ops recompute the first-order gradient with the PyTorch reference,
# whose packed layouts are data-dependent: they run eagerly and cannot be traced with dynamic shapes.
EAGER_DOUBLE_BACKWARD = {"scan_backward", "render_weight_from_density_backward", "render_weight_from_alpha_backward"}


@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck(K, case):  # noqa: N803
    _, device = K
    op, args = _opcheck_cases(device)[case]
    if case in EAGER_DOUBLE_BACKWARD:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    else:
        torch.library.opcheck(op, args)


def test_torch_compile_smoke(K):  # noqa: N803
    """torch.compile (aot_eager: no C++ codegen needed) traces through the ops, forward and backward."""
    _, device = K
    packed_info, n = _packed([5, 0, 3, 7], False, device)
    ri = torch.repeat_interleave(torch.arange(4, device=device), packed_info[:, 1])

    def render(t0, t1, sigmas, rgb):
        w, _, _ = torch.ops.nerfaccel.render_weight_from_density(t0, t1, sigmas, packed_info, True)
        return torch.ops.nerfaccel.accumulate_along_rays(w, rgb, ri, 4)

    t0 = torch.rand(n, device=device)
    t1 = t0 + 0.1
    sigmas = torch.rand(n, device=device, requires_grad=True)
    rgb = torch.rand(n, 3, device=device, requires_grad=True)
    compiled = torch.compile(render, backend="aot_eager", fullgraph=True)
    out = compiled(t0, t1, sigmas, rgb)
    cot = torch.randn_like(out)
    grads = torch.autograd.grad(out, (sigmas, rgb), cot)
    ref = render(t0, t1, sigmas, rgb)
    ref_grads = torch.autograd.grad(ref, (sigmas, rgb), cot)
    _close(out.detach(), ref.detach())
    for g, r in zip(grads, ref_grads, strict=True):
        assert float(r.abs().sum()) > 0
        _close(g, r)


def test_double_backward(K):  # noqa: N803
    """Second order goes through the reference (registered autograd of the backward ops)."""
    ext, device = K
    packed_info, n = _packed([3, 0, 4], False, device)
    x = torch.rand(n, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a: ext._exclusive_prod(a, packed_info), (x,))
    t0 = torch.rand(n, dtype=torch.float64, device=device)
    t1 = (t0 + 0.5).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda b, c: ext._render_weight_from_density(t0, b, c, packed_info), (t1, x))
    assert torch.autograd.gradgradcheck(lambda a: ext._render_weight_from_alpha(a, packed_info), (x * 0.5,))
    ri = torch.tensor([0, 1, 1, 2, 0, 2, 2], device=device)
    v = torch.rand(n, 2, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda w, vv: ext._accumulate_along_rays(w, vv, ri, 3), (x, v))
    assert torch.autograd.gradgradcheck(lambda w: ext._accumulate_along_rays(w, None, ri, 3), (x,))
    pts = (torch.randn(10, 3, dtype=torch.float64, device=device) * 2).requires_grad_()
    aabb = torch.tensor([-1.0, -1, -1, 1, 1, 1], dtype=torch.float64, device=device)
    assert torch.autograd.gradgradcheck(lambda a: ext._contract(a, aabb, "l2"), (pts,))


def test_cpu_accumulate_parallel_pass_is_exact(cpp) -> None:
    """With sorted ray indices the C++ CPU accumulation runs in parallel over whole rays: the same bits as
    summing sample by sample in order (what it does for unsorted indices)."""
    g = torch.Generator().manual_seed(0)
    n_rays, n = 5000, 200_000
    ri = torch.sort(torch.randint(0, n_rays, (n,), generator=g)).values
    w, v = torch.rand(n, generator=g), torch.randn(n, 3, generator=g)
    shuffled = torch.randperm(n, generator=g)
    with torch.no_grad():
        par = cpp._accumulate_along_rays(w, v, ri, n_rays)
        # Same samples in the same per-ray order but with one ray moved to the end: unsorted, sequential path.
        last = ri == ri[0]
        perm = torch.cat([torch.nonzero(~last)[:, 0], torch.nonzero(last)[:, 0]])
        seq = cpp._accumulate_along_rays(w[perm], v[perm], ri[perm], n_rays)
    assert torch.equal(par, seq)
    ref = R._accumulate_along_rays(w[shuffled], v[shuffled], ri[shuffled], n_rays)
    assert torch.allclose(par, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Audit regressions: overlapping chunks, grad_out shapes, covers_all, searchsorted rule, contraction at
# infinity, symbol isolation, non-default CUDA streams
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [[[0, 2], [0, 2]], [[0, 3], [2, 2]], [[2, 2], [0, 3]], [[0, 4], [1, 0], [1, 2]]])
def test_overlapping_chunks_are_rejected_on_cpu(cpp, bad):
    """Overlapping chunks whose counts add up to n used to pass for "covering everything" (so the pass over the
    samples outside every chunk was skipped and uninitialised memory came back for them); they are an error."""
    n = 4
    x = torch.rand(n)
    pi = torch.tensor(bad, dtype=torch.long)
    ops = torch.ops.nerfaccel
    module = build_module()
    calls = {
        "scan": lambda: ops.scan(x, pi, False, False),
        "render_weight_from_alpha": lambda: ops.render_weight_from_alpha(x * 0.5, pi),
        "render_weight_from_density": lambda: ops.render_weight_from_density(x, x + 1, x, pi),
        "render_weight_from_density_backward": lambda: ops.render_weight_from_density_backward(
            x, x, x, x, x + 1, x, x, x, pi
        ),
        "render_density_fwd_fused": lambda: module.render_density_fwd_fused(x, x + 1, x, pi),
        "searchsorted (query)": lambda: ops.searchsorted(x.sort().values, torch.tensor([[0, 2]] * len(bad)), x, pi),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="overlap"):
            call()
        assert name  # (for the traceback)
    # read-only chunks may overlap (the sorted side of a search)
    queries = torch.tensor([[0, 1]] + [[1, 3]] + [[4, 0]] * (len(bad) - 2))
    ops.searchsorted(x.sort().values, pi, x, queries)


def test_overlapping_packed_info_through_the_public_api_is_an_error(cpp):
    """The audit's reproduction: render_weight_from_density(..., packed_info=[[0, 2], [0, 2]]) with 4 samples."""
    import nerfaccel_plugin as nacc

    t0 = torch.rand(4)
    with pytest.raises(ValueError, match="overlap"):
        nacc.render_weight_from_density(t0, t0 + 0.1, torch.rand(4), packed_info=torch.tensor([[0, 2], [0, 2]]))


def build_module():
    from nerfaccel_plugin._ext import build

    return build.get_module("cpp")


def test_chunks_out_of_order_still_cover_their_samples(K):  # noqa: N803
    """Disjoint chunks in any order (and gaps) are valid: results match the reference, forward and backward."""
    ext, device = K
    pi = torch.tensor([[5, 3], [0, 2], [8, 0], [2, 2]], device=device)  # sample 4 in no chunk
    n = 8
    t0 = torch.rand(n, device=device)
    _compare_fwd_bwd(
        lambda a, b, c: R._render_weight_from_density(a, b, c, pi),
        lambda a, b, c: ext._render_weight_from_density(a, b, c, pi),
        [t0, t0 + 0.3, torch.rand(n, device=device) * 3],
    )
    x = torch.rand(n, device=device)
    _compare_fwd_bwd(lambda a: R._inclusive_prod(a, pi), lambda a: ext._inclusive_prod(a, pi), [x])


@pytest.mark.parametrize("values_dim", [None, 3])
def test_accumulate_backward_checks_grad_out_shape(K, values_dim):  # noqa: N803
    """A grad_out of the wrong shape used to be read out of bounds (heap corruption); now a ValueError."""
    _, device = K
    n, n_rays = 6, 3
    w = torch.rand(n, device=device)
    v = None if values_dim is None else torch.rand(n, values_dim, device=device)
    ri = torch.tensor([0, 0, 1, 1, 2, 2], device=device)
    op = torch.ops.nerfaccel.accumulate_along_rays_backward
    dim = 1 if values_dim is None else values_dim
    good = torch.rand(n_rays, dim, device=device)
    op(good, w, v, ri)
    for bad in [
        torch.rand(n_rays, dim + 2, device=device),  # wider than the values
        torch.rand(n_rays * dim, device=device),  # flat
        torch.rand(n_rays, dim, 1, device=device),
        torch.rand(n_rays, 0, device=device),
    ]:
        with pytest.raises(ValueError, match="grad_out"):
            op(bad, w, v, ri)
    if values_dim is None:
        with pytest.raises(ValueError, match="grad_out"):
            op(torch.rand(n_rays, 3, device=device), w, None, ri)  # no values: width 1


def test_covers_all_mark_and_flag(cpp, monkeypatch):
    """mark_covering(packed_info, n) makes the primitive pass covers_all=True to the kernels (the CUDA build then
    skips its pass over all samples); copies, in-place changes, another n and freed tensors drop the mark."""
    import gc

    from nerfaccel_plugin import _backend, pack_info
    from nerfaccel_plugin._ext import build

    ray_ids = torch.tensor([0, 0, 1, 3, 3, 3])
    assert _backend.is_marked_covering(pack_info(ray_ids, 4), 6)  # pack_info marks what it builds
    pi = pack_info(ray_ids, 4).clone()  # a user's copy is not marked
    assert not _backend.is_marked_covering(pi, 6)
    assert _backend.mark_covering(pi, 6) is pi
    assert _backend.is_marked_covering(pi, 6)
    assert not _backend.is_marked_covering(pi, 7)
    assert not _backend.is_marked_covering(pi.clone(), 6)

    seen = []
    real = build.get_module("cpp")

    class Recorder:
        def __getattr__(self, name):
            attr = getattr(real, name)
            if name not in ("render_density_fwd", "render_density_bwd"):
                return attr

            def call(*args):
                seen.append((name, args[-1]))
                return attr(*args)

            return call

    monkeypatch.setattr(build, "get_module", lambda kind: Recorder())
    t0 = torch.rand(6)
    sig = torch.rand(6, requires_grad=True)
    w, _, _ = cpp._render_weight_from_density(t0, t0 + 0.2, sig, pi)
    w.sum().backward()
    assert seen == [("render_density_fwd", True), ("render_density_bwd", True)]
    ref = R._render_weight_from_density(t0, t0 + 0.2, sig.detach(), pi)
    _close(w.detach(), ref[0])
    pi[0, 1] = 2  # in place: no longer trusted
    assert not _backend.is_marked_covering(pi, 6)
    seen.clear()
    cpp._render_weight_from_density(t0, t0 + 0.2, sig.detach(), pack_info(ray_ids, 4).clone())  # unmarked
    assert seen == [("render_density_fwd", False)]
    key = id(pi)
    _backend.mark_covering(pi, 6)
    del pi
    gc.collect()
    assert key not in _backend._covering


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
    sv, spi = _sorted_packed(counts, "cpu")
    qpi, nq = _packed([3, 4, 0, 6, 50, 2, 9], False)
    qv = torch.rand(nq) * (sv.max() - sv.min() + 2) + sv.min() - 1
    qv[:3] = sv[5:8]  # exact hits
    want = _nerfacc_searchsorted(sv, spi, qv, qpi)
    got = ext._searchsorted(sv.to(device), spi.to(device), qv.to(device), qpi.to(device))
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])


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
        _close(y[:5].detach(), torch.tensor(want, dtype=dtype, device=device))
        assert torch.equal(g[:4].cpu(), torch.zeros(4, 3, dtype=dtype))
        assert float(g[4].abs().max()) < 1e-29  # (float32: |z|^2 overflows, the limit; float64: the formula)
        assert torch.isnan(y[5]).all()  # NaN stays NaN
        assert torch.isnan(R._contract(x[5:6], aabb, ord)).all()  # and so in the reference
        _close(y[6].detach(), R._contract(x[6:], aabb, ord)[0])


def test_extension_symbols_are_private_to_each_build(cpp):
    """Every exported nerfaccel:: symbol of a build lives in its own inline namespace (cpu_build / cuda_build), so
    the two extensions loaded together with RTLD_GLOBAL cannot bind to each other's definitions."""
    import shutil
    import subprocess

    from nerfaccel_plugin._ext import build

    if shutil.which("nm") is None:
        pytest.skip("needs nm (binutils)")
    files = {"cpu_build": build.get_module("cpp").__file__}
    if build._toolchain_problem("cuda") is None:
        key = build.jit_key("cuda")
        cuda = build._built_file(build.build_dir("cuda", key), build.module_name("cuda", key))
        if cuda is not None:
            files["cuda_build"] = str(cuda)
    names = {}
    for ns, path in files.items():
        out = subprocess.run(["nm", "-DC", "--defined-only", path], capture_output=True, text=True, check=True).stdout
        syms = [line.split(" ", 2)[-1] for line in out.splitlines() if "nerfaccel::" in line]
        assert syms, f"no nerfaccel symbols found in {path}"
        assert all(f"nerfaccel::{ns}::" in sym for sym in syms), [sym for sym in syms if ns not in sym][:5]
        names[ns] = set(syms)
    if len(names) == 2:
        assert not names["cpu_build"] & names["cuda_build"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_ops_run_on_the_current_stream(cuda_ext):
    """On a non-default stream, the kernels (and their ATen helpers) run after the work queued on that stream."""
    ext = cuda_ext
    packed_info, n = _packed([5, 0, 300, 7, 1000], True, "cuda")
    ri = torch.repeat_interleave(torch.arange(5, device="cuda"), packed_info[:, 1])
    t0_src = torch.rand(n, device="cuda")
    sig_src = torch.rand(n, device="cuda")
    v_src = torch.rand(n, 3, device="cuda")
    o, d = _rays(256, "cuda")
    binaries = torch.rand(1, 32, 32, 32, device="cuda") > 0.5
    aabbs = torch.tensor([[-1.0, -1, -1, 1, 1, 1]], device="cuda")
    near, far = torch.zeros(256, device="cuda"), torch.full((256,), 1e10, device="cuda")

    def run(t0, sig, vals, oo):
        w, trans, alphas = ext._render_weight_from_density(t0, t0 + 0.01, sig, packed_info)
        rgb = ext._accumulate_along_rays(w, vals, torch.sort(ri).values, 5)
        scan = ext._inclusive_sum(sig, packed_info)
        trav = ext._traverse_grids(oo, d, binaries, aabbs, near, far, 0.01, 0.0)
        return [w, trans, alphas, rgb, scan, *trav]

    expected = run(t0_src, sig_src, v_src, o)
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(200_000_000)  # the inputs below are only ready long after this
        got = run(t0_src * 1.0, sig_src * 1.0, v_src * 1.0, o * 1.0)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
