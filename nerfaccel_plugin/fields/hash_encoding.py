"""A faster CPU path for Nerfstudio's multiresolution hash encoding.

Nerfstudio's ``HashEncoding`` uses tiny-cuda-nn on a GPU when installed and otherwise a pure-PyTorch path
that builds eight gathered corner tensors per level. On the CPU that path dominates a training step.
:class:`NerfaccelHashEncoding` keeps Nerfstudio's module, parameters and checkpoint layout and only
replaces that PyTorch path, for CPU tensors, with nerfaccel's fused C++ kernel (``cuda/csrc/hash.cpp``,
``cuda/cpu/hash_cpu.cpp``, math in ``cuda/include/nerfaccel/hash.h``): the same hash, corners and trilinear
weights, one pass per point, OpenMP over points (forward) and over levels (backward, no atomics). It falls back
to Nerfstudio's code for other devices, when the C++ extension is unavailable, when ``NERFACCEL_BACKEND=torch``, or when
``NERFACCEL_HASH_KERNEL=0``.

Measured on 2 CPU cores (``benchmarks/bench_hash.py``, ``benchmarks/results/hash-cpu.md``).
"""

from __future__ import annotations

import os

from jaxtyping import Float
from nerfstudio.field_components.encodings import HashEncoding
from torch import Tensor, nn

from .. import _backend

ENV_VAR = "NERFACCEL_HASH_KERNEL"


def hash_kernel_available() -> bool:
    """Whether the fused CPU kernel will be used for CPU tensors (extension loaded, not switched off)."""
    if os.environ.get(ENV_VAR, "1").strip() == "0":
        return False
    try:
        return _backend.kernel_for("hash_encode", "cpu") is not None
    except _backend.BackendError:
        return False


def hash_encode(
    x: Float[Tensor, "n 3"], table: Float[Tensor, "levels_x_size f"], scales: Float[Tensor, " levels"], table_size: int
) -> Float[Tensor, "n levels_x_f"]:
    """The fused CPU hash encoding (differentiable w.r.t. ``x`` and ``table``).

    Args:
        x: ``(n, 3)`` points (Nerfstudio feeds positions normalized to ``[0, 1]``).
        table: ``(levels * table_size, F)`` features, level ``l`` in rows ``[l * table_size, (l + 1) * table_size)``.
        scales: ``(levels,)`` grid resolution of each level.
        table_size: Rows per level.

    Returns:
        ``(n, levels * F)`` features, level-major like Nerfstudio's ``HashEncoding``.
    """
    return _backend.op("hash_encode", x.device)(x, table, scales, table_size)


class NerfaccelHashEncoding(HashEncoding):
    """Nerfstudio's ``HashEncoding`` with nerfaccel's fused kernel for CPU tensors (same parameters)."""

    def pytorch_fwd(self, in_tensor: Float[Tensor, "*bs input_dim"]) -> Float[Tensor, "*bs output_dim"]:
        """Fused kernel on CPU tensors, Nerfstudio's PyTorch path elsewhere."""
        if in_tensor.device.type != "cpu" or not hash_kernel_available():
            return super().pytorch_fwd(in_tensor)
        table = self.hash_table
        x = in_tensor.reshape(-1, 3).to(table.dtype)
        scales = self.scalings.to(device=x.device, dtype=table.dtype)
        out = hash_encode(x, table, scales, self.hash_table_size)
        return out.reshape(*in_tensor.shape[:-1], out.shape[-1])


def use_nerfaccel_hash_encoding(module: nn.Module) -> int:
    """Switches every PyTorch-path ``HashEncoding`` inside ``module`` to :class:`NerfaccelHashEncoding`.

    The modules keep their parameters and state-dict keys (checkpoints stay interchangeable); those backed
    by tiny-cuda-nn are left alone.

    Args:
        module: Any module, e.g. a Nerfstudio field.

    Returns:
        How many encodings were switched.
    """
    count = 0
    for m in module.modules():
        if type(m) is HashEncoding and m.tcnn_encoding is None:
            m.__class__ = NerfaccelHashEncoding
            count += 1
    return count
