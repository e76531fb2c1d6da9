"""The Triton kernels run on CPU tensors under the interpreter here.

``TRITON_INTERPRET=1`` must be set before the kernels are decorated, i.e. before ``nerfaccel_plugin._triton``'s
kernel modules are imported; this conftest is loaded before the test modules of this folder. Small tiles
(``BLOCK = 8``) make multi-tile rays cheap for the (slow) interpreter.
"""

from __future__ import annotations

import os

import pytest

os.environ["TRITON_INTERPRET"] = "1"

triton = pytest.importorskip("triton", reason="triton is not installed")

TEST_BLOCK = 8


@pytest.fixture(autouse=True)
def small_tiles():
    from nerfaccel_plugin._triton import _common, scan

    if not getattr(scan.scan_fwd_kernel, "__class__", type).__name__.startswith("Interpreted"):
        pytest.skip("the Triton kernels were imported before TRITON_INTERPRET=1 was set (run tests/triton alone)")
    prev = _common.set_block_size(TEST_BLOCK)
    yield TEST_BLOCK
    _common.set_block_size(prev)
