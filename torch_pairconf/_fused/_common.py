"""Helpers shared by the fused CPU kernels: cached constants, narrow counts, the backward guard."""

from __future__ import annotations

from typing import Final

import torch
from torch import Tensor

from .._reduce import accumulation_dtype, mean_scale

__all__ = [
    "accumulation_dtype",
    "check_once_differentiable",
    "contributing",
    "count_dtype",
    "cpu_constant",
    "mean_scale",
    "reduce_total",
    "row_count",
]

_CONSTANTS: dict[tuple[float, torch.dtype], Tensor] = {}
_MAX_CONSTANTS: Final = 64


def cpu_constant(value: float, dtype: torch.dtype) -> Tensor:
    """A cached 0-dim CPU tensor: creating one costs about as much as a small op.

    The cache is bounded: a margin schedule passes a new value on every step.
    """
    key = (value, dtype)
    t = _CONSTANTS.get(key)
    if t is None:
        if len(_CONSTANTS) >= _MAX_CONSTANTS:
            _CONSTANTS.clear()
        t = _CONSTANTS[key] = torch.full((), value, dtype=dtype)
    return t


def count_dtype(n: int) -> torch.dtype:
    """The narrowest integer type that holds ``0..n`` (``n`` is a shape, so this is static)."""
    return torch.uint8 if n < 2**8 else torch.int16 if n < 2**15 else torch.int32


def row_count(mask: Tensor) -> Tensor:
    """``(..., 1)`` number of true entries along the last dim of a bool tensor.

    Summed as ``uint8`` in the narrowest type that holds the count: integer sums first cast
    the whole input to the accumulation type, which for the default int64 is a temporary twice
    the size of a float32 ``(B, N, M)`` tensor.
    """
    return mask.view(torch.uint8).sum(-1, keepdim=True, dtype=count_dtype(mask.shape[-1]))


def contributing(gold: Tensor, valid: Tensor, has: Tensor) -> Tensor:
    """``gold & valid & has`` (``has``: ``(B, N, 1)``, rows with a negative) as a fresh bool tensor.

    The row mask is applied as an in-place ``uint8`` product: a broadcast bool ``&`` runs ~25x
    slower on CPU.
    """
    out = gold & valid
    out.view(torch.uint8).mul_(has.view(torch.uint8))
    return out


def reduce_total(total: Tensor, count: Tensor, mean: bool, dtype: torch.dtype) -> Tensor:
    """A fused loss' accumulated ``total`` (float32 or float64), divided by ``max(count, 1)`` if
    ``mean`` (the rule of :func:`torch_pairconf._reduce.reduce`), in ``dtype``."""
    if mean:
        total = total.div_(mean_scale(count))  # total is the fused loss' own fresh sum
    return total if total.dtype == dtype else total.to(dtype)


def check_once_differentiable(name: str) -> None:
    """Raise inside a fused loss' ``backward`` when a graph of the gradient is requested.

    The hand-written backward passes compute gradients outside autograd, so a second
    differentiation (``create_graph=True``, e.g. a gradient penalty) would silently see a
    constant; the composite path (``reduction="none"``, then reduce) supports it.
    """
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{name}: the fused CPU implementation is not twice differentiable "
            "(backward with create_graph=True); compute it with reduction='none' and reduce "
            "the result yourself"
        )
