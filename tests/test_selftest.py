"""The first-use self-test (nerfaccel_plugin._ext.selftest) with the C++ CPU build.

The real kernels pass against the PyTorch reference; deliberately broken kernels (monkeypatched into a copy of the
backend namespace) are caught, including one that is wrong only on one-sample rays; a failure turns the backend off
for the device with one warning naming the op and its max error, is recorded in the cache (a later process reuses
the verdict without testing), and shows in backend_info(); NERFACCEL_SELFTEST=0 skips the test.
"""

from __future__ import annotations

import types
import warnings

import pytest
import torch

import nerfaccel_plugin as nacc
from nerfaccel_plugin import _backend, _torch_impl
from nerfaccel_plugin._ext import selftest


@pytest.fixture(scope="module")
def cpp():
    from nerfaccel_plugin import _ext

    try:
        _ext.load_backend("cpp")
        return _backend.kernel_namespace("cpu")
    except _ext.ExtensionUnavailable as err:
        import os

        if os.environ.get("NERFACCEL_REQUIRE_EXT") == "1":
            pytest.fail(f"the cpp extension must build here (NERFACCEL_REQUIRE_EXT=1): {err}")
        pytest.skip(f"cpp extension unavailable: {err}")


@pytest.fixture
def isolated(tmp_path, monkeypatch, reset_backend):
    """Verdicts go to a temporary folder; outcomes of earlier tests are forgotten."""
    monkeypatch.delenv("NERFACCEL_BACKEND", raising=False)
    monkeypatch.delenv("NERFACCEL_SELFTEST", raising=False)
    monkeypatch.setattr(selftest, "cache_file", lambda kind, module, device: tmp_path / f"selftest-{kind}.json")
    selftest.reset()
    yield tmp_path
    selftest.reset()


def broken(ops, name, fn):
    """A copy of the backend namespace with op ``name`` replaced."""
    ns = types.SimpleNamespace(**{n: getattr(ops, n) for n in ops.available_ops})
    ns.available_ops = set(ops.available_ops)
    setattr(ns, name, fn)
    return ns


def test_real_kernels_pass(cpp):
    outcome = selftest.run(cpp, "cpu")
    assert outcome.passed and outcome.status == "passed", outcome.detail
    assert set(outcome.errors) == set(_torch_impl.__all__) & cpp.available_ops
    assert all(err < 1e-4 for err in outcome.errors.values()), outcome.errors


def test_inputs_include_empty_and_one_sample_rays():
    cases = selftest._cases(torch.device("cpu"), torch.Generator().manual_seed(0))
    counts = cases["_render_weight_from_alpha"][0][0][1][:, 1].tolist()
    assert 0 in counts and 1 in counts
    assert any(args[0].numel() == 0 for args, _ in cases["_inclusive_sum"])  # no samples at all
    assert set(cases) == set(_torch_impl.__all__)  # every primitive has inputs


def test_broken_forward_is_caught(cpp, isolated):
    bad = broken(cpp, "_exclusive_sum", lambda inputs, packed_info: cpp._inclusive_sum(inputs, packed_info))
    outcome = selftest.run(bad, "cpu")
    assert not outcome.passed and outcome.failed_op == "_exclusive_sum" and outcome.max_error > 0.01


def test_kernel_wrong_only_on_one_sample_rays_is_caught(cpp, isolated):
    def alpha(alphas, packed_info):
        w, t = cpp._render_weight_from_alpha(alphas, packed_info)
        single = packed_info[packed_info[:, 1] == 1, 0]
        w = w.clone()
        w[single] = 0.0
        return w, t

    outcome = selftest.run(broken(cpp, "_render_weight_from_alpha", alpha), "cpu")
    assert not outcome.passed and outcome.failed_op == "_render_weight_from_alpha"


def test_broken_gradient_is_caught(cpp, isolated):
    class Twice(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return 2 * g

    def contract(x, aabb, ord):
        return Twice.apply(cpp._contract(x, aabb, ord))

    outcome = selftest.run(broken(cpp, "_contract", contract), "cpu")
    assert not outcome.passed and outcome.failed_op == "_contract"


def test_raising_kernel_is_caught(cpp, isolated):
    def boom(*args):
        raise RuntimeError("illegal memory access")

    outcome = selftest.run(broken(cpp, "_searchsorted", boom), "cpu")
    assert not outcome.passed and outcome.status == "error" and "illegal memory access" in outcome.detail


def test_failure_turns_backend_off_once_and_is_cached(cpp, isolated, monkeypatch):
    bad = broken(cpp, "_inclusive_prod", lambda inputs, packed_info: cpp._inclusive_prod(inputs, packed_info) + 0.5)
    monkeypatch.setattr(_backend, "kernel_namespace", lambda device_type: bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _backend.get_op("_inclusive_prod", "cpu") is _torch_impl._inclusive_prod
        assert _backend.get_op("_exclusive_sum", "cpu") is _torch_impl._exclusive_sum  # the whole set is off
        info = nacc.backend_info()["cpu"]
    msgs = [str(w.message) for w in caught if "self-test" in str(w.message)]
    assert len(msgs) == 1, msgs
    assert "_inclusive_prod" in msgs[0] and "max error 0.5" in msgs[0]
    assert info["backend"] == "torch" and "FAILED: _inclusive_prod" in info["selftest"]
    assert "self-test" in info["reason"]
    assert (isolated / "selftest-cpp.json").is_file()

    # A later process (outcomes forgotten) reads the verdict instead of testing again.
    _backend.reset()
    monkeypatch.setattr(selftest, "run", lambda *a, **k: pytest.fail("the cached verdict must be reused"))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert nacc.backend_info()["cpu"]["backend"] == "torch"
    assert selftest.outcome_for("cpp", "cpu").cached


def test_passing_kernels_stay_and_show_in_backend_info(cpp, isolated):
    info = nacc.backend_info()["cpu"]
    assert info["backend"] == "cpp" and info["selftest"].startswith("passed"), info


def test_env_var_skips(cpp, isolated, monkeypatch):
    bad = broken(cpp, "_inclusive_sum", lambda inputs, packed_info: inputs * 0)
    monkeypatch.setattr(_backend, "kernel_namespace", lambda device_type: bad)
    monkeypatch.setenv("NERFACCEL_SELFTEST", "0")
    monkeypatch.setattr(selftest, "run", lambda *a, **k: pytest.fail("NERFACCEL_SELFTEST=0 must not test"))
    info = nacc.backend_info()["cpu"]
    assert info["backend"] == "cpp" and info["selftest"].startswith("skipped")
    assert not (isolated / "selftest-cpp.json").exists()


def test_verdict_key_follows_the_triton_sources(tmp_path):
    """On CUDA some ops are Triton kernels, so a change to their sources must invalidate a recorded verdict."""
    from nerfaccel_plugin._ext import selftest

    (tmp_path / "scan.py").write_text("a = 1\n")
    (tmp_path / "volrend.py").write_text("b = 2\n")
    first = selftest.triton_sources_hash(tmp_path)
    assert first and first == selftest.triton_sources_hash(tmp_path)
    (tmp_path / "scan.py").write_text("a = 2\n")
    assert selftest.triton_sources_hash(tmp_path) != first
    assert selftest.triton_sources_hash(tmp_path / "missing") == ""
    assert selftest.triton_sources_hash() != ""  # the package's own kernels
    cpu_file = selftest.cache_file("cpp", type("M", (), {"source_hash": "abc"})(), "cpu")
    assert cpu_file.name == "selftest-cpp-abc-cpu.json"  # CPU verdicts do not depend on Triton
