"""Exact geometry of the brick model: flat primitive arrays, ray casting, occupancy.

At a given time every primitive is flattened to a world pose (rotation + centre), a half-extent and an albedo
(:class:`FlatScene`), and all queries (ray casting, occupancy) run on those flat arrays with torch in float64.

Ray casting is exact: a cheap bounding-sphere test (written as matrix products, so it never builds
``rays x primitives x 3`` arrays) picks candidate (ray, primitive) pairs, each pair is intersected
analytically in the primitive's local frame (slab test for boxes; quadratic plus caps for cylinders),
and the nearest hit per ray wins.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .content import BOX, Primitive


class FlatScene:
    """The model frozen at one time: flat float64 tensors, one row per primitive."""

    def __init__(self, prims: list[Primitive]) -> None:
        self.kind = torch.tensor([p.kind for p in prims], dtype=torch.long)
        self.rot = torch.tensor(np.stack([p.rot for p in prims]), dtype=torch.float64)  # world-from-local
        self.center = torch.tensor(np.stack([p.center for p in prims]), dtype=torch.float64)
        self.half = torch.tensor(np.stack([p.half for p in prims]), dtype=torch.float64)
        self.color = torch.tensor(np.array([p.color for p in prims]), dtype=torch.float64)
        self.radius = self.half.norm(dim=-1) * (1 + 1e-6) + 1e-9
        self._c2 = (self.center**2).sum(-1)
        # float32 copies for the coarse candidate tests, with radii padded to absorb rounding
        self._center32 = self.center.float()
        self._c2_32 = self._c2.float()
        self._r32 = (self.radius * (1 + 1e-4) + 1e-3).float()

    def __len__(self) -> int:
        return self.kind.shape[0]

    def corners(self) -> Tensor:
        """World-space corners of every primitive's local bounding box, ``(P*8, 3)``."""
        s = torch.tensor([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], dtype=torch.float64)
        local = s[None] * self.half[:, None]  # [P, 8, 3]
        return (torch.einsum("pij,pkj->pki", self.rot, local) + self.center[:, None]).reshape(-1, 3)

    def candidates_points(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(point, primitive) pairs whose bounding sphere holds the point (a superset of the true pairs)."""
        x = x.float()
        d2 = (x**2).sum(-1, keepdim=True) - 2 * x @ self._center32.T + self._c2_32[None]
        return torch.nonzero(d2 <= self._r32[None] ** 2, as_tuple=True)

    def occupancy(self, x: Tensor, chunk: int = 1 << 16, binned: bool = True) -> Tensor:
        """Inside test for ``(n, 3)`` float64 points. Candidates come from binning the primitives' xy
        footprints (``binned``) or from the bounding-sphere test; the final test is exact either way."""
        out = torch.zeros(x.shape[0], dtype=torch.bool)
        if binned:
            cxy = self.corners()[:, :2].reshape(-1, 8, 2)
            lo, hi = cxy.min(1).values, cxy.max(1).values
        for s in range(0, x.shape[0], chunk if binned else 16384):
            xs = x[s : s + (chunk if binned else 16384)]
            pi_, ki = _pairs_2d(xs[:, :2], lo, hi) if binned else self.candidates_points(xs)
            if pi_.numel() == 0:
                continue
            q = torch.einsum("nji,nj->ni", self.rot[ki], xs[pi_] - self.center[ki])
            h = self.half[ki]
            in_box = (q.abs() <= h).all(-1)
            in_cyl = (q[:, 0] ** 2 + q[:, 1] ** 2 <= h[:, 0] ** 2) & (q[:, 2].abs() <= h[:, 2])
            inside = torch.where(self.kind[ki] == BOX, in_box, in_cyl)
            out[s : s + xs.shape[0]].index_fill_(0, pi_[inside], True)
        return out

    def cast(self, o: Tensor, d: Tensor, t_min: float = 0.0, chunk: int = 8192) -> tuple[Tensor, Tensor, Tensor]:
        """Nearest hit beyond ``t_min`` of rays ``o + t d`` (``d`` unit length).

        Returns ``(t, normal, prim)``: ``t`` is ``inf`` and ``prim`` is -1 where the ray misses.
        Parallel rays and rays from one origin take binned fast paths; other rays a matrix test.
        """
        n = o.shape[0]
        if n > 1 and bool(((d - d[:1]).abs() <= 1e-12).all()):
            return self.cast_parallel(o, d[0], t_min)
        if n > 1 and bool(((o - o[:1]).abs() <= 1e-12).all()):
            mean = d.mean(0)
            if float(mean.norm()) > 1e-6:
                rot = _frame_from_back(-mean / mean.norm())
                dc = d @ rot
                if bool((dc[:, 2] < -1e-3).all()):
                    c2w = torch.cat([rot, o[0, :, None]], 1)
                    t, nrm, prim, _ = self.cast_pinhole(c2w, dc / -dc[:, 2:3], t_min)
                    return t, nrm, prim
        t_out = torch.full((n,), math.inf, dtype=torch.float64)
        n_out = torch.zeros((n, 3), dtype=torch.float64)
        p_out = torch.full((n,), -1, dtype=torch.long)
        for s in range(0, n, chunk):
            t, nr, pr = self._cast_chunk(o[s : s + chunk], d[s : s + chunk], t_min)
            t_out[s : s + chunk], n_out[s : s + chunk], p_out[s : s + chunk] = t, nr, pr
        return t_out, n_out, p_out

    def _cast_chunk(self, o: Tensor, d: Tensor, t_min: float) -> tuple[Tensor, Tensor, Tensor]:
        # Bounding-sphere test as matrix products: |c - o|^2 - ((c - o).d)^2 <= r^2 and sphere not behind.
        # (float32 with padded radii: only a superset of candidates is needed, the exact test is float64)
        o32, d32, r32 = o.float(), d.float(), self._r32[None]
        proj = d32 @ self._center32.T - (o32 * d32).sum(-1, keepdim=True)  # [n, P]
        dist2 = (o32**2).sum(-1, keepdim=True) - 2 * o32 @ self._center32.T + self._c2_32[None]
        cand = (dist2 - proj**2 <= r32**2) & (proj + r32 > t_min)
        ri, ki = torch.nonzero(cand, as_tuple=True)
        return self.intersect_pairs(o, d, ri, ki, t_min)

    def cast_pinhole(self, c2w: Tensor, cam_dirs: Tensor, t_min: float = 0.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Like :meth:`cast` for rays from one camera centre, with screen-space binning of primitives.

        Args:
            c2w: ``(3, 4)`` camera-to-world matrix.
            cam_dirs: ``(n, 3)`` ray directions in camera coordinates with ``z = -1``.
            t_min: Hits closer than this are ignored.

        Returns:
            ``(t, normal, prim, d)`` with ``d`` the unit world directions.
        """
        rot, origin = c2w[:3, :3], c2w[:3, 3]
        d = cam_dirs @ rot.T
        d = d / d.norm(dim=-1, keepdim=True)
        pc = (self.corners() - origin) @ rot  # camera-frame corners, [P*8, 3]
        pc = pc.reshape(-1, 8, 3)
        z = -pc[..., 2]
        front = (z > 1e-6).all(-1)
        xy = pc[..., :2] / z.clamp_min(1e-6)[..., None]
        lo = torch.where(front[:, None], xy.min(1).values, torch.full_like(xy[:, 0], -math.inf))
        hi = torch.where(front[:, None], xy.max(1).values, torch.full_like(xy[:, 0], math.inf))
        o = origin.expand_as(d)
        t, n, p = self._binned(o, d, cam_dirs[:, :2], lo, hi, t_min)
        return t, n, p, d

    def _binned(
        self, o: Tensor, d: Tensor, key: Tensor, lo: Tensor, hi: Tensor, t_min: float, chunk: int = 1 << 16
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Nearest hits, pairing each ray (2D ``key``) with the primitives whose 2D box ``[lo, hi]`` covers it."""
        outs = []
        for s in range(0, o.shape[0], chunk):
            ri, ki = _pairs_2d(key[s : s + chunk], lo, hi)
            outs.append(self.intersect_pairs(o[s : s + chunk], d[s : s + chunk], ri, ki, t_min))
        if len(outs) == 1:
            return outs[0]
        return tuple(torch.cat(parts) for parts in zip(*outs, strict=True))  # type: ignore[return-value]

    def cast_parallel(self, points: Tensor, direction: Tensor, t_min: float) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`cast` for rays that share one unit ``direction``, binned in the plane across it."""
        basis = _frame_from_back(direction)[:, :2]  # [3, 2], both axes orthogonal to the direction
        cp = (self.corners() @ basis).reshape(-1, 8, 2)
        return self._binned(
            points, direction.expand_as(points), points @ basis, cp.min(1).values, cp.max(1).values, t_min
        )

    def cast_directional(self, points: Tensor, direction: Tensor, t_min: float) -> Tensor:
        """Whether rays from ``points`` along the unit ``direction`` hit anything beyond ``t_min`` (bool ``(n,)``)."""
        return torch.isfinite(self.cast_parallel(points, direction, t_min)[0])

    def intersect_pairs(
        self, o: Tensor, d: Tensor, ri: Tensor, ki: Tensor, t_min: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Exact nearest hit per ray over the candidate (ray ``ri``, primitive ``ki``) pairs."""
        n = o.shape[0]
        t_best = torch.full((n,), math.inf, dtype=torch.float64)
        normal = torch.zeros((n, 3), dtype=torch.float64)
        prim = torch.full((n,), -1, dtype=torch.long)
        if ri.numel() == 0:
            return t_best, normal, prim
        rot = self.rot[ki]
        ol = torch.einsum("nji,nj->ni", rot, o[ri] - self.center[ki])
        dl = torch.einsum("nji,nj->ni", rot, d[ri])
        h = self.half[ki]
        tb, nb = _hit_box(ol, dl, h, t_min)
        tc, nc = _hit_cylinder(ol, dl, h, t_min)
        is_box = self.kind[ki] == BOX
        t = torch.where(is_box, tb, tc)
        nl = torch.where(is_box[:, None], nb, nc)
        hit = torch.isfinite(t)
        ri, ki, t, nl, rot = ri[hit], ki[hit], t[hit], nl[hit], rot[hit]
        t_best.scatter_reduce_(0, ri, t, reduce="amin")
        win = t == t_best[ri]
        # ties (coincident faces) resolve to the highest primitive index, deterministically
        prim.scatter_reduce_(0, ri[win], ki[win], reduce="amax")
        sel = win & (ki == prim[ri])
        normal[ri[sel]] = torch.einsum("nij,nj->ni", rot[sel], nl[sel])
        return t_best, normal, prim


def _frame_from_back(back: Tensor) -> Tensor:
    """A rotation (3x3, float64) whose third column is the unit vector ``back``."""
    back = back.double()
    helper = [0.0, 0.0, 1.0] if abs(float(back[2])) < 0.9 else [1.0, 0.0, 0.0]
    right = torch.linalg.cross(torch.tensor(helper, dtype=torch.float64), back)
    right = right / right.norm()
    up = torch.linalg.cross(back, right)
    return torch.stack([right, up, back], 1)


def _pairs_2d(pts: Tensor, lo: Tensor, hi: Tensor, cells: int = 64) -> tuple[Tensor, Tensor]:
    """Candidate (point, rectangle) pairs: every rectangle that overlaps the grid cell of each point.

    The bounding box of ``pts`` is cut into ``cells x cells`` cells; each rectangle ``[lo, hi]`` is listed
    in every cell it touches and each point is paired with the list of its own cell. A superset of the
    (point inside rectangle) pairs, built without any ``points x rectangles`` array.
    """
    n = pts.shape[0]
    empty = torch.zeros(0, dtype=torch.long)
    if n == 0 or lo.shape[0] == 0:
        return empty, empty
    pmin = pts.min(0).values
    size = (pts.max(0).values - pmin).clamp_min(1e-9) / cells * (1 + 1e-9)
    pc = ((pts - pmin) / size).floor().long().clamp(0, cells - 1)
    c0 = ((lo - pmin) / size).floor()
    c1 = ((hi - pmin) / size).floor()
    valid = (c1 >= 0).all(-1) & (c0 <= cells - 1).all(-1)
    c0 = c0.clamp(0, cells - 1).long()
    c1 = c1.clamp(0, cells - 1).long()
    w = c1 - c0 + 1
    cnt = w[:, 0] * w[:, 1] * valid.long()
    pid = torch.repeat_interleave(torch.arange(lo.shape[0]), cnt)
    k = torch.arange(pid.numel()) - (torch.cumsum(cnt, 0) - cnt)[pid]
    cell = (c0[pid, 1] + k // w[pid, 0]) * cells + c0[pid, 0] + k % w[pid, 0]
    cell_sorted, order = torch.sort(cell, stable=True)
    prim_sorted = pid[order]
    q = pc[:, 1] * cells + pc[:, 0]
    start = torch.searchsorted(cell_sorted, q, right=False)
    m = torch.searchsorted(cell_sorted, q, right=True) - start
    ri = torch.repeat_interleave(torch.arange(n), m)
    j = torch.arange(ri.numel()) - (torch.cumsum(m, 0) - m)[ri]
    return ri, prim_sorted[start[ri] + j]


def _hit_box(o: Tensor, d: Tensor, h: Tensor, t_min: float) -> tuple[Tensor, Tensor]:
    safe = torch.where(d.abs() < 1e-15, torch.full_like(d, 1e-15), d)
    inv = 1.0 / safe
    t1 = (-h - o) * inv
    t2 = (h - o) * inv
    tlo = torch.minimum(t1, t2)
    thi = torch.maximum(t1, t2)
    t_near, axis = tlo.max(-1)
    t_far = thi.min(-1).values
    ok = (t_near <= t_far) & (t_near > t_min)
    t = torch.where(ok, t_near, torch.full_like(t_near, math.inf))
    nrm = torch.zeros_like(o)
    sign = -torch.sign(safe.gather(1, axis[:, None]))
    nrm.scatter_(1, axis[:, None], sign)
    return t, nrm


def _hit_cylinder(o: Tensor, d: Tensor, h: Tensor, t_min: float) -> tuple[Tensor, Tensor]:
    r, hz = h[:, 0], h[:, 2]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - r**2
    disc = b**2 - a * c
    ok_side = (disc >= 0) & (a > 1e-18)
    t_side = (-b - disc.clamp_min(0).sqrt()) / a.clamp_min(1e-18)
    z_side = o[:, 2] + t_side * d[:, 2]
    ok_side = ok_side & (z_side.abs() <= hz) & (t_side > t_min)
    sz = torch.where(d[:, 2] < 0, torch.ones_like(hz), -torch.ones_like(hz))  # facing cap: +h if moving down
    dz = torch.where(d[:, 2].abs() < 1e-15, torch.full_like(hz, 1e-15), d[:, 2])
    t_cap = (sz * hz - o[:, 2]) / dz
    xc = o[:, 0] + t_cap * d[:, 0]
    yc = o[:, 1] + t_cap * d[:, 1]
    ok_cap = (xc**2 + yc**2 <= r**2) & (t_cap > t_min) & (d[:, 2].abs() >= 1e-15)
    inf = torch.full_like(hz, math.inf)
    ts = torch.where(ok_side, t_side, inf)
    tc = torch.where(ok_cap, t_cap, inf)
    use_cap = tc < ts
    t = torch.minimum(ts, tc)
    ps = o + t_side[:, None] * d
    n_side = torch.stack([ps[:, 0], ps[:, 1], torch.zeros_like(hz)], -1) / r[:, None]
    n_cap = torch.stack([torch.zeros_like(hz), torch.zeros_like(hz), sz], -1)
    return t, torch.where(use_cap[:, None], n_cap, n_side)
