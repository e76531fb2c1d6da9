"""Rendering of the brick model: :class:`BrickScene` (exact depth, occupancy, shading and images at any time) and
the pinhole camera rays (:func:`camera_dirs`, :func:`pixel_rays`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .content import AMBIENT, CAR_X0, DIFFUSE, LIGHT_DIR, SHADOW_KEEP, WHEEL_R, Primitive, _wheel_marks, build_parts
from .geometry import FlatScene


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
