"""The brick model's content: primitives (boxes and capped cylinders), colours, lighting constants, and the
parts of the static and dynamic scenes with their time-dependent poses.

The model is a set of rigid *parts*; each part is a list of convex primitives given in the part's own frame, and
has a pose that may depend on time (:func:`build_parts`). :mod:`.geometry` flattens them for exact queries and
:mod:`.rendering` shades and renders them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

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
