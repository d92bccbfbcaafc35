r"""Row-wise margin between gold pairs and the row's hard negatives.

With :math:`c = \sigma(s / T)` (``space="prob"``) or :math:`c = s / T` (``space="logit"``),
:math:`\mathcal{N}_k(b, i)` the hard negatives of row :math:`(b, i)`
(:func:`~torch_pairconf.mine_hard_negatives`) and :math:`\mathcal{G}` the valid gold pairs whose
row has at least one negative,

.. math::

    \ell_{bij} = \frac{1}{|\mathcal{N}_k(b,i)|} \sum_{n \in \mathcal{N}_k(b,i)}
        \max\bigl(0,\; m - (c_{bij} - c_{bin})\bigr), \qquad (b,i,j) \in \mathcal{G},

:math:`\ell_{bij} = 0` elsewhere, and ``reduction="mean"`` divides :math:`\sum \ell` by
:math:`\max(|\mathcal{G}|, 1)`.
"""

from __future__ import annotations

from torch import Tensor, nn

from . import _fused
from ._checks import (
    REDUCTIONS,
    SPACES,
    check_choice,
    check_k,
    check_nonneg,
    check_pair_inputs,
    check_positive,
)
from ._reduce import reduce
from ._space import confidence
from .mining import HardNegatives, check_negatives, mine_hard_negatives

__all__ = ["PairMarginLoss", "confidence", "pair_margin_loss"]



def _check_margin_args(margin: float, k: int, space: str, temperature: float, reduction: str) -> None:
    check_nonneg("margin", margin)
    check_k(k)
    check_choice("space", space, SPACES)
    check_positive("temperature", temperature)
    check_choice("reduction", reduction, REDUCTIONS)
    if space == "prob" and margin >= 1:
        raise ValueError(
            f"margin must be < 1 in space='prob' (confidences lie in [0, 1]), got {margin}; "
            "use space='logit' for larger margins"
        )


def pair_margin_loss(
    scores: Tensor,
    gold: Tensor,
    valid: Tensor,
    *,
    margin: float = 0.2,
    k: int = 1,
    space: str = "prob",
    temperature: float = 1.0,
    detach_negatives: bool = False,
    negatives: HardNegatives | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Hinge between every gold pair and the hard negatives of its row (formula: module docstring).

    ``k > 1`` averages the hinge over the row's (up to) ``k`` hardest negatives; ``k = 1`` is the
    hardest negative alone. A gold pair is never compared with another gold pair, so rows with
    several gold causes are handled exactly. The loss is zero exactly when every gold pair in
    :math:`\mathcal{G}` exceeds each of its hard negatives by at least ``margin``; with no
    contributing gold pair the mean is a zero attached to the graph. Gold pairs outside
    ``valid`` are ignored.

    Args:
        scores: ``(B, N, M)`` float pair logits; rows are emotion utterances, columns candidate
            causes. Values outside ``valid`` never affect the value or the gradient.
        gold: ``(B, N, M)`` bool gold pairs.
        valid: ``(B, N, M)`` bool candidate pairs.
        margin: required confidence gap, ``>= 0`` (``< 1`` in probability space).
        k: number of hard negatives per row, ``>= 1`` (ignored when ``negatives`` is given).
        space: ``"prob"`` or ``"logit"``.
        temperature: logits are divided by it before the sigmoid / comparison, ``> 0``.
        detach_negatives: if true the hinge only pushes gold pairs up; negatives get no gradient.
        negatives: precomputed :class:`~torch_pairconf.HardNegatives` (``(B, N, k)``), e.g. from
            :func:`~torch_pairconf.mine_hard_negatives` on other scores; their ``values`` are
            gathered again from ``scores``, and slots at gold or invalid pairs are ignored.
        reduction: ``"none"`` (returns ``(B, N, M)``), ``"mean"`` or ``"sum"``.

    Returns:
        The loss, a scalar or ``(B, N, M)``, in the dtype of ``scores``.

    Example:
        >>> scores = torch.tensor([[[2.0, 1.5, -1.0]]])
        >>> gold = torch.tensor([[[True, False, False]]])
        >>> valid = torch.ones(1, 1, 3, dtype=torch.bool)
        >>> pair_margin_loss(scores, gold, valid, margin=1.0, space="logit")
        tensor(0.5000)
        >>> negatives = mine_hard_negatives(scores, gold, valid, k=2)
        >>> pair_margin_loss(scores, gold, valid, margin=1.0, space="logit", negatives=negatives)
        tensor(0.2500)
    """
    check_pair_inputs(scores, gold, valid)
    _check_margin_args(margin, k, space, temperature, reduction)
    if negatives is None and _fused.applies(scores, reduction):
        return _fused.margin_loss(
            scores, gold, valid, margin=margin, k=k, space=space, temperature=temperature,
            detach_negatives=detach_negatives, mean=reduction == "mean",
        )  # fmt: skip
    # Zero the masked entries first so that NaN/inf there cannot reach values or gradients.
    clean = scores.masked_fill(~valid, 0)
    c = confidence(clean, space, temperature)
    if negatives is None:
        neg = mine_hard_negatives(clean, gold, valid, k=k)
    else:
        neg = check_negatives(negatives, clean, gold, valid)
    c_neg = confidence(neg.values, space, temperature)
    if detach_negatives:
        c_neg = c_neg.detach()
    n_neg = neg.mask.sum(-1, keepdim=True)  # (B, N, 1)
    contributes = gold & valid & (n_neg > 0)
    if neg.mask.shape[-1] == 1:
        hinge = (c_neg + margin - c).clamp_min(0)
    else:
        # (B, N, M, k): average over the row's available negatives only.
        per_neg = (c_neg.unsqueeze(-2) + margin - c.unsqueeze(-1)).clamp_min(0)
        per_neg = per_neg.masked_fill(~neg.mask.unsqueeze(-2), 0)
        hinge = per_neg.sum(-1) / n_neg.clamp_min(1)
    loss = hinge.masked_fill(~contributes, 0)
    return reduce(loss, contributes, reduction, scores.dtype)


class PairMarginLoss(nn.Module):
    """Module form of :func:`pair_margin_loss`; the options are the same.

    Example:
        >>> criterion = PairMarginLoss(margin=0.2, k=1, space="prob")
        >>> scores = torch.randn(2, 5, 5, requires_grad=True)
        >>> gold = torch.zeros(2, 5, 5, dtype=torch.bool); gold[:, 2, 1] = True
        >>> valid = torch.ones(2, 5, 5, dtype=torch.bool)
        >>> criterion(scores, gold, valid).backward()
    """

    def __init__(
        self,
        margin: float = 0.2,
        *,
        k: int = 1,
        space: str = "prob",
        temperature: float = 1.0,
        detach_negatives: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_margin_args(margin, k, space, temperature, reduction)
        self.margin = margin
        self.k = k
        self.space = space
        self.temperature = temperature
        self.detach_negatives = detach_negatives
        self.reduction = reduction

    def forward(
        self, scores: Tensor, gold: Tensor, valid: Tensor, negatives: HardNegatives | None = None
    ) -> Tensor:
        return pair_margin_loss(
            scores, gold, valid, margin=self.margin, k=self.k, space=self.space,
            temperature=self.temperature, detach_negatives=self.detach_negatives,
            negatives=negatives, reduction=self.reduction,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, k={self.k}, space={self.space!r}, "
            f"temperature={self.temperature}, detach_negatives={self.detach_negatives}, "
            f"reduction={self.reduction!r}"
        )
