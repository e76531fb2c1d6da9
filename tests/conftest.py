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
