"""Evaluation diagnostics for pair confidences: F1, AUPRC, margins, calibration and ranking.

All functions take pair *logits* ``scores`` with bool ``gold`` and ``valid`` of the same shape.
Confidences are ``sigmoid(scores)``; thresholds are in probability space. Gold pairs outside
``valid`` can never be predicted: they count as misses (false negatives) in every recall-based
metric, and are ignored by the metrics defined on predictions only (calibration). Metrics whose
name says "row" need the ``(B, N, M)`` layout; the others accept any shape, so the padded
matrices of a whole evaluation set can be flattened and concatenated first.

Everything is a batched tensor computation (no Python loop, no host sync); results are 0-dim
tensors (or per-bin vectors) in float64 for exact accumulation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import SPACES, check_choice, check_nonneg, check_pair_inputs
from ._space import confidence
from .mining import mine_hard_negatives

__all__ = [
    "PRF",
    "ConfidenceGap",
    "Reliability",
    "RowRanking",
    "Threshold",
    "Violations",
    "best_threshold",
    "confidence_gap",
    "expected_calibration_error",
    "margin_violations",
    "pair_auprc",
    "pair_prf",
    "reliability_diagram",
    "row_ranking",
]

_ACC = torch.float64


class PRF(NamedTuple):
    """Micro pair precision, recall, F1 and the counts behind them (0-dim tensors)."""

    precision: Tensor
    recall: Tensor
    f1: Tensor
    tp: Tensor
    fp: Tensor
    fn: Tensor


class Threshold(NamedTuple):
    """Best decision threshold (probability) and the micro F1 it reaches."""

    threshold: Tensor
    f1: Tensor


class ConfidenceGap(NamedTuple):
    """Per gold pair ``c_gold - c_hardest_negative`` with the mask of pairs that have one."""

    gaps: Tensor
    mask: Tensor
    mean: Tensor


class Violations(NamedTuple):
    """Margin violations among gold pairs that have a negative in their row.

    ``rate``: fraction of those gold pairs with gap ``< margin``; ``severity``: mean shortfall
    ``margin - gap`` over the violating pairs (0 if none); ``violations``: their number.
    """

    rate: Tensor
    severity: Tensor
    violations: Tensor


class Reliability(NamedTuple):
    """Per-bin mean confidence, empirical gold rate and number of candidates (``(n_bins,)`` each)."""

    confidence: Tensor
    accuracy: Tensor
    counts: Tensor


class RowRanking(NamedTuple):
    """Row-wise ranking quality over rows with at least one gold pair.

    ``top1``: rate at which the row's top-scored valid candidate is gold; ``mrr``: mean reciprocal
    rank of the best-ranked gold candidate; ``rows``: number of such rows. Ties are broken
    against gold (a negative tied with the best gold pair ranks above it); a row whose gold pairs
    are all outside ``valid`` scores 0 on both.
    """

    top1: Tensor
    mrr: Tensor
    rows: Tensor


def _div(a: Tensor, b: Tensor) -> Tensor:
    """``a / b`` with 0 where ``b == 0``."""
    return torch.where(b > 0, a / b.clamp_min(1e-300), torch.zeros_like(a))


def _f1(tp: Tensor, n_pred: Tensor, n_gold: Tensor) -> Tensor:
    return _div(2 * tp, n_pred + n_gold)


def _sorted_valid(scores: Tensor, gold: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Flatten and sort by score, descending, with every invalid entry after every valid one.

    Two stable sorts instead of a sentinel value keep the order exact for any finite score.
    Returns ``(sorted_scores, sorted_is_gold, sorted_is_valid, block_end)``, where ``block_end``
    marks the last valid entry of each run of equal scores (a distinct threshold).
    """
    s = scores.detach().reshape(-1).to(_ACC)
    g = (gold & valid).reshape(-1)
    v = valid.reshape(-1)
    order = torch.sort(s, descending=True, stable=True).indices
    order = order[torch.sort(v[order].to(torch.int8), descending=True, stable=True).indices]
    s, g, v = s[order], g[order], v[order]
    nxt_differs = torch.ones_like(v)
    nxt_differs[:-1] = (s[1:] != s[:-1]) | ~v[1:]
    return s, g, v, v & nxt_differs


def pair_prf(
    scores: Tensor, gold: Tensor, valid: Tensor, *, threshold: float | Tensor = 0.5
) -> PRF:
    """Micro pair precision / recall / F1 with prediction ``sigmoid(score) > threshold``.

    Args:
        scores: float logits of any shape; ``gold``, ``valid``: bool of the same shape.
        threshold: probability threshold (a float or a 0-dim tensor, e.g. from
            :func:`best_threshold` on another set).
    """
    check_pair_inputs(scores, gold, valid, dims=None)
    prob = torch.sigmoid(scores.detach().to(_ACC))
    pred = valid & (prob > threshold)
    tp = (pred & gold).sum(dtype=_ACC)
    n_pred = pred.sum(dtype=_ACC)
    n_gold = gold.sum(dtype=_ACC)  # gold outside valid included: they are misses
    p, r = _div(tp, n_pred), _div(tp, n_gold)
    return PRF(p, r, _f1(tp, n_pred, n_gold), tp, n_pred - tp, n_gold - tp)


def pair_auprc(scores: Tensor, gold: Tensor, valid: Tensor) -> Tensor:
    r"""Average precision of the valid candidates ranked by score.

    :math:`\mathrm{AP} = \sum_t (R_t - R_{t-1}) P_t` over the distinct score thresholds
    :math:`t` (ties form one step, as in scikit-learn). The recall denominator counts every gold
    pair, so gold pairs outside ``valid`` cap the reachable recall. 0 when there is no gold pair.
    """
    check_pair_inputs(scores, gold, valid, dims=None)
    _, g, _, end = _sorted_valid(scores, gold, valid)
    tp = g.cumsum(0, dtype=_ACC)
    rank = torch.arange(1, g.numel() + 1, device=g.device, dtype=_ACC)
    n_gold = gold.sum(dtype=_ACC)
    precision = tp / rank
    # Recall gained at each block end = gold pairs since the previous block end.
    tp_end = torch.where(end, tp, torch.zeros_like(tp))
    prev = torch.cummax(torch.cat([tp.new_zeros(1), tp_end[:-1]]), 0).values
    gained = torch.where(end, tp - prev, torch.zeros_like(tp))
    return _div((gained * precision).sum(), n_gold)


def best_threshold(scores: Tensor, gold: Tensor, valid: Tensor) -> Threshold:
    """The probability threshold that maximises micro pair F1 on this set.

    Every distinct valid confidence is a candidate cut; the returned threshold lies halfway
    between the lowest accepted confidence and the next lower one (or 0), so that
    ``pair_prf(..., threshold)`` reproduces ``f1`` exactly. Where no float lies strictly between
    the two (adjacent confidences, or an accepted confidence of exactly 0), it is the largest
    float below the accepted confidence (a tiny negative number in the latter case). The
    highest F1 wins; ties go to the higher threshold. With no gold pair the threshold is 0.5
    and F1 0.
    """
    check_pair_inputs(scores, gold, valid, dims=None)
    if scores.numel() == 0:
        z = torch.zeros((), dtype=_ACC, device=scores.device)
        return Threshold(z + 0.5, z)
    # Sort the confidences computed exactly as pair_prf computes them, in the caller's layout:
    # torch's vectorised sigmoid can differ by an ulp between the body and the tail of a kernel,
    # so sigmoid of a sorted copy may disagree with pair_prf. Sorting by confidence also makes
    # distinct logits that sigmoid merges into one confidence a single cut.
    prob, g, v, end = _sorted_valid(torch.sigmoid(scores.detach().to(_ACC)), gold, valid)
    tp = g.cumsum(0, dtype=_ACC)
    n_pred = torch.arange(1, g.numel() + 1, device=g.device, dtype=_ACC)
    f1 = torch.where(end, _f1(tp, n_pred, gold.sum(dtype=_ACC)), torch.full_like(tp, -1.0))
    best = f1.argmax()  # first maximum = highest threshold
    # Next lower valid confidence (0 if none / next entry invalid).
    nxt = torch.cat([prob[1:], prob.new_zeros(1)])
    nxt_valid = torch.cat([v[1:], v.new_zeros(1)])
    lower = torch.where(nxt_valid, nxt, torch.zeros_like(nxt))
    thr = (prob[best] + lower[best]) / 2
    # The midpoint of two adjacent floats rounds onto one of them, and 0 / 2 == 0: fall back to
    # the largest float below the accepted confidence, so that `prob > thr` still accepts it.
    thr = torch.where(thr < prob[best], thr, torch.nextafter(prob[best], prob.new_tensor(-1.0)))
    has_gold = (gold & valid).any()
    return Threshold(
        torch.where(has_gold, thr, thr.new_tensor(0.5)),
        torch.where(has_gold, f1[best].clamp_min(0), f1.new_zeros(())),
    )


def confidence_gap(
    scores: Tensor, gold: Tensor, valid: Tensor, *, space: str = "prob"
) -> ConfidenceGap:
    """Gap between each valid gold pair and the hardest negative of its row, ``(B, N, M)``.

    ``mask`` marks the gold pairs whose row has a negative; ``mean`` is the mean gap over them.
    """
    check_pair_inputs(scores, gold, valid)
    check_choice("space", space, SPACES)
    if scores.shape[-1] == 0:  # no candidate at all; mine_hard_negatives cannot gather from M=0
        zeros = torch.zeros(scores.shape, dtype=_ACC, device=scores.device)
        return ConfidenceGap(zeros, torch.zeros_like(valid), zeros.new_zeros(()))
    clean = scores.detach().masked_fill(~valid, 0).to(_ACC)
    neg = mine_hard_negatives(clean, gold, valid, k=1)
    c = confidence(clean, space)
    # Gather the negative's confidence from the same tensor (not sigmoid of neg.values, another
    # layout, which can differ by an ulp) so that a tie gives a gap of exactly 0.
    gaps = c - c.gather(-1, neg.indices)
    mask = gold & valid & neg.mask
    gaps = gaps.masked_fill(~mask, 0)
    return ConfidenceGap(gaps, mask, _div(gaps.sum(), mask.sum(dtype=_ACC)))


def margin_violations(
    scores: Tensor, gold: Tensor, valid: Tensor, *, margin: float = 0.2, space: str = "prob"
) -> Violations:
    """Rate and severity of gold pairs whose gap to the row's hardest negative is below ``margin``."""
    check_nonneg("margin", margin)
    gap = confidence_gap(scores, gold, valid, space=space)
    violated = gap.mask & (gap.gaps < margin)
    count = violated.sum(dtype=_ACC)
    shortfall = torch.where(violated, margin - gap.gaps, torch.zeros_like(gap.gaps)).sum()
    return Violations(_div(count, gap.mask.sum(dtype=_ACC)), _div(shortfall, count), count)


def _bins(scores: Tensor, valid: Tensor, n_bins: int, binning: str) -> tuple[Tensor, Tensor]:
    """Bin index of every valid confidence (flattened) for equal-width or equal-mass bins."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be an int >= 1, got {n_bins!r}")
    check_choice("binning", binning, ("width", "mass"))
    v = valid.reshape(-1)
    # Zero the invalid confidences: a NaN there would poison its bin's sums (NaN * 0 == NaN).
    prob = torch.sigmoid(scores.detach().reshape(-1).to(_ACC)).masked_fill(~v, 0)
    if binning == "width":
        idx = (prob * n_bins).long().clamp(0, n_bins - 1)
    else:
        # Rank among valid entries (ascending), then cut the ranks into n_bins equal groups.
        key = torch.where(v, prob, torch.full_like(prob, 2.0))  # invalid entries rank last
        rank = torch.empty_like(prob, dtype=torch.long)
        order = torch.sort(key, stable=True).indices
        rank[order] = torch.arange(prob.numel(), device=prob.device)
        n_valid = v.sum().clamp_min(1)
        idx = (rank * n_bins // n_valid).clamp(0, n_bins - 1)
    return prob, idx


def reliability_diagram(
    scores: Tensor, gold: Tensor, valid: Tensor, *, n_bins: int = 10, binning: str = "width"
) -> Reliability:
    """Per-bin mean confidence, gold rate and count of the valid candidates (for a plot)."""
    check_pair_inputs(scores, gold, valid, dims=None)
    prob, idx = _bins(scores, valid, n_bins, binning)
    w = valid.reshape(-1).to(_ACC)
    y = (gold & valid).reshape(-1).to(_ACC)
    count = torch.zeros(n_bins, dtype=_ACC, device=prob.device).scatter_add_(0, idx, w)
    conf = torch.zeros_like(count).scatter_add_(0, idx, prob * w)
    acc = torch.zeros_like(count).scatter_add_(0, idx, y)
    return Reliability(_div(conf, count), _div(acc, count), count)


def expected_calibration_error(
    scores: Tensor, gold: Tensor, valid: Tensor, *, n_bins: int = 15, binning: str = "width"
) -> Tensor:
    r"""Expected calibration error of the valid pair confidences.

    :math:`\mathrm{ECE} = \sum_b \frac{n_b}{n} \lvert \bar y_b - \bar c_b \rvert` with
    ``binning="width"`` (equal-width bins on [0, 1]) or ``"mass"`` (bins of equal count).
    """
    r = reliability_diagram(scores, gold, valid, n_bins=n_bins, binning=binning)
    return _div((r.counts * (r.accuracy - r.confidence).abs()).sum(), r.counts.sum())


def row_ranking(scores: Tensor, gold: Tensor, valid: Tensor) -> RowRanking:
    """Top-1 rate and MRR of the best-ranked gold candidate, over rows with a gold pair."""
    check_pair_inputs(scores, gold, valid)
    s = scores.detach().masked_fill(~valid, 0)
    low = torch.finfo(s.dtype).min
    vg = gold & valid
    if s.shape[-1] == 0:  # amax cannot reduce an empty row (such rows have no gold pair)
        best_gold = s.new_full((*s.shape[:-1], 1), low)
    else:
        best_gold = s.masked_fill(~vg, low).amax(-1, keepdim=True)
    above = (valid & ~gold & (s >= best_gold)).sum(-1)
    row = gold.any(-1)
    reachable = vg.any(-1)
    rr = torch.where(reachable, 1.0 / (1 + above).to(_ACC), torch.zeros_like(above, dtype=_ACC))
    top1 = (reachable & (above == 0)).to(_ACC)
    rows = row.sum(dtype=_ACC)
    return RowRanking(_div((top1 * row).sum(), rows), _div((rr * row).sum(), rows), rows)
