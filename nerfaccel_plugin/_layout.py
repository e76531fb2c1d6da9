"""Layout marks: facts about a ``packed_info`` tensor that its builder knows and a kernel cannot cheaply check.

A leaf module (imports only torch), used by :mod:`nerfaccel_plugin.pack` (which marks what it builds) and by the
op wrappers in :mod:`nerfaccel_plugin._ops` (which read the marks).
"""

from __future__ import annotations

import weakref

import torch

_covering: dict[int, tuple[weakref.ref, int, int]] = {}


def mark_covering(packed_info: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Records that ``packed_info``'s chunks tile ``[0, n_samples)`` contiguously, and returns it.

    True of what :func:`nerfaccel_plugin.pack_info` builds from in-range ray indices (each chunk starts where the
    previous one ends, and the counts add up to the number of samples). Device kernels of density rendering may then
    skip their pass over every sample for the ones outside all chunks, which they could not otherwise rule out
    without a device sync; nothing else changes (the CPU kernels check for themselves).

    The mark holds for this tensor object only while it is unmodified (a copy, a view or an in-place change drops
    it) and while it is alive. Mark only tensors built that way: a wrong mark may leave the alphas of samples outside
    every chunk unset on a GPU.

    Args:
        packed_info: ``(n_rays, 2)`` chunks to mark.
        n_samples: Number of samples they tile.

    Returns:
        ``packed_info`` itself.
    """
    if not isinstance(packed_info, torch.Tensor) or torch.compiler.is_compiling():
        return packed_info
    key = id(packed_info)
    try:
        ref = weakref.ref(packed_info, lambda _, key=key: _covering.pop(key, None))
    except TypeError:  # pragma: no cover - tensors support weak references
        return packed_info
    _covering[key] = (ref, packed_info._version, int(n_samples))
    return packed_info


def is_marked_covering(packed_info: torch.Tensor, n_samples: int) -> bool:
    """Whether ``packed_info`` (this very tensor, unmodified since) was marked by :func:`mark_covering`.

    Args:
        packed_info: ``(n_rays, 2)`` chunks.
        n_samples: Number of samples they must tile.

    Returns:
        True when marked for ``n_samples`` samples.
    """
    if torch.compiler.is_compiling():
        return False
    entry = _covering.get(id(packed_info))
    if entry is None:
        return False
    ref, version, n = entry
    return ref() is packed_info and packed_info._version == version and n == int(n_samples)
