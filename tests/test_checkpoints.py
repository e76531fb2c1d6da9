"""Atomic checkpoint writes, clear write errors, damaged-checkpoint detection and the occupancy-grid load check.

The end-to-end counterparts (a save killed by SIGKILL, then ``ns-train --load-dir`` and ``ns-eval``) are in
``test_ns_reliability.py``.
"""

from __future__ import annotations

import errno
import math

import pytest
import torch

from nerfaccel_plugin import OccGridEstimator
from nerfaccel_plugin.ns import checkpoints
from nerfaccel_plugin.ns.checkpoints import CheckpointError, checkpoint_problem, pick_checkpoint, save_checkpoint


def _state(step: int) -> dict:
    return {"step": step, "pipeline": {"w": torch.full((64,), float(step))}}


def test_save_is_atomic_and_interrupted_save_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "step-000000002.ckpt"
    save_checkpoint(_state(2), path)
    assert checkpoint_problem(path) is None and torch.load(path)["step"] == 2

    def interrupted(obj, handle):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # any interruption after part of the bytes were written

    monkeypatch.setattr(checkpoints, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_state(3), path)
    assert torch.load(path)["step"] == 2  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, "no space left on the device"),
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "read-only file system"),
    ],
)
def test_write_errors_say_what_happened_and_name_the_path(tmp_path, monkeypatch, code, words):
    def failing(obj, handle):
        handle.write(b"x" * 100)
        raise OSError(code, "simulated")

    monkeypatch.setattr(checkpoints, "_write", failing)
    path = tmp_path / "step-000000001.ckpt"
    with pytest.raises(CheckpointError, match=words) as err:
        save_checkpoint(_state(1), path)
    assert str(path) in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_torch_wrapped_write_error_is_explained(tmp_path, monkeypatch):
    """torch.save to a file object wraps the OS error of a failed write in a RuntimeError."""

    class Full:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    original = checkpoints._write
    monkeypatch.setattr(checkpoints, "_write", lambda obj, handle: original(obj, Full(handle)))
    with pytest.raises(CheckpointError, match="no space left"):
        save_checkpoint(_state(1), tmp_path / "step-000000001.ckpt")


@pytest.mark.parametrize("damage", ["truncate", "empty", "flip", "garbage"])
def test_damaged_checkpoints_are_detected(tmp_path, damage):
    path = tmp_path / "step-000000001.ckpt"
    save_checkpoint(_state(1), path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    elif damage == "flip":  # bytes of the tensor data overwritten: only the CRC tells
        index = data.find(torch.full((64,), 1.0).numpy().tobytes())
        assert index > 0
        data[index : index + 16] = bytes(16)
    else:
        data = bytearray(b"not a checkpoint at all" * 10)
    path.write_bytes(bytes(data))
    assert checkpoint_problem(path) is not None


def test_pick_checkpoint_skips_damaged_newer_files_with_a_warning(tmp_path):
    for step in (2, 4, 6):
        save_checkpoint(_state(step), tmp_path / f"step-{step:09d}.ckpt")
    (tmp_path / "step-000000006.ckpt").write_bytes(b"")
    (tmp_path / ".step-000000008.ckpt.tmp-123").write_bytes(b"partial")  # an interrupted save: ignored
    with pytest.warns(RuntimeWarning, match="skipping checkpoint .*step-000000006.ckpt: it is empty"):
        path, step = pick_checkpoint(tmp_path)
    assert step == 4 and path.name == "step-000000004.ckpt"
    with pytest.raises(CheckpointError, match="step-000000006.ckpt is empty"):
        pick_checkpoint(tmp_path, step=6)
    for p in tmp_path.glob("step-*.ckpt"):
        p.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no readable checkpoint") as err:
        pick_checkpoint(tmp_path)
    assert all(f"step-{s:09d}.ckpt" in str(err.value) for s in (2, 4, 6))
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        pick_checkpoint(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------
# The occupancy grid of a loaded checkpoint
# ---------------------------------------------------------------------------------------------
def _trained_grid() -> OccGridEstimator:
    est = OccGridEstimator([-1, -1, -1, 1, 1, 1], resolution=8)
    est.update_every_n_steps(0, lambda x: (x.norm(dim=-1) < 0.5).float() * 10, occ_thre=0.01, n=1)
    assert est.binaries.any()
    return est


def test_valid_grid_loads():
    state = _trained_grid().state_dict()
    fresh = OccGridEstimator([-1, -1, -1, 1, 1, 1], resolution=8)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.binaries, state["binaries"])


@pytest.mark.parametrize("value", [math.nan, math.inf, -5.0])
def test_grid_with_invalid_occupancies_is_refused(value):
    state = _trained_grid().state_dict()
    state["occs"][3] = value
    fresh = OccGridEstimator([-1, -1, -1, 1, 1, 1], resolution=8)
    before = fresh.occs.clone()
    with pytest.raises(ValueError, match="NaN or infinite|values down to"):
        fresh.load_state_dict(state)
    assert torch.equal(fresh.occs, before)  # nothing was loaded


def test_grid_of_another_shape_is_refused_with_the_reason():
    state = _trained_grid().state_dict()
    fresh = OccGridEstimator([-1, -1, -1, 1, 1, 1], resolution=16)
    with pytest.raises(ValueError, match="grid resolution or level count"):
        fresh.load_state_dict(state)


def test_grid_with_a_wrong_bitfield_type_is_refused():
    state = _trained_grid().state_dict()
    state["binaries"] = state["binaries"].float()
    with pytest.raises(ValueError, match="not bool"):
        OccGridEstimator([-1, -1, -1, 1, 1, 1], resolution=8).load_state_dict(state)


def test_zeroed_grid_loads_with_a_warning():
    state = _trained_grid().state_dict()
    state["occs"].zero_()
    state["binaries"].zero_()
    with pytest.warns(RuntimeWarning, match="all zeros"):
        OccGridEstimator([-1, -1, -1, 1, 1, 1], resolution=8).load_state_dict(state)
