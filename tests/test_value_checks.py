"""``nerfaccel_plugin.value_checks``: the value checks (they sync with a GPU) can be switched per block."""

from __future__ import annotations

import threading

import pytest
import torch

import nerfaccel_plugin as nerfacc
from nerfaccel_plugin import _validation


def _unsorted_call():
    # Unsorted ray indices are found only by reading the values.
    t0 = torch.tensor([0.0, 0.1, 0.2])
    ray_indices = torch.tensor([1, 0, 1])
    return nerfacc.render_weight_from_density(t0, t0 + 0.1, torch.ones(3), ray_indices=ray_indices, n_rays=2)


def test_value_checks_off_inside_block_only(monkeypatch):
    monkeypatch.delenv("NERFACCEL_SKIP_VALUE_CHECKS", raising=False)
    with pytest.raises(ValueError, match="ray_indices"):
        _unsorted_call()
    with nerfacc.value_checks(False):
        assert not _validation.value_checks_enabled()
        _unsorted_call()  # not read, so not rejected
        # Type and shape checks still run.
        with pytest.raises(TypeError):
            nerfacc.render_weight_from_density([0.0], [0.1], [1.0])
    assert _validation.value_checks_enabled()
    with pytest.raises(ValueError, match="ray_indices"):
        _unsorted_call()


def test_value_checks_on_overrides_environment_and_nests(monkeypatch):
    monkeypatch.setenv("NERFACCEL_SKIP_VALUE_CHECKS", "1")
    assert not _validation.value_checks_enabled()
    with nerfacc.value_checks(True):
        assert _validation.value_checks_enabled()
        with nerfacc.value_checks(False):
            assert not _validation.value_checks_enabled()
        assert _validation.value_checks_enabled()
        with pytest.raises(ValueError, match="ray_indices"):
            _unsorted_call()
    assert not _validation.value_checks_enabled()


def test_value_checks_is_per_thread(monkeypatch):
    monkeypatch.delenv("NERFACCEL_SKIP_VALUE_CHECKS", raising=False)
    seen = []
    entered, release = threading.Event(), threading.Event()

    def other():
        entered.wait(5)
        seen.append(_validation.value_checks_enabled())
        release.set()

    thread = threading.Thread(target=other)
    thread.start()
    with nerfacc.value_checks(False):
        entered.set()
        release.wait(5)
    thread.join(5)
    assert seen == [True]


def test_pack_info_and_batched_layout_mark_covering_chunks():
    from nerfaccel_plugin import _backend, volrend

    ri = torch.tensor([0, 0, 2, 2, 2])
    pi = nerfacc.pack_info(ri, n_rays=3)
    assert _backend.is_marked_covering(pi, 5)
    assert not _backend.is_marked_covering(pi, 4)
    assert not _backend.is_marked_covering(pi.clone(), 5)  # only this tensor object
    pi[0, 1] = 1  # an in-place change drops the mark
    assert not _backend.is_marked_covering(pi, 5)
    # Out-of-range indices (value checks off) must not be marked: their samples lie outside every chunk.
    with nerfacc.value_checks(False):
        bad = nerfacc.pack_info(torch.tensor([0, 1, 5]), n_rays=2)
    assert bad.tolist() == [[0, 1], [1, 1]]
    assert not _backend.is_marked_covering(bad, 3)
    batched, shape = volrend._layout("sigmas", torch.zeros(2, 3, 4), None, None, None)
    assert shape == (2, 3, 4) and batched is None  # batched rows go to the kernels without a packed_info
    # A user's packed_info is not marked.
    user = torch.tensor([[0, 2], [2, 3]])
    assert not _backend.is_marked_covering(volrend._layout("sigmas", torch.zeros(5), user, None, None)[0], 5)
