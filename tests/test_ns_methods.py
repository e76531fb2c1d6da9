"""End-to-end Nerfstudio tests of the nerfaccel methods on a tiny embedded scene (CPU).

``nerfaccel-lego`` goes through the real command-line tools (``ns-train`` with no data argument, so the
embedded-scene fallback is used; ``ns-eval``; ``ns-render spiral``; ``ns-train --load-dir``). The other
methods are trained with ``ns-train`` and evaluated / rendered in-process through the same script classes
the ``ns-eval`` / ``ns-render`` commands run, to keep the suite fast. The viewer's render path is
``model.get_outputs_for_camera`` on a model loaded from the checkpoint, exactly as the viewer calls it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
HAS_FFMPEG = shutil.which("ffmpeg") is not None
RES, VIEWS = 24, 12

# Tiny model / batch overrides shared by every run (a few seconds per method on 2 cores); the field and sampler
# options exist only for the methods built from those parts (HASH_FIELD, OCCUPANCY below).
TINY = [
    "--vis", "tensorboard",
    "--viewer.quit-on-train-completion", "True",
    "--steps-per-eval-batch", "1000",
    "--steps-per-eval-image", "1000",
    "--pipeline.model.eval-num-rays-per-chunk", "1024",
    "--pipeline.target-num-samples", "4096",
    "--pipeline.min-rays-per-batch", "64",
    "--pipeline.max-rays-per-batch", "256",
]  # fmt: skip
HASH_FIELD = [
    "--pipeline.model.field.num-levels", "4",
    "--pipeline.model.field.max-res", "64",
    "--pipeline.model.field.log2-hashmap-size", "12",
]  # fmt: skip
OCCUPANCY = [
    "--pipeline.model.sampler.grid-resolution", "32",
    "--pipeline.model.sampler.warmup-steps", "8",
    "--pipeline.model.sampler.update-every", "4",
]  # fmt: skip


def keep_extension_cache(env: dict) -> None:
    """Reuses the already-built nerfaccel extensions when the cache home is redirected to a temp dir.

    Only points at the caller's extension cache when it exists (it is read, never built, from here).
    """
    if env.get("NERFACCEL_EXT_DIR"):
        return
    try:
        from nerfaccel_plugin._ext.build import cache_root
    except ImportError:
        return
    root = cache_root()
    if root.is_dir():
        env["NERFACCEL_EXT_DIR"] = str(root)


@pytest.fixture(scope="session")
def env(tmp_path_factory) -> dict:
    """Environment of the subprocesses: a private cache (the embedded scene goes there), no warnings."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    e = dict(os.environ)
    keep_extension_cache(e)
    e.update({"XDG_CACHE_HOME": str(cache), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "2"})
    return e


@pytest.fixture(scope="session")
def scenes(env) -> dict:
    """The embedded static and dynamic scenes, generated once into the private cache."""
    old = os.environ.get("XDG_CACHE_HOME")
    if env.get("NERFACCEL_EXT_DIR"):
        os.environ.setdefault("NERFACCEL_EXT_DIR", env["NERFACCEL_EXT_DIR"])
    os.environ["XDG_CACHE_HOME"] = env["XDG_CACHE_HOME"]
    try:
        from nerfaccel_plugin.scene import get_scene

        return {
            "static": Path(get_scene(dynamic=False, resolution=RES, views=VIEWS)),
            "dynamic": Path(get_scene(dynamic=True, resolution=RES, views=VIEWS)),
        }
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = old


def run(tool: str, args: list, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs a Nerfstudio command and fails with its output when it fails."""
    proc = subprocess.run(
        [str(BIN / tool), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        pytest.fail(f"{tool} {' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def find_config(root: Path, method: str) -> Path:
    configs = sorted(root.glob(f"**/{method}/*/config.yml"))
    assert configs, f"no config.yml under {root}"
    return configs[-1]


def latest_ckpt(config_path: Path) -> Path:
    ckpts = sorted((config_path.parent / "nerfstudio_models").glob("step-*.ckpt"))
    assert ckpts, f"no checkpoint next to {config_path}"
    return ckpts[-1]


def grid_state(ckpt: Path) -> dict:
    state = torch.load(ckpt, map_location="cpu")["pipeline"]  # default weights_only: must load safely
    return {k: v for k, v in state.items() if "occupancy_grid" in k and k.rsplit(".", 1)[-1] in ("occs", "binaries")}


def viewer_render(config_path: Path) -> tuple[torch.Tensor, object]:
    """Loads the checkpoint like ``ns-viewer --load-config`` and renders one camera like the viewer does."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(config_path, test_mode="test")
    model = pipeline.model
    model.eval()
    camera = pipeline.datamanager.eval_dataset.cameras[0:1].to(model.device)
    with torch.no_grad():
        outputs = model.get_outputs_for_camera(camera, obb_box=None)
    return outputs["rgb"], model


def resume(config_path: Path, tmp: Path, extra_steps: int):
    """What ``ns-train <method> --load-dir <run>/nerfstudio_models`` does, in-process.

    Checks that the resumed pipeline holds exactly the checkpoint's state (weights, occupancy grid,
    estimator buffers) before training on, then trains ``extra_steps`` more and checks the new checkpoint.
    """
    import yaml

    ckpt = latest_ckpt(config_path)
    saved = torch.load(ckpt, map_location="cpu")  # default weights_only: must load safely
    cfg = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    cfg.load_dir = ckpt.parent
    cfg.max_num_iterations = extra_steps  # Nerfstudio counts iterations from the resumed step
    cfg.steps_per_save = 1000
    cfg.output_dir = tmp / "resumed"
    cfg.set_timestamp()
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    assert trainer._start_step == saved["step"] + 1
    state = trainer.pipeline.state_dict()
    for key, value in saved["pipeline"].items():
        key = key.removeprefix("module.")
        assert key in state, f"{key} missing after resume"
        if torch.is_tensor(value):
            assert torch.equal(state[key].cpu(), value), f"{key} differs after resume"
    grid = {k: v.clone() for k, v in state.items() if k.endswith(("occupancy_grid.binaries", "occupancy_grid.occs"))}
    trainer.train()
    resumed = sorted(cfg.get_checkpoint_dir().glob("step-*.ckpt"))
    assert resumed and resumed[-1].name == f"step-{saved['step'] + extra_steps:09d}.ckpt"
    if type(trainer.pipeline.model.config.sampler).__name__ == "OccupancySamplerConfig":
        assert grid, "an occupancy-grid method must checkpoint its grid"
    if grid:  # the grid kept being updated from the resumed state, not from scratch
        after = torch.load(resumed[-1], map_location="cpu")["pipeline"]
        common = [k for k in grid if k in after]
        assert common, "the grid is missing from the resumed run's checkpoint"
        assert any(not torch.equal(after[k], grid[k]) for k in common)
    return trainer


def eval_and_render(config_path: Path, tmp: Path) -> None:
    """What ``ns-eval`` and ``ns-render spiral`` do, in-process."""
    from nerfstudio.scripts.eval import ComputePSNR

    out = tmp / "eval.json"
    ComputePSNR(load_config=config_path, output_path=out).main()
    results = json.loads(out.read_text())["results"]
    assert math.isfinite(results["psnr"]) and math.isfinite(results["ssim"])
    if HAS_FFMPEG:
        from nerfstudio.scripts.render import SpiralRender

        video = tmp / "spiral.mp4"
        SpiralRender(load_config=config_path, output_path=video, seconds=1.0, frame_rate=2).main()
        assert video.is_file() and video.stat().st_size > 0


@pytest.fixture(scope="module")
def lego_run(tmp_path_factory, env: dict, scenes: dict) -> tuple[Path, str]:
    """``ns-train nerfaccel-lego`` with no data argument (embedded-scene fallback), 30 iterations."""
    tmp = tmp_path_factory.mktemp("lego")
    proc = run(
        "ns-train",
        ["nerfaccel-lego", *TINY, *HASH_FIELD, *OCCUPANCY, "--max-num-iterations", "30", "--steps-per-save", "30",
         "--output-dir", tmp / "out",
         "nerfaccel-blender-data", "--embedded-resolution", RES, "--embedded-views", VIEWS],
        tmp, env,
    )  # fmt: skip
    return find_config(tmp / "out", "nerfaccel-lego"), proc.stdout + proc.stderr


def test_lego_cli_end_to_end(tmp_path: Path, env: dict, lego_run: tuple[Path, str]) -> None:
    """ns-train (embedded fallback) -> checkpoint -> ns-eval -> ns-render -> --load-dir resume -> viewer."""
    config, text = lego_run
    assert ("embedded" in text and "CPU" in text) or torch.cuda.is_available()
    ckpt = latest_ckpt(config)
    assert ckpt.name == "step-000000029.ckpt"
    grid = grid_state(ckpt)
    assert grid and any(v.any() for k, v in grid.items() if k.endswith("binaries"))

    run("ns-eval", ["--load-config", config, "--output-path", tmp_path / "eval.json"], tmp_path, env)
    results = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert {"psnr", "ssim"} <= set(results)
    assert math.isfinite(results["psnr"]) and results["psnr"] > 5 and 0 < results["ssim"] <= 1

    if HAS_FFMPEG:
        video = tmp_path / "spiral.mp4"
        run("ns-render", ["spiral", "--load-config", config, "--output-path", video, "--seconds", "1",
                          "--frame-rate", "2"], tmp_path, env)  # fmt: skip
        assert video.is_file() and video.stat().st_size > 0

    # Resume: the new run starts from the checkpoint's step, grid and weights (checked inside).
    resume(config, tmp_path, extra_steps=6)

    # Viewer render path on the original checkpoint: a trained grid, not a blank one, and an image.
    rgb, vmodel = viewer_render(config)
    assert torch.equal(vmodel.occupancy_grid.binaries.cpu(), grid[[k for k in grid if k.endswith("binaries")][0]])
    assert rgb.shape == (RES, RES, 3) and bool(torch.isfinite(rgb).all())


def test_ns_viewer_loads_the_checkpoint(tmp_path: Path, env: dict, lego_run: tuple[Path, str]) -> None:
    """``ns-viewer --load-config`` starts, loads the trained checkpoint and serves (then it is stopped)."""
    import socket
    import threading
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [str(BIN / "ns-viewer"), "--load-config", str(lego_run[0]), "--viewer.websocket-port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    watchdog = threading.Timer(300, proc.kill)  # readline would block forever on a silent hang
    watchdog.start()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            if f"ws://0.0.0.0:{port}" in line or f"ws://127.0.0.1:{port}" in line:
                break
    finally:
        watchdog.cancel()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    text = "".join(lines)
    assert "Traceback" not in text, text[-4000:]
    assert "Done loading checkpoint" in text and "step-000000029.ckpt" in text.replace("\n", ""), text[-4000:]
    assert str(port) in text, f"the viewer never started serving:\n{text[-4000:]}"


@pytest.mark.skipif(not HAS_FFMPEG, reason="ffmpeg not installed")
def test_lego_render_interpolate_and_camera_path(tmp_path: Path, scenes: dict, lego_run: tuple[Path, str]) -> None:
    """ns-render interpolate and camera-path write videos (in-process)."""
    config = lego_run[0]
    from nerfstudio.scripts.render import RenderCameraPath, RenderInterpolated

    video = tmp_path / "interp.mp4"
    RenderInterpolated(load_config=config, output_path=video, interpolation_steps=2, frame_rate=2).main()
    assert video.is_file() and video.stat().st_size > 0

    meta = json.loads((scenes["static"] / "transforms_test.json").read_text())
    fov = math.degrees(float(meta["camera_angle_x"]))
    path = {
        "render_height": 16,
        "render_width": 16,
        "camera_type": "perspective",
        "seconds": 1.0,
        "camera_path": [
            {"camera_to_world": sum(f["transform_matrix"], []), "fov": fov, "aspect": 1.0} for f in meta["frames"][:2]
        ],
    }
    path_file = tmp_path / "camera_path.json"
    path_file.write_text(json.dumps(path))
    video = tmp_path / "path.mp4"
    RenderCameraPath(load_config=config, output_path=video, camera_path_filename=path_file).main()
    assert video.is_file() and video.stat().st_size > 0


METHODS = {
    "nerfaccel-ngp": ("nerfaccel-blender-data", "static", [*HASH_FIELD, *OCCUPANCY]),
    "nerfaccel-360": (
        "nerfaccel-blender-data",
        "static",
        [
            *HASH_FIELD,
            "--pipeline.model.sampler.num-proposal-samples", "32", "16",
            "--pipeline.model.sampler.num-samples", "16",
            "--pipeline.model.sampler.max-res", "32", "64",
            "--pipeline.model.sampler.log2-hashmap-size", "10",
            "--pipeline.model.sampler.near-plane", "1.0",
            "--pipeline.model.sampler.far-plane", "10.0",
        ],
    ),  # fmt: skip
    "nerfaccel-vanilla": (
        "nerfaccel-blender-data",
        "static",
        ["--pipeline.model.field.num-layers", "4", "--pipeline.model.field.layer-width", "32", *OCCUPANCY],
    ),
    "nerfaccel-dnerf": ("nerfaccel-dnerf-data", "dynamic", [*HASH_FIELD, *OCCUPANCY]),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_train_eval_render_viewer(method: str, tmp_path: Path, env: dict, scenes: dict) -> None:
    """Each other method: ns-train -> checkpoint -> eval -> spiral video -> resume -> viewer image."""
    parser, scene, extra = METHODS[method]
    run("ns-train", [method, *TINY, *extra, "--max-num-iterations", "20", "--steps-per-save", "20",
                     "--output-dir", tmp_path / "out", parser, "--data", scenes[scene]], tmp_path, env)  # fmt: skip
    config = find_config(tmp_path / "out", method)
    assert latest_ckpt(config).name == "step-000000019.ckpt"
    eval_and_render(config, tmp_path)
    resume(config, tmp_path, extra_steps=4)
    rgb, _ = viewer_render(config)
    assert rgb.shape == (RES, RES, 3) and bool(torch.isfinite(rgb).all())


def test_output_folder_is_named_after_the_scene(tmp_path, monkeypatch) -> None:
    """Without --data, runs go to outputs/nerfaccel-scene[-dynamic]/ (embedded fallback) or outputs/lego/, not
    Nerfstudio's outputs/unnamed/; an explicit --data keeps Nerfstudio's naming."""
    import copy

    from nerfaccel_plugin.method_configs import dnerf, lego

    monkeypatch.chdir(tmp_path)
    names = {}
    for spec in (lego.nerfaccel_lego, dnerf.nerfaccel_dnerf):
        cfg = copy.deepcopy(spec.config)
        names[cfg.method_name] = cfg.get_base_dir().parts[1]
    assert names == {"nerfaccel-lego": "nerfaccel-scene", "nerfaccel-dnerf": "nerfaccel-scene-dynamic"}

    (tmp_path / "data" / "blender" / "lego").mkdir(parents=True)  # Nerfstudio's download location exists
    cfg = copy.deepcopy(lego.nerfaccel_lego.config)
    assert cfg.get_base_dir().parts[1] == "lego"

    cfg = copy.deepcopy(lego.nerfaccel_lego.config)
    cfg.pipeline.datamanager.data = tmp_path / "my-scene"
    assert cfg.get_base_dir().parts[1] == "my-scene"
