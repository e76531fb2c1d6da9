"""The documented float32 tolerance of grid traversal (docs/traversal.md), checked against the float64 reference.

The float64 side is ``_torch_impl._traverse_grids`` (vectorised PyTorch over every lattice point, no empty-cell
skipping, no shared code with the C++ march). The rule, with ``eps = 2**-24``:

* A sample present in both outputs (same ray, start within the t tolerance) must agree to
  ``|t_f32 - t_f64| <= T_ULPS * eps * (|t| + |near| + step) * (1 + ln(max(1, t / t_K)))``, where ``t_K`` is where
  cone stepping turns geometric (``t_K = t`` without cone stepping, so the log term is 0).
* A sample present in only one output must have its midpoint ``m`` close to a decision boundary: the point
  ``x = o + m d`` within ``eta_a = X_ULPS * eps * (|o_a| + |lo_a| + |hi_a| + 2 |m d_a|) + |d_a| * tau(m)`` of a cell
  plane of some level along some axis ``a`` (cell faces and box faces), or ``m`` within ``tau(m)`` of the ray's
  far value.
"""

from __future__ import annotations

import math

import torch

from nerfaccel_plugin import _torch_impl as R

EPS32 = 2.0**-24
T_ULPS = 16.0
X_ULPS = 32.0


def _t_tol(t: float, near: float, step: float, cone: float) -> float:
    geo = 0.0
    if cone > 0:
        thresh = step / cone
        n_uniform = max(math.ceil((thresh - near) / step), 0)
        t_k = near + n_uniform * step
        if t_k > 0 and t > t_k:
            geo = math.log(t / t_k)
    return T_ULPS * EPS32 * (abs(t) + abs(near) + step) * (1.0 + geo)


def _near_boundary(m, o, d, aabbs, res, far, tau) -> bool:
    if abs(m - far) <= tau:
        return True
    for lvl in range(aabbs.shape[0]):
        for a in range(3):
            lo, hi = float(aabbs[lvl, a]), float(aabbs[lvl, a + 3])
            x = o[a] + m * d[a]
            cs = (hi - lo) / res[a]
            p = lo + round((x - lo) / cs) * cs
            eta = X_ULPS * EPS32 * (abs(o[a]) + abs(lo) + abs(hi) + 2 * abs(m * d[a])) + abs(d[a]) * tau
            if abs(x - p) <= eta:
                return True
    return False


def check_traversal(got, rays_o, rays_d, binaries, aabbs, near, far, step, cone, ref=None) -> dict:
    """Asserts that ``got`` (float32 traversal output) is within the documented tolerance of the float64 rule.

    Returns counts: ``matched``, ``only_one`` (samples in one output only, all near a boundary) and ``max_t_ulps``.
    """
    o64, d64, a64 = rays_o.double().cpu(), rays_d.double().cpu(), aabbs.double().cpu()
    n64, f64 = near.double().cpu(), far.double().cpu()
    if ref is None:
        ref = R._traverse_grids(o64, d64, binaries.cpu(), a64, n64, f64, step, cone)
    gi, g0, g1 = (x.cpu() for x in got)
    ri, r0, r1 = ref
    assert gi.dtype == torch.long and g0.shape == g1.shape == gi.shape
    if gi.numel():
        assert bool((gi[1:] >= gi[:-1]).all()), "ray indices must be sorted"
        assert bool((g1 > g0).all()), "t_ends must exceed t_starts"
    res = binaries.shape[1:]
    # Per-ray lists of (t0, t1).
    def split(idx, a, b):
        out = {}
        for r, x, y in zip(idx.tolist(), a.double().tolist(), b.double().tolist(), strict=True):
            out.setdefault(r, []).append((x, y))
        return out

    G, F = split(gi, g0, g1), split(ri, r0, r1)
    matched = only = 0
    worst = 0.0
    for r in set(G) | set(F):
        gs, fs = G.get(r, []), F.get(r, [])
        o, d = o64[r].tolist(), d64[r].tolist()
        nr, fr = float(n64[r]), float(f64[r])
        i = j = 0
        while i < len(gs) or j < len(fs):
            if i < len(gs) and j < len(fs):
                tg, tf = gs[i], fs[j]
                tol0 = _t_tol(tf[0], nr, step, cone)
                tol1 = _t_tol(tf[1], nr, step, cone)
                if abs(tg[0] - tf[0]) <= tol0:
                    assert abs(tg[1] - tf[1]) <= tol1, f"ray {r}: t_end {tg[1]} vs float64 {tf[1]}"
                    worst = max(worst, abs(tg[0] - tf[0]) / (EPS32 * (abs(tf[0]) + abs(nr) + step)))
                    matched += 1
                    i += 1
                    j += 1
                    continue
                lone, from_got = (tg, True) if tg[0] < tf[0] else (tf, False)
            elif i < len(gs):
                lone, from_got = gs[i], True
            else:
                lone, from_got = fs[j], False
            m = 0.5 * (lone[0] + lone[1])
            tau = _t_tol(m, nr, step, cone)
            assert _near_boundary(m, o, d, a64, res, fr, tau), (
                f"ray {r}: sample [{lone[0]!r}, {lone[1]!r}] only in the {'float32' if from_got else 'float64'} "
                f"output, and its midpoint is not within the stated tolerance of a cell plane or of far"
            )
            only += 1
            if from_got:
                i += 1
            else:
                j += 1
    return {"matched": matched, "only_one": only, "max_t_ulps": worst, "n_ref": int(ri.numel())}
