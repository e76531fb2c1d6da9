"""Segmented scans (cumulative sums and products) over batched or packed tensors."""

from __future__ import annotations

import math
from typing import Optional

from jaxtyping import Float, Int
from torch import Tensor

from . import _validation as check
from ._backend import op as dispatch


def _packed(
    name: str, inputs: Tensor, packed_info: Optional[Tensor], indices: Optional[Tensor]
) -> tuple[Tensor, Optional[Tensor]]:
    """Validates a scan's inputs and returns ``(inputs, packed_info or None for batched)``."""
    inputs = check.floating("inputs", inputs)
    if packed_info is not None and indices is not None:
        raise ValueError(f"{name}: pass either `packed_info` or `indices`, not both.")
    if packed_info is None and indices is None:
        return inputs.to(check.compute_dtype(inputs)), None
    if inputs.dim() != 1:
        raise ValueError(
            f"{name}: `inputs` must be flattened with shape (all_samples,) when `packed_info`/`indices` is given, "
            f"got {tuple(inputs.shape)}."
        )
    if indices is not None:
        from .pack import pack_info

        check.same_device(inputs=inputs, indices=indices)
        indices = check.ray_indices(indices, inputs.shape[0], None, name="indices")
        packed_info = pack_info(indices)
    else:
        check.same_device(inputs=inputs, packed_info=packed_info)
        packed_info = check.packed_info(packed_info, inputs.shape[0])
    return inputs, packed_info


def _run(name: str, inputs: Tensor, packed_info: Optional[Tensor]) -> Tensor:
    """Runs scan ``name`` on flat inputs with ``packed_info``, or along the last dimension of batched inputs."""
    dtype = check.compute_dtype(inputs)
    if packed_info is not None:
        return dispatch(name, inputs.device)(inputs.to(dtype).contiguous(), packed_info.contiguous())
    if inputs.dim() == 0:
        return dispatch(name, inputs.device)(inputs.to(dtype).reshape(1, 1), None).reshape(())
    rows = inputs.to(dtype).reshape(math.prod(inputs.shape[:-1]), inputs.shape[-1])  # (n_rays, n), no packed_info
    return dispatch(name, inputs.device)(rows.contiguous(), None).reshape(inputs.shape)


def inclusive_sum(
    inputs: Float[Tensor, "..."],
    packed_info: Optional[Int[Tensor, "n_rays 2"]] = None,
    indices: Optional[Int[Tensor, " all_samples"]] = None,
) -> Float[Tensor, "..."]:
    """Inclusive sum along the last dimension, or within each ray of a flattened tensor.

    Args:
        inputs: A batched tensor ``(..., n)`` (scanned along the last dimension) or a flattened
            ``(all_samples,)`` tensor with ``packed_info`` or ``indices``.
        packed_info: ``(n_rays, 2)`` int ``(start, count)`` chunks of flattened ``inputs``.
        indices: Alternatively, ``(all_samples,)`` sorted ray index of each element.

    Returns:
        Tensor with the shape of ``inputs`` (float16/bfloat16 inputs give float32); differentiable
        w.r.t. ``inputs``.

    Example:
        >>> inclusive_sum(torch.tensor([1., 2, 3, 4, 5, 6, 7, 8, 9]), torch.tensor([[0, 2], [2, 3], [5, 4]]))
        tensor([ 1.,  3.,  3.,  7., 12.,  6., 13., 21., 30.])
    """
    inputs, packed_info = _packed("inclusive_sum", inputs, packed_info, indices)
    return _run("inclusive_sum", inputs, packed_info)


def exclusive_sum(
    inputs: Float[Tensor, "..."],
    packed_info: Optional[Int[Tensor, "n_rays 2"]] = None,
    indices: Optional[Int[Tensor, " all_samples"]] = None,
) -> Float[Tensor, "..."]:
    """Exclusive sum along the last dimension, or within each ray of a flattened tensor: element ``i`` is the sum
    of the elements before it in its ray (0 for the first).

    Args:
        inputs: A batched tensor ``(..., n)`` (scanned along the last dimension) or a flattened
            ``(all_samples,)`` tensor with ``packed_info`` or ``indices``.
        packed_info: ``(n_rays, 2)`` int ``(start, count)`` chunks of flattened ``inputs``.
        indices: Alternatively, ``(all_samples,)`` sorted ray index of each element.

    Returns:
        Tensor with the shape of ``inputs`` (float16/bfloat16 inputs give float32); differentiable
        w.r.t. ``inputs``.

    Example:
        >>> exclusive_sum(torch.tensor([1., 2, 3, 4, 5, 6, 7, 8, 9]), torch.tensor([[0, 2], [2, 3], [5, 4]]))
        tensor([ 0.,  1.,  0.,  3.,  7.,  0.,  6., 13., 21.])
    """
    inputs, packed_info = _packed("exclusive_sum", inputs, packed_info, indices)
    return _run("exclusive_sum", inputs, packed_info)


def inclusive_prod(
    inputs: Float[Tensor, "..."],
    packed_info: Optional[Int[Tensor, "n_rays 2"]] = None,
    indices: Optional[Int[Tensor, " all_samples"]] = None,
) -> Float[Tensor, "..."]:
    """Inclusive product along the last dimension, or within each ray of a flattened tensor.

    Args:
        inputs: A batched tensor ``(..., n)`` (scanned along the last dimension) or a flattened
            ``(all_samples,)`` tensor with ``packed_info`` or ``indices``.
        packed_info: ``(n_rays, 2)`` int ``(start, count)`` chunks of flattened ``inputs``.
        indices: Alternatively, ``(all_samples,)`` sorted ray index of each element.

    Returns:
        Tensor with the shape of ``inputs`` (float16/bfloat16 inputs give float32); differentiable
        w.r.t. ``inputs``.

    Example:
        >>> inclusive_prod(torch.tensor([1., 2, 3, 4, 5, 6, 7, 8, 9]), torch.tensor([[0, 2], [2, 3], [5, 4]]))
        tensor([1., 2., 3., 12., 60., 6., 42., 336., 3024.])
    """
    inputs, packed_info = _packed("inclusive_prod", inputs, packed_info, indices)
    return _run("inclusive_prod", inputs, packed_info)


def exclusive_prod(
    inputs: Float[Tensor, "..."],
    packed_info: Optional[Int[Tensor, "n_rays 2"]] = None,
    indices: Optional[Int[Tensor, " all_samples"]] = None,
) -> Float[Tensor, "..."]:
    """Exclusive product along the last dimension, or within each ray of a flattened tensor: element ``i`` is the
    product of the elements before it in its ray (1 for the first).

    Unlike nerfacc 0.5, the gradient is exact when ``inputs`` contains zeros (nerfacc divides by the
    input in its backward pass and returns wrong values there).

    Args:
        inputs: A batched tensor ``(..., n)`` (scanned along the last dimension) or a flattened
            ``(all_samples,)`` tensor with ``packed_info`` or ``indices``.
        packed_info: ``(n_rays, 2)`` int ``(start, count)`` chunks of flattened ``inputs``.
        indices: Alternatively, ``(all_samples,)`` sorted ray index of each element.

    Returns:
        Tensor with the shape of ``inputs`` (float16/bfloat16 inputs give float32); differentiable
        w.r.t. ``inputs``.

    Example:
        >>> exclusive_prod(torch.tensor([1., 2, 3, 4, 5, 6, 7, 8, 9]), torch.tensor([[0, 2], [2, 3], [5, 4]]))
        tensor([1., 1., 1., 3., 12., 1., 6., 42., 336.])
    """
    inputs, packed_info = _packed("exclusive_prod", inputs, packed_info, indices)
    return _run("exclusive_prod", inputs, packed_info)
