"""Embedded procedural scene: a small brick model rendered exactly, so that no download is ever needed.

The model
    A 16 x 12 stud green base plate with a road (dashed line, no studs), a red-and-white brick house
    with a door, glazed windows, an overhanging thin grey roof plate, a chimney, a very thin antenna
    and a windmill rotor; a tree, flowers, a thin fence (posts and rails with gaps), a yellow crane
    with a thin boom and hanging hook, and a blue car with wheels. Every brick carries studs where its
    top is exposed. It is built from 320 boxes and capped cylinders (:mod:`.content`; exact geometry in
    :mod:`.geometry`, images in :mod:`.rendering`).

Scale and frame (same as the NeRF-synthetic "lego" scene)
    World units, +z up; one stud pitch is 0.125, a brick is 0.15 tall. The model lies inside
    ``BrickScene().aabb`` = ``[-1.02, -0.77, -0.62] .. [1.206, 0.77, 0.624]`` (padded by 0.02; the
    dynamic variant's box, ``.. [1.251, 0.77, 0.631]``, covers all times), well inside Nerfstudio's
    Blender scene box ``[-1.5, 1.5]^3``.

Cameras and files (NeRF-synthetic / Blender conventions)
    ``camera_angle_x = 0.6911112070083618`` (as lego), square images, principal point at the centre.
    ``transform_matrix`` is camera-to-world in the OpenGL convention (camera looks down its -z, +y
    up, +x right), cameras at radius 4.0311 looking at the origin with no roll. Train and val
    cameras are spread over the upper hemisphere (elevation 8-86 degrees, seeded), test cameras go
    round a 30 degree circle. Files: ``transforms_{train,val,test}.json`` (``camera_angle_x``,
    ``frames`` with ``file_path`` such as ``./train/r_0`` without extension, ``rotation`` and
    ``transform_matrix``), RGBA PNGs in ``train/``, ``val/``, ``test/`` with a transparent background
    (alpha exactly 0 off the model and 1 on it, colour 0 where alpha is 0), and
    ``nerfaccel_scene.json`` (spec, scene box, SHA-256 of every file; written last, marks the folder
    complete). Shading is view independent: albedo x (ambient + diffuse from a fixed sun, with hard
    shadows).

Dynamic variant (D-NeRF layout)
    Each frame also has ``time`` in ``[0, 1]``, increasing evenly through each split. The car drives
    along the road and back (its wheel marks roll), the windmill turns half a revolution, the crane
    swings and lifts its boom. At ``time = 0`` parts are at their rest poses.

Defaults
    160 x 160 px, 100 train / 20 val / 20 test views, seed 0, one ray per pixel (``--supersample``
    for anti-aliasing). The default scene renders in ~5 s on two CPU cores.

Use
    ``get_scene(dynamic=False, resolution=None, views=None, seed=0)`` returns the cached folder
    (``$XDG_CACHE_HOME/nerfaccel/scenes/...`` or ``~/.cache/nerfaccel/scenes/...``), generating it
    on first use; ``nerfaccel-scene --out DIR [--dynamic] [--resolution N] [--views N]`` writes one
    anywhere. Ground truth: ``BrickScene(seed, dynamic)`` has ``.occupancy(points, time)`` (exact
    inside test), ``.aabb`` (``(6,)`` ``{xmin, ymin, zmin, xmax, ymax, zmax}``), ``.render(c2w, width,
    height, focal, time)`` (exact ``rgb``, ``alpha``, ray ``depth``, ``z_depth``, ``normal``) and
    ``.cast_rays(origins, directions, time)`` and ``.occupancy_grid(resolution, aabb, times)`` (inside
    fraction per cell, indexed ``[x, y, z]`` like nerfacc's grids). All of it is deterministic: the
    model does not depend on the seed, and the seed fixes the train / val cameras.
"""

from .cache import cache_root, ensure_scene, get_scene, scene_name
from .cameras import CAMERA_ANGLE_X, CAMERA_RADIUS, focal_from_angle, look_at_origin
from .rendering import BrickScene, camera_dirs, pixel_rays
from .writer import SceneSpec, check_complete, generate_scene

__all__ = [
    "BrickScene",
    "CAMERA_ANGLE_X",
    "CAMERA_RADIUS",
    "SceneSpec",
    "cache_root",
    "camera_dirs",
    "check_complete",
    "ensure_scene",
    "focal_from_angle",
    "generate_scene",
    "get_scene",
    "look_at_origin",
    "pixel_rays",
    "scene_name",
]
