"""Shared test configuration.

Tests run on whatever backend dispatch picks (set ``NERFACCEL_BACKEND`` to force one). Data from
``../shared/data`` is optional: tests that need it skip when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def reset_backend():
    """Clears cached backend choices before and after a test that changes NERFACCEL_BACKEND."""
    from nerfaccel_plugin import _backend

    _backend.reset()
    yield _backend
    _backend.reset()


@pytest.fixture(params=["torch", "cpp"])
def semantic_backend(request, monkeypatch):
    """Runs a test once on the PyTorch reference and once on the C++ build (``NERFACCEL_BACKEND``).

    The suites that check op semantics (hand-computed values, per-ray loops, gradcheck, traversal invariants, bad
    input) use it through ``pytestmark = pytest.mark.usefixtures("semantic_backend")``: on the default backend alone
    they would never reach ``_torch_impl``, the reference every kernel is compared against. Without a C++ toolchain
    the ``cpp`` run skips, unless ``NERFACCEL_REQUIRE_EXT=1`` (CI) makes that a failure.
    """
    import os

    from nerfaccel_plugin import _backend, _ext

    if request.param == "cpp":
        try:
            _ext.load_backend("cpp")
        except _ext.ExtensionUnavailable as err:
            if os.environ.get("NERFACCEL_REQUIRE_EXT") == "1":
                pytest.fail(f"the cpp extension must build here (NERFACCEL_REQUIRE_EXT=1): {err}")
            pytest.skip(f"cpp extension unavailable: {err}")
    monkeypatch.setenv("NERFACCEL_BACKEND", request.param)
    _backend.reset()
    yield request.param
    _backend.reset()
