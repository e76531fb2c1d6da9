"""Backend dispatch: the choice per device type, the override and its errors."""

from __future__ import annotations

import pytest
import torch

import nerfaccel_plugin as nacc
from nerfaccel_plugin import _backend, _torch_impl


def test_forced_torch_uses_the_reference(monkeypatch, reset_backend):
    monkeypatch.setenv("NERFACCEL_BACKEND", "torch")
    assert _backend.get_op("_inclusive_sum", "cpu") is _torch_impl._inclusive_sum
    info = nacc.backend_info()
    assert info["cpu"]["backend"] == "torch"
    assert "forced" in info["cpu"]["reason"]
    assert "cuda" in info


def test_invalid_override_is_an_error(monkeypatch, reset_backend):
    monkeypatch.setenv("NERFACCEL_BACKEND", "fast")
    with pytest.raises(_backend.BackendError, match="NERFACCEL_BACKEND='fast' is not valid"):
        nacc.inclusive_sum(torch.rand(3), torch.tensor([[0, 3]]))


def test_forced_backend_for_wrong_device_is_an_error(monkeypatch, reset_backend):
    monkeypatch.setenv("NERFACCEL_BACKEND", "cuda")
    with pytest.raises(_backend.BackendError, match="cannot run ops on cpu tensors"):
        nacc.inclusive_sum(torch.rand(3), torch.tensor([[0, 3]]))


def test_forced_backend_that_cannot_load_is_an_error(monkeypatch, reset_backend):
    def fail(kind):
        raise RuntimeError("no compiler in this test")

    monkeypatch.setattr(_backend, "_load_extension", fail)
    monkeypatch.setenv("NERFACCEL_BACKEND", "cpp")
    with pytest.raises(_backend.BackendError, match="cannot be loaded: no compiler"):
        _backend.get_op("_inclusive_sum", "cpu")


def test_auto_falls_back_with_one_warning_and_reports_why(monkeypatch, reset_backend):
    def fail(kind):
        raise RuntimeError("build failed, see log")

    monkeypatch.setattr(_backend, "_load_extension", fail)
    monkeypatch.delenv("NERFACCEL_BACKEND", raising=False)
    with pytest.warns(RuntimeWarning, match="build failed, see log"):
        out = nacc.inclusive_sum(torch.ones(3), torch.tensor([[0, 3]]))
    torch.testing.assert_close(out, torch.tensor([1.0, 2.0, 3.0]))
    info = nacc.backend_info()
    assert info["cpu"]["backend"] == "torch"
    assert "build failed" in info["cpu"]["reason"]


def test_meta_and_other_devices_use_the_reference(reset_backend, monkeypatch):
    monkeypatch.delenv("NERFACCEL_BACKEND", raising=False)
    assert _backend.get_op("_exclusive_sum", "meta") is _torch_impl._exclusive_sum


def test_partial_extension_falls_back_per_op(monkeypatch, reset_backend):
    from nerfaccel_plugin import _ops

    monkeypatch.setattr(_backend, "_load_extension", lambda kind: None)
    monkeypatch.setattr(_backend, "_has_kernel", lambda op, device_type: op == "scan_fwd")
    monkeypatch.delenv("NERFACCEL_BACKEND", raising=False)
    monkeypatch.setenv("NERFACCEL_SELFTEST", "0")  # no real kernels behind the fake registration to test
    assert _backend.get_op("_inclusive_sum", "cpu") is _ops._inclusive_sum
    assert _backend.get_op("_render_weight_from_alpha", "cpu") is _torch_impl._render_weight_from_alpha
    assert nacc.backend_info()["cpu"]["ops"].startswith("4/")  # the four scans share scan_fwd


def test_public_api_matches_nerfacc_names():
    """Every public name of nerfacc 0.5 exists here with the same parameters (defaults included)."""
    import inspect

    pytest.importorskip("nerfacc")  # only for reading signatures in this test; the library never imports it
    import nerfacc

    for name in nerfacc.__all__:
        if name == "__version__":
            continue
        ours, theirs = getattr(nacc, name), getattr(nerfacc, name)
        if inspect.isclass(theirs):
            for meth in ("__init__", "sampling", "update_every_n_steps", "compute_loss", "mark_invisible_cells"):
                if hasattr(theirs, meth):
                    _same_params(getattr(ours, meth), getattr(theirs, meth), f"{name}.{meth}")
        else:
            _same_params(ours, theirs, name)


def _same_params(ours, theirs, label):
    import inspect

    po = inspect.signature(ours).parameters
    pt = inspect.signature(theirs).parameters
    for pname, p in pt.items():
        assert pname in po, f"{label}: parameter {pname} missing"
        q = po[pname]
        assert q.kind == p.kind or p.kind == inspect.Parameter.VAR_KEYWORD, f"{label}.{pname}: kind differs"
        if p.default is not inspect.Parameter.empty:
            assert q.default == p.default or (q.default != q.default and p.default != p.default), (
                f"{label}.{pname}: default {q.default!r} != nerfacc {p.default!r}"
            )
    assert list(po)[: len(pt)] == list(pt), f"{label}: positional order differs"


def test_every_exported_name_exists_and_is_documented():
    """``__all__`` names only real objects (a nerfacc release shipped one naming missing functions)."""
    for name in nacc.__all__:
        obj = getattr(nacc, name)
        if name != "__version__":
            assert (obj.__doc__ or "").strip(), f"{name} has no docstring"
    import nerfaccel_plugin.estimators as est

    for name in est.__all__:
        assert hasattr(est, name)
