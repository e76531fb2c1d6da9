"""The brick model: analytic geometry, exact ray casting, occupancy and shading.

The model is a set of rigid *parts*; each part is a list of convex primitives (boxes and capped
cylinders) given in the part's own frame, and has a pose that may depend on time. At a given time
every primitive is flattened to a world pose (rotation + centre), a half-extent and an albedo, and
all queries (ray casting, occupancy) run on those flat arrays with torch in float64.

Ray casting is exact: a cheap bounding-sphere test (written as matrix products, so it never builds
``rays x primitives x 3`` arrays) picks candidate (ray, primitive) pairs, each pair is intersected
analytically in the primitive's local frame (slab test for boxes; quadratic plus caps for cylinders),
and the nearest hit per ray wins.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

BOX = 0
CYLINDER = 1

# Brick dimensions in scene units (one stud pitch is 0.125, a brick is 1.2 pitches tall, like the real thing).
PITCH = 0.125
PLATE_H = 0.05
BRICK_H = 3 * PLATE_H
STUD_R = 0.0375
STUD_H = 0.025
GAP = 0.004  # clearance between neighbouring bricks: visible seams
BASE_NX, BASE_NY = 16, 12
BASE_X0 = -BASE_NX * PITCH / 2
BASE_Y0 = -BASE_NY * PITCH / 2
BASE_BOTTOM = -0.6
BASE_TOP = BASE_BOTTOM + PLATE_H

LIGHT_DIR = np.array([0.45, -0.35, 0.82]) / np.linalg.norm([0.45, -0.35, 0.82])
AMBIENT = 0.32
DIFFUSE = 0.72
SHADOW_KEEP = 0.25
CAR_X0 = -0.1  # car position along the road at time 0
WHEEL_R = 0.07  # fraction of the direct light that still reaches shadowed points

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.78, 0.12, 0.10),
    "white": (0.92, 0.92, 0.88),
    "yellow": (0.98, 0.78, 0.05),
    "blue": (0.06, 0.33, 0.78),
    "lightblue": (0.55, 0.78, 0.95),
    "green": (0.18, 0.55, 0.20),
    "darkgreen": (0.08, 0.35, 0.12),
    "lime": (0.55, 0.78, 0.15),
    "brown": (0.45, 0.27, 0.12),
    "gray": (0.62, 0.63, 0.64),
    "darkgray": (0.33, 0.34, 0.36),
    "black": (0.08, 0.08, 0.09),
    "orange": (0.95, 0.45, 0.05),
}


def rot_x(a: float) -> np.ndarray:
    """Rotation by ``a`` radians about the x axis (3x3)."""
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(a: float) -> np.ndarray:
    """Rotation by ``a`` radians about the y axis (3x3)."""
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(a: float) -> np.ndarray:
    """Rotation by ``a`` radians about the z axis (3x3)."""
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass
class Primitive:
    """A convex solid in its part's frame: a box (``half`` = half extents) or a cylinder along local z
    (``half`` = ``(r, r, half_height)``), centred at ``center`` and turned by ``rot``."""

    kind: int
    center: np.ndarray
    half: np.ndarray
    color: tuple[float, float, float]
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))


Pose = tuple[np.ndarray, np.ndarray]  # (rotation 3x3, translation 3): world-from-part


@dataclass
class Part:
    """A rigid group of primitives with a time-dependent world-from-part pose."""

    name: str
    prims: list[Primitive]
    pose: Callable[[float], Pose] = field(default=lambda t: (np.eye(3), np.zeros(3)))


def _box(lo, hi, color: str, rot: np.ndarray | None = None) -> Primitive:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return Primitive(BOX, (lo + hi) / 2, (hi - lo) / 2, COLORS[color], np.eye(3) if rot is None else rot)


def _cyl(center, radius: float, height: float, color: str, rot: np.ndarray | None = None) -> Primitive:
    return Primitive(
        CYLINDER,
        np.asarray(center, float),
        np.array([radius, radius, height / 2]),
        COLORS[color],
        np.eye(3) if rot is None else rot,
    )


def _gx(i: float) -> float:
    return BASE_X0 + i * PITCH


def _gy(j: float) -> float:
    return BASE_Y0 + j * PITCH


def _brick(i: int, j: int, ni: int, nj: int, level: int, plates: int, color: str) -> Primitive:
    """A brick on the stud grid: cells ``[i, i+ni) x [j, j+nj)``, bottom ``level`` plates above the base."""
    z0 = BASE_TOP + level * PLATE_H
    return _box((_gx(i) + GAP, _gy(j) + GAP, z0), (_gx(i + ni) - GAP, _gy(j + nj) - GAP, z0 + plates * PLATE_H), color)


def _studs_on(prim: Primitive, color: str | None = None) -> list[Primitive]:
    """Studs on the top face of an axis-aligned box primitive lying on the stud grid."""
    lo, hi = prim.center - prim.half, prim.center + prim.half
    ni = int(round((hi[0] - lo[0] + 2 * GAP) / PITCH))
    nj = int(round((hi[1] - lo[1] + 2 * GAP) / PITCH))
    out = []
    for a in range(ni):
        for b in range(nj):
            cx = lo[0] - GAP + (a + 0.5) * PITCH
            cy = lo[1] - GAP + (b + 0.5) * PITCH
            c = COLORS[color] if color else prim.color
            half = np.array([STUD_R, STUD_R, STUD_H / 2])
            out.append(Primitive(CYLINDER, np.array([cx, cy, hi[2] + STUD_H / 2]), half, c))
    return out


def _static_parts() -> list[Primitive]:
    """Everything that never moves: base plate, road, house, tree, fence, crane tower."""
    solids: list[Primitive] = []
    studded: list[Primitive] = []  # solids that carry studs (exposed ones are kept)

    base = _box((BASE_X0, BASE_Y0, BASE_BOTTOM), (-BASE_X0, -BASE_Y0, BASE_TOP), "green")
    solids.append(base)
    studded.append(base)
    # Road: smooth tiles (no studs) along the front edge, with a dashed centre line.
    road = _box((BASE_X0, _gy(0), BASE_TOP), (-BASE_X0, _gy(4), BASE_TOP + PLATE_H / 2), "darkgray")
    solids.append(road)
    for k in range(0, BASE_NX, 3):
        solids.append(
            _box((_gx(k + 0.5), _gy(1.94), road.center[2]), (_gx(k + 1.7), _gy(2.06), road.center[2] + 0.017), "white")
        )

    # House: 6 x 6 walls, four brick courses, a door in front and windows on the sides.
    i0, j0, n = 1, 6, 6
    for level in range(4):
        col = "red" if level % 2 == 0 else "white"
        z = 3 * level
        stagger = level % 2
        # front wall (y = j0) with a door over cells i0+2 .. i0+3 for the lower three courses
        for a, b in [(0, 2), (4, 6)] if level < 3 else [(0, 3), (3, 6)]:
            solids.append(_brick(i0 + a, j0, b - a, 1, z, 3, col))
        # back wall
        for a, b in [(0, 4), (4, 6)] if stagger else [(0, 2), (2, 6)]:
            solids.append(_brick(i0 + a, j0 + n - 1, b - a, 1, z, 3, col))
        # side walls (between front and back), with a window gap on course 1-2
        for ii in (i0, i0 + n - 1):
            if level in (1, 2):
                solids.append(_brick(ii, j0 + 1, 1, 1, z, 3, col))
                solids.append(_brick(ii, j0 + 4, 1, 1, z, 3, col))
            else:
                solids.append(_brick(ii, j0 + 1, 1, 2, z, 3, col))
                solids.append(_brick(ii, j0 + 3, 1, 2, z, 3, col))
    # window panes: thin light-blue sheets set into the side gaps
    for ii in (i0, i0 + n - 1):
        xm = _gx(ii + 0.5)
        solids.append(
            _box(
                (xm - 0.01, _gy(j0 + 2), BASE_TOP + 3 * PLATE_H),
                (xm + 0.01, _gy(j0 + 4), BASE_TOP + 9 * PLATE_H),
                "lightblue",
            )
        )
    roof = _brick(i0 - 1, j0 - 1, n + 2, n + 1, 12, 1, "gray")  # thin overhanging plate
    solids.append(roof)
    studded.append(roof)
    chimney = _brick(i0 + 4, j0 + 3, 1, 1, 13, 6, "darkgray")
    solids.append(chimney)
    studded.append(chimney)

    # Antenna: a very thin pole with a cross bar on the roof.
    ax, ay = _gx(i0 + 0.5), _gy(j0 + 4.5)
    ztop = BASE_TOP + 13 * PLATE_H
    solids.append(_cyl((ax, ay, ztop + 0.22), 0.012, 0.44, "black"))
    solids.append(_box((ax - 0.1, ay - 0.008, ztop + 0.36), (ax + 0.1, ay + 0.008, ztop + 0.375), "black"))

    # Tree: round trunk and stacked foliage.
    ti, tj = 10, 8
    tx, ty = _gx(ti + 1.5), _gy(tj + 1.5)
    solids.append(_cyl((tx, ty, BASE_TOP + BRICK_H), 0.06, 2 * BRICK_H, "brown"))
    for k, (w, col) in enumerate([(3, "darkgreen"), (2, "lime"), (1, "darkgreen")]):
        off = (3 - w) / 2
        b = _brick(0, 0, w, w, 6 + 3 * k, 3, col)
        shift = np.array([_gx(ti + off) - _gx(0), _gy(tj + off) - _gy(0), 0.0])
        b.center = b.center + shift
        solids.append(b)
        studded.append(b)

    # Fence between road and lawn: thin round posts and two thin rails (lots of gaps).
    fj = 4.5
    for k in range(8, 16, 2):
        solids.append(_cyl((_gx(k + 0.5), _gy(fj), BASE_TOP + 0.12), 0.018, 0.24, "brown"))
    for zr in (0.09, 0.19):
        lo, hi = (_gx(8.5), _gy(fj) - 0.008, BASE_TOP + zr), (_gx(14.5), _gy(fj) + 0.008, BASE_TOP + zr + 0.025)
        solids.append(_box(lo, hi, "white"))

    # Crane tower: 2 x 2 yellow bricks, four courses.
    for level in range(4):
        b = _brick(13, 7, 2, 2, 3 * level, 3, "yellow" if level % 2 == 0 else "orange")
        solids.append(b)
    # Flowers: single-plate 1x1 round bricks on the lawn.
    for i, j, col in [(8, 6, "red"), (9, 10, "yellow"), (12, 6, "white"), (8, 9, "orange")]:
        solids.append(_cyl((_gx(i + 0.5), _gy(j + 0.5), BASE_TOP + PLATE_H), 0.05, 2 * PLATE_H, col))

    # Studs on every exposed studded top face (a stud covered by another solid is dropped).
    studs = []
    for s in studded:
        for st in _studs_on(s):
            top = st.center + np.array([0.0, 0.0, STUD_H / 2 + 1e-3])
            if not any(_inside_local(o, top) for o in solids if o is not s):
                studs.append(st)
    return solids + studs


def _inside_local(p: Primitive, x: np.ndarray) -> bool:
    q = p.rot.T @ (x - p.center)
    if p.kind == BOX:
        return bool(np.all(np.abs(q) <= p.half))
    return bool(q[0] ** 2 + q[1] ** 2 <= p.half[0] ** 2 and abs(q[2]) <= p.half[2])


def _car() -> list[Primitive]:
    """A small car in its own frame (origin on the road surface under its centre, facing +x)."""
    prims: list[Primitive] = []
    wr = WHEEL_R
    zc = 0.035  # chassis bottom above the road
    chassis = _box((-0.25, -0.115, zc), (0.25, 0.115, zc + PLATE_H), "darkgray")
    body = _box((-0.245, -0.11, zc + PLATE_H), (0.245, 0.11, zc + PLATE_H + BRICK_H * 0.8), "blue")
    cab = _box((-0.2, -0.1, body.center[2] + body.half[2]), (0.03, 0.1, body.center[2] + body.half[2] + 0.11), "white")
    prims += [chassis, body, cab]
    # windscreen: a thin sheet leaning back over the front of the cab
    ztop = body.center[2] + body.half[2]
    prims.append(
        Primitive(
            BOX, np.array([0.07, 0.0, ztop + 0.05]), np.array([0.008, 0.095, 0.06]), COLORS["lightblue"], rot_y(-0.6)
        )
    )
    # studs on the cab roof
    for a in (-0.14, -0.02):
        for b in (-0.05, 0.05):
            prims.append(_cyl((a + 0.03, b, ztop + 0.11 + STUD_H / 2), STUD_R, STUD_H, "white"))
    # wheels (axles along y) with a white hub mark so that rolling is visible
    for x in (-0.16, 0.16):
        for y in (-0.14, 0.14):
            prims.append(_cyl((x, y, wr), wr, 0.05, "black", rot_x(math.pi / 2)))
    return prims


def _wheel_marks(angle: float) -> list[Primitive]:
    """White marks on the outer faces of the car's wheels, turned by ``angle`` about the axles (car frame)."""
    out = []
    r = rot_y(angle)
    for x in (-0.16, 0.16):
        for y in (-0.168, 0.168):
            c = np.array([x, y, 0.07]) + r @ np.array([0.035, 0.0, 0.0])
            out.append(Primitive(BOX, c, np.array([0.014, 0.004, 0.014]), COLORS["white"], r))
    return out


def _rotor() -> list[Primitive]:
    """A windmill rotor in its own frame (hub at the origin, spinning about local y)."""
    prims = [_cyl((0.0, 0.0, 0.0), 0.035, 0.05, "white", rot_x(math.pi / 2))]
    for k in range(4):
        r = rot_y(k * math.pi / 2)
        c = r @ np.array([0.16, 0.0, 0.0])
        prims.append(Primitive(BOX, c, np.array([0.13, 0.006, 0.025]), COLORS["white" if k % 2 else "red"], r))
    return prims


def _crane_arm() -> list[Primitive]:
    """The crane arm in its own frame (pivot at the origin on top of the tower)."""
    prims = [
        _cyl((0.0, 0.0, 0.02), 0.1, 0.04, "darkgray"),
        _box((-0.15, -0.03, 0.04), (0.48, 0.03, 0.07), "yellow"),  # thin long boom
        _box((-0.2, -0.06, 0.07), (-0.06, 0.06, 0.16), "darkgray"),  # counterweight
        _cyl((0.43, 0.0, -0.06), 0.006, 0.2, "black"),  # cable
        _box((0.40, -0.03, -0.2), (0.46, 0.03, -0.16), "red"),  # hook block
    ]
    return prims


def build_parts(dynamic: bool) -> list[Part]:
    """Builds the model as rigid parts. Moving parts follow their motion only when ``dynamic``."""
    parts = [Part("static", _static_parts())]
    road_z = BASE_TOP + PLATE_H / 2

    def car_x(t: float) -> float:
        return 0.45 * math.sin(2 * math.pi * t) if dynamic else 0.0

    def car_pose(t: float) -> Pose:
        return np.eye(3), np.array([CAR_X0 + car_x(t), _gy(2), road_z])

    parts.append(Part("car", _car(), car_pose))

    tower_top = BASE_TOP + 12 * PLATE_H
    hub = np.array([_gx(3.5), _gy(5) - 0.05, BASE_TOP + 15 * PLATE_H + 0.12])
    roof_top = BASE_TOP + 13 * PLATE_H
    # rotor post on the roof (static)
    post = _box((hub[0] - 0.03, hub[1] + 0.025, roof_top), (hub[0] + 0.03, hub[1] + 0.085, hub[2] + 0.03), "darkgray")
    parts[0].prims.append(post)

    def rotor_pose(t: float) -> Pose:
        return rot_y(-math.pi * t if dynamic else 0.3), hub

    parts.append(Part("rotor", _rotor(), rotor_pose))

    def crane_pose(t: float) -> Pose:
        # swings over the fence and the road (never into the tree or the car)
        a = (0.8 * math.sin(2 * math.pi * t) if dynamic else 0.0) - 0.5
        lift = 0.12 * (1 - math.cos(2 * math.pi * t)) / 2 if dynamic else 0.0
        return rot_z(a), np.array([_gx(14), _gy(8), tower_top + lift])

    parts.append(Part("crane", _crane_arm(), crane_pose))
    return parts


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


def _single_threaded(fn: Callable) -> Callable:
    """Runs ``fn`` with one torch thread: its many small ops are far faster so on a shared CPU."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        threads = torch.get_num_threads()
        if threads == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper


class BrickScene:
    """Ground truth for the embedded brick model: geometry, exact depth, occupancy and images.

    Args:
        seed: Seed of the scene. The model itself is the same for every seed; the seed only drives
            the random camera positions of the generated data set (kept here so that one object
            describes one data set).
        dynamic: If True, the car drives along the road, the windmill turns and the crane swings and
            lifts as ``time`` goes from 0 to 1. If False every part stays at its ``time = 0`` pose.
    """

    def __init__(self, seed: int = 0, dynamic: bool = False) -> None:
        self.seed = int(seed)
        self.dynamic = bool(dynamic)
        self._parts = build_parts(self.dynamic)
        self._cache: dict[float, FlatScene] = {}
        self._aabb: Tensor | None = None

    def at(self, time: float = 0.0) -> FlatScene:
        """The model at ``time`` as flat primitive arrays (cached per time)."""
        key = float(time) if self.dynamic else 0.0
        if key not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = FlatScene(self._primitives(key))
        return self._cache[key]

    def _primitives(self, time: float) -> list[Primitive]:
        prims: list[Primitive] = []
        for part in self._parts:
            rot, trans = part.pose(time)
            local = part.prims
            if part.name == "car":  # the wheel marks roll with the distance travelled
                local = local + _wheel_marks((trans[0] - CAR_X0) / WHEEL_R)
            for p in local:
                prims.append(Primitive(p.kind, rot @ p.center + trans, p.half.copy(), p.color, rot @ p.rot))
        return prims

    @property
    def num_primitives(self) -> int:
        """Number of boxes and cylinders in the model."""
        return len(self.at(0.0))

    @property
    def aabb(self) -> Float[Tensor, "6"]:
        """Box ``{xmin, ymin, zmin, xmax, ymax, zmax}`` (float32) around the model at all times, padded by 0.02."""
        if self._aabb is None:
            times = np.linspace(0.0, 1.0, 101) if self.dynamic else [0.0]
            pts = torch.cat([self.at(float(t)).corners() for t in times])
            lo = pts.min(0).values - 0.02
            hi = pts.max(0).values + 0.02
            self._aabb = torch.cat([lo, hi]).float()
            self._cache.clear()
        return self._aabb.clone()

    @_single_threaded
    def occupancy(
        self, points: Float[Tensor, "n 3"] | Float[np.ndarray, "n 3"], time: float = 0.0
    ) -> Bool[Tensor, " n"] | Bool[np.ndarray, " n"]:
        """Exact inside test: is each point inside (or on the surface of) the model at ``time``?

        Args:
            points: ``(n, 3)`` world points (any leading shape ``(..., 3)`` is accepted).
            time: Time in ``[0, 1]`` (ignored for the static scene).

        Returns:
            Booleans of shape ``points.shape[:-1]``: a torch tensor (on the input's device) if
            ``points`` is a tensor, else a numpy array.
        """
        is_tensor = isinstance(points, Tensor)
        x = points.detach().cpu().double() if is_tensor else torch.as_tensor(np.asarray(points), dtype=torch.float64)
        shape = x.shape[:-1]
        occ = self.at(time).occupancy(x.reshape(-1, 3)).reshape(shape)
        return occ.to(points.device) if is_tensor else occ.numpy()

    @_single_threaded
    def occupancy_grid(
        self,
        resolution: int = 128,
        aabb: Float[Tensor, "6"] | None = None,
        times: tuple[float, ...] | list[float] = (0.0,),
        samples: int = 2,
    ) -> Float[Tensor, "r r r"]:
        """Fraction of each grid cell's sample points that lie inside the model (union over ``times``).

        Cells are indexed ``[x, y, z]`` like nerfacc's occupancy grids (``aabb`` split into
        ``resolution^3`` cells). Each cell is probed at ``samples^3`` stratified points, so a value of 0
        means "probably empty" and values near 1 mean solid; threshold it to taste (e.g. ``> 0``).

        Args:
            resolution: Cells per axis.
            aabb: ``(6,)`` box ``{xmin, ymin, zmin, xmax, ymax, zmax}``; default :attr:`aabb`.
            times: Times whose occupancy is merged (ignored for the static scene).
            samples: Probe points per cell along each axis.

        Returns:
            ``(resolution, resolution, resolution)`` float32 tensor in ``[0, 1]``.
        """
        box = (self.aabb if aabb is None else torch.as_tensor(aabb)).detach().cpu().double().reshape(6)
        r, k = int(resolution), int(samples)
        fine = r * k
        axes = [
            box[i] + (torch.arange(fine, dtype=torch.float64) + 0.5) / fine * (box[i + 3] - box[i]) for i in range(3)
        ]
        pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        occ = torch.zeros(pts.shape[0], dtype=torch.bool)
        for t in times if self.dynamic else (0.0,):
            occ |= self.at(float(t)).occupancy(pts)
        grid = occ.reshape(r, k, r, k, r, k).float().mean(dim=(1, 3, 5))
        return grid

    @_single_threaded
    def cast_rays(
        self, origins: Float[Tensor, "n 3"], directions: Float[Tensor, "n 3"], time: float = 0.0
    ) -> dict[str, Tensor]:
        """Casts rays exactly against the model.

        Args:
            origins: ``(n, 3)`` ray origins.
            directions: ``(n, 3)`` ray directions (normalized internally).
            time: Time in ``[0, 1]``.

        Returns:
            Dict of float64 CPU tensors: ``t`` ``(n,)`` distance along the *unit* direction to the first
            hit (``inf`` on a miss), ``hit`` ``(n,)`` bool, ``normal`` ``(n, 3)`` world normal at the hit,
            ``rgb`` ``(n, 3)`` shaded colour (0 on a miss).
        """
        o = torch.as_tensor(origins).detach().cpu().double().reshape(-1, 3)
        d = torch.as_tensor(directions).detach().cpu().double().reshape(-1, 3)
        d = d / d.norm(dim=-1, keepdim=True)
        flat = self.at(time)
        t, nrm, prim = flat.cast(o, d)
        hit = prim >= 0
        rgb = torch.zeros_like(o)
        if hit.any():
            rgb[hit] = self._shade(flat, o[hit] + t[hit, None] * d[hit], nrm[hit], prim[hit])
        return {"t": t, "hit": hit, "normal": nrm, "rgb": rgb}

    def _cast_camera(self, flat: FlatScene, c2w: Tensor, cam_dirs: Tensor) -> dict[str, Tensor]:
        t, nrm, prim, d = flat.cast_pinhole(c2w, cam_dirs)
        hit = prim >= 0
        rgb = torch.zeros_like(d)
        if hit.any():
            rgb[hit] = self._shade(flat, c2w[:3, 3] + t[hit, None] * d[hit], nrm[hit], prim[hit])
        return {"t": t, "hit": hit, "normal": nrm, "rgb": rgb, "d": d}

    def _shade(self, flat: FlatScene, p: Tensor, n: Tensor, prim: Tensor) -> Tensor:
        light = torch.tensor(LIGHT_DIR, dtype=torch.float64)
        lam = (n @ light).clamp_min(0.0)
        lit = lam > 0
        vis = torch.ones_like(lam)
        if lit.any():
            blocked = flat.cast_directional(p[lit] + 1e-4 * n[lit], light, t_min=1e-6)
            vis[lit] = torch.where(blocked, SHADOW_KEEP, 1.0).to(vis.dtype)
        sky = 0.85 + 0.15 * n[:, 2]  # a little more ambient on upward faces
        shade = AMBIENT * sky + DIFFUSE * lam * vis
        return (flat.color[prim] * shade[:, None]).clamp(0.0, 1.0)

    @_single_threaded
    def render(
        self,
        c2w: Float[Tensor, "3 4"] | Float[np.ndarray, "3 4"],
        width: int,
        height: int,
        focal: float,
        time: float = 0.0,
        supersample: int = 1,
    ) -> dict[str, Tensor]:
        """Renders one pinhole view exactly, in the NeRF-synthetic / Nerfstudio camera convention.

        Camera looks down its local -z with +y up and +x right (OpenGL); pixel ``(u, v)`` (column,
        row) has its ray through ``((u + 0.5 - W/2) / f, -(v + 0.5 - H/2) / f, -1)``, which is what
        Nerfstudio's ``Cameras.generate_rays`` produces for ``cx = W/2, cy = H/2``.

        Args:
            c2w: Camera-to-world matrix, ``(3, 4)`` or ``(4, 4)``.
            width: Image width in pixels.
            height: Image height in pixels.
            focal: Focal length in pixels (``0.5 * width / tan(0.5 * camera_angle_x)``).
            time: Time in ``[0, 1]``.
            supersample: ``s`` gives ``s x s`` rays per pixel for anti-aliased ``rgb``/``alpha``; depth
                and normals always come from the pixel-centre ray.

        Returns:
            Dict of float32 CPU tensors: ``rgb`` ``(H, W, 3)`` straight (not premultiplied) colour,
            ``alpha`` ``(H, W)`` coverage (exactly 0 or 1 when ``supersample == 1``), ``depth``
            ``(H, W)`` distance from the camera centre along the ray (``inf`` on background),
            ``z_depth`` ``(H, W)`` depth along the camera's optical axis, ``normal`` ``(H, W, 3)``.
        """
        c2w_t = c2w.detach().cpu() if isinstance(c2w, Tensor) else torch.as_tensor(np.asarray(c2w))
        c2w_t = c2w_t.double()[:3, :4]
        s = int(supersample)
        flat = self.at(time)
        res = self._cast_camera(flat, c2w_t, camera_dirs(width, height, focal))
        depth = res["t"].reshape(height, width)
        z_depth = (res["t"] * (res["d"] @ -c2w_t[:, 2])).reshape(height, width)
        if s <= 1:
            rgb = res["rgb"].reshape(height, width, 3)
            alpha = res["hit"].double().reshape(height, width)
        else:
            acc = torch.zeros(height * width, 3, dtype=torch.float64)
            cov = torch.zeros(height * width, dtype=torch.float64)
            for a in range(s):
                for b in range(s):
                    r2 = self._cast_camera(flat, c2w_t, camera_dirs(width, height, focal, (a + 0.5) / s, (b + 0.5) / s))
                    acc += r2["rgb"]
                    cov += r2["hit"].double()
            alpha = (cov / (s * s)).reshape(height, width)
            rgb = (acc / cov.clamp_min(1.0)[:, None]).reshape(height, width, 3)
        return {
            "rgb": rgb.float(),
            "alpha": alpha.float(),
            "depth": depth.float(),
            "z_depth": z_depth.float(),
            "normal": res["normal"].reshape(height, width, 3).float(),
        }


def camera_dirs(width: int, height: int, focal: float, off_u: float = 0.5, off_v: float = 0.5) -> Float[Tensor, "n 3"]:
    """Camera-frame ray directions (``z = -1``) through every pixel, row-major, ``n = height * width``.

    Args:
        width: Image width.
        height: Image height.
        focal: Focal length in pixels; principal point at the image centre ``(W/2, H/2)``.
        off_u: Sub-pixel offset along the row (0.5 is the pixel centre).
        off_v: Sub-pixel offset down the column.
    """
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    x = (u + off_u - width / 2) / focal
    y = -(v + off_v - height / 2) / focal
    return torch.stack([x, y, -torch.ones_like(x)], -1).reshape(-1, 3)


def pixel_rays(
    c2w: Float[Tensor, "3 4"], width: int, height: int, focal: float, off_u: float = 0.5, off_v: float = 0.5
) -> tuple[Float[Tensor, "n 3"], Float[Tensor, "n 3"]]:
    """World rays through every pixel, row-major (``n = height * width``), unit directions.

    Args:
        c2w: ``(3, 4)`` camera-to-world matrix (OpenGL camera axes).
        width: Image width.
        height: Image height.
        focal: Focal length in pixels; principal point at the image centre.
        off_u: Sub-pixel offset along the row (0.5 is the pixel centre).
        off_v: Sub-pixel offset down the column.

    Returns:
        ``(origins, directions)``, float64.
    """
    c2w = torch.as_tensor(c2w, dtype=torch.float64)
    d = camera_dirs(width, height, focal, off_u, off_v) @ c2w[:3, :3].T
    d = d / d.norm(dim=-1, keepdim=True)
    o = c2w[:3, 3].expand_as(d).contiguous()
    return o, d
