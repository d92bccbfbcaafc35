r"""Row-relative logit margin: each gold logit above an anchor made of its row's negatives.

For a row :math:`(b, i)` with valid negatives :math:`V^-_{bi}` (valid, not gold) and logits
:math:`s`, the anchor is the row's hardest negative or the mean of its negatives,

.. math::

    a_{bi} = \max_{n \in V^-_{bi}} s_{bin} \quad (\texttt{"hardest"}), \qquad
    a_{bi} = \frac{1}{|V^-_{bi}|} \sum_{n \in V^-_{bi}} s_{bin} \quad (\texttt{"mean"}),

and every valid gold pair of a row with a negative has the loss

.. math::

    \ell_{bij} = \max\bigl(0,\; m - (s_{bij} - a_{bi})\bigr),

:math:`\ell = 0` elsewhere; ``reduction="mean"`` averages over those gold pairs.

**What it can and cannot move.** The anchor is never detached: adding a constant :math:`c` to
every logit of a row moves :math:`s_{bij}` and :math:`a_{bi}` alike, so :math:`\ell` is
unchanged, and its gradient sums to zero over the row (each push up on a gold logit is matched
by a push down on the anchor's negatives). Unlike the detached, probability-space hinge of
:func:`~torch_pairconf.pair_margin_loss` (RPCL's default, which only raises gold confidences and
so recalibrates), it cannot shift the row's score scale; it changes the order and spread within
a row. ``anchor="hardest"`` equals ``pair_margin_loss(..., k=1, space="logit",
detach_negatives=False)``; ``anchor="mean"`` asks the gold pair to beat the typical negative, and
pushes every negative of a violating row down by :math:`1 / |V^-_{bi}|`.
"""

from __future__ import annotations

from typing import Final

from torch import Tensor, nn

from ._checks import REDUCTIONS, check_choice, check_nonneg, check_pair_inputs
from ._reduce import accumulation_dtype, reduce
from .mining import mine_hard_negatives

__all__ = ["ANCHORS", "PairRelativeMarginLoss", "pair_relative_margin_loss"]

ANCHORS: Final = ("hardest", "mean")


def _check_relative_args(margin: float, anchor: str, reduction: str) -> None:
    check_nonneg("margin", margin)
    check_choice("anchor", anchor, ANCHORS)
    check_choice("reduction", reduction, REDUCTIONS)


def pair_relative_margin_loss(
    scores: Tensor,
    gold: Tensor,
    valid: Tensor,
    *,
    margin: float = 1.0,
    anchor: str = "hardest",
    reduction: str = "mean",
) -> Tensor:
    r"""Hinge between each gold logit and its row's negative anchor (formula: module docstring).

    Args:
        scores: ``(B, N, M)`` float pair logits. Values outside ``valid`` never matter.
        gold: ``(B, N, M)`` bool gold pairs.
        valid: ``(B, N, M)`` bool candidate pairs.
        margin: :math:`m \ge 0`, in logit units.
        anchor: ``"hardest"`` (the row's highest-scoring negative, the selection rule of
            :mod:`~torch_pairconf.mining`) or ``"mean"`` (the mean logit of its negatives).
        reduction: ``"none"`` (``(B, N, M)``), ``"mean"`` over contributing gold pairs (a zero
            attached to the graph when there are none) or ``"sum"``.

    Returns:
        The loss, a scalar or ``(B, N, M)``, in the dtype of ``scores``.

    Example:
        >>> scores = torch.tensor([[[2.0, 1.5, -1.0]]])
        >>> gold = torch.tensor([[[True, False, False]]])
        >>> valid = torch.ones(1, 1, 3, dtype=torch.bool)
        >>> pair_relative_margin_loss(scores, gold, valid, margin=1.0)  # 1 - (2.0 - 1.5)
        tensor(0.5000)
        >>> pair_relative_margin_loss(scores, gold, valid, margin=1.0, anchor="mean")  # anchor 0.25
        tensor(0.)
    """
    check_pair_inputs(scores, gold, valid)
    _check_relative_args(margin, anchor, reduction)
    # Zero the masked entries first so that NaN/inf there cannot reach values or gradients.
    clean = scores.masked_fill(~valid, 0)
    negative = valid > gold
    n_neg = negative.sum(-1, keepdim=True)  # (B, N, 1)
    if anchor == "hardest":
        anchor_logit = mine_hard_negatives(clean, gold, valid, k=1).values
    else:
        work = accumulation_dtype(scores.dtype)
        total = clean.masked_fill(~negative, 0).sum(-1, keepdim=True, dtype=work)
        anchor_logit = (total / n_neg.clamp_min(1)).to(scores.dtype)
    contributes = gold & valid & (n_neg > 0)
    loss = (margin - (clean - anchor_logit)).clamp_min(0).masked_fill(~contributes, 0)
    return reduce(loss, contributes, reduction, scores.dtype)


class PairRelativeMarginLoss(nn.Module):
    """Module form of :func:`pair_relative_margin_loss`; the options are the same.

    Example:
        >>> criterion = PairRelativeMarginLoss(margin=1.0, anchor="mean")
        >>> scores = torch.randn(2, 5, 5, requires_grad=True)
        >>> gold = torch.zeros(2, 5, 5, dtype=torch.bool); gold[:, 2, 1] = True
        >>> criterion(scores, gold, torch.ones(2, 5, 5, dtype=torch.bool)).backward()
    """

    def __init__(self, margin: float = 1.0, *, anchor: str = "hardest", reduction: str = "mean") -> None:
        super().__init__()
        _check_relative_args(margin, anchor, reduction)
        self.margin = margin
        self.anchor = anchor
        self.reduction = reduction

    def forward(self, scores: Tensor, gold: Tensor, valid: Tensor) -> Tensor:
        return pair_relative_margin_loss(
            scores, gold, valid, margin=self.margin, anchor=self.anchor, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"margin={self.margin}, anchor={self.anchor!r}, reduction={self.reduction!r}"

