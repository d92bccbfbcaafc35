"""Stability of pair confidences between a clean and a perturbed view of the same conversations.

RPCL's premise is that a BCE-trained pair scorer lets gold pairs lean on incidental non-gold
context, so that their confidence moves when that context changes. These diagnostics measure
how much it moves. Every function takes

* ``clean`` and ``perturbed``: float pair *logits* ``(B, N, M)`` of the two views, already
  gathered into one (emotion, cause) index space (row ``i`` / column ``j`` name the same
  utterances in both);
* ``shared``: bool ``(B, N, M)``, the pairs that exist and are valid in *both* views;
* ``gold``: bool ``(B, N, M)`` gold pairs of that index space (where needed).

Only pairs inside ``shared`` are ever read: logits elsewhere may be anything, NaN and inf
included, and gold pairs outside ``shared`` are ignored. The two logit tensors may have
different float dtypes; all arithmetic runs on their float64 upcast (exact), confidences are
``sigmoid(logit)`` and thresholds are in probability space, as in :mod:`.diagnostics`. Rankings
and the hardest-negative selection use the logits (sigmoid saturates to ties in float64 above
|logit| ~ 37, the logits keep their order). NaN *inside* ``shared`` is the caller's bug and
propagates into the results.

Everything is a batched tensor computation with no host synchronisation; results are detached
float64 0-dim tensors (counts included, for exact accumulation), on the inputs' device.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import torch
from torch import Tensor

from ._checks import SPACES, check_choice, check_float, check_mask
from .diagnostics import confidence_gap

__all__ = [
    "ConfidenceChange",
    "FlipRate",
    "GapChange",
    "RankStability",
    "Stability",
    "confidence_change",
    "decision_flips",
    "gap_change",
    "pair_stability",
    "rank_stability",
]

_ACC = torch.float64

#: :func:`rank_stability` compares every pair of a row's candidates: ``(rows, M, M)`` bool
#: tensors, a few bytes per comparison. Rows are processed in chunks of at most this many
#: comparisons (16 Mi, ~100 MB of peak scratch), so memory stays bounded for any ``B * N``.
_PAIRWISE_BUDGET: Final = 1 << 24


class FlipRate(NamedTuple):
    """Decision flips between the views over the shared pairs (0-dim float64 tensors).

    ``rate = flips / pairs``; ``lost``: predicted in the clean view but not in the perturbed
    one; ``gained``: the reverse; ``flips = lost + gained``; ``pairs``: number of shared pairs.
    """

    rate: Tensor
    flips: Tensor
    lost: Tensor
    gained: Tensor
    pairs: Tensor


class ConfidenceChange(NamedTuple):
    """Mean confidence change ``sigmoid(perturbed) - sigmoid(clean)`` over the shared pairs.

    ``gold`` / ``negative``: mean absolute change over the shared gold / non-gold pairs;
    ``gold_shift`` / ``negative_shift``: the mean *signed* change (negative: the perturbation
    lowers confidence); ``gold_pairs`` / ``negative_pairs``: how many pairs each averages.
    """

    gold: Tensor
    negative: Tensor
    gold_shift: Tensor
    negative_shift: Tensor
    gold_pairs: Tensor
    negative_pairs: Tensor


class RankStability(NamedTuple):
    """Row-wise ranking agreement over the rows with at least two shared candidates.

    ``top1``: fraction of those rows whose set of top-scored shared candidates is the same in
    both views; ``tau``: mean Kendall tau-b over those rows where it is defined; ``rows``:
    number of rows with at least two shared candidates; ``tau_rows``: rows where tau-b is
    defined; ``undefined``: ``rows - tau_rows``, rows where every shared candidate is tied in
    at least one view.
    """

    top1: Tensor
    tau: Tensor
    rows: Tensor
    tau_rows: Tensor
    undefined: Tensor


class GapChange(NamedTuple):
    """Change of each gold pair's gap to its row's hardest shared negative.

    ``changes``: ``(B, N, M)`` float64 ``gap_perturbed - gap_clean``, 0 outside ``mask``;
    ``mask``: the shared gold pairs whose row has a shared negative; ``mean`` / ``mean_abs``:
    mean signed / absolute change over them; ``clean`` / ``perturbed``: each view's mean gap
    over them; ``pairs``: their number.
    """

    changes: Tensor
    mask: Tensor
    mean: Tensor
    mean_abs: Tensor
    clean: Tensor
    perturbed: Tensor
    pairs: Tensor


class Stability(NamedTuple):
    """Every stability diagnostic of one (clean, perturbed) comparison."""

    flips: FlipRate
    confidence: ConfidenceChange
    ranking: RankStability
    gap: GapChange


def _div(a: Tensor, b: Tensor) -> Tensor:
    """``a / b`` with 0 where ``b == 0``."""
    return torch.where(b > 0, a / b.clamp_min(1e-300), torch.zeros_like(a))


def _check_views(clean: Tensor, perturbed: Tensor, shared: Tensor, gold: Tensor | None) -> None:
    """Shape, dtype and device checks of the two views and their masks (metadata only)."""
    check_float("clean", clean)
    if clean.dim() != 3:
        raise ValueError(
            f"clean must have shape (B, N, M) (3 dims), got {tuple(clean.shape)}; "
            "add a batch dimension with `.unsqueeze(0)` for a single conversation"
        )
    check_float("perturbed", perturbed)
    if perturbed.shape != clean.shape:
        raise ValueError(
            f"perturbed must have the shape of clean {tuple(clean.shape)}, got "
            f"{tuple(perturbed.shape)}; gather the perturbed view into the clean view's "
            "(emotion, cause) index space first"
        )
    if perturbed.device != clean.device:
        raise ValueError(f"perturbed is on {perturbed.device} but clean is on {clean.device}")
    check_mask("shared", shared, clean, "clean")
    if gold is not None:
        check_mask("gold", gold, clean, "clean")


def _check_threshold(threshold: float | Tensor, device: torch.device) -> None:
    """A probability in [0, 1], or a 0-dim float tensor (its value is not read: no sync)."""
    if isinstance(threshold, Tensor):
        if threshold.dim() != 0 or not threshold.is_floating_point():
            raise ValueError(
                f"threshold must be a number or a 0-dim float tensor, got a tensor of shape "
                f"{tuple(threshold.shape)} and dtype {threshold.dtype}"
            )
        if threshold.device.type != "cpu" and threshold.device != device:
            raise ValueError(f"threshold is on {threshold.device} but clean is on {device}")
        return
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a number, got {type(threshold).__name__}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")


def _logits(x: Tensor, shared: Tensor) -> Tensor:
    """Float64 logits with every position outside ``shared`` set to 0 (NaN never leaks)."""
    return torch.where(shared, x.detach(), 0).to(_ACC)


def decision_flips(
    clean: Tensor, perturbed: Tensor, shared: Tensor, threshold: float | Tensor = 0.5
) -> FlipRate:
    r"""Fraction of shared pairs whose decision ``sigmoid(s) > threshold`` differs between views.

    With :math:`d^v_{bij} = [\sigma(s^v_{bij}) > t]` and :math:`S` the shared pairs,

    .. math:: \mathrm{rate} = \frac{1}{|S|} \sum_{(b,i,j) \in S} [d^c_{bij} \ne d^p_{bij}]

    (0 when :math:`S` is empty). Symmetric in the two views, except that ``lost`` and
    ``gained`` swap.

    Args:
        clean, perturbed: ``(B, N, M)`` float pair logits in one index space.
        shared: ``(B, N, M)`` bool, pairs valid in both views.
        threshold: probability threshold, a number in [0, 1] or a 0-dim float tensor.

    Example:
        >>> clean = torch.tensor([[[2.0, -1.0, 0.3]]])
        >>> perturbed = torch.tensor([[[1.0, 0.5, float("nan")]]])
        >>> shared = torch.tensor([[[True, True, False]]])
        >>> f = decision_flips(clean, perturbed, shared)  # logit -1.0 -> 0.5 crosses p = 0.5
        >>> float(f.rate), int(f.flips), int(f.lost), int(f.gained), int(f.pairs)
        (0.5, 1, 0, 1, 2)
    """
    _check_views(clean, perturbed, shared, None)
    _check_threshold(threshold, clean.device)
    pred_c = shared & (torch.sigmoid(_logits(clean, shared)) > threshold)
    pred_p = shared & (torch.sigmoid(_logits(perturbed, shared)) > threshold)
    lost = (pred_c > pred_p).sum(dtype=_ACC)
    gained = (pred_p > pred_c).sum(dtype=_ACC)
    pairs = shared.sum(dtype=_ACC)
    flips = lost + gained
    return FlipRate(_div(flips, pairs), flips, lost, gained, pairs)


def confidence_change(
    clean: Tensor, perturbed: Tensor, gold: Tensor, shared: Tensor
) -> ConfidenceChange:
    r"""Mean absolute (and signed) confidence change, separately for gold and non-gold pairs.

    With :math:`\Delta_{bij} = \sigma(s^p_{bij}) - \sigma(s^c_{bij})`, :math:`G` the shared
    gold pairs and :math:`\bar G` the shared non-gold pairs,

    .. math:: \mathrm{gold} = \frac{1}{|G|} \sum_G |\Delta|, \quad
              \mathrm{gold\_shift} = \frac{1}{|G|} \sum_G \Delta

    and likewise over :math:`\bar G` (each 0 over an empty set). The absolute means are
    symmetric in the two views; the shifts change sign.

    Args:
        clean, perturbed: ``(B, N, M)`` float pair logits in one index space.
        gold: ``(B, N, M)`` bool gold pairs.
        shared: ``(B, N, M)`` bool, pairs valid in both views.

    Example:
        >>> clean = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
        >>> perturbed = torch.tensor([[[0.0, 0.0], [float("inf"), 1.0]]])
        >>> gold = torch.tensor([[[True, False], [False, False]]])
        >>> shared = torch.tensor([[[True, True], [False, True]]])
        >>> change = confidence_change(clean, perturbed, gold, shared)
        >>> round(float(change.gold_shift), 4), float(change.negative), int(change.negative_pairs)
        (-0.3808, 0.0, 2)
    """
    _check_views(clean, perturbed, shared, gold)
    delta = torch.sigmoid(_logits(perturbed, shared)) - torch.sigmoid(_logits(clean, shared))
    on_gold = gold & shared
    on_negative = shared > gold  # shared & ~gold in one op
    zero = torch.zeros_like(delta)
    gold_pairs = on_gold.sum(dtype=_ACC)
    negative_pairs = on_negative.sum(dtype=_ACC)
    gold_delta = torch.where(on_gold, delta, zero)
    negative_delta = torch.where(on_negative, delta, zero)
    return ConfidenceChange(
        _div(gold_delta.abs().sum(), gold_pairs),
        _div(negative_delta.abs().sum(), negative_pairs),
        _div(gold_delta.sum(), gold_pairs),
        _div(negative_delta.sum(), negative_pairs),
        gold_pairs,
        negative_pairs,
    )


def _top_set(x: Tensor, shared: Tensor) -> Tensor:
    """``(B, N, M)`` bool: the shared candidates that reach their row's maximum logit."""
    row_max = torch.where(shared, x, -torch.inf).amax(-1, keepdim=True)
    return shared & (x == row_max)


def _kendall_terms(x: Tensor, y: Tensor, shared: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row of ``(R, M)`` inputs: ``n_c - n_d``, and the untied pair counts of ``x`` and ``y``.

    Over ordered candidate pairs ``(j, k)`` of shared candidates, ``x_j > x_k`` selects every
    pair untied in ``x`` exactly once (in its own orientation): so ``n_0 - n_1`` is the number of
    such ordered pairs, and concordant / discordant pairs are those where ``y`` has the same /
    the opposite strict order. All counts are exact int64.
    """
    both = shared[:, :, None] & shared[:, None, :]
    x_above = (x[:, :, None] > x[:, None, :]) & both
    y_above = y[:, :, None] > y[:, None, :]
    y_below = y[:, :, None] < y[:, None, :]
    concordant = (x_above & y_above).sum((1, 2))
    discordant = (x_above & y_below).sum((1, 2))
    return concordant - discordant, x_above.sum((1, 2)), (y_above & both).sum((1, 2))


def rank_stability(clean: Tensor, perturbed: Tensor, shared: Tensor) -> RankStability:
    r"""Per-row top-1 agreement and Kendall tau-b between the views, averaged over rows.

    A row ``(b, i)`` counts when it has at least two shared candidates (with one, agreement is
    trivial; with none, undefined). Rankings are by logit.

    * **Top-1 agreement**: the row's *set* of arg-max candidates :math:`T^v = \{j :
      s^v_{ij} = \max_{k \in S_i} s^v_{ik}\}` is the same in both views. Without ties this is
      "the arg-max candidate is the same"; with ties it neither depends on the column order
      (unlike a first-index rule) nor calls a tie that the perturbation broke stable.
    * **Kendall tau-b** over the row's shared candidates, with ties:

      .. math:: \tau_b = \frac{n_c - n_d}{\sqrt{(n_0 - n_1)(n_0 - n_2)}}

      :math:`n_c` / :math:`n_d` concordant / discordant candidate pairs, :math:`n_0 = n(n-1)/2`,
      :math:`n_1` / :math:`n_2` pairs tied in the clean / perturbed view (scipy's
      ``kendalltau`` default). Undefined, excluded from the mean and counted in ``undefined``,
      when a view ties every shared candidate of the row. Kendall rather than Spearman: it is
      the normalised count of candidate orderings the perturbation flips, exactly what a
      stability diagnostic asks, is robust to single large displacements, and needs no rank
      transform (the average ranks Spearman needs would be one more pass over the same pairs).

    Both statistics are symmetric in the two views and invariant to permuting the candidate
    columns; identical views give agreement 1 and :math:`\tau_b = 1` wherever defined.

    Memory: tau-b compares all candidate pairs of a row, ``O(B N M^2)`` bool scratch (one byte
    per comparison, a few live tensors), fine for evaluation sizes (``N, M <= ~64``); rows are
    processed in chunks of at most ``2**24`` comparisons, so a large batch is bounded too.

    Args:
        clean, perturbed: ``(B, N, M)`` float pair logits in one index space.
        shared: ``(B, N, M)`` bool, pairs valid in both views.

    Example:
        >>> clean = torch.tensor([[[3.0, 2.0, 1.0], [1.0, 1.0, 0.0]]])
        >>> perturbed = torch.tensor([[[3.0, 1.0, 2.0], [1.0, 1.0, 1.0]]])
        >>> shared = torch.ones(1, 2, 3, dtype=torch.bool)
        >>> r = rank_stability(clean, perturbed, shared)  # row 1 is all tied when perturbed
        >>> float(r.top1), round(float(r.tau), 4), int(r.rows), int(r.undefined)
        (0.5, 0.3333, 2, 1)
    """
    _check_views(clean, perturbed, shared, None)
    b, n, m = clean.shape
    zero = torch.zeros((), dtype=_ACC, device=clean.device)
    if m == 0:  # no candidate at all (a shape fact): no row counts
        return RankStability(zero, zero, zero, zero, zero)
    x, y = _logits(clean, shared), _logits(perturbed, shared)
    counted = shared.sum(-1) >= 2  # (B, N)
    differs = (_top_set(x, shared) ^ _top_set(y, shared)).any(-1)
    rows = counted.sum(dtype=_ACC)
    top1 = _div((counted & ~differs).sum(dtype=_ACC), rows)

    flat_x, flat_y, flat_s = x.reshape(-1, m), y.reshape(-1, m), shared.reshape(-1, m)
    step = max(1, _PAIRWISE_BUDGET // (m * m))
    # Chunks of rows bound the (rows, M, M) scratch; at evaluation sizes this is one chunk.
    terms = [
        _kendall_terms(flat_x[k : k + step], flat_y[k : k + step], flat_s[k : k + step])
        for k in range(0, max(b * n, 1), step)
    ]
    score = torch.cat([t[0] for t in terms]).reshape(b, n).to(_ACC)
    untied_x = torch.cat([t[1] for t in terms]).reshape(b, n).to(_ACC)
    untied_y = torch.cat([t[2] for t in terms]).reshape(b, n).to(_ACC)
    defined = counted & (untied_x > 0) & (untied_y > 0)
    tau = score / (untied_x * untied_y).clamp_min(1).sqrt()
    tau_rows = defined.sum(dtype=_ACC)
    tau_mean = _div(torch.where(defined, tau, 0).sum(), tau_rows)
    return RankStability(top1, tau_mean, rows, tau_rows, rows - tau_rows)


def gap_change(
    clean: Tensor, perturbed: Tensor, gold: Tensor, shared: Tensor, space: str = "prob"
) -> GapChange:
    r"""Change of every gold pair's gap to the hardest shared negative of its row.

    In each view :math:`v`, the hardest negative :math:`h^v_{bi}` of row :math:`(b, i)` is the
    shared non-gold candidate with the largest logit, first index among ties (the rule of
    :func:`~torch_pairconf.mining.mine_hard_negatives`; each view picks its own), and the gap of
    a shared gold pair is :math:`g^v_{bij} = c(s^v_{bij}) - c(s^v_{b i h^v_{bi}})` with
    :math:`c = \sigma` (``space="prob"``, the default) or the identity (``"logit"``), as in
    :func:`~torch_pairconf.diagnostics.confidence_gap`. Over the shared gold pairs whose row has
    a shared negative (the same pairs in both views, since ``shared`` is common),

    .. math:: \Delta_{bij} = g^p_{bij} - g^c_{bij}, \quad
              \mathrm{mean} = \overline{\Delta}, \quad \mathrm{mean\_abs} = \overline{|\Delta|}

    (0 over an empty set). Swapping the views negates ``changes`` and ``mean``.

    Args:
        clean, perturbed: ``(B, N, M)`` float pair logits in one index space.
        gold: ``(B, N, M)`` bool gold pairs.
        shared: ``(B, N, M)`` bool, pairs valid in both views.
        space: ``"prob"`` or ``"logit"``, the space the gaps are measured in.

    Example:
        >>> clean = torch.tensor([[[2.0, 0.0, -1.0]]])
        >>> perturbed = torch.tensor([[[2.0, -3.0, 1.0]]])  # the hardest negative moves
        >>> gold = torch.tensor([[[True, False, False]]])
        >>> shared = torch.ones(1, 1, 3, dtype=torch.bool)
        >>> g = gap_change(clean, perturbed, gold, shared, space="logit")
        >>> float(g.clean), float(g.perturbed), float(g.mean), int(g.pairs)
        (2.0, 1.0, -1.0, 1)
    """
    _check_views(clean, perturbed, shared, gold)
    check_choice("space", space, SPACES)
    gap_clean = confidence_gap(clean, gold, shared, space=space)
    gap_perturbed = confidence_gap(perturbed, gold, shared, space=space)
    mask = gap_clean.mask  # gold & shared & row has a shared negative: the same in both views
    changes = gap_perturbed.gaps - gap_clean.gaps  # both are 0 outside mask
    pairs = mask.sum(dtype=_ACC)
    return GapChange(
        changes,
        mask,
        _div(changes.sum(), pairs),
        _div(changes.abs().sum(), pairs),
        gap_clean.mean,
        gap_perturbed.mean,
        pairs,
    )


def pair_stability(
    clean: Tensor,
    perturbed: Tensor,
    gold: Tensor,
    shared: Tensor,
    threshold: float | Tensor = 0.5,
) -> Stability:
    """All stability diagnostics at once: decision flips at ``threshold``, confidence change,
    rank stability and the probability-space gap change (see each function for the maths).

    Args:
        clean, perturbed: ``(B, N, M)`` float pair logits in one index space.
        gold: ``(B, N, M)`` bool gold pairs.
        shared: ``(B, N, M)`` bool, pairs valid in both views.
        threshold: probability threshold of the decisions.

    Example:
        >>> clean = torch.tensor([[[2.0, 0.5, -1.0]]])
        >>> gold = torch.tensor([[[True, False, False]]])
        >>> shared = torch.ones(1, 1, 3, dtype=torch.bool)
        >>> s = pair_stability(clean, clean, gold, shared)  # identical views
        >>> float(s.flips.rate), float(s.confidence.gold), float(s.ranking.tau), float(s.gap.mean_abs)
        (0.0, 0.0, 1.0, 0.0)
    """
    _check_views(clean, perturbed, shared, gold)
    _check_threshold(threshold, clean.device)
    return Stability(
        decision_flips(clean, perturbed, shared, threshold),
        confidence_change(clean, perturbed, gold, shared),
        rank_stability(clean, perturbed, shared),
        gap_change(clean, perturbed, gold, shared),
    )
