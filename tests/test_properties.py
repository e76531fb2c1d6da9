"""Property tests of the public ops against the simplest possible per-ray Python loops.

Every reference below is a plain Python loop over rays and samples, written from the documented
semantics (``nerfaccel_plugin/_torch_impl.py`` docstrings) and independent of the library's code.
Inputs are random packed layouts drawn by hypothesis, explicitly including empty inputs, rays with
no samples (first, middle, last), a single ray, a single sample and long rays.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import nerfaccel_plugin as nacc

# Every test once on the PyTorch reference and once on the C++ build (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("semantic_backend")

F64 = torch.float64
# NERFACCEL_HYPOTHESIS_EXAMPLES raises the example count for a longer bug hunt (default keeps the file ~30 s).
FAST = settings(
    max_examples=int(os.environ.get("NERFACCEL_HYPOTHESIS_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Per-ray sample counts: short random rays, or a few long ones mixed with empty / single-sample rays.
counts_st = st.one_of(
    st.lists(st.integers(0, 6), max_size=8),
    st.lists(st.sampled_from([0, 1, 2, 257]), min_size=1, max_size=3),
)
seed_st = st.integers(0, 2**31 - 1)

EXAMPLE_COUNTS = [
    [],  # no rays at all
    [0],  # one ray, no samples
    [0, 0, 0],
    [1],  # single sample
    [5],  # single ray
    [0, 3, 2],  # empty ray first
    [3, 0, 2],  # empty ray in the middle
    [3, 2, 0],  # empty ray last
    [1, 4, 0, 7, 1],  # non-uniform
    [300],  # long ray
    [0, 299, 1, 0],
]


def with_count_examples(f):
    """Adds the explicit edge-case layouts as hypothesis examples (``counts``, ``seed`` arguments)."""
    for i, c in enumerate(EXAMPLE_COUNTS):
        f = example(counts=c, seed=i)(f)
    return f


# Batched (n_rays, n_samples), including 0 rays and n_samples = 1.
batched_shape_st = st.tuples(st.integers(0, 5), st.integers(1, 9))
EXAMPLE_SHAPES = [(0, 1), (1, 1), (4, 1), (1, 7), (3, 5), (2, 200)]


def with_shape_examples(f):
    for i, s in enumerate(EXAMPLE_SHAPES):
        f = example(shape=s, seed=i)(f)
    return f


# ---------------------------------------------------------------------------------------------
# Helpers: layouts and random data
# ---------------------------------------------------------------------------------------------
def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def packed_from_counts(counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed_info, ray_indices) for contiguous, sorted chunks built by a plain loop."""
    info, ids, start = [], [], 0
    for r, c in enumerate(counts):
        info.append([start, c])
        ids.extend([r] * c)
        start += c
    return torch.tensor(info, dtype=torch.long).reshape(-1, 2), torch.tensor(ids, dtype=torch.long)


def chunks(info: torch.Tensor) -> list[tuple[int, int]]:
    return [(int(s), int(c)) for s, c in info.tolist()]


def uniform(n: int, g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=F64)


def with_specials(x: torch.Tensor, g: torch.Generator, specials: list[float], frac: float = 0.25) -> torch.Tensor:
    """Replaces a random fraction of entries with exact special values (0, 1, ...)."""
    x = x.clone()
    if x.numel() == 0:
        return x
    hit = torch.rand(x.shape, generator=g) < frac
    pick = torch.randint(0, len(specials), x.shape, generator=g)
    sp = torch.tensor(specials, dtype=x.dtype)[pick]
    return torch.where(hit, sp, x)


def intervals(counts: list[int], g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted, non-overlapping (t_starts, t_ends) per ray; some zero-length intervals."""
    starts, ends = [], []
    for c in counts:
        t = float(torch.rand(1, generator=g, dtype=F64))
        for _ in range(c):
            t += float(torch.rand(1, generator=g, dtype=F64)) * 0.2  # gap (may be ~0)
            dt = float(torch.rand(1, generator=g, dtype=F64)) * 0.3
            if float(torch.rand(1, generator=g)) < 0.1:
                dt = 0.0
            starts.append(t)
            ends.append(t + dt)
            t += dt
    return torch.tensor(starts, dtype=F64), torch.tensor(ends, dtype=F64)


def close(got: torch.Tensor, ref, rtol: float = 1e-9, atol: float = 1e-11) -> None:
    ref_t = ref if isinstance(ref, torch.Tensor) else torch.tensor(ref, dtype=F64)
    ref_t = ref_t.to(got.dtype).reshape(got.shape)
    torch.testing.assert_close(got, ref_t, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# Reference loops
# ---------------------------------------------------------------------------------------------
def ref_scan(x: list[float], chunk_list: list[tuple[int, int]], n: int, op: str, exclusive: bool) -> list[float]:
    out = [0.0] * n
    for start, count in chunk_list:
        acc = 0.0 if op == "sum" else 1.0
        for i in range(start, start + count):
            if exclusive:
                out[i] = acc
            acc = acc + x[i] if op == "sum" else acc * x[i]
            if not exclusive:
                out[i] = acc
    return out


def ref_weights_from_alpha(alphas: list[float], chunk_list, n: int, prefix: list[float] | None = None):
    w, trans = [0.0] * n, [0.0] * n
    for start, count in chunk_list:
        t = 1.0
        for i in range(start, start + count):
            p = 1.0 if prefix is None else prefix[i]
            trans[i] = t * p
            w[i] = t * alphas[i] * p
            t *= 1.0 - alphas[i]
    return w, trans


def ref_weights_from_density(t0, t1, sigmas, chunk_list, n: int, prefix=None):
    w, trans, alphas = [0.0] * n, [0.0] * n, [0.0] * n
    for i in range(n):
        alphas[i] = 1.0 - math.exp(-sigmas[i] * (t1[i] - t0[i]))
    for start, count in chunk_list:
        t = 1.0
        for i in range(start, start + count):
            p = 1.0 if prefix is None else prefix[i]
            trans[i] = t * p
            w[i] = t * alphas[i] * p
            t *= math.exp(-sigmas[i] * (t1[i] - t0[i]))
    return w, trans, alphas


def ref_accumulate(weights: list[float], values: list[list[float]] | None, ray_ids: list[int], n_rays: int, d: int):
    out = [[0.0] * d for _ in range(n_rays)]
    for i, r in enumerate(ray_ids):
        for k in range(d):
            v = 1.0 if values is None else values[i][k]
            out[r][k] += weights[i] * v
    return out


def ref_distortion(w, t0, t1, ray_ids, n_rays):
    out = [0.0] * n_rays
    for r in range(n_rays):
        idx = [i for i, q in enumerate(ray_ids) if q == r]
        for i in idx:
            mi = 0.5 * (t0[i] + t1[i])
            for j in idx:
                mj = 0.5 * (t0[j] + t1[j])
                out[r] += w[i] * w[j] * abs(mi - mj)
            out[r] += w[i] ** 2 * (t1[i] - t0[i]) / 3.0
    return out


# ---------------------------------------------------------------------------------------------
# Scans
# ---------------------------------------------------------------------------------------------
SCANS = [
    ("inclusive_sum", "sum", False),
    ("exclusive_sum", "sum", True),
    ("inclusive_prod", "prod", False),
    ("exclusive_prod", "prod", True),
]


@pytest.mark.parametrize("name,op,exclusive", SCANS)
@FAST
@with_count_examples
@given(counts=counts_st, seed=seed_st)
def test_scan_packed_and_indices(name, op, exclusive, counts, seed):
    g = gen(seed)
    info, ids = packed_from_counts(counts)
    n = sum(counts)
    lo, hi = (-1.0, 1.0) if op == "sum" else (0.5, 1.5)
    x = with_specials(uniform(n, g, lo, hi), g, [0.0, 1.0])
    ref = ref_scan(x.tolist(), chunks(info), n, op, exclusive)
    fn = getattr(nacc, name)
    out = fn(x, info)
    assert out.shape == (n,) and out.dtype == F64
    close(out, ref)
    close(fn(x, indices=ids), ref)
    # float32 in -> float32 out, close to the float64 reference.
    out32 = fn(x.float(), info)
    assert out32.dtype == torch.float32
    close(out32, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,op,exclusive", SCANS)
@FAST
@given(
    counts=st.lists(st.integers(0, 5), max_size=6),
    gaps=st.lists(st.integers(0, 3), min_size=7, max_size=7),
    shuffle=st.booleans(),
    seed=seed_st,
)
def test_scan_packed_with_gaps_and_any_chunk_order(name, op, exclusive, counts, gaps, shuffle, seed):
    """Chunks need not cover the tensor nor be in order; uncovered elements give 0."""
    g = gen(seed)
    info_rows, start = [], 0
    for r, c in enumerate(counts):
        start += gaps[r]
        info_rows.append([start, c])
        start += c
    n = start + gaps[-1]
    if shuffle:
        info_rows = [info_rows[i] for i in torch.randperm(len(info_rows), generator=g).tolist()]
    info = torch.tensor(info_rows, dtype=torch.long).reshape(-1, 2)
    x = uniform(n, g, 0.5, 1.5)
    ref = ref_scan(x.tolist(), chunks(info), n, op, exclusive)
    close(getattr(nacc, name)(x, info), ref)


@pytest.mark.parametrize("name,op,exclusive", SCANS)
@FAST
@with_shape_examples
@given(shape=batched_shape_st, seed=seed_st)
def test_scan_batched(name, op, exclusive, shape, seed):
    g = gen(seed)
    r, s = shape
    x = with_specials(uniform(r * s, g, 0.5, 1.5), g, [0.0, 1.0]).reshape(r, s)
    info = [(i * s, s) for i in range(r)]
    ref = ref_scan(x.reshape(-1).tolist(), info, r * s, op, exclusive)
    out = getattr(nacc, name)(x)
    assert out.shape == (r, s)
    close(out, ref)


@pytest.mark.parametrize("name,op,exclusive", SCANS)
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_scan_packed_half_precision_upcasts(name, op, exclusive, half):
    x = torch.tensor([0.5, 2.0, 4.0, 3.0, 0.25], dtype=half)
    info = torch.tensor([[0, 3], [3, 2]])
    out = getattr(nacc, name)(x, info)
    assert out.dtype == torch.float32
    close(out, ref_scan(x.double().tolist(), chunks(info), 5, op, exclusive))


@pytest.mark.parametrize("name,op,exclusive", SCANS)
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_scan_batched_half_precision_upcasts(name, op, exclusive, half):
    """The scan docstrings promise float32 results for float16/bfloat16 inputs, batched too (was a bug)."""
    # 40 samples of 1.5: the float32 sums/products are exact, float16 sums lose digits past 2048 / overflow.
    x = torch.full((2, 40), 1.5, dtype=half)
    out = getattr(nacc, name)(x)
    assert out.dtype == torch.float32
    ref = ref_scan(x.double().reshape(-1).tolist(), [(0, 40), (40, 40)], 80, op, exclusive)
    close(out, ref, rtol=1e-5, atol=0)


def test_half_precision_output_dtype_same_for_batched_and_packed():
    """Half-precision inputs give the same output dtype in both layouts (batched used to stay float16)."""
    w = torch.full((2, 3), 0.25, dtype=torch.float16)
    t0 = torch.tensor([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]], dtype=torch.float16)
    t1 = t0 + 0.5
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    packed = nacc.accumulate_along_rays(w.reshape(-1), None, ids, 2)
    batched = nacc.accumulate_along_rays(w)
    assert batched.dtype == packed.dtype == torch.float32
    torch.testing.assert_close(batched, packed)
    packed = nacc.distortion(w.reshape(-1), t0.reshape(-1), t1.reshape(-1), ids, 2)
    batched = nacc.distortion(w, t0, t1)
    assert batched.dtype == packed.dtype == torch.float32
    torch.testing.assert_close(batched, packed)


# ---------------------------------------------------------------------------------------------
# Rendering weights / transmittance
# ---------------------------------------------------------------------------------------------
def _alpha_inputs(counts, seed):
    g = gen(seed)
    info, ids = packed_from_counts(counts)
    n = sum(counts)
    alphas = with_specials(uniform(n, g), g, [0.0, 1.0], frac=0.3)
    return info, ids, alphas, g


def _density_inputs(counts, seed):
    g = gen(seed)
    info, ids = packed_from_counts(counts)
    n = sum(counts)
    t0, t1 = intervals(counts, g)
    sigmas = with_specials(uniform(n, g, 0.0, 5.0), g, [0.0, 1e4, 1e30], frac=0.2)
    return info, ids, t0, t1, sigmas, g


@FAST
@with_count_examples
@given(counts=counts_st, seed=seed_st)
def test_render_weight_from_alpha_packed(counts, seed):
    info, ids, alphas, _ = _alpha_inputs(counts, seed)
    n = alphas.numel()
    w_ref, t_ref = ref_weights_from_alpha(alphas.tolist(), chunks(info), n)
    for kwargs in ({"packed_info": info}, {"ray_indices": ids, "n_rays": len(counts)}):
        w, t = nacc.render_weight_from_alpha(alphas, **kwargs)
        close(w, w_ref)
        close(t, t_ref)
        close(nacc.render_transmittance_from_alpha(alphas, **kwargs), t_ref)
    # Weights of a ray sum to its opacity 1 - prod(1 - alpha) <= 1.
    w, _ = nacc.render_weight_from_alpha(alphas, packed_info=info)
    for start, count in chunks(info):
        prod = 1.0
        for i in range(start, start + count):
            prod *= 1.0 - float(alphas[i])
        assert abs(float(w[start : start + count].sum()) - (1.0 - prod)) < 1e-9


@FAST
@with_count_examples
@given(counts=counts_st, seed=seed_st)
def test_render_weight_from_density_packed(counts, seed):
    info, ids, t0, t1, sigmas, _ = _density_inputs(counts, seed)
    n = sigmas.numel()
    w_ref, t_ref, a_ref = ref_weights_from_density(t0.tolist(), t1.tolist(), sigmas.tolist(), chunks(info), n)
    for kwargs in ({"packed_info": info}, {"ray_indices": ids, "n_rays": len(counts)}):
        w, t, a = nacc.render_weight_from_density(t0, t1, sigmas, **kwargs)
        close(w, w_ref)
        close(t, t_ref)
        close(a, a_ref)
        assert torch.isfinite(w).all() and torch.isfinite(t).all()
        t2, a2 = nacc.render_transmittance_from_density(t0, t1, sigmas, **kwargs)
        close(t2, t_ref)
        close(a2, a_ref)


@FAST
@with_shape_examples
@given(shape=batched_shape_st, seed=seed_st)
def test_render_weights_batched(shape, seed):
    g = gen(seed)
    r, s = shape
    info = [(i * s, s) for i in range(r)]
    alphas = with_specials(uniform(r * s, g), g, [0.0, 1.0], frac=0.3)
    w_ref, t_ref = ref_weights_from_alpha(alphas.tolist(), info, r * s)
    w, t = nacc.render_weight_from_alpha(alphas.reshape(r, s))
    assert w.shape == (r, s) and t.shape == (r, s)
    close(w, w_ref)
    close(t, t_ref)
    t0, t1 = intervals([s] * r, g)
    sigmas = with_specials(uniform(r * s, g, 0.0, 5.0), g, [0.0, 1e4], frac=0.2)
    w_ref, t_ref, a_ref = ref_weights_from_density(t0.tolist(), t1.tolist(), sigmas.tolist(), info, r * s)
    w, t, a = nacc.render_weight_from_density(t0.reshape(r, s), t1.reshape(r, s), sigmas.reshape(r, s))
    assert w.shape == (r, s)
    close(w, w_ref)
    close(t, t_ref)
    close(a, a_ref)


@FAST
@with_count_examples
@given(counts=counts_st, seed=seed_st)
def test_prefix_trans(counts, seed):
    """``prefix_trans`` multiplies into the transmittance (and hence the weights) sample by sample."""
    info, ids, alphas, g = _alpha_inputs(counts, seed)
    n = alphas.numel()
    prefix = with_specials(uniform(n, g), g, [0.0, 1.0])
    w_ref, t_ref = ref_weights_from_alpha(alphas.tolist(), chunks(info), n, prefix.tolist())
    w, t = nacc.render_weight_from_alpha(alphas, packed_info=info, prefix_trans=prefix)
    close(w, w_ref)
    close(t, t_ref)
    close(nacc.render_transmittance_from_alpha(alphas, ray_indices=ids, n_rays=len(counts), prefix_trans=prefix), t_ref)
    t0, t1 = intervals(counts, g)
    sigmas = uniform(n, g, 0.0, 5.0)
    w_ref, t_ref, a_ref = ref_weights_from_density(
        t0.tolist(), t1.tolist(), sigmas.tolist(), chunks(info), n, prefix.tolist()
    )
    w, t, a = nacc.render_weight_from_density(t0, t1, sigmas, packed_info=info, prefix_trans=prefix)
    close(w, w_ref)
    close(t, t_ref)
    close(a, a_ref)
    t2, _ = nacc.render_transmittance_from_density(t0, t1, sigmas, ray_indices=ids, prefix_trans=prefix)
    close(t2, t_ref)
    # Visibility uses the prefixed transmittance.
    vis = nacc.render_visibility_from_alpha(alphas, packed_info=info, early_stop_eps=0.3, prefix_trans=prefix)
    t_ref_a = ref_weights_from_alpha(alphas.tolist(), chunks(info), n, prefix.tolist())[1]
    for i in range(n):
        if abs(t_ref_a[i] - 0.3) > 1e-9:
            assert bool(vis[i]) == (t_ref_a[i] >= 0.3)


def test_prefix_trans_batched():
    alphas = torch.tensor([[0.5, 0.5, 0.5], [0.0, 1.0, 0.2]], dtype=F64)
    prefix = torch.tensor([[0.5, 1.0, 0.25], [1.0, 0.1, 1.0]], dtype=F64)
    w, t = nacc.render_weight_from_alpha(alphas, prefix_trans=prefix)
    w_ref, t_ref = ref_weights_from_alpha(alphas.reshape(-1).tolist(), [(0, 3), (3, 3)], 6, prefix.reshape(-1).tolist())
    close(w, w_ref)
    close(t, t_ref)


@FAST
@with_count_examples
@given(counts=counts_st, seed=seed_st)
def test_visibility(counts, seed):
    info, ids, alphas, g = _alpha_inputs(counts, seed)
    n = alphas.numel()
    eps = [0.0, 1e-4, 0.1, 0.5, 1.0][seed % 5]
    thre = [0.0, 0.0, 0.3, 1.0][(seed // 5) % 4]
    _, t_ref = ref_weights_from_alpha(alphas.tolist(), chunks(info), n)
    for kwargs in ({"packed_info": info}, {"ray_indices": ids, "n_rays": len(counts)}):
        vis = nacc.render_visibility_from_alpha(alphas, early_stop_eps=eps, alpha_thre=thre, **kwargs)
        assert vis.dtype == torch.bool and vis.shape == (n,)
        for i in range(n):
            if abs(t_ref[i] - eps) < 1e-9 and t_ref[i] != eps:
                continue  # too close to the threshold to be decided by a float64 loop
            expect = t_ref[i] >= eps and (thre <= 0 or float(alphas[i]) >= thre)
            assert bool(vis[i]) == expect, (i, t_ref[i], float(alphas[i]), eps, thre)
    # The first sample of each ray always has T = 1 exactly.
    for start, count in chunks(info):
        if count > 0 and eps <= 1.0 and (thre <= 0 or float(alphas[start]) >= thre):
            assert bool(nacc.render_visibility_from_alpha(alphas, info, early_stop_eps=eps, alpha_thre=thre)[start])
    t0, t1 = intervals(counts, g)
    sigmas = with_specials(uniform(n, g, 0.0, 5.0), g, [0.0, 1e4])
    _, t_ref, a_ref = ref_weights_from_density(t0.tolist(), t1.tolist(), sigmas.tolist(), chunks(info), n)
    vis = nacc.render_visibility_from_density(t0, t1, sigmas, info, early_stop_eps=eps, alpha_thre=thre)
    for i in range(n):
        if abs(t_ref[i] - eps) < 1e-9 or abs(a_ref[i] - thre) < 1e-9:
            continue
        assert bool(vis[i]) == (t_ref[i] >= eps and (thre <= 0 or a_ref[i] >= thre))


def test_visibility_batched():
    alphas = torch.tensor([[0.4, 0.8, 0.1], [0.0, 1.0, 0.5]], dtype=F64)
    vis = nacc.render_visibility_from_alpha(alphas, early_stop_eps=0.3, alpha_thre=0.2)
    # T = [1, .6, .12], [1, 1, 0]
    assert vis.tolist() == [[True, True, False], [False, True, False]]


# ---------------------------------------------------------------------------------------------
# accumulate_along_rays and rendering
# ---------------------------------------------------------------------------------------------
@FAST
@with_count_examples
@given(counts=counts_st, seed=seed_st)
def test_accumulate_along_rays(counts, seed):
    g = gen(seed)
    _, ids = packed_from_counts(counts)
    n, n_rays = sum(counts), len(counts)
    perm = torch.randperm(n, generator=g)
    ids_unsorted = ids[perm]  # any order is allowed here
    w = uniform(n, g, -1.0, 1.0)
    for d in (1, 3):
        vals = uniform(n * d, g, -2.0, 2.0).reshape(n, d)
        ref = ref_accumulate(w.tolist(), vals.tolist(), ids_unsorted.tolist(), n_rays, d)
        out = nacc.accumulate_along_rays(w, vals, ids_unsorted, n_rays)
        assert out.shape == (n_rays, d)
        close(out, ref)
    ref = ref_accumulate(w.tolist(), None, ids_unsorted.tolist(), n_rays, 1)
    out = nacc.accumulate_along_rays(w, None, ids_unsorted, n_rays)
    assert out.shape == (n_rays, 1)
    close(out, ref)
    # Extra rays beyond the last index get zeros.
    out = nacc.accumulate_along_rays(w, None, ids, n_rays + 2)
    assert out.shape == (n_rays + 2, 1) and (out[n_rays:] == 0).all()


@FAST
@with_shape_examples
@given(shape=batched_shape_st, seed=seed_st)
def test_accumulate_batched(shape, seed):
    g = gen(seed)
    r, s = shape
    w = uniform(r * s, g, -1.0, 1.0)
    vals = uniform(r * s * 3, g).reshape(r * s, 3)
    ids = [i // s for i in range(r * s)]
    close(
        nacc.accumulate_along_rays(w.reshape(r, s), vals.reshape(r, s, 3)),
        ref_accumulate(w.tolist(), vals.tolist(), ids, r, 3),
    )
    close(nacc.accumulate_along_rays(w.reshape(r, s)), ref_accumulate(w.tolist(), None, ids, r, 1))


def ref_rendering(t0, t1, rgbs, weights, ray_ids, n_rays, bkgd):
    eps = torch.finfo(F64).eps
    colors, opac, depth = [], [], []
    for r in range(n_rays):
        c, o, d = [0.0, 0.0, 0.0], 0.0, 0.0
        for i, q in enumerate(ray_ids):
            if q != r:
                continue
            for k in range(3):
                c[k] += weights[i] * rgbs[i][k]
            o += weights[i]
            d += weights[i] * 0.5 * (t0[i] + t1[i])
        if bkgd is not None:
            c = [c[k] + bkgd[k] * (1.0 - o) for k in range(3)]
        colors.append(c)
        opac.append([o])
        depth.append([d / max(o, eps)])
    return colors, opac, depth


@FAST
@with_count_examples
@given(counts=counts_st, seed=seed_st)
def test_rendering_packed(counts, seed):
    info, ids, t0, t1, sigmas, g = _density_inputs(counts, seed)
    n, n_rays = sum(counts), len(counts)
    rgbs = uniform(n * 3, g).reshape(n, 3)
    alphas = with_specials(uniform(n, g), g, [0.0, 1.0])
    bkgd = uniform(3, g)
    calls = []

    def rgb_sigma_fn(ts, te, ri):
        calls.append(ri)
        assert torch.equal(ts, t0) and torch.equal(te, t1) and torch.equal(ri, ids)
        return rgbs, sigmas

    def rgb_alpha_fn(ts, te, ri):
        assert torch.equal(ri, ids)
        return rgbs, alphas

    w_ref, t_ref, a_ref = ref_weights_from_density(t0.tolist(), t1.tolist(), sigmas.tolist(), chunks(info), n)
    for bg in (None, bkgd):
        colors, opac, depth, extras = nacc.rendering(t0, t1, ids, n_rays, rgb_sigma_fn=rgb_sigma_fn, render_bkgd=bg)
        c_ref, o_ref, d_ref = ref_rendering(
            t0.tolist(), t1.tolist(), rgbs.tolist(), w_ref, ids.tolist(), n_rays, None if bg is None else bg.tolist()
        )
        assert colors.shape == (n_rays, 3) and opac.shape == (n_rays, 1) and depth.shape == (n_rays, 1)
        close(colors, c_ref)
        close(opac, o_ref)
        close(depth, d_ref, rtol=1e-7, atol=1e-9)
        close(extras["weights"], w_ref)
        close(extras["trans"], t_ref)
        close(extras["alphas"], a_ref)
        assert extras["sigmas"] is sigmas and extras["rgbs"] is rgbs
        assert (opac <= 1 + 1e-12).all() and (opac >= -1e-12).all()
    assert len(calls) == 2
    w_ref, _ = ref_weights_from_alpha(alphas.tolist(), chunks(info), n)
    colors, opac, depth, extras = nacc.rendering(t0, t1, ids, n_rays, rgb_alpha_fn=rgb_alpha_fn, render_bkgd=bkgd)
    c_ref, o_ref, d_ref = ref_rendering(t0.tolist(), t1.tolist(), rgbs.tolist(), w_ref, ids.tolist(), n_rays, bkgd)
    close(colors, c_ref)
    close(opac, o_ref)
    close(depth, d_ref, rtol=1e-7, atol=1e-9)
    close(extras["weights"], w_ref)
    assert extras["alphas"] is alphas and "sigmas" not in extras


@FAST
@with_shape_examples
@given(shape=batched_shape_st, seed=seed_st)
def test_rendering_batched(shape, seed):
    g = gen(seed)
    r, s = shape
    t0, t1 = intervals([s] * r, g)
    sigmas = uniform(r * s, g, 0.0, 5.0)
    rgbs = uniform(r * s * 3, g).reshape(r * s, 3)
    bkgd = uniform(3, g)

    def rgb_sigma_fn(ts, te, ri):
        assert ri is None and ts.shape == (r, s)
        return rgbs.reshape(r, s, 3), sigmas.reshape(r, s)

    colors, opac, depth, _ = nacc.rendering(
        t0.reshape(r, s), t1.reshape(r, s), rgb_sigma_fn=rgb_sigma_fn, render_bkgd=bkgd
    )
    info = [(i * s, s) for i in range(r)]
    w_ref, _, _ = ref_weights_from_density(t0.tolist(), t1.tolist(), sigmas.tolist(), info, r * s)
    ids = [i // s for i in range(r * s)]
    c_ref, o_ref, d_ref = ref_rendering(t0.tolist(), t1.tolist(), rgbs.tolist(), w_ref, ids, r, bkgd.tolist())
    close(colors, c_ref)
    close(opac, o_ref)
    close(depth, d_ref, rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Distortion
# ---------------------------------------------------------------------------------------------
@FAST
@with_count_examples
@given(counts=counts_st, seed=seed_st)
def test_distortion_vs_double_sum(counts, seed):
    if sum(counts) > 120:  # keep the O(n^2) Python loop cheap: use a shorter long ray
        counts = [min(c, 120) for c in counts]
    g = gen(seed)
    _, ids = packed_from_counts(counts)
    n, n_rays = sum(counts), len(counts)
    t0, t1 = intervals(counts, g)
    w = with_specials(uniform(n, g), g, [0.0])
    ref = ref_distortion(w.tolist(), t0.tolist(), t1.tolist(), ids.tolist(), n_rays)
    out = nacc.distortion(w, t0, t1, ids, n_rays)
    assert out.shape == (n_rays,)
    close(out, ref, rtol=1e-8, atol=1e-10)
    assert (out >= -1e-12).all()
    if n_rays > 0 and counts[-1] > 0:
        close(nacc.distortion(w, t0, t1, ids), ref)  # n_rays inferred


@FAST
@with_shape_examples
@given(shape=batched_shape_st, seed=seed_st)
def test_distortion_batched(shape, seed):
    g = gen(seed)
    r, s = shape
    s = min(s, 60)
    t0, t1 = intervals([s] * r, g)
    w = uniform(r * s, g)
    ids = [i // s for i in range(r * s)]
    ref = ref_distortion(w.tolist(), t0.tolist(), t1.tolist(), ids, r)
    out = nacc.distortion(w.reshape(r, s), t0.reshape(r, s), t1.reshape(r, s))
    assert out.shape == (r,)
    close(out, ref, rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# searchsorted and importance_sampling
# ---------------------------------------------------------------------------------------------
def sorted_per_ray(counts: list[int], g: torch.Generator, dup: bool = True) -> torch.Tensor:
    vals = []
    for c in counts:
        v = float(torch.rand(1, generator=g, dtype=F64))
        for _ in range(c):
            step = float(torch.rand(1, generator=g, dtype=F64))
            if dup and float(torch.rand(1, generator=g)) < 0.15:
                step = 0.0  # repeated value
            v += step
            vals.append(v)
    return torch.tensor(vals, dtype=F64)


def ref_searchsorted(s: list[float], s_info, q: list[float], q_info, n_sorted: int) -> tuple[list[int], list[int]]:
    """nerfacc 0.5's rule (pdf.cu): p = b + #entries of s[b .. l-1] <= v (the last entry l = b + c - 1 is not
    searched); left = max(min(p - 1, l), b), right = max(min(p, l), b)."""
    left, right = [0] * len(q), [0] * len(q)
    for (b, c), (qb, qc) in zip(s_info, q_info, strict=True):
        for i in range(qb, qb + qc):
            if c == 0:
                idx = min(b, n_sorted - 1) if n_sorted > 0 else b
                left[i] = right[i] = idx
                continue
            last = b + c - 1
            p = b + sum(1 for k in range(b, last) if s[k] <= q[i])
            left[i], right[i] = max(min(p - 1, last), b), max(min(p, last), b)
    return left, right


@FAST
@with_count_examples
@given(counts=counts_st, seed=seed_st)
def test_searchsorted_packed(counts, seed):
    g = gen(seed)
    s_info, _ = packed_from_counts(counts)
    q_counts = [int(torch.randint(0, 6, (1,), generator=g)) for _ in counts]
    q_info, _ = packed_from_counts(q_counts)
    s = sorted_per_ray(counts, g)
    q_list = []
    for (b, c), (_, qc) in zip(chunks(s_info), chunks(q_info), strict=True):
        lo = float(s[b]) if c else 0.0
        hi = float(s[b + c - 1]) if c else 1.0
        for j in range(qc):
            u = float(torch.rand(1, generator=g, dtype=F64))
            choice = j % 4
            if choice == 0 and c:
                q_list.append(float(s[b + int(torch.randint(0, c, (1,), generator=g))]))  # exactly an entry
            elif choice == 1:
                q_list.append(lo - 1.0 + (hi - lo + 2.0) * u)  # possibly out of range
            else:
                q_list.append(lo + (hi - lo) * u)
    q = torch.tensor(q_list, dtype=F64)
    left, right = nacc.searchsorted(
        nacc.RayIntervals(vals=s, packed_info=s_info), nacc.RaySamples(vals=q, packed_info=q_info)
    )
    assert left.dtype == torch.long and left.shape == q.shape
    l_ref, r_ref = ref_searchsorted(s.tolist(), chunks(s_info), q_list, chunks(q_info), s.numel())
    assert left.tolist() == l_ref
    assert right.tolist() == r_ref
    # The invariants themselves, straight from the contract.
    for (b, c), (qb, qc) in zip(chunks(s_info), chunks(q_info), strict=True):
        for i in range(qb, qb + qc):
            v = q_list[i]
            if c >= 2:
                assert b <= int(left[i]) <= int(right[i]) <= b + c - 1
                assert int(left[i]) < int(right[i]) or v < float(s[b])
                if float(s[b]) <= v < float(s[b + c - 1]):
                    assert float(s[left[i]]) <= v < float(s[right[i]])
                elif v < float(s[b]):
                    assert (int(left[i]), int(right[i])) == (b, b)  # nerfacc: clipped to the first entry
                else:
                    assert float(s[right[i]]) == float(s[b + c - 1]) and float(s[left[i]]) <= v
    # Same answers through ray_indices.
    if counts and counts[-1] > 0 and q_counts[-1] > 0:
        _, s_ids = packed_from_counts(counts)
        _, q_ids = packed_from_counts(q_counts)
        l2, r2 = nacc.searchsorted(
            nacc.RayIntervals(vals=s, ray_indices=s_ids), nacc.RaySamples(vals=q, ray_indices=q_ids)
        )
        assert l2.tolist() == l_ref and r2.tolist() == r_ref


@FAST
@given(n_rays=st.integers(0, 4), n_s=st.integers(1, 8), n_q=st.integers(1, 8), seed=seed_st, pack_q=st.booleans())
@example(n_rays=1, n_s=1, n_q=3, seed=0, pack_q=False)
@example(n_rays=2, n_s=2, n_q=1, seed=1, pack_q=True)
def test_searchsorted_batched(n_rays, n_s, n_q, seed, pack_q):
    g = gen(seed)
    s = sorted_per_ray([n_s] * n_rays, g).reshape(n_rays, n_s)
    q = (s[:, :1] - 0.5 + (s[:, -1:] - s[:, :1] + 1.0) * torch.rand(n_rays, n_q, generator=g, dtype=F64)).reshape(
        n_rays, n_q
    )
    if pack_q:
        q_info, _ = packed_from_counts([n_q] * n_rays)
        left, right = nacc.searchsorted(
            nacc.RayIntervals(vals=s), nacc.RaySamples(vals=q.reshape(-1), packed_info=q_info)
        )
        # flattened queries index the flattened sequence (nerfacc: the query's layout decides)
        row_start = (torch.arange(n_rays) * n_s)[:, None]
        left, right = left.reshape(n_rays, n_q) - row_start, right.reshape(n_rays, n_q) - row_start
    else:
        left, right = nacc.searchsorted(nacc.RayIntervals(vals=s), nacc.RaySamples(vals=q))
    assert left.shape == (n_rays, n_q)
    for r in range(n_rays):
        l_ref, r_ref = ref_searchsorted(s[r].tolist(), [(0, n_s)], q[r].tolist(), [(0, n_q)], n_s)
        assert left[r].tolist() == l_ref and right[r].tolist() == r_ref


def monotone_cdfs(counts: list[int], g: torch.Generator) -> torch.Tensor:
    out = []
    for c in counts:
        v = float(torch.rand(1, generator=g, dtype=F64))
        for k in range(c):
            if k > 0:
                inc = float(torch.rand(1, generator=g, dtype=F64))
                if float(torch.rand(1, generator=g)) < 0.3:
                    inc = 0.0  # flat stretch of the CDF
                v += inc
            out.append(v)
    return torch.tensor(out, dtype=F64)


def ref_importance(t: list[float], c: list[float], info, n_per_ray: list[int], bias: list[float]):
    """Per-ray loop of the docstring's inverse-CDF rule."""
    samples, edges = [], []
    for (b, cnt), n, bi in zip(info, n_per_ray, bias, strict=True):
        if cnt == 0 or n == 0:
            samples.append([])
            edges.append([])
            continue
        last = b + cnt - 1
        ray_s = []
        for j in range(n):
            u = c[b] + (j + bi) * (c[last] - c[b]) / n
            p = sum(1 for k in range(b, last) if c[k] <= u)
            p0 = min(max(b + p - 1, b), last)
            p1 = min(max(b + p, b), last)
            if c[p1] - c[p0] < 1e-10:
                ray_s.append(0.5 * (t[p0] + t[p1]))
            else:
                ray_s.append(t[p0] + (u - c[p0]) * (t[p1] - t[p0]) / (c[p1] - c[p0]))
        if n == 1:
            ray_e = [t[b], t[last]]
        else:
            ray_e = [max(ray_s[0] - 0.5 * (ray_s[1] - ray_s[0]), t[b])]
            ray_e += [0.5 * (ray_s[k - 1] + ray_s[k]) for k in range(1, n)]
            ray_e.append(min(ray_s[-1] + 0.5 * (ray_s[-1] - ray_s[-2]), t[last]))
        samples.append(ray_s)
        edges.append(ray_e)
    return samples, edges


def check_sampling_invariants(t, info, n_per_ray, samples, edges):
    for (b, cnt), n, ray_s, ray_e in zip(info, n_per_ray, samples, edges, strict=True):
        if cnt == 0 or n == 0:
            assert ray_s == [] and ray_e == []
            continue
        lo, hi = t[b], t[b + cnt - 1]
        assert len(ray_s) == n and len(ray_e) == n + 1
        tol = 1e-12 * (1 + abs(lo) + abs(hi))
        assert all(lo - tol <= x <= hi + tol for x in ray_s)
        assert all(lo - tol <= x <= hi + tol for x in ray_e)
        assert all(a <= b_ + tol for a, b_ in zip(ray_s, ray_s[1:], strict=False)), "samples not sorted"
        for k in range(n):
            assert ray_e[k] <= ray_s[k] + tol and ray_s[k] <= ray_e[k + 1] + tol, "edges must interleave samples"


def split(vals: torch.Tensor, info) -> list[list[float]]:
    flat = vals.reshape(-1).tolist()
    return [flat[b : b + c] for b, c in info]


@FAST
@with_count_examples
@given(counts=counts_st, seed=seed_st)
def test_importance_sampling_packed(counts, seed):
    if sum(counts) > 100:
        counts = [min(c, 100) for c in counts]
    g = gen(seed)
    info, _ = packed_from_counts(counts)
    t = sorted_per_ray(counts, g, dup=False)
    cdfs = monotone_cdfs(counts, g)
    n_per_ray = [int(x) for x in torch.randint(0, 6, (len(counts),), generator=g)]
    iv = nacc.RayIntervals(vals=t, packed_info=info)
    new_iv, new_s = nacc.importance_sampling(iv, cdfs, torch.tensor(n_per_ray, dtype=torch.long))
    s_info = chunks(new_s.packed_info)
    e_info = chunks(new_iv.packed_info)
    expect_n = [n if c > 0 else 0 for n, c in zip(n_per_ray, counts, strict=True)]
    assert [c for _, c in s_info] == expect_n
    assert [c for _, c in e_info] == [n + 1 if n > 0 else 0 for n in expect_n]
    samples, edges = split(new_s.vals, s_info), split(new_iv.vals, e_info)
    s_ref, e_ref = ref_importance(t.tolist(), cdfs.tolist(), chunks(info), n_per_ray, [0.5] * len(counts))
    for a, b in zip(samples, s_ref, strict=True):
        close(torch.tensor(a, dtype=F64), b, rtol=1e-9, atol=1e-9)
    for a, b in zip(edges, e_ref, strict=True):
        close(torch.tensor(a, dtype=F64), b, rtol=1e-9, atol=1e-9)
    check_sampling_invariants(t.tolist(), chunks(info), n_per_ray, samples, edges)
    # Ray indices / is_left / is_right of the packed intervals.
    e_rays = [r for r, (_, c) in enumerate(e_info) for _ in range(c)]
    assert new_iv.ray_indices.tolist() == e_rays
    assert new_s.ray_indices.tolist() == [r for r, (_, c) in enumerate(s_info) for _ in range(c)]
    lefts = [k < c - 1 for _, c in e_info for k in range(c)]
    rights = [k > 0 for _, c in e_info for k in range(c)]
    assert new_iv.is_left.tolist() == lefts and new_iv.is_right.tolist() == rights
    # Stratified sampling keeps every invariant.
    new_iv, new_s = nacc.importance_sampling(iv, cdfs, torch.tensor(n_per_ray, dtype=torch.long), stratified=True)
    check_sampling_invariants(
        t.tolist(),
        chunks(info),
        n_per_ray,
        split(new_s.vals, chunks(new_s.packed_info)),
        split(new_iv.vals, chunks(new_iv.packed_info)),
    )


@FAST
@given(n_rays=st.integers(0, 4), n_edges=st.integers(1, 9), n=st.integers(1, 8), seed=seed_st)
@example(n_rays=1, n_edges=1, n=1, seed=0)
@example(n_rays=2, n_edges=2, n=1, seed=1)
@example(n_rays=1, n_edges=200, n=64, seed=2)
def test_importance_sampling_int_vs_tensor(n_rays, n_edges, n, seed):
    g = gen(seed)
    t = sorted_per_ray([n_edges] * n_rays, g, dup=False).reshape(n_rays, n_edges)
    cdfs = monotone_cdfs([n_edges] * n_rays, g).reshape(n_rays, n_edges)
    iv_b, s_b = nacc.importance_sampling(nacc.RayIntervals(vals=t), cdfs, n)
    assert iv_b.vals.shape == (n_rays, n + 1) and s_b.vals.shape == (n_rays, n)
    info, _ = packed_from_counts([n_edges] * n_rays)
    iv_p, s_p = nacc.importance_sampling(
        nacc.RayIntervals(vals=t.reshape(-1), packed_info=info), cdfs.reshape(-1), torch.full((n_rays,), n)
    )
    close(s_b.vals.reshape(-1), s_p.vals, rtol=0, atol=0)
    close(iv_b.vals.reshape(-1), iv_p.vals, rtol=0, atol=0)
    s_ref, e_ref = ref_importance(
        t.reshape(-1).tolist(), cdfs.reshape(-1).tolist(), chunks(info), [n] * n_rays, [0.5] * n_rays
    )
    close(s_b.vals, [x for r in s_ref for x in r], rtol=1e-9, atol=1e-9)
    close(iv_b.vals, [x for r in e_ref for x in r], rtol=1e-9, atol=1e-9)
    check_sampling_invariants(t.reshape(-1).tolist(), chunks(info), [n] * n_rays, s_b.vals.tolist(), iv_b.vals.tolist())
    # float32: the same invariants hold exactly (no sample or edge leaves the ray's float32 range).
    t32 = t.float()
    iv_f, s_f = nacc.importance_sampling(nacc.RayIntervals(vals=t32), cdfs.float(), n, stratified=seed % 2 == 1)
    assert s_f.vals.dtype == torch.float32
    check_sampling_invariants(
        t32.reshape(-1).tolist(), chunks(info), [n] * n_rays, s_f.vals.tolist(), iv_f.vals.tolist()
    )
    iv_s, s_s = nacc.importance_sampling(nacc.RayIntervals(vals=t), cdfs, n, stratified=True)
    check_sampling_invariants(t.reshape(-1).tolist(), chunks(info), [n] * n_rays, s_s.vals.tolist(), iv_s.vals.tolist())


def test_importance_sampling_uniform_cdf_is_uniform():
    t = torch.linspace(0.0, 4.0, 5, dtype=F64)[None]
    cdf = torch.linspace(0.0, 1.0, 5, dtype=F64)[None]
    iv, s = nacc.importance_sampling(nacc.RayIntervals(vals=t), cdf, 8)
    close(s.vals, [(j + 0.5) * 0.5 for j in range(8)])
    close(iv.vals, [j * 0.5 for j in range(9)])


# ---------------------------------------------------------------------------------------------
# pack_info
# ---------------------------------------------------------------------------------------------
@FAST
@with_count_examples
@given(counts=counts_st, seed=seed_st)
def test_pack_info_round_trip(counts, seed):
    _, ids = packed_from_counts(counts)
    n_rays = len(counts)
    info = nacc.pack_info(ids, n_rays)
    assert info.dtype == torch.long and info.shape == (n_rays, 2)
    start = 0
    for r, c in enumerate(counts):
        assert info[r].tolist() == [start, c]
        start += c
    assert torch.equal(nacc.unpack_info(info, ids.numel()), ids)
    inferred = nacc.pack_info(ids)
    last_nonempty = max((r for r, c in enumerate(counts) if c > 0), default=-1)
    assert inferred.shape == (last_nonempty + 1, 2)
    assert torch.equal(inferred, info[: last_nonempty + 1])


# ---------------------------------------------------------------------------------------------
# Contraction
# ---------------------------------------------------------------------------------------------
def ref_contract_point(p: list[float], aabb: list[float], ord: str) -> list[float]:
    z = [(p[k] - 0.5 * (aabb[k] + aabb[k + 3])) / (0.5 * (aabb[k + 3] - aabb[k])) for k in range(3)]
    m = max(abs(v) for v in z) if ord == "linf" else math.sqrt(sum(v * v for v in z))
    if m > 1.0:
        z = [(2.0 - 1.0 / m) * v / m for v in z]
    return [v / 4.0 + 0.5 for v in z]


aabb_st = st.tuples(
    st.floats(-3, 3), st.floats(-3, 3), st.floats(-3, 3), st.floats(0.1, 4), st.floats(0.1, 4), st.floats(0.1, 4)
).map(lambda a: [a[0], a[1], a[2], a[0] + a[3], a[1] + a[4], a[2] + a[5]])


@pytest.mark.parametrize("ord", ["l2", "linf"])
@FAST
@given(aabb=aabb_st, seed=seed_st, n=st.integers(0, 40))
@example(aabb=[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], seed=0, n=0)
@example(aabb=[0.0, 0.0, 0.0, 1.0, 2.0, 3.0], seed=1, n=1)
def test_contract_matches_formula_and_round_trips(ord, aabb, seed, n):
    g = gen(seed)
    box = torch.tensor(aabb, dtype=F64)
    center, half = (box[:3] + box[3:]) / 2, (box[3:] - box[:3]) / 2
    # Points from deep inside to far outside the box (|z| up to ~1e3).
    scale = torch.pow(10.0, uniform(n, g, -1.0, 3.0))[:, None]
    dirs = torch.randn(n, 3, generator=g, dtype=F64)
    x = center + dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12) * scale * half
    y = nacc.contract(x, box, ord=ord)
    assert y.shape == (n, 3)
    close(y, [ref_contract_point(p, aabb, ord) for p in x.tolist()], rtol=1e-9, atol=1e-12)
    assert ((y >= 0) & (y <= 1)).all()
    x_back = nacc.uncontract(y, box, ord=ord)
    torch.testing.assert_close(x_back, x, rtol=1e-6, atol=1e-9)
    # float32 and batched leading dims.
    y32 = nacc.contract(x.float().reshape(1, n, 3), box.float(), ord=ord)
    assert y32.shape == (1, n, 3) and y32.dtype == torch.float32
    torch.testing.assert_close(y32.reshape(n, 3).double(), y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ord", ["l2", "linf"])
@FAST
@given(aabb=aabb_st, seed=seed_st)
def test_contract_inner_region_is_linear(ord, aabb, seed):
    """Inside the box (linf) / inscribed ball (l2) contraction is the affine map onto [0.25, 0.75]^3."""
    g = gen(seed)
    box = torch.tensor(aabb, dtype=F64)
    lo, hi = box[:3], box[3:]
    u = uniform(60, g, -1.0, 1.0).reshape(20, 3)
    if ord == "l2":
        u = u / u.norm(dim=-1, keepdim=True).clamp_min(1.0)  # inside the unit ball
    u = torch.cat([u, torch.tensor([[1.0, -1.0, 1.0]], dtype=F64) if ord == "linf" else torch.eye(3, dtype=F64)])
    x = (lo + hi) / 2 + u * (hi - lo) / 2
    y = nacc.contract(x, box, ord=ord)
    expect = (x - lo) / (hi - lo) * 0.5 + 0.25
    torch.testing.assert_close(y, expect, rtol=1e-12, atol=1e-12)
    assert ((y >= 0.25 - 1e-12) & (y <= 0.75 + 1e-12)).all()
    torch.testing.assert_close(nacc.uncontract(y, box, ord=ord), x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ord", ["l2", "linf"])
def test_contract_outside_goes_to_shell(ord):
    box = torch.tensor([-1.0, -2.0, 0.0, 1.0, 2.0, 4.0], dtype=F64)
    x = torch.tensor([[5.0, 0.0, 2.0], [0.0, 100.0, 2.0], [1e6, 1e6, 1e6]], dtype=F64)
    zc = (nacc.contract(x, box, ord=ord) - 0.5) * 4.0
    norm = zc.abs().amax(-1) if ord == "linf" else zc.norm(dim=-1)
    assert ((norm > 1.0) & (norm < 2.0)).all()
    # Further along a ray from the centre means further out in the shell.
    assert norm[0] < norm[1] < norm[2]
