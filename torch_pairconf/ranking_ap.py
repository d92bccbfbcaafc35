r"""Smoothed average precision of the gold pairs: one minus each one's precision at its soft rank.

Within a **scope**, either one emotion row (``scope="row"``) or the whole batch
(``scope="batch"``, the ranking that pair AUPRC scores), let :math:`V` be the valid pairs,
:math:`G \subseteq V` the valid gold pairs and :math:`z = s / T`. With the smooth step

.. math::

    \kappa(d) = \begin{cases} 1 - \tfrac12 e^{-d}, & d \ge 0 \\ \tfrac12 e^{d}, & d < 0 \end{cases}

the soft rank of a gold pair :math:`g` among the valid pairs and among the gold pairs are

.. math::

    r_V(g) = 1 + \sum_{v \in V \setminus \{g\}} \kappa(z_v - z_g), \qquad
    r_G(g) = 1 + \sum_{v \in G \setminus \{g\}} \kappa(z_v - z_g),

and every gold pair of a scope that holds a valid negative has the loss

.. math::

    \ell_g = 1 - \frac{r_G(g)}{r_V(g)} = \frac{r_V(g) - r_G(g)}{r_V(g)} \in [0, 1),

one minus its precision at its own rank (the Smooth-AP estimator, Brown et al. 2020);
:math:`\ell = 0` elsewhere and ``reduction="mean"`` averages over those gold pairs. With
``scope="batch"`` the mean is :math:`1 - \widehat{\mathrm{AP}}` of the batch; with
``scope="row"`` it is one minus the gold-weighted mean of the rows' APs. As :math:`T \to 0` the
soft ranks become the exact ranks (a tie counts half a place, :math:`\kappa(0) = \tfrac12`).

**Why this step and not the sigmoid.** :math:`\kappa` is the Laplace CDF: like the logistic
sigmoid it rises from 0 to 1 around 0 with exponential tails, but it *factorises* on each side of
0 (:math:`\kappa(z_v - z_g) = \tfrac12 e^{z_v} e^{-z_g}` below :math:`g`,
:math:`1 - \tfrac12 e^{-z_v} e^{z_g}` above). After one sort of the scope the sums over
:math:`v` are exclusive prefix / suffix log-sum-exps, so every soft rank is exact in
:math:`O(P \log P)` time and :math:`O(P)` memory over the :math:`P` pairs of a scope: no
:math:`P \times P` comparison tensor, no chunking, and the batch scope costs what the row scope
costs. (A sigmoid step needs every pair compared: :math:`O(B N M^2)` for rows,
:math:`O((B N M)^2)` for the batch.) The constant: the peak of forward + backward is about 30
times the float32 input's bytes (sorted copies, int64 indices, the four log-sums), flat in
:math:`N` (``bench_losses`` on CPU).

**What it can and cannot move.** :math:`\ell` depends on logit differences only, so adding a
constant to every logit of a scope leaves it unchanged and its gradient sums to zero over each
scope: it cannot shift the score scale the way a gold-only push does. It is not scale-free: a
wider logit spread sharpens the soft ranks, so the term can make a model more confident. Watch
the calibration metrics next to it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import REDUCTIONS, check_choice, check_pair_inputs, check_positive
from ._reduce import accumulation_dtype, reduce
from ._scope import SCOPES, reverse_cumsum, scope_any, to_scopes

__all__ = ["PairAPLoss", "pair_ap_loss"]


def _check_ap_args(scope: str, temperature: float, reduction: str) -> None:
    check_choice("scope", scope, SCOPES)
    check_positive("temperature", temperature)
    check_choice("reduction", reduction, REDUCTIONS)


def _exclusive_logcumsumexp(a: Tensor, fill: float, reverse: bool) -> Tensor:
    """``log sum exp a[..., q]`` over ``q < p`` (``reverse``: ``q > p``); ``fill`` where empty."""
    edge = a.new_full((*a.shape[:-1], 1), fill)
    if reverse:
        inclusive = torch.flip(torch.logcumsumexp(torch.flip(a, (-1,)), -1), (-1,))
        return torch.cat([inclusive[..., 1:], edge], -1)
    return torch.cat([edge, torch.logcumsumexp(a, -1)[..., :-1]], -1)


def _soft_count(z: Tensor, member: Tensor, empty: float) -> Tensor:
    r""":math:`\sum_{q \ne p,\ \mathrm{member}_q} \kappa(z_q - z_p)` for every position ``p`` of
    rows ``z`` sorted ascending, ``(R, L)``.

    Below ``p`` (``z_q <= z_p``) the terms are :math:`\tfrac12 e^{z_q - z_p}`, above it
    :math:`1 - \tfrac12 e^{z_p - z_q}`; each side is an exclusive log-cum-sum-exp whose exponent
    is at most ``log L``, so nothing overflows. Non-members enter the log-sums as ``empty`` (a
    finite sentinel far below every logit, whose ``exp`` is exactly 0), so no ``-inf`` ever
    reaches a gradient. A tie counts :math:`\tfrac12` on either side, so the result does not
    depend on how the sort ordered tied entries.
    """
    below = _exclusive_logcumsumexp(torch.where(member, z, empty), empty, reverse=False)
    above = _exclusive_logcumsumexp(torch.where(member, -z, empty), empty, reverse=True)
    n_above = reverse_cumsum(member.to(z.dtype)) - member.to(z.dtype)
    return n_above - 0.5 * torch.exp(above + z) + 0.5 * torch.exp(below - z)


def pair_ap_loss(
    scores: Tensor,
    gold: Tensor,
    valid: Tensor,
    *,
    scope: str = "batch",
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    r"""One minus each gold pair's smoothed precision at its soft rank (formula: module docstring).

    Every valid gold pair is ranked against every valid pair of its scope (its emotion row, or
    the batch); gold pairs of a scope without a valid negative (their precision is 1) and gold
    pairs outside ``valid`` do not contribute. Gradients reach gold pairs (pushed up) and the
    valid negatives that score near or above them (pushed down), never a pair outside
    ``valid``. Cost: one sort per scope, :math:`O(P \log P)` time, :math:`O(P)` memory.

    Args:
        scores: ``(B, N, M)`` float pair logits (rows emotion utterances, columns candidate
            causes). Values outside ``valid`` (NaN and inf included) never affect the result.
        gold: ``(B, N, M)`` bool gold pairs.
        valid: ``(B, N, M)`` bool candidate pairs.
        scope: ``"batch"`` (rank among all valid pairs of the batch, as AUPRC does) or
            ``"row"`` (among the valid candidates of the gold pair's emotion row).
        temperature: ``T > 0`` of the smooth step, in logit units; smaller is closer to the
            exact AP and gives sparser gradients.
        reduction: ``"none"`` (``(B, N, M)``, zero where nothing contributes), ``"mean"`` over
            contributing gold pairs (a zero attached to the graph when there are none) or
            ``"sum"``.

    Returns:
        The loss, a scalar or ``(B, N, M)``, in the dtype of ``scores`` (half precision is
        evaluated in float32).

    Example:
        >>> scores = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]]])
        >>> gold = torch.tensor([[[True, False, False], [False, True, False]]])
        >>> valid = torch.ones(1, 2, 3, dtype=torch.bool)
        >>> pair_ap_loss(scores, gold, valid, scope="row", reduction="none").round(decimals=4)
        tensor([[[0.0847, 0.0000, 0.0000],
                 [0.0000, 0.5275, 0.0000]]])
        >>> round(float(pair_ap_loss(scores, gold, valid, temperature=0.01)), 4)  # 1 - (1/2 + 2/3) / 2
        0.4167
    """
    check_pair_inputs(scores, gold, valid)
    _check_ap_args(scope, temperature, reduction)
    work = accumulation_dtype(scores.dtype)
    pos = gold & valid
    contributes = pos & scope_any(valid > gold, scope)
    # Zero the masked entries first so that NaN/inf there cannot reach values or gradients.
    clean = scores.masked_fill(~valid, 0)
    if scores.numel() == 0:  # a shape fact (no sync): nothing to rank
        return reduce(clean * 0, contributes, reduction, scores.dtype)
    z = clean.to(work) / temperature
    # Masked entries sit at the lowest value (their zero included), so no exponent of a masked
    # query position exceeds 0 either; they are weighted out of every sum below.
    lowest = z.detach().amin()
    empty = torch.finfo(work).min / 2
    rows_z = to_scopes(torch.where(valid, z, lowest), scope)
    order = torch.argsort(rows_z.detach(), dim=-1, stable=True)
    z_sorted = rows_z.gather(-1, order)
    valid_sorted = to_scopes(valid, scope).gather(-1, order)
    gold_sorted = to_scopes(pos, scope).gather(-1, order)
    rank_valid = 1 + _soft_count(z_sorted, valid_sorted, empty)
    rank_gold = 1 + _soft_count(z_sorted, gold_sorted, empty)
    # Tiny negative rounding where a gold pair leads by far is clamped to zero.
    sorted_loss = ((rank_valid - rank_gold) / rank_valid).clamp_min(0)
    loss = torch.zeros_like(sorted_loss).scatter(-1, order, sorted_loss).reshape(scores.shape)
    return reduce(loss.masked_fill(~contributes, 0), contributes, reduction, scores.dtype)


class PairAPLoss(nn.Module):
    """Module form of :func:`pair_ap_loss`; the options are the same.

    Example:
        >>> criterion = PairAPLoss(scope="batch", temperature=0.5)
        >>> scores = torch.randn(2, 5, 5, requires_grad=True)
        >>> gold = torch.zeros(2, 5, 5, dtype=torch.bool); gold[:, 2, 1] = True
        >>> criterion(scores, gold, torch.ones(2, 5, 5, dtype=torch.bool)).backward()
    """

    def __init__(
        self, scope: str = "batch", *, temperature: float = 1.0, reduction: str = "mean"
    ) -> None:
        super().__init__()
        _check_ap_args(scope, temperature, reduction)
        self.scope = scope
        self.temperature = temperature
        self.reduction = reduction

    def forward(self, scores: Tensor, gold: Tensor, valid: Tensor) -> Tensor:
        return pair_ap_loss(
            scores, gold, valid, scope=self.scope, temperature=self.temperature,
            reduction=self.reduction,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"scope={self.scope!r}, temperature={self.temperature}, reduction={self.reduction!r}"
