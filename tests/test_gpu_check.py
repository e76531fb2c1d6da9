"""benchmarks/gpu_check.sh --dry-run on a machine without a GPU: stage setups run, each stage is reported skipped
with a reason, exit 0 (the whole dry run is a CI step in .ci/run; here two stages keep the test short)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_dry_run_reports_skipped_stages(tmp_path):
    env = {**os.environ, "GPU_CHECK_STAGES": "a-info f-train", "GPU_CHECK_CARRY": str(tmp_path / "no-carry")}
    res = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "out"),
         "--data", str(tmp_path / "no-data")],
        capture_output=True, text=True, timeout=600, env=env, cwd=REPO,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| a-info | skipped | 0 | no GPU (--dry-run); setup ok |" in summary
    assert "| f-train | skipped | 0 | no lego-400 data" in summary
    assert "b-tests" not in summary  # not selected


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_check.sh")]).returncode == 0


def _gpu_module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "gpu" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_flags_uses_the_scripts_parser(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text(
        "import argparse\np = argparse.ArgumentParser()\n"
        "p.add_argument('--layout', nargs='+', choices=['geo30', 'a'])\n"
        "args = p.parse_args()\nraise SystemExit('the benchmark body must not run')\n"
    )
    check = _gpu_module("check_flags").check
    ok, message = check(script, ["--layout", "geo30", "a"])
    assert ok, message
    assert "'layout': ['geo30', 'a']" in message
    assert not check(script, ["--layouts", "geo30"])[0]
    assert not check(script, ["--layout", "geometric30"])[0]


def test_nerfacc_patch_renames_lerp_for_cuda13(tmp_path):
    header = tmp_path / "nerfacc" / "cuda" / "csrc" / "include" / "utils_math.cuh"
    header.parent.mkdir(parents=True)
    body = "".join(
        f"inline __device__ __host__ {t} lerp({t} a, {t} b, float t)\n{{\n    return a + t * (b - a);\n}}\n"
        for t in ("float", "float2", "float3", "float4")
    )
    header.write_text("// lerp\n" + body + "inline __host__ __device__ float clamp(float f, float a, float b);\n")
    patch = _gpu_module("build_nerfacc").patch
    assert patch(tmp_path / "nerfacc") == 4
    text = header.read_text()
    assert text.count("nerfacc_lerp(") == 4 and " lerp(" not in text and "clamp(" in text
    assert patch(tmp_path / "nerfacc") == 0  # idempotent
    (header.parent.parent / "user.cu").write_text("float x = lerp(a, b, t);\n")
    with pytest.raises(RuntimeError, match="still calls lerp"):
        patch(tmp_path / "nerfacc")
