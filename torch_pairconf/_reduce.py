"""The one reduction rule of every loss: ``"none"``, ``"sum"``, or the mean over contributing elements.

``mean`` divides the sum by the number of contributing elements, at least 1, so an input with no
contributing element gives an exact zero that is still attached to the graph (a batch without a
gold pair trains on the other terms instead of turning the loss into NaN). Sums accumulate in at
least float32 so that half-precision sums over large matrices stay accurate. The fused CPU
kernels (:mod:`torch_pairconf._fused`) apply the same rule through :func:`mean_scale`.
"""

from __future__ import annotations

from typing import Final

import torch
from torch import Tensor

__all__ = ["REDUCTIONS", "accumulation_dtype", "mean_scale", "reduce"]

REDUCTIONS: Final = ("none", "mean", "sum")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums are accumulated in: float32 for half precision, else ``dtype`` itself."""
    return torch.promote_types(dtype, torch.float32)


def mean_scale(count: Tensor) -> Tensor:
    """The divisor of a mean over ``count`` contributing elements: ``max(count, 1)``."""
    return count.clamp_min(1)


def reduce(loss: Tensor, contributes: Tensor, reduction: str, out_dtype: torch.dtype) -> Tensor:
    """Reduce a per-element ``loss`` that is already zero where ``contributes`` is false.

    Args:
        loss: the per-element loss, any shape.
        contributes: bool, same shape: the elements the mean is taken over.
        reduction: ``"none"`` (``loss`` itself), ``"sum"`` or ``"mean"``.
        out_dtype: dtype of the result.
    """
    if reduction == "none":
        return loss.to(out_dtype)
    total = loss.sum(dtype=accumulation_dtype(loss.dtype))
    if reduction == "sum":
        return total.to(out_dtype)
    # Counted as int64 (exact; a bool -> float sum is several times slower on CPU), the division
    # promotes it to the float dtype of ``total``.
    return (total / mean_scale(contributes.sum())).to(out_dtype)
