"""The Triton kernels are wired to the ops the library defines: same schemas, registered as their CUDA kernels.

Runs without a GPU: registering a CUDA kernel only adds a dispatcher entry (no CUDA tensor can reach it here).
"""

from __future__ import annotations

import re

import pytest

from nerfaccel_plugin import _backend, _ops
from nerfaccel_plugin._triton import register as triton_register
from nerfaccel_plugin._triton import unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=f"triton unavailable: {unavailable_reason()}")


def _normalise(schema: str) -> str:
    """The schema without argument and output names: types, optionality, defaults and arity remain."""
    return re.sub(r"\s+", "", re.sub(r"\b(Tensor\??|int|float|bool|str)\s+\w+", r"\1", schema))


def test_triton_schemas_are_the_libraries():
    for name, schema in triton_register.SCHEMAS.items():
        assert name in _ops.SCHEMAS, f"Triton kernel for {name!r}, which nerfaccel does not define"
        assert _normalise(schema) == _normalise(_ops.SCHEMAS[name]), name


def test_every_segmented_op_gets_a_triton_kernel():
    segmented = {n for n in _ops.SCHEMAS if n.split("_fwd")[0].split("_bwd")[0] in ("scan", "accumulate_along_rays")}
    segmented |= {n for n in _ops.SCHEMAS if n.startswith("render_weight_from_")}
    assert segmented <= set(triton_register.OP_NAMES)


def test_backend_registers_triton_as_the_cuda_kernels(monkeypatch):
    monkeypatch.setenv("NERFACCEL_SELFTEST", "0")  # the hash kernels' check needs a GPU
    names = _backend._register_triton()
    assert any("hash" in n for n in names)
    for op in (*triton_register.OP_NAMES, "hash_encode_fwd", "hash_encode_bwd"):
        assert _backend._has_kernel(op, "cuda"), op
