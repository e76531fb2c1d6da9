"""Camera poses on a sphere around the model, in the NeRF-synthetic (Blender) convention."""

from __future__ import annotations

import math

import numpy as np
from jaxtyping import Float

# Same as the NeRF-synthetic scenes (lego: camera_angle_x = 0.6911112070083618, radius 4.0311).
CAMERA_ANGLE_X = 0.6911112070083618
CAMERA_RADIUS = 4.031128857
MIN_ELEVATION = math.radians(8.0)
MAX_ELEVATION = math.radians(86.0)
TEST_ELEVATION = math.radians(30.0)


def look_at_origin(position: Float[np.ndarray, "3"]) -> Float[np.ndarray, "4 4"]:
    """Camera-to-world matrix of a camera at ``position`` looking at the origin, world +z up, no roll.

    Columns are the camera's right (+x), up (+y) and backward (+z) axes in world coordinates and its
    position: the OpenGL / Blender convention of the NeRF-synthetic ``transform_matrix``.

    Args:
        position: ``(3,)`` camera centre (not on the z axis).

    Returns:
        ``(4, 4)`` float64 matrix with last row ``[0, 0, 0, 1]``.
    """
    pos = np.asarray(position, dtype=np.float64)
    back = pos / np.linalg.norm(pos)
    right = np.cross([0.0, 0.0, 1.0], back)
    if np.linalg.norm(right) < 1e-8:  # straight above: pick any horizontal right axis
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, back, pos
    return m


def hemisphere_positions(n: int, rng: np.random.Generator, radius: float = CAMERA_RADIUS) -> Float[np.ndarray, "n 3"]:
    """``n`` camera centres spread over the upper hemisphere (elevation 8 to 86 degrees).

    Stratified in height (equal-area bands, jittered) with golden-angle azimuths and a random start,
    so that few views still see the model from everywhere; deterministic for a given ``rng`` state.
    """
    z_lo, z_hi = math.sin(MIN_ELEVATION), math.sin(MAX_ELEVATION)
    u = (np.arange(n) + rng.uniform(0.0, 1.0, n)) / max(n, 1)
    z = z_lo + (z_hi - z_lo) * u
    phi = rng.uniform(0, 2 * math.pi) + np.arange(n) * math.pi * (3.0 - math.sqrt(5.0))
    rng.shuffle(z)  # order is irrelevant for static scenes; for dynamic ones it decorrelates time and height
    r_xy = np.sqrt(1 - z**2)
    return radius * np.stack([r_xy * np.cos(phi), r_xy * np.sin(phi), z], -1)


def circle_positions(
    n: int, elevation: float = TEST_ELEVATION, radius: float = CAMERA_RADIUS, start: float = -math.pi / 2
) -> Float[np.ndarray, "n 3"]:
    """``n`` camera centres evenly spaced on a circle at ``elevation`` (radians), like the test path."""
    phi = start + 2 * math.pi * np.arange(n) / max(n, 1)
    c = math.cos(elevation)
    return radius * np.stack([c * np.cos(phi), c * np.sin(phi), np.full(n, math.sin(elevation))], -1)


def focal_from_angle(width: int, camera_angle_x: float = CAMERA_ANGLE_X) -> float:
    """Focal length in pixels for the Blender ``camera_angle_x`` (what Nerfstudio's parsers compute)."""
    return 0.5 * width / math.tan(0.5 * camera_angle_x)
