"""Writes the brick scene as a NeRF-synthetic (Blender) or D-NeRF data set."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .cameras import CAMERA_ANGLE_X, circle_positions, focal_from_angle, hemisphere_positions, look_at_origin
from .rendering import BrickScene

FORMAT_VERSION = 1
MANIFEST = "nerfaccel_scene.json"
SPLITS = ("train", "val", "test")
DEFAULT_RESOLUTION = 160
DEFAULT_VIEWS = 100


@dataclass(frozen=True)
class SceneSpec:
    """What a generated data set contains; equal specs give byte-identical files.

    Attributes:
        dynamic: D-NeRF layout with a ``time`` per frame (moving parts) instead of a static scene.
        resolution: Width and height of the square images, in pixels.
        views: Number of training views.
        val_views: Number of validation views (``None``: ``max(1, views // 5)``).
        test_views: Number of test views on a circle (``None``: ``max(1, views // 5)``).
        seed: Seed of the random training / validation camera positions.
        supersample: Rays per pixel along each axis (1: exact pixel-centre images, alpha in {0, 1}).
    """

    dynamic: bool = False
    resolution: int = DEFAULT_RESOLUTION
    views: int = DEFAULT_VIEWS
    val_views: int | None = None
    test_views: int | None = None
    seed: int = 0
    supersample: int = 1

    def counts(self) -> dict[str, int]:
        """Number of frames per split."""
        extra = max(1, self.views // 5)
        return {
            "train": self.views,
            "val": self.val_views if self.val_views is not None else extra,
            "test": self.test_views if self.test_views is not None else extra,
        }

    def validate(self) -> None:
        """Raises ``ValueError`` on nonsensical sizes."""
        if self.resolution < 8 or self.resolution > 4096:
            raise ValueError(f"resolution must be in [8, 4096], got {self.resolution}")
        if self.views < 1 or min(self.counts().values()) < 1:
            raise ValueError(f"every split needs at least one view, got {self.counts()}")
        if self.supersample < 1 or self.supersample > 8:
            raise ValueError(f"supersample must be in [1, 8], got {self.supersample}")


def plan_frames(spec: SceneSpec) -> dict[str, list[dict]]:
    """Camera poses (and times) for every split, before rendering.

    Train and val cameras are spread over the upper hemisphere at the Blender radius (different random
    streams of ``seed``); test cameras go round a 30 degree circle. For the dynamic scene, times run
    evenly from 0 to 1 through each split in frame order, as in D-NeRF.
    """
    counts = spec.counts()
    out: dict[str, list[dict]] = {}
    for k, split in enumerate(SPLITS):
        n = counts[split]
        if split == "test":
            pos = circle_positions(n)
        else:
            pos = hemisphere_positions(n, np.random.default_rng([spec.seed, k, int(spec.dynamic)]))
        frames = []
        for i in range(n):
            frame: dict = {
                "file_path": f"./{split}/r_{i}",
                "rotation": 2 * math.pi / n,
            }
            if spec.dynamic:
                frame["time"] = i / (n - 1) if n > 1 else 0.0
            frame["transform_matrix"] = look_at_origin(pos[i]).tolist()
            frames.append(frame)
        out[split] = frames
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_png(path: Path, rgb: np.ndarray, alpha: np.ndarray) -> None:
    """Saves straight RGB + alpha in ``[0, 1]`` as an 8-bit RGBA PNG (background pixels are (0,0,0,0))."""
    rgba = np.concatenate([rgb * (alpha[..., None] > 0), alpha[..., None]], -1)
    img = np.clip(np.rint(rgba * 255.0), 0, 255).astype(np.uint8)
    Image.fromarray(img, mode="RGBA").save(path, format="PNG", compress_level=6)


def generate_scene(
    out_dir: str | Path,
    spec: SceneSpec,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Renders every view of ``spec`` and writes the data set into ``out_dir``.

    Layout (NeRF-synthetic / D-NeRF): ``transforms_{train,val,test}.json`` with ``camera_angle_x`` and
    ``frames`` (``file_path`` without extension, ``transform_matrix``, ``rotation``, and ``time`` for the
    dynamic scene), RGBA PNGs in ``train/``, ``val/``, ``test/``, and last of all a manifest
    ``nerfaccel_scene.json`` (spec, scene box and SHA-256 of every file) that marks the folder complete.

    Args:
        out_dir: Folder to write into (created if needed; existing files of the same names are replaced).
        spec: What to render.
        progress: Called as ``progress(done, total)`` after each image.

    Returns:
        ``out_dir`` as a ``Path``.
    """
    spec.validate()
    threads = torch.get_num_threads()
    # Many small tensor ops: one thread is several times faster than two fighting over a shared CPU.
    torch.set_num_threads(1)
    try:
        return _generate(Path(out_dir), spec, progress)
    finally:
        torch.set_num_threads(threads)


def _generate(out: Path, spec: SceneSpec, progress: Callable[[int, int], None] | None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        manifest_path.unlink()
    scene = BrickScene(seed=spec.seed, dynamic=spec.dynamic)
    frames = plan_frames(spec)
    res = spec.resolution
    focal = focal_from_angle(res)
    total = sum(len(f) for f in frames.values())
    done = 0
    files: dict[str, str] = {}
    for split in SPLITS:
        (out / split).mkdir(exist_ok=True)
        for frame in frames[split]:
            c2w = np.asarray(frame["transform_matrix"])
            r = scene.render(c2w, res, res, focal, frame.get("time", 0.0), supersample=spec.supersample)
            rel = frame["file_path"][2:] + ".png"
            write_png(out / rel, r["rgb"].numpy(), r["alpha"].numpy())
            files[rel] = _sha256(out / rel)
            done += 1
            if progress is not None:
                progress(done, total)
        meta = {"camera_angle_x": CAMERA_ANGLE_X, "frames": frames[split]}
        name = f"transforms_{split}.json"
        (out / name).write_text(json.dumps(meta, indent=2))
        files[name] = _sha256(out / name)
    manifest = {
        "format_version": FORMAT_VERSION,
        "generator": "nerfaccel_plugin.scene",
        "spec": asdict(spec),
        "aabb": [round(float(v), 6) for v in scene.aabb.tolist()],
        "files": files,
    }
    tmp = out / (MANIFEST + ".part")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(manifest_path)
    return out


def check_complete(folder: str | Path, spec: SceneSpec | None = None) -> bool:
    """True if ``folder`` holds a complete, uncorrupted data set (of ``spec``, if given).

    Reads the manifest and checks the SHA-256 of every file it lists, so a half-written or
    tampered folder is reported as incomplete.
    """
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            return False
        if spec is not None and manifest.get("spec") != asdict(spec):
            return False
        files = manifest["files"]
        if not files or not all(f"transforms_{s}.json" in files for s in SPLITS):
            return False
        for rel, digest in files.items():
            if _sha256(folder / rel) != digest:
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True
