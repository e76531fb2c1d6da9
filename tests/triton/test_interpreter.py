"""Runs the interpreter tests (``tests/triton/interp``) in a subprocess with ``TRITON_INTERPRET=1``.

The variable must be set before triton is imported and must not leak into this session, hence the subprocess.
``NERFACCEL_TRITON_SLOW=1`` also runs the 200k-sample ray (about 4 minutes more).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def test_triton_kernels_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(HERE / "interp")]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    print(res.stdout[-6000:])
    assert res.returncode == 0, f"interpreter tests failed:\n{res.stdout[-8000:]}\n{res.stderr[-4000:]}"
    assert " passed" in res.stdout
