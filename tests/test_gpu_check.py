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
