"""What survives what, through the real Nerfstudio commands (CPU, a tiny embedded scene, a few iterations).

* A save killed half-way (the checkpoint writer is interrupted by SIGKILL) loses only the steps since the last good
  checkpoint: ``ns-train --load-dir`` and ``ns-eval`` pick that one, skipping a damaged newer file with a warning
  that names it. With no readable checkpoint the error lists the files, and the failed resume writes no run folder.
* A fresh process with a fresh extension cache prints the build's start and end lines (output is not a terminal
  here), no "No CUDA runtime" line, and no warning twice.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
RES, VIEWS = 24, 12
SMALL = [
    "--vis", "tensorboard",
    "--viewer.quit-on-train-completion", "True",
    "--steps-per-eval-batch", "1000",
    "--steps-per-eval-image", "1000",
    "--pipeline.target-num-samples", "4096",
    "--pipeline.min-rays-per-batch", "64",
    "--pipeline.max-rays-per-batch", "256",
]  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """Subprocess environment: a private XDG cache (the embedded scene), the session's extension cache."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    e = dict(os.environ)
    if not e.get("NERFACCEL_EXT_DIR"):
        from nerfaccel_plugin._ext.keys import cache_root

        e["NERFACCEL_EXT_DIR"] = str(cache_root())
    e.update({"XDG_CACHE_HOME": str(cache), "OMP_NUM_THREADS": "2"})
    return e


@pytest.fixture(scope="module")
def scene(env) -> Path:
    code = "from nerfaccel_plugin.scene import get_scene; "
    code += f"print(get_scene(dynamic=False, resolution={RES}, views={VIEWS}))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


def _run(args: list, cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


_KILLED_SAVE = """
import io, os, signal, sys
import torch
from nerfaccel_plugin.ns import checkpoints

kill_at, calls = int(sys.argv[1]), []
original = checkpoints._write


def write(obj, handle):
    calls.append(1)
    if len(calls) == kill_at:  # half the bytes reach the file, then the process dies (no cleanup runs)
        buf = io.BytesIO()
        torch.save(obj, buf)
        handle.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    original(obj, handle)


checkpoints._write = write
from nerfstudio.scripts.train import entrypoint

sys.argv = ["ns-train", *sys.argv[2:]]
entrypoint()
"""


def test_killed_save_then_resume_and_eval_use_the_last_good_checkpoint(tmp_path, env, scene):
    train = ["nerfaccel-lego", "--data", scene, *SMALL, "--steps-per-save", "2"]
    train += ["--save-only-latest-checkpoint", "False", "--max-num-iterations", "7"]
    killed = _run([sys.executable, "-c", _KILLED_SAVE, "3", *train], tmp_path, env)
    assert killed.returncode == -9, killed.stderr[-3000:]  # killed during its third save (step 6)
    (config,) = tmp_path.glob("outputs/**/config.yml")
    models = config.parent / "nerfstudio_models"
    assert sorted(p.name for p in models.glob("step-*.ckpt")) == ["step-000000002.ckpt", "step-000000004.ckpt"]
    assert len(list(models.glob(".step-000000006.ckpt.tmp-*"))) == 1  # the partial write never took the real name
    # A damaged checkpoint under the real name (e.g. written by another tool, or a disk error) is skipped too.
    damaged = models / "step-000000008.ckpt"
    damaged.write_bytes((models / "step-000000004.ckpt").read_bytes()[:5000])

    resumed = _ok(_run([BIN / "ns-train", *train, "--load-dir", models], tmp_path, env))
    text = resumed.stdout + resumed.stderr
    assert f"skipping checkpoint {damaged}" in text and "step-000000004.ckpt" in text
    assert len(list(tmp_path.glob("outputs/**/config.yml"))) == 2
    out_json = tmp_path / "eval.json"
    evaluated = _ok(_run([BIN / "ns-eval", "--load-config", config, "--output-path", out_json], tmp_path, env))
    text = evaluated.stdout + evaluated.stderr  # (ns-eval names the run's folder relative to where it was started)
    assert re.search(r"skipping checkpoint \S*step-000000008\.ckpt: it is truncated", text), text[-3000:]
    assert re.search(r"using \S*step-000000004\.ckpt", text)
    assert out_json.is_file()


def test_resume_without_a_readable_checkpoint_lists_the_files_and_writes_nothing(tmp_path, env, scene):
    models = tmp_path / "old" / "nerfstudio_models"
    models.mkdir(parents=True)
    (models / "step-000000002.ckpt").write_bytes(b"")
    (models / "step-000000004.ckpt").write_bytes(b"PK\x03\x04 truncated")
    args = [BIN / "ns-train", "nerfaccel-lego", "--data", scene, *SMALL, "--load-dir", models]
    proc = _run([*args, "--max-num-iterations", "4"], tmp_path, env)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "no readable checkpoint" in text and "step-000000002.ckpt is empty" in text
    assert "step-000000004.ckpt is truncated" in text
    assert not (tmp_path / "outputs").exists()  # no new run folder


def test_fresh_extension_cache_console(tmp_path, env, scene):
    """First use in a fresh process and cache, output captured (not a terminal): the build says what it does."""
    fresh = dict(env, NERFACCEL_EXT_DIR=str(tmp_path / "ext"))
    fresh.pop("PYTHONWARNINGS", None)
    args = [BIN / "ns-train", "nerfaccel-lego", "--data", scene, *SMALL, "--max-num-iterations", "3"]
    proc = _ok(_run(args, tmp_path, fresh, timeout=1500))
    text = proc.stdout + "\n" + proc.stderr
    assert "compiling nerfaccel's C++ kernels (cpp), first use only, about a minute" in text
    assert re.search(r"compiled the cpp kernels in \d+ s", text)
    assert "No CUDA runtime" not in text
    warning_lines = [line for line in proc.stderr.splitlines() if re.search(r"\w+Warning: ", line)]
    assert len(warning_lines) == len(set(warning_lines)), "\n".join(warning_lines)
    assert "This DataLoader will create" not in text
    assert "Using a non-tuple sequence for multidimensional indexing" not in text
