"""Interpreter tests: the Triton kernels on CPU tensors. Collected only under ``TRITON_INTERPRET=1``.

``TRITON_INTERPRET`` must be set before triton (and the kernels) are imported, and must not leak into other tests
(the kernels registered for CUDA would then run in the interpreter), so ``tests/triton/test_interpreter.py``
runs this folder in a subprocess with the variable set; a session without it skips this folder. To run it
directly: ``TRITON_INTERPRET=1 python -m pytest tests/triton/interp``. Small tiles (``BLOCK = 8``) make
multi-tile rays cheap for the (slow) interpreter.
"""

from __future__ import annotations

import os

import pytest

TEST_BLOCK = 8

if os.environ.get("TRITON_INTERPRET", "0") != "1":
    collect_ignore_glob = ["test_*.py"]
else:

    @pytest.fixture(autouse=True)
    def small_tiles():
        from nerfaccel_plugin._triton import _common

        prev = _common.set_block_size(TEST_BLOCK)
        yield TEST_BLOCK
        _common.set_block_size(prev)
