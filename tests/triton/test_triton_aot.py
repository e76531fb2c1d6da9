"""Every Triton kernel variant compiles ahead of time for sm_80/86/89/90 without a GPU, and none spills.

Runs ``python -m nerfaccel_plugin._triton.aot`` in a subprocess without ``TRITON_INTERPRET``: every variant for
sm_90, each kernel's largest for the others.
The table of registers and spills is printed (``pytest -s`` shows it).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nerfaccel_plugin._triton.register import OP_NAMES

KERNELS = ["scan_fwd_kernel", "scan_bwd_kernel", "density_fwd_kernel", "density_bwd_kernel", "alpha_fwd_kernel",
           "alpha_bwd_kernel", "accumulate_fwd_kernel", "accumulate_bwd_kernel", "tile_carry_kernel",
           "mark_chunks_kernel"]  # fmt: skip


@pytest.mark.slow
def test_aot_compile_registers_and_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run(
        [sys.executable, "-m", "nerfaccel_plugin._triton.aot", "--cc", "90", "80", "86", "89"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    print(res.stdout)
    assert res.returncode == 0, f"AOT compilation failed or spilled:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    for cc in (80, 86, 89, 90):
        for name in KERNELS:
            assert any(line.split()[:2] == [str(cc), name] for line in res.stdout.splitlines()), (cc, name)
    assert len(OP_NAMES) == 8
