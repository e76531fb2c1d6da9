"""Backends for the per-family op tests (tests/ops/test_<family>.py).

Two fixtures:

* ``K`` -> ``(kernels, device)``: a kernel backend compared against the PyTorch reference ``_torch_impl``
  (``kernels._<name>`` has the reference's signature; a backend without a kernel for an op skips that test).
  Parameters: ``cpp`` (the C++ CPU build), ``cuda`` (CUDA kernels registered for the CUDA dispatch key: the CUDA
  build and/or Triton; needs a GPU), ``triton-interpreter`` (the Triton kernels run by ``TRITON_INTERPRET=1`` on CPU
  tensors: needs ``nerfaccel_plugin._triton`` with ``interpreter_call(name) -> callable | None``; skipped while that
  module does not exist). Parity tests use it: comparing the reference with itself would prove nothing.
* ``backend`` -> name: the public API forced onto one backend with ``NERFACCEL_BACKEND`` (``torch``, ``cpp``,
  ``cuda``), for the semantic tests (hand-computed values, invariants, gradcheck) that must hold on the reference
  too. This replaces the former subprocess re-run of the suites with ``NERFACCEL_BACKEND=torch``.

The C++ extension is built once per session (normally a cache hit). Without a C++ toolchain the tests skip with the
reason, unless ``NERFACCEL_REQUIRE_EXT=1`` (set by CI) makes that a failure.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable

import pytest
import torch

from nerfaccel_plugin import _backend, _ops

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def load_extension(kind: str):
    """Loads extension ``kind`` (building it on first use), or skips / fails with the reason."""
    from nerfaccel_plugin import _ext

    try:
        return _ext.load_backend(kind)
    except _ext.ExtensionUnavailable as err:
        if os.environ.get("NERFACCEL_REQUIRE_EXT") == "1" and kind == "cpp":
            pytest.fail(f"the {kind} extension must build here (NERFACCEL_REQUIRE_EXT=1): {err}")
        pytest.skip(f"{kind} extension unavailable: {err}")


class Kernels:
    """The kernel calls of one backend: ``kernels._<name>`` has the signature of ``_torch_impl._<name>``."""

    def __init__(self, name: str, lookup: Callable[[str], Callable | None]) -> None:
        self.name = name
        self._lookup = lookup

    def __getattr__(self, attr: str):
        if not attr.startswith("_") or attr.startswith("__"):
            raise AttributeError(attr)
        fn = self._lookup(attr.lstrip("_"))
        if fn is None:
            pytest.skip(f"{self.name}: no kernel for {attr.lstrip('_')!r}")
        return fn


def _dispatcher_lookup(device_type: str) -> Callable[[str], Callable | None]:
    def lookup(name: str):
        call = _ops.KERNEL_CALLS[name]
        return call.fn if _backend._has_kernel(call.op, device_type) else None

    return lookup


def _triton_interpreter() -> Kernels:
    if importlib.util.find_spec("nerfaccel_plugin._triton") is None:
        pytest.skip("no Triton kernels yet (nerfaccel_plugin._triton does not exist)")
    os.environ.setdefault("TRITON_INTERPRET", "1")
    module = importlib.import_module("nerfaccel_plugin._triton")
    lookup = getattr(module, "interpreter_call", None)
    if lookup is None:
        pytest.skip(
            "the Triton kernels run under TRITON_INTERPRET=1 in a subprocess (tests/triton/test_interpreter.py: the "
            "variable must be set before triton is imported, so not in this process)"
        )
    return Kernels("triton-interpreter", lookup)


@pytest.fixture(scope="session")
def cpp():
    """The C++ CPU extension (loaded: its kernels are registered)."""
    return load_extension("cpp")


@pytest.fixture(scope="session")
def cpp_kernels(cpp):
    """The C++ CPU build's kernel calls."""
    return Kernels("cpp", _dispatcher_lookup("cpu"))


@pytest.fixture(params=["cpp", pytest.param("cuda", marks=GPU), "triton-interpreter"])
def K(request):  # noqa: N802 - short name for "kernels"
    """(kernels, device) of each kernel backend under test."""
    if request.param == "cpp":
        load_extension("cpp")
        return Kernels("cpp", _dispatcher_lookup("cpu")), "cpu"
    if request.param == "cuda":
        try:
            _backend._device("cuda")  # loads the CUDA extension and the Triton kernels that exist
        except _backend.BackendError as err:
            pytest.skip(str(err))
        return Kernels("cuda", _dispatcher_lookup("cuda")), "cuda"
    return _triton_interpreter(), "cpu"


@pytest.fixture(params=["torch", "cpp", pytest.param("cuda", marks=GPU)])
def backend(request, monkeypatch):
    """Name of the backend the public API is forced onto (NERFACCEL_BACKEND) for this test; ``device`` attribute
    of the request node: the device its tensors must live on."""
    if request.param == "cpp":
        load_extension("cpp")
    monkeypatch.setenv("NERFACCEL_BACKEND", request.param)
    _backend.reset()
    yield request.param
    _backend.reset()
