r"""Row-wise softmax (listwise) term: each gold pair against its row's negatives.

With :math:`z = s / T` and :math:`\mathcal{N}(b,i)` either the row's ``k`` hard negatives
:math:`\mathcal{N}_k(b,i)` or, with ``k=None``, every valid negative of the row (the
multi-positive listwise form: each gold pair against all of the row's candidates that are not
gold), for every valid gold pair whose row has a negative,

.. math::

    \ell_{bij} = -\log \frac{e^{z_{bij} - m}}{e^{z_{bij} - m} + \sum_{n \in \mathcal{N}(b,i)} e^{z_{bin}}}
               = \operatorname{softplus}\Bigl(\log\!\sum_{n} e^{z_{bin}} - z_{bij} + m\Bigr),

:math:`\ell_{bij} = 0` elsewhere, and ``reduction="mean"`` averages over contributing gold pairs.
The other gold pairs of the row are never in a gold pair's denominator. Without
``detach_negatives`` the loss depends on logit differences within the row only, so its gradient
sums to zero over each row: it cannot shift the row's score scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import (
    REDUCTIONS,
    check_choice,
    check_k,
    check_nonneg,
    check_pair_inputs,
    check_positive,
)
from ._reduce import reduce
from .mining import HardNegatives, check_negatives, mine_hard_negatives

__all__ = ["PairListwiseLoss", "pair_listwise_loss"]


def _check_listwise_args(margin: float, k: int | None, temperature: float, reduction: str) -> None:
    check_nonneg("margin", margin)
    if k is not None:
        check_k(k)
    check_positive("temperature", temperature)
    check_choice("reduction", reduction, REDUCTIONS)


def pair_listwise_loss(
    scores: Tensor,
    gold: Tensor,
    valid: Tensor,
    *,
    k: int | None = 4,
    temperature: float = 1.0,
    margin: float = 0.0,
    detach_negatives: bool = False,
    negatives: HardNegatives | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Softmax cross-entropy of each gold pair against the ``k`` hard negatives of its row, or
    (``k=None``) against all of its row's negatives.

    A smooth, logit-space relative of :func:`~torch_pairconf.pair_margin_loss` (formula: module
    docstring): it never saturates, so it keeps widening the gap, more gently once the gold pair
    leads. Other gold pairs of the row are never in the denominator. ``reduction="mean"``
    averages over contributing gold pairs (a zero attached to the graph when there are none).

    Args:
        scores: ``(B, N, M)`` pair logits; ``gold``, ``valid``: bool ``(B, N, M)``.
        k: hard negatives per row, ``>= 1``, or ``None`` for every valid negative of the row
            (dense over ``M``, no mining; ignored when ``negatives`` is given).
        temperature: ``T > 0``.
        margin: additive logit margin ``m >= 0`` (in units of ``z``).
        detach_negatives: only push gold pairs up.
        negatives: precomputed :class:`~torch_pairconf.HardNegatives` (``values`` are gathered
            again from ``scores``; slots at gold or invalid pairs are ignored).
        reduction: ``"none"`` (``(B, N, M)``), ``"mean"`` or ``"sum"``.

    Example:
        >>> scores = torch.tensor([[[0.0, 0.0, -50.0]]])
        >>> gold = torch.tensor([[[True, False, False]]])
        >>> valid = torch.ones(1, 1, 3, dtype=torch.bool)
        >>> round(float(pair_listwise_loss(scores, gold, valid, k=2)), 4)  # log 2
        0.6931
        >>> round(float(pair_listwise_loss(scores, gold, valid, k=None)), 4)  # every negative
        0.6931
    """
    check_pair_inputs(scores, gold, valid)
    _check_listwise_args(margin, k, temperature, reduction)
    clean = scores.masked_fill(~valid, 0)
    if negatives is None and k is None:
        # Every negative of the row: the "slots" are the row's own columns.
        z_neg, neg_mask = clean / temperature, valid > gold
    else:
        if negatives is None:
            neg = mine_hard_negatives(clean, gold, valid, k=k if k is not None else 1)
        else:
            neg = check_negatives(negatives, clean, gold, valid)
        z_neg, neg_mask = neg.values / temperature, neg.mask
    if detach_negatives:
        z_neg = z_neg.detach()
    low = torch.finfo(z_neg.dtype).min
    lse = z_neg.masked_fill(~neg_mask, low).logsumexp(-1, keepdim=True)  # (B, N, 1)
    has = neg_mask.any(-1, keepdim=True)
    contributes = gold & valid & has
    # A row without negatives has lse at the sentinel: keep the argument finite there.
    lse = torch.where(has, lse, torch.zeros_like(lse))
    loss = F.softplus(lse - clean / temperature + margin).masked_fill(~contributes, 0)
    return reduce(loss, contributes, reduction, scores.dtype)


class PairListwiseLoss(nn.Module):
    """Module form of :func:`pair_listwise_loss`; the options are the same.

    Example:
        >>> criterion = PairListwiseLoss(k=2)
        >>> scores = torch.randn(1, 3, 3, requires_grad=True)
        >>> gold = torch.eye(3, dtype=torch.bool).unsqueeze(0)
        >>> criterion(scores, gold, torch.ones(1, 3, 3, dtype=torch.bool)).backward()
    """

    def __init__(
        self,
        k: int | None = 4,
        *,
        temperature: float = 1.0,
        margin: float = 0.0,
        detach_negatives: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_listwise_args(margin, k, temperature, reduction)
        self.k = k
        self.temperature = temperature
        self.margin = margin
        self.detach_negatives = detach_negatives
        self.reduction = reduction

    def forward(
        self, scores: Tensor, gold: Tensor, valid: Tensor, negatives: HardNegatives | None = None
    ) -> Tensor:
        return pair_listwise_loss(
            scores, gold, valid, k=self.k, temperature=self.temperature, margin=self.margin,
            detach_negatives=self.detach_negatives, negatives=negatives, reduction=self.reduction,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, temperature={self.temperature}, margin={self.margin}, "
            f"detach_negatives={self.detach_negatives}, reduction={self.reduction!r}"
        )
