"""The CPU thread governor: torch's thread count follows the cores other processes leave free."""

from __future__ import annotations

import pytest
import torch

from nerfaccel_plugin.ns import threads


@pytest.fixture
def clock(monkeypatch):
    """A fake machine: ``state`` holds system busy seconds, total seconds, own CPU seconds and wall time."""
    state = {"busy": 0.0, "own": 0.0, "wall": 0.0}
    monkeypatch.setattr(threads, "_system_busy_s", lambda: (state["busy"], 0.0))
    monkeypatch.setattr(threads, "_own_cpu_s", lambda: state["own"])
    monkeypatch.setattr(threads.time, "monotonic", lambda: state["wall"])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(threads.ENV_ADAPT, raising=False)
    saved = torch.get_num_threads()
    yield state
    torch.set_num_threads(saved)


def _advance(state: dict, seconds: float, own_cores: float, other_cores: float) -> None:
    state["wall"] += seconds
    state["own"] += own_cores * seconds
    state["busy"] += (own_cores + other_cores) * seconds


def test_threads_follow_free_cores(clock, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    gov = threads.ThreadGovernor(every=2, cores=2)
    assert gov.enabled and gov.threads == 2
    gov.step()  # first sample
    _advance(clock, 1.0, own_cores=1.0, other_cores=1.0)  # another process keeps one core busy
    gov.step()
    assert gov.threads == 1 and calls == [1]
    _advance(clock, 1.0, own_cores=1.0, other_cores=0.05)  # it finished
    gov.step()
    gov.step()
    assert gov.threads == 2 and calls == [1, 2]
    _advance(clock, 1.0, own_cores=0.5, other_cores=4.0)  # heavily loaded: never below one thread
    gov.step()
    gov.step()
    assert gov.threads == 1


def test_governor_can_be_turned_off(clock, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setenv(threads.ENV_ADAPT, "0")
    assert not threads.ThreadGovernor(cores=2).enabled
    monkeypatch.delenv(threads.ENV_ADAPT)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user chose: left alone
    assert not threads.ThreadGovernor(cores=2).enabled
