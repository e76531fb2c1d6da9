"""Checkpoint loading on torch >= 2.6 (weights_only), offline LPIPS, device choice."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from nerfaccel_plugin import ns_compat


def test_numpy_scalars_load_with_weights_only() -> None:
    ns_compat.register_safe_globals()
    buf = io.BytesIO()
    torch.save({"lr": np.float64(0.01), "f32": np.float32(2.0), "i": np.int64(3)}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert float(state["lr"]) == 0.01 and int(state["i"]) == 3


def test_code_objects_still_refused() -> None:
    """Only inert numpy scalars are allow-listed: arbitrary globals keep failing under weights_only."""
    buf = io.BytesIO()
    torch.save({"fn": np.linalg.norm}, buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="weights_only|Unsupported global"):
        torch.load(buf, weights_only=True)


def test_float_scheduler_state_has_no_numpy() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=1e-2)
    sched = ns_compat.FloatExponentialDecaySchedulerConfig(lr_final=1e-4, warmup_steps=5, max_steps=50).setup()
    lr_sched = sched.get_scheduler(opt, lr_init=1e-2)
    for _ in range(10):
        opt.step()
        lr_sched.step()
    buf = io.BytesIO()
    torch.save({"s": lr_sched.state_dict(), "o": opt.state_dict()}, buf)
    buf.seek(0)
    torch.serialization.clear_safe_globals()
    try:
        torch.load(buf, weights_only=True)
    finally:
        ns_compat.register_safe_globals()
    assert abs(opt.param_groups[0]["lr"] - 1e-2 * (1e-4 / 1e-2) ** (5 / 45)) < 1e-9


def test_lpips_skipped_without_weights(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(ns_compat, "_LPIPS_WARNED", False)
    assert ns_compat.make_lpips() is None
    assert ns_compat.make_lpips() is None
    out = capsys.readouterr().out
    assert out.count("LPIPS skipped") == 1


def test_default_device() -> None:
    assert ns_compat.default_device_type() == ("cuda" if torch.cuda.is_available() else "cpu")
