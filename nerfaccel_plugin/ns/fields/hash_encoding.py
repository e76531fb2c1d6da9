"""Faster CPU and CUDA paths for Nerfstudio's multiresolution hash encoding (no tiny-cuda-nn needed).

Nerfstudio's ``HashEncoding`` uses tiny-cuda-nn on a GPU when installed and otherwise a pure-PyTorch path
that builds eight gathered corner tensors per level. On the CPU that path dominates a training step.
:class:`NerfaccelHashEncoding` keeps Nerfstudio's module, parameters and checkpoint layout and only
replaces that PyTorch path, for CPU tensors, with nerfaccel's fused C++ kernel (``cuda/cpu_ops.cpp``,
math in ``cuda/include/nerfaccel/math.h``): the same hash, corners and trilinear weights, one pass per
point, OpenMP over points (forward) and over levels (backward, no atomics). It falls back to Nerfstudio's
code for other devices, when the C++ extension is unavailable, when ``NERFACCEL_BACKEND=torch``, or when
``NERFACCEL_HASH_KERNEL=0``.

On CUDA tensors the same op runs nerfaccel's Triton kernels (``nerfaccel_plugin/_triton/hash.py``: same hash,
corners and weights; the table gradient scattered with atomics; float32 or half tables) when Triton is installed;
otherwise Nerfstudio's code. With ``hash_implementation: auto`` a model uses tiny-cuda-nn when it is installed and
these kernels otherwise (:func:`use_nerfaccel_hash_encoding`).

Measured on 2 CPU cores (``benchmarks/bench_hash.py``, ``benchmarks/results/hash-cpu.md``).
"""

from __future__ import annotations

import os

import torch
from jaxtyping import Float
from nerfstudio.field_components.encodings import HashEncoding
from torch import Tensor, nn

from ... import _backend

ENV_VAR = "NERFACCEL_HASH_KERNEL"


def hash_kernel_available(device_type: str = "cpu") -> bool:
    """Whether nerfaccel's fused kernel will be used for tensors of ``device_type``: not switched off, and a kernel
    registered for it (the C++ extension on ``cpu``; on ``cuda`` the Triton kernels, which pass a first-use check
    against Nerfstudio's math before they are registered, see :func:`nerfaccel_plugin._triton.register.register`)."""
    if os.environ.get(ENV_VAR, "1").strip() == "0":
        return False
    try:
        return _backend.kernel_for("hash_encode", device_type) is not None
    except _backend.BackendError:
        return False


def hash_encode(
    x: Float[Tensor, "n 3"], table: Float[Tensor, "levels_x_size f"], scales: Float[Tensor, " levels"], table_size: int
) -> Float[Tensor, "n levels_x_f"]:
    """The fused hash encoding, C++ on CPU tensors and Triton on CUDA (differentiable w.r.t. ``x`` and ``table``).

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
    """Nerfstudio's ``HashEncoding`` with nerfaccel's fused kernels for CPU and CUDA tensors (same parameters)."""

    def pytorch_fwd(self, in_tensor: Float[Tensor, "*bs input_dim"]) -> Float[Tensor, "*bs output_dim"]:
        """Fused kernel on CPU (C++) and CUDA (Triton) tensors, Nerfstudio's PyTorch path elsewhere."""
        device_type = in_tensor.device.type
        if device_type not in ("cpu", "cuda") or not hash_kernel_available(device_type):
            return super().pytorch_fwd(in_tensor)
        table = self.hash_table
        if device_type == "cuda":  # Triton: any float table, output in the promoted dtype (as Nerfstudio's)
            x = in_tensor.reshape(-1, 3).to(torch.promote_types(in_tensor.dtype, table.dtype))
            scales = self.scalings.to(device=x.device, dtype=x.dtype)
            out = hash_encode(x, table, scales, self.hash_table_size)
            return out.reshape(*in_tensor.shape[:-1], out.shape[-1])
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
