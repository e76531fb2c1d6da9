"""The README's copy-paste lines stay true: the main job runs, and CI runs the README's test command."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO_ROOT


def _readme() -> str:
    return (REPO_ROOT / "README.md").read_text()


def test_readme_test_command_is_what_ci_runs():
    readme = _readme()
    assert 'python -m pip install -e ".[test]" && python -m pytest' in readme
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert 'python -m pip install -q -e ".[test]"' in ci
    assert re.search(r"^python -m pytest", ci, flags=re.M)


def test_example_in_readme_runs():
    readme = _readme()
    if "python -m nerfaccel_plugin.examples.train_sphere" not in readme:
        return  # the README's main job is ns-train now; the methods tests cover it
    out = subprocess.run(
        [sys.executable, "-m", "nerfaccel_plugin.examples.train_sphere", "--steps", "60", "--rays", "256"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    psnr = float(re.search(r"held-out PSNR ([0-9.]+) dB", out.stdout).group(1))
    assert psnr > 15.0
