r"""Pairwise AUC surrogate: every gold pair against the negatives of its row or of the batch.

Within a **scope**, either one emotion row (``scope="row"``) or the whole batch
(``scope="batch"``), let :math:`V^-` be the valid negatives (valid, not gold). Every valid gold
pair :math:`g` of a scope with a negative has the loss

.. math::

    \ell_g = \frac{1}{|V^-|} \sum_{n \in V^-} \varphi\bigl(m - (s_g - s_n)\bigr), \qquad
    \varphi(x) = \max(0, x)^2 \;\; (\texttt{"squared\_hinge"}) \quad\text{or}\quad
    \max(0, x) \;\; (\texttt{"hinge"}),

on the logits :math:`s` with a margin :math:`m \ge 0` in logit units; :math:`\ell = 0`
elsewhere and ``reduction="mean"`` averages over those gold pairs. Since
:math:`\varphi(m - d) \ge \varphi(m)\,[d \le 0]`, the mean divided by :math:`\varphi(m)`
(:math:`m > 0`) bounds the fraction of (gold, negative) pairs of a scope that are misordered,
:math:`1 - \mathrm{AUC}`; this is the pairwise square-hinge AUC loss of LibAUC.

With ``k`` (or precomputed ``negatives=``, both ``scope="row"`` only) :math:`V^-` is the row's
``k`` hardest negatives :math:`\mathcal{N}_k(b, i)` (:func:`~torch_pairconf.mine_hard_negatives`),
compared densely in a ``(B, N, M, k)`` tensor.

**Cost without** ``k``. Above its kink :math:`\varphi` is a polynomial, so with
:math:`t = s_g - m`, :math:`\sum_{n:\, s_n > t} (s_n - t)^2 = S_2 - 2 t S_1 + t^2 S_0`, where
:math:`S_j` are suffix sums of :math:`s_n^j` over the scope's negatives sorted ascending, read at
the position of :math:`t` (``searchsorted``). Every :math:`\ell_g` is exact in
:math:`O(P \log P)` time and :math:`O(P)` memory over the :math:`P` pairs of a scope, with no
gold × negative tensor; the sums are taken in float64, relative to the scope's top negative,
because the expansion cancels (the peak of forward + backward is about 40 times the float32
input's bytes, flat in :math:`N`).

**What it can and cannot move.** :math:`\ell` depends on logit differences only: adding a
constant to every logit of a scope leaves it unchanged, and its gradient sums to zero over each
scope. The margin is in logit units, so it can also be met by spreading the logits.
"""

from __future__ import annotations

import math
from typing import Final

import torch
from torch import Tensor, nn

from ._checks import REDUCTIONS, check_choice, check_k, check_nonneg, check_pair_inputs
from ._reduce import reduce
from ._scope import SCOPES, reverse_cumsum, scope_any, to_scopes
from .mining import HardNegatives, check_negatives, mine_hard_negatives

__all__ = ["SURROGATES", "PairAUCLoss", "pair_auc_loss"]

SURROGATES: Final = ("squared_hinge", "hinge")


def _check_auc_args(scope: str, margin: float, surrogate: str, k: int | None, reduction: str) -> None:
    check_choice("scope", scope, SCOPES)
    check_nonneg("margin", margin)
    check_choice("surrogate", surrogate, SURROGATES)
    if k is not None:
        check_k(k)
    check_choice("reduction", reduction, REDUCTIONS)


def _phi(x: Tensor, surrogate: str) -> Tensor:
    hinge = x.clamp_min(0)
    return hinge * hinge if surrogate == "squared_hinge" else hinge


def _against_hard_negatives(
    clean: Tensor, pos: Tensor, neg: HardNegatives, margin: float, surrogate: str
) -> tuple[Tensor, Tensor]:
    """``(per-pair loss, contributes)`` against the row's selected negatives, ``(B, N, M)``."""
    gap = clean.unsqueeze(-1) - neg.values.unsqueeze(-2)  # (B, N, M, k)
    phi = _phi(margin - gap, surrogate).masked_fill(~neg.mask.unsqueeze(-2), 0)
    n_neg = neg.mask.sum(-1, keepdim=True)  # (B, N, 1)
    return phi.sum(-1) / n_neg.clamp_min(1), pos & (n_neg > 0)


def _against_all_negatives(
    clean: Tensor, gold: Tensor, valid: Tensor, scope: str, margin: float, surrogate: str
) -> Tensor:
    """Per-pair loss against every negative of the scope (sorted suffix moments), ``(B, N, M)``."""
    work = torch.float64  # S2 - 2 t S1 + t^2 S0 cancels: float32 would lose the small losses
    z = clean.to(work)
    negative = valid > gold
    key = to_scopes(torch.where(negative, z.detach(), -math.inf), scope)  # negatives sort last
    order = torch.argsort(key, dim=-1, stable=True)
    key_sorted = key.gather(-1, order)
    # The moments are taken relative to each scope's top negative (detached): the losses are
    # differences, and the negatives that matter sit near the top, so the expansion then
    # cancels at the scale of the logit spread rather than of the logits themselves.
    top = key_sorted[..., -1:]
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    is_neg = to_scopes(negative, scope).gather(-1, order).to(work)
    y = torch.where(is_neg > 0, to_scopes(z, scope).gather(-1, order) - shift, 0)
    pad = y.new_zeros((*y.shape[:-1], 1))  # suffix sums at L: nothing above the query

    def suffix(t: Tensor) -> Tensor:
        return torch.cat([reverse_cumsum(t), pad], -1)

    count, first = suffix(is_neg), suffix(y)
    threshold = to_scopes(z, scope) - margin  # (R, L) one per query pair
    # Negatives strictly above the threshold are those from the first sorted key above it on
    # (a negative at it contributes phi(0) = 0, so the side of a tie does not matter).
    at = torch.searchsorted(key_sorted, threshold.detach().contiguous(), right=True)
    t = threshold - shift
    above, s1 = count.gather(-1, at), first.gather(-1, at)
    if surrogate == "squared_hinge":
        total = suffix(y * y).gather(-1, at) - 2 * t * s1 + t * t * above
    else:
        total = s1 - t * above
    # Rounding in the expansion can leave a tiny negative where no negative is above t.
    per_pair = total.clamp_min(0) / count[..., :1].clamp_min(1)
    return per_pair.reshape(clean.shape)


def pair_auc_loss(
    scores: Tensor,
    gold: Tensor,
    valid: Tensor,
    *,
    scope: str = "batch",
    margin: float = 1.0,
    surrogate: str = "squared_hinge",
    k: int | None = None,
    negatives: HardNegatives | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Mean surrogate loss of each gold pair against the negatives of its scope (module docstring).

    Gold pairs are never compared with gold pairs, so rows with several gold causes are exact.
    Gradients reach gold pairs (up) and the negatives within the margin of a gold pair (down);
    nothing outside ``valid``.

    Args:
        scores: ``(B, N, M)`` float pair logits. Values outside ``valid`` never matter.
        gold: ``(B, N, M)`` bool gold pairs.
        valid: ``(B, N, M)`` bool candidate pairs.
        scope: ``"batch"`` (every negative of the batch, the ordering AUC and AUPRC score) or
            ``"row"`` (the negatives of the gold pair's emotion row).
        margin: :math:`m \ge 0`, in logit units.
        surrogate: ``"squared_hinge"`` or ``"hinge"``.
        k: compare with the row's ``k`` hardest negatives only (``scope="row"``); ``None``: every
            negative of the scope.
        negatives: precomputed :class:`~torch_pairconf.HardNegatives` ``(B, N, k)`` instead of
            ``k`` (``scope="row"``; their ``values`` are gathered again from ``scores`` and
            slots at gold or invalid pairs are ignored).
        reduction: ``"none"`` (``(B, N, M)``), ``"mean"`` over contributing gold pairs (a zero
            attached to the graph when there are none) or ``"sum"``.

    Returns:
        The loss, a scalar or ``(B, N, M)``, in the dtype of ``scores``.

    Example:
        >>> scores = torch.tensor([[[2.0, 1.5, -1.0], [0.0, 3.0, 0.5]]])
        >>> gold = torch.tensor([[[True, False, False], [False, True, False]]])
        >>> valid = torch.ones(1, 2, 3, dtype=torch.bool)
        >>> pair_auc_loss(scores, gold, valid, scope="row", reduction="none")
        tensor([[[0.1250, 0.0000, 0.0000],
                 [0.0000, 0.0000, 0.0000]]])
        >>> pair_auc_loss(scores, gold, valid, scope="batch", surrogate="hinge")  # (0.5/4 + 0) / 2
        tensor(0.0625)
        >>> pair_auc_loss(scores, gold, valid, scope="row", k=1, reduction="sum")  # hardest only
        tensor(0.2500)
    """
    check_pair_inputs(scores, gold, valid)
    _check_auc_args(scope, margin, surrogate, k, reduction)
    if (k is not None or negatives is not None) and scope != "row":
        raise ValueError(
            "k and negatives pick each row's hardest negatives: use scope='row' with them "
            f"(got scope={scope!r})"
        )
    pos = gold & valid
    # Zero the masked entries first so that NaN/inf there cannot reach values or gradients.
    clean = scores.masked_fill(~valid, 0)
    if negatives is not None or k is not None:
        neg = (
            check_negatives(negatives, clean, gold, valid)
            if negatives is not None
            else mine_hard_negatives(clean, gold, valid, k=k if k is not None else 1)
        )
        per_pair, contributes = _against_hard_negatives(clean, pos, neg, margin, surrogate)
    elif scores.numel() == 0:  # a shape fact (no sync): nothing to compare
        per_pair, contributes = clean * 0, pos
    else:
        per_pair = _against_all_negatives(clean, gold, valid, scope, margin, surrogate)
        contributes = pos & scope_any(valid > gold, scope)
    loss = per_pair.masked_fill(~contributes, 0)
    return reduce(loss, contributes, reduction, scores.dtype)


class PairAUCLoss(nn.Module):
    """Module form of :func:`pair_auc_loss`; the options are the same.

    Example:
        >>> criterion = PairAUCLoss(scope="row", margin=0.5, k=3)
        >>> scores = torch.randn(2, 5, 5, requires_grad=True)
        >>> gold = torch.zeros(2, 5, 5, dtype=torch.bool); gold[:, 2, 1] = True
        >>> criterion(scores, gold, torch.ones(2, 5, 5, dtype=torch.bool)).backward()
    """

    def __init__(
        self,
        scope: str = "batch",
        *,
        margin: float = 1.0,
        surrogate: str = "squared_hinge",
        k: int | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_auc_args(scope, margin, surrogate, k, reduction)
        if k is not None and scope != "row":
            raise ValueError(f"k picks each row's hardest negatives: use scope='row' (got {scope!r})")
        self.scope = scope
        self.margin = margin
        self.surrogate = surrogate
        self.k = k
        self.reduction = reduction

    def forward(
        self, scores: Tensor, gold: Tensor, valid: Tensor, negatives: HardNegatives | None = None
    ) -> Tensor:
        return pair_auc_loss(
            scores, gold, valid, scope=self.scope, margin=self.margin, surrogate=self.surrogate,
            k=self.k, negatives=negatives, reduction=self.reduction,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"scope={self.scope!r}, margin={self.margin}, surrogate={self.surrogate!r}, "
            f"k={self.k}, reduction={self.reduction!r}"
        )
