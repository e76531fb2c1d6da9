"""The generated data sets round-trip through Nerfstudio's Blender and D-NeRF dataparsers."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nerfaccel_plugin.scene import CAMERA_ANGLE_X, BrickScene, SceneSpec, check_complete, generate_scene
from nerfaccel_plugin.scene.writer import MANIFEST

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RES = 48
SPEC = SceneSpec(resolution=RES, views=8, val_views=3, test_views=4)


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory) -> Path:
    return generate_scene(tmp_path_factory.mktemp("static"), SPEC)


@pytest.fixture(scope="module")
def dynamic_dir(tmp_path_factory) -> Path:
    return generate_scene(tmp_path_factory.mktemp("dynamic"), SceneSpec(**{**SPEC.__dict__, "dynamic": True}))


def _outputs(config_cls, folder: Path, split: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return config_cls(data=folder).setup().get_dataparser_outputs(split)


def _rays(cameras, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bundle = cameras.generate_rays(camera_indices=i)
    return bundle.origins.reshape(-1, 3), bundle.directions.reshape(-1, 3)


def _check_split(outputs, folder: Path, split: str, n: int, scene: BrickScene, times=None) -> None:
    from nerfstudio.data.datasets.base_dataset import InputDataset

    meta = json.loads((folder / f"transforms_{split}.json").read_text())
    assert len(outputs.image_filenames) == n == len(meta["frames"])
    cams = outputs.cameras
    focal = 0.5 * RES / np.tan(0.5 * meta["camera_angle_x"])
    assert torch.allclose(cams.fx.double(), torch.full((n, 1), focal, dtype=torch.float64))
    assert int(cams.width[0]) == RES and int(cams.height[0]) == RES
    c2w = torch.tensor([f["transform_matrix"] for f in meta["frames"]], dtype=torch.float32)[:, :3]
    assert torch.allclose(cams.camera_to_worlds, c2w)
    # the model box lies inside the parser's scene box
    box = scene.aabb
    assert bool((outputs.scene_box.aabb[0] <= box[:3]).all()) and bool((outputs.scene_box.aabb[1] >= box[3:]).all())
    dataset = InputDataset(outputs)
    for i in range(n):
        o, d = _rays(cams, i)
        # the camera looks at the model: the centre ray passes close to the origin
        centre = (RES // 2) * RES + RES // 2
        closest = o[centre] - (o[centre] * d[centre]).sum() * d[centre]
        assert float(closest.norm()) < 0.05
        # alpha (as Nerfstudio loads it) is exactly 1 where Nerfstudio's own rays hit the model, 0 elsewhere
        t = float(cams.times[i]) if times is not None else 0.0
        if times is not None:
            assert abs(t - times[i]) < 1e-6
        rgba = dataset.get_numpy_image(i)
        assert rgba.shape == (RES, RES, 4)
        alpha = rgba[..., 3].reshape(-1)
        assert set(np.unique(alpha).tolist()) <= {0, 255}
        hit = scene.cast_rays(o, d, time=t)["hit"].numpy()
        mismatch = (hit != (alpha == 255)).mean()
        assert mismatch <= 2.0 / RES**2  # float32 rays of Nerfstudio may flip a pixel on a silhouette
        assert 0.05 < hit.mean() < 0.9
        assert (rgba[..., :3].reshape(-1, 3)[alpha == 0] == 0).all()
        # and the composited image is white off the model
        image = dataset[i]["image"].reshape(-1, 3)
        assert torch.allclose(image[torch.from_numpy(alpha == 0)], torch.ones(1, 3))


def test_blender_dataparser_round_trip(static_dir: Path) -> None:
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    scene = BrickScene()
    for split, n in SPEC.counts().items():
        _check_split(_outputs(BlenderDataParserConfig, static_dir, split), static_dir, split, n, scene)


def test_dnerf_dataparser_round_trip(dynamic_dir: Path) -> None:
    from nerfstudio.data.dataparsers.dnerf_dataparser import DNeRFDataParserConfig

    scene = BrickScene(dynamic=True)
    for split, n in SPEC.counts().items():
        outputs = _outputs(DNeRFDataParserConfig, dynamic_dir, split)
        times = outputs.cameras.times.reshape(-1)
        assert times.shape == (n,)
        assert float(times[0]) == 0.0 and float(times[-1]) == 1.0
        assert bool((times[1:] > times[:-1]).all())
        _check_split(outputs, dynamic_dir, split, n, scene, times=times.tolist())


def test_dynamic_images_change_over_time(dynamic_dir: Path, static_dir: Path) -> None:
    """Test views at different times differ in the dynamic set; the static scene is the same at every time."""
    scene = BrickScene(dynamic=True)
    meta = json.loads((dynamic_dir / "transforms_test.json").read_text())
    f0, f1 = meta["frames"][0], meta["frames"][2]
    c2w = np.asarray(f0["transform_matrix"])
    focal = 0.5 * RES / np.tan(0.5 * CAMERA_ANGLE_X)
    a0 = scene.render(c2w, RES, RES, focal, f0["time"])["alpha"]
    a1 = scene.render(c2w, RES, RES, focal, f1["time"])["alpha"]
    assert (a0 != a1).sum() > 5
    static = BrickScene()
    assert torch.equal(
        static.render(c2w, RES, RES, focal, 0.0)["alpha"], static.render(c2w, RES, RES, focal, 0.6)["alpha"]
    )


def test_files_layout_and_manifest(static_dir: Path, dynamic_dir: Path) -> None:
    for folder, dynamic in ((static_dir, False), (dynamic_dir, True)):
        assert check_complete(folder)
        manifest = json.loads((folder / MANIFEST).read_text())
        assert manifest["spec"]["dynamic"] is dynamic
        for split, n in SPEC.counts().items():
            meta = json.loads((folder / f"transforms_{split}.json").read_text())
            assert meta["camera_angle_x"] == CAMERA_ANGLE_X
            assert sorted(p.name for p in (folder / split).iterdir()) == sorted(f"r_{i}.png" for i in range(n))
            for frame in meta["frames"]:
                assert frame["file_path"].startswith(f"./{split}/r_")
                assert ("time" in frame) is dynamic
                with Image.open(folder / (frame["file_path"][2:] + ".png")) as im:
                    assert im.mode == "RGBA" and im.size == (RES, RES)


def test_generation_is_deterministic(static_dir: Path, tmp_path: Path) -> None:
    again = generate_scene(tmp_path / "again", SPEC)
    m0 = json.loads((static_dir / MANIFEST).read_text())["files"]
    m1 = json.loads((again / MANIFEST).read_text())["files"]
    assert m0 == m1
    other = generate_scene(tmp_path / "seed1", SceneSpec(**{**SPEC.__dict__, "seed": 1}))
    m2 = json.loads((other / MANIFEST).read_text())["files"]
    # another seed moves the random train/val cameras but keeps the test circle
    assert m2["transforms_train.json"] != m0["transforms_train.json"]
    assert m2["transforms_test.json"] == m0["transforms_test.json"]


def test_check_complete_detects_damage(static_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(static_dir, copy)
    assert check_complete(copy, SPEC)
    assert not check_complete(copy, SceneSpec(resolution=RES + 1, views=8, val_views=3, test_views=4))
    png = copy / "train" / "r_3.png"
    png.write_bytes(png.read_bytes()[:100])
    assert not check_complete(copy)
    shutil.copy(static_dir / "train" / "r_3.png", png)
    assert check_complete(copy)
    (copy / "val" / "r_0.png").unlink()
    assert not check_complete(copy)
    (copy / MANIFEST).write_text("{not json")
    assert not check_complete(copy)


def _camera_stats(path: Path) -> dict:
    meta = json.loads(path.read_text())
    m = np.array([f["transform_matrix"] for f in meta["frames"]], dtype=np.float64)
    pos = m[:, :3, 3]
    radius = np.linalg.norm(pos, axis=1)
    look = -m[:, :3, 2]  # cameras look down their -z
    return {
        "angle": meta["camera_angle_x"],
        "keys": {k for f in meta["frames"] for k in f},
        "radius": (radius.min(), radius.max()),
        "last_row": np.abs(m[:, 3] - [0, 0, 0, 1]).max(),
        "ortho": np.abs(np.einsum("nji,njk->nik", m[:, :3, :3], m[:, :3, :3]) - np.eye(3)).max(),
        "det": np.linalg.det(m[:, :3, :3]),
        "aim": np.abs(np.einsum("ni,ni->n", look, -pos / radius[:, None]) - 1).max(),  # looks at the origin
        "roll": np.abs(m[:, 2, 0]).max(),  # right axis horizontal
        "z_min": pos[:, 2].min(),
        "times": [f.get("time") for f in meta["frames"]],
    }


@pytest.mark.parametrize(
    "real, dynamic",
    [("blender/lego-400", False), ("dnerf/lego", True)],
)
def test_conventions_match_real_data(real: str, dynamic: bool, static_dir: Path, dynamic_dir: Path) -> None:
    folder = SHARED_DATA / real
    if not (folder / "transforms_train.json").exists():
        pytest.skip(f"{folder} not available")
    ours_dir = dynamic_dir if dynamic else static_dir
    for split in ("train", "val", "test"):
        ref = _camera_stats(folder / f"transforms_{split}.json")
        ours = _camera_stats(ours_dir / f"transforms_{split}.json")
        assert ours["angle"] == pytest.approx(ref["angle"])
        assert ours["keys"] == ref["keys"]
        for s in (ref, ours):
            assert s["last_row"] < 1e-6 and s["ortho"] < 1e-5 and np.allclose(s["det"], 1, atol=1e-5)
            assert s["aim"] < 1e-4 and s["roll"] < 1e-6 and s["z_min"] > 0
        assert ours["radius"][0] == pytest.approx(ref["radius"][0], abs=1e-3)
        assert ours["radius"][1] == pytest.approx(ref["radius"][1], abs=1e-3)
        if dynamic:
            assert ours["times"][0] == ref["times"][0] == 0.0
            assert all(0.0 <= t <= 1.0 for t in ours["times"] + ref["times"])
    # the real images are RGBA with a transparent background too
    with Image.open(next((folder / "train").glob("*.png"))) as im:
        assert im.mode == "RGBA"
        assert np.asarray(im)[0, 0, 3] == 0
