"""register() puts the Triton kernels on the CUDA dispatch key of ops with the documented schemas (no GPU needed:
nothing runs), and is a warning no-op without triton."""

from __future__ import annotations

import pytest
import torch

from nerfaccel_plugin._triton import register as reg

pytest.importorskip("triton", reason="triton is not installed")

NS = "nerfaccel_triton_cuda_test"
_lib = torch.library.Library(NS, "DEF")
for _name, _schema in reg.SCHEMAS.items():
    _lib.define(_name + _schema)


def test_register_cuda_kernels():
    assert set(reg.SCHEMAS) == set(reg.OP_NAMES)
    done = reg.register(NS, "cuda")
    assert done == [f"{NS}::{n}" for n in reg.OP_NAMES]
    for qualname in done:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CUDA"), qualname
        assert not torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CPU"), qualname


def test_register_without_triton_is_a_noop(monkeypatch):
    monkeypatch.setattr(reg, "unavailable_reason", lambda: "triton is not installed (test)")
    with pytest.warns(RuntimeWarning, match="not registered: triton is not installed"):
        assert reg.register(NS, "cuda") == []
