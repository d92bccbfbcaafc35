r"""Batched hard-negative mining over padded pair matrices.

A **negative** of row :math:`(b, i)` is a column :math:`j` with ``valid[b, i, j] and not
gold[b, i, j]``. The row's hard negatives are its highest-scoring negatives:

.. math::

    \mathcal{N}_k(b, i) = \operatorname{top-}k_{\,j \,:\, v_{bij} \wedge \neg g_{bij}} \; s_{bij}

**Selection rule** (the only one in the library; the losses and the diagnostics all use it):
candidates are ranked by :func:`negative_key` (the score at negatives, ``-inf`` elsewhere);
``k = 1`` takes the first maximal column (the lowest column index among tied negatives),
``k > 1`` takes ``torch.topk``'s order (which tied column comes first is unspecified; values,
and so every loss value, do not depend on it). A negative that scores ``-inf`` is never
selected: a row whose negatives all score ``-inf`` has no hard negative. NaN at a valid
negative is selected (and propagates): it is the caller's NaN.

Miners return indices and masks; losses take them (``negatives=``), so a miner can run on other
scores than the loss (detached, another model's, a schedule of ``k``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import check_k, check_pair_inputs

__all__ = ["HardNegatives", "hardest_negative", "mine_hard_negatives", "negative_key"]


class HardNegatives(NamedTuple):
    """The ``k`` most confident non-gold valid candidates of every row.

    Attributes:
        values: ``(B, N, k)`` scores of the selected negatives, in descending order. They carry
            gradient into ``scores``; entries where ``mask`` is false are ``0`` (no gradient).
        indices: ``(B, N, k)`` int64 column indices of the selected negatives (no gradient). Where
            ``mask`` is false the index is arbitrary but in range, so it is safe to ``gather``.
        mask: ``(B, N, k)`` bool, false where the row has fewer than ``k`` negatives.
    """

    values: Tensor
    indices: Tensor
    mask: Tensor


def negative_key(scores: Tensor, gold: Tensor, valid: Tensor, fill: Tensor | float = -math.inf) -> Tensor:
    """``(B, N, M)`` ranking key of the selection rule: ``scores`` at negatives, ``fill`` (``-inf``)
    elsewhere, so that nothing outside the negatives (NaN included) is ever selected."""
    return torch.where(valid > gold, scores, fill)  # valid & ~gold in one op


def hardest_negative(key: Tensor, with_index: bool = True) -> tuple[Tensor, Tensor | None]:
    """The ``k = 1`` selection on a :func:`negative_key`: ``(value, index)``, each ``(B, N, 1)``.

    ``index`` is the first maximal column (``max`` returns it deterministically; which tied column
    ``topk(1)`` returns is unspecified, and ``max`` is 1.3-2.5x faster on CPU). ``value`` is
    ``-inf`` exactly for rows without a selectable negative. ``with_index=False`` skips the index
    (``amax``, cheaper).
    """
    if with_index:
        value, index = key.max(-1, keepdim=True)
        return value, index
    return key.amax(-1, keepdim=True), None


def mine_hard_negatives(scores: Tensor, gold: Tensor, valid: Tensor, *, k: int = 1) -> HardNegatives:
    r"""Select, per row, the ``k`` highest-scoring valid candidates that are not gold.

    Selection runs on the detached scores (it is not differentiable and must not see masked
    NaNs) with the rule of this module; the returned ``values`` are gathered from ``scores`` so
    that a loss built on them sends gradient to the selected negatives only.

    Args:
        scores: ``(B, N, M)`` float pair scores (logits or probabilities; only the order matters).
            Values outside ``valid`` may be anything, NaN and inf included.
        gold: ``(B, N, M)`` bool, true at gold pairs.
        valid: ``(B, N, M)`` bool, true at candidate pairs.
        k: number of negatives per row, ``k >= 1``. ``k`` may exceed ``M``: the extra slots are
            masked out.

    Returns:
        :class:`HardNegatives` ``(values, indices, mask)``, each ``(B, N, k)``.

    Example:
        >>> scores = torch.tensor([[[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]]])
        >>> gold = torch.tensor([[[True, False, False], [False, False, False]]])
        >>> valid = torch.ones(1, 2, 3, dtype=torch.bool)
        >>> mine_hard_negatives(scores, gold, valid, k=2).indices
        tensor([[[2, 1],
                 [1, 2]]])
    """
    check_pair_inputs(scores, gold, valid)
    check_k(k)
    m = scores.shape[-1]
    if m == 0:  # no candidate columns at all (a shape fact, so no sync): nothing to select
        shape = (*scores.shape[:-1], k)
        return HardNegatives(
            scores.new_zeros(shape),
            torch.zeros(shape, dtype=torch.long, device=scores.device),
            torch.zeros(shape, dtype=torch.bool, device=scores.device),
        )
    key = negative_key(scores.detach(), gold, valid)
    kk = min(k, m)
    if kk == 1:
        top, indices = hardest_negative(key)
        assert indices is not None
    else:
        top, indices = key.topk(kk, dim=-1, largest=True, sorted=True)
    del key
    mask = top != -math.inf  # a real slot points at a selectable negative (NaN counts)
    if kk < k:  # static shapes: pad the missing slots with index 0, masked out
        pad = (*indices.shape[:-1], k - kk)
        indices = torch.cat([indices, indices.new_zeros(pad)], dim=-1)
        mask = torch.cat([mask, mask.new_zeros(pad)], dim=-1)
    values = torch.where(mask, scores.gather(-1, indices), 0)
    return HardNegatives(values, indices, mask)


def check_negatives(negatives: object, scores: Tensor, gold: Tensor, valid: Tensor) -> HardNegatives:
    """Validate precomputed ``negatives`` for a loss on ``scores`` and return them re-gathered.

    Only ``indices`` and ``mask`` are used: ``values`` are gathered again from ``scores`` (so a
    miner may have run on detached or other scores), and slots that point at a gold or invalid
    candidate are dropped from ``mask``. Index bounds are not read (that would synchronise a
    GPU); an out-of-range index fails in ``gather``.
    """
    if not isinstance(negatives, tuple) or len(negatives) != 3:
        raise TypeError(
            "negatives must be the HardNegatives (values, indices, mask) of mine_hard_negatives, "
            f"got {type(negatives).__name__}"
        )
    _, indices, mask = negatives
    if not isinstance(indices, Tensor) or indices.dtype != torch.long:
        raise TypeError("negatives.indices must be an int64 tensor")
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError("negatives.mask must be a bool tensor")
    if indices.dim() != 3 or indices.shape[:2] != scores.shape[:2] or mask.shape != indices.shape:
        raise ValueError(
            f"negatives must be (B, N, k) with (B, N) = {tuple(scores.shape[:2])}; got indices "
            f"{tuple(indices.shape)} and mask {tuple(mask.shape)}"
        )
    if indices.device != scores.device or mask.device != scores.device:
        raise ValueError(f"negatives are on {indices.device} but scores are on {scores.device}")
    if scores.shape[-1] == 0:
        return HardNegatives(scores.new_zeros(indices.shape), indices, torch.zeros_like(mask))
    mask = mask & (valid > gold).gather(-1, indices)
    values = torch.where(mask, scores.gather(-1, indices), 0)
    return HardNegatives(values, indices, mask)
