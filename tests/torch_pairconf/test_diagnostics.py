"""Tests for ``torch_pairconf.diagnostics`` against explicit pure-Python references.

Every reference below loops over plain Python lists. Confidences are taken from
``torch.sigmoid`` in float64 (one elementwise op) so that the reference and the library see
bit-identical probabilities; tie groups, thresholds and bins are then decided in plain Python.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.testing import assert_close

from tests.conftest import PairBatch, pair_batches, ulp_batches
from torch_pairconf import (
    best_threshold,
    confidence_gap,
    expected_calibration_error,
    margin_violations,
    pair_auprc,
    pair_prf,
    reliability_diagram,
    row_ranking,
)

F64 = torch.float64
EXACT = {"rtol": 0.0, "atol": 0.0}
TOL = {"rtol": 0.0, "atol": 1e-9}
GARBAGE = [float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 0.0, 1e4, -7.5, 88.0]


# --------------------------------------------------------------------------------------------
# Pure-Python references
# --------------------------------------------------------------------------------------------


def flat(batch: PairBatch) -> tuple[list[float], list[float], list[bool], list[bool]]:
    """``(logits, probabilities, gold, valid)`` as flat Python lists (row-major)."""
    s = batch.scores.reshape(-1).tolist()
    p = torch.sigmoid(batch.scores.to(F64)).reshape(-1).tolist()
    return s, p, batch.gold.reshape(-1).tolist(), batch.valid.reshape(-1).tolist()


def sig(x: float) -> float:
    """Overflow-free logistic function (used only for hand-computed expectations)."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def div(a: float, b: float) -> float:
    return a / b if b else 0.0


def ref_prf(p: list[float], g: list[bool], v: list[bool], thr: float) -> tuple[float, ...]:
    tp = fp = fn = 0
    for pi, gi, vi in zip(p, g, v, strict=True):
        predicted = vi and pi > thr
        if predicted and gi:
            tp += 1
        elif predicted:
            fp += 1
        elif gi:  # includes gold outside valid: a miss
            fn += 1
    return div(tp, tp + fp), div(tp, tp + fn), div(2 * tp, 2 * tp + fp + fn), tp, fp, fn


def ref_auprc(s: list[float], g: list[bool], v: list[bool]) -> float:
    """scikit-learn average precision: one step per distinct (valid) score."""
    n_gold = sum(g)  # gold outside valid included
    entries = [(si, gi) for si, gi, vi in zip(s, g, v, strict=True) if vi]
    if n_gold == 0:
        return 0.0
    ap, prev_recall = 0.0, 0.0
    for t in sorted({si for si, _ in entries}, reverse=True):
        tp = sum(1 for si, gi in entries if si >= t and gi)
        n = sum(1 for si, _ in entries if si >= t)
        recall = tp / n_gold
        ap += (recall - prev_recall) * (tp / n)
        prev_recall = recall
    return ap


def ref_best_threshold(
    p: list[float], g: list[bool], v: list[bool]
) -> tuple[float, float, float | None] | None:
    """``(best_cut, f1, next_lower_probability)`` over cuts ``p >= cut``; None without valid gold."""
    n_gold = sum(g)
    valid_p = [pi for pi, vi in zip(p, v, strict=True) if vi]
    if not any(gi and vi for gi, vi in zip(g, v, strict=True)):
        return None
    best_f1, best_cut = -1.0, None
    for cut in sorted(set(valid_p), reverse=True):  # descending: ties keep the higher cut
        n_pred = sum(1 for pi in valid_p if pi >= cut)
        tp = sum(1 for pi, gi, vi in zip(p, g, v, strict=True) if vi and gi and pi >= cut)
        f1 = 2 * tp / (n_pred + n_gold)
        if f1 > best_f1:
            best_f1, best_cut = f1, cut
    assert best_cut is not None
    lower = [pi for pi in valid_p if pi < best_cut]
    return best_cut, best_f1, (max(lower) if lower else None)


def ref_gaps(batch: PairBatch, space: str) -> tuple[dict[tuple[int, int, int], float], float]:
    """Gap of every valid gold pair to the hardest valid negative of its row, and their mean."""
    s, gold, valid = batch.scores.tolist(), batch.gold.tolist(), batch.valid.tolist()
    prob = torch.sigmoid(batch.scores.to(F64)).tolist()
    conf = prob if space == "prob" else s
    gaps = {}
    for b, rows in enumerate(s):
        for i, row in enumerate(rows):
            negs = [j for j in range(len(row)) if valid[b][i][j] and not gold[b][i][j]]
            if not negs:
                continue
            hardest = max(negs, key=lambda j: row[j])  # by logit, as the miner selects
            for j in range(len(row)):
                if valid[b][i][j] and gold[b][i][j]:
                    gaps[(b, i, j)] = conf[b][i][j] - conf[b][i][hardest]
    return gaps, div(sum(gaps.values()), len(gaps))


def ref_violations(batch: PairBatch, margin: float, space: str) -> tuple[float, float, float]:
    gaps, _ = ref_gaps(batch, space)
    short = [margin - gp for gp in gaps.values() if gp < margin]
    return div(len(short), len(gaps)), div(sum(short), len(short)), float(len(short))


def ref_bins(p: list[float], v: list[bool], n_bins: int, binning: str) -> dict[int, int]:
    """Flat position -> bin, for the valid positions only."""
    pos = [k for k, vi in enumerate(v) if vi]
    if binning == "width":
        return {k: min(int(p[k] * n_bins), n_bins - 1) for k in pos}
    ranked = sorted(pos, key=lambda k: p[k])  # Python's sort is stable: ties keep flat order
    return {k: rank * n_bins // len(pos) for rank, k in enumerate(ranked)}


def ref_reliability(
    p: list[float], g: list[bool], v: list[bool], n_bins: int, binning: str
) -> tuple[list[float], list[float], list[float]]:
    bins = ref_bins(p, v, n_bins, binning)
    conf, acc, count = [0.0] * n_bins, [0.0] * n_bins, [0.0] * n_bins
    for k, b in bins.items():
        count[b] += 1
        conf[b] += p[k]
        acc[b] += 1.0 if g[k] else 0.0  # label = gold & valid (k is valid)
    return (
        [div(c, n) for c, n in zip(conf, count, strict=True)],
        [div(a, n) for a, n in zip(acc, count, strict=True)],
        count,
    )


def ref_ece(p: list[float], g: list[bool], v: list[bool], n_bins: int, binning: str) -> float:
    conf, acc, count = ref_reliability(p, g, v, n_bins, binning)
    total = sum(count)
    return div(sum(n * abs(a - c) for c, a, n in zip(conf, acc, count, strict=True)), total)


def ref_row_ranking(batch: PairBatch) -> tuple[float, float, float]:
    s, gold, valid = batch.scores.tolist(), batch.gold.tolist(), batch.valid.tolist()
    rows = top1 = rr = 0.0
    for b, conv in enumerate(s):
        for i, row in enumerate(conv):
            if not any(gold[b][i]):
                continue
            rows += 1
            reachable = [x for j, x in enumerate(row) if valid[b][i][j] and gold[b][i][j]]
            if not reachable:  # every gold pair of the row is outside valid
                continue
            best = max(reachable)
            above = sum(
                1 for j, x in enumerate(row) if valid[b][i][j] and not gold[b][i][j] and x >= best
            )
            top1 += above == 0
            rr += 1.0 / (1 + above)
    return div(top1, rows), div(rr, rows), rows


def scalar(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


def all_metrics(scores: torch.Tensor, gold: torch.Tensor, valid: torch.Tensor) -> dict:
    """Every diagnostic (both spaces, both binnings) on one input; row metrics need 3 dims."""
    out = {
        "prf": pair_prf(scores, gold, valid),
        "prf_thr": pair_prf(scores, gold, valid, threshold=0.3),
        "auprc": pair_auprc(scores, gold, valid),
        "best": best_threshold(scores, gold, valid),
        "ece_w": expected_calibration_error(scores, gold, valid, n_bins=7),
        "ece_m": expected_calibration_error(scores, gold, valid, n_bins=4, binning="mass"),
        "rel_w": reliability_diagram(scores, gold, valid, n_bins=5),
        "rel_m": reliability_diagram(scores, gold, valid, n_bins=3, binning="mass"),
    }
    if scores.dim() == 3:
        out |= {
            "gap_p": confidence_gap(scores, gold, valid),
            "gap_l": confidence_gap(scores, gold, valid, space="logit"),
            "viol_p": margin_violations(scores, gold, valid, margin=0.1),
            "viol_l": margin_violations(scores, gold, valid, margin=1.5, space="logit"),
            "rank": row_ranking(scores, gold, valid),
        }
    return out


def regarbage(batch: PairBatch, seed: int) -> torch.Tensor:
    """The same scores with every invalid position replaced by other garbage."""
    g = torch.Generator().manual_seed(seed)
    bad = torch.tensor(GARBAGE, dtype=F64)
    pick = torch.randint(0, len(GARBAGE), batch.scores.shape, generator=g)
    return torch.where(batch.valid, batch.scores, bad[pick])


# --------------------------------------------------------------------------------------------
# Reference comparisons on generated inputs
# --------------------------------------------------------------------------------------------


@given(pair_batches(), st.data())
def test_pair_prf_matches_reference(batch: PairBatch, data: st.DataObject) -> None:
    _, p, g, v = flat(batch)
    valid_p = [pi for pi, vi in zip(p, v, strict=True) if vi]
    # Random thresholds, 0.5, and thresholds equal to a confidence (prediction is strict ">").
    choices = st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0.0, 1.0)
    if valid_p:
        choices = choices | st.sampled_from(valid_p)
    thr = data.draw(choices)
    got = pair_prf(batch.scores, batch.gold, batch.valid, threshold=thr)
    assert_close(tuple(got), tuple(scalar(x) for x in ref_prf(p, g, v, thr)), **TOL)
    as_tensor = pair_prf(batch.scores, batch.gold, batch.valid, threshold=scalar(thr))
    assert_close(tuple(as_tensor), tuple(got), **EXACT)
    assert got.tp + got.fn == batch.gold.sum()  # every gold pair is a hit or a miss
    for x in got[:3]:
        assert 0.0 <= float(x) <= 1.0


@given(pair_batches())
def test_pair_auprc_matches_reference(batch: PairBatch) -> None:
    s, _, g, v = flat(batch)
    ap = pair_auprc(batch.scores, batch.gold, batch.valid)
    assert ap.dtype == F64 and ap.dim() == 0
    assert_close(ap, scalar(ref_auprc(s, g, v)), **TOL)
    assert 0.0 <= float(ap) <= 1.0


def check_best_threshold(batch: PairBatch) -> None:
    _, p, g, v = flat(batch)
    got = best_threshold(batch.scores, batch.gold, batch.valid)
    ref = ref_best_threshold(p, g, v)
    if ref is None:
        assert_close(tuple(got), (scalar(0.5), scalar(0.0)), **EXACT)
        return
    cut, f1, lower = ref
    assert_close(got.f1, scalar(f1), **TOL)
    thr = float(got.threshold)
    # The threshold accepts the best cut and rejects the next lower confidence ...
    assert thr < cut
    if lower is not None:
        assert thr >= lower
        if math.nextafter(lower, math.inf) < cut:  # ... strictly between, when a float fits
            assert thr > lower
    elif cut > 0:
        assert thr >= 0.0
    # ... so pair_prf at the returned threshold predicts exactly {valid, p >= cut}.
    prf = pair_prf(batch.scores, batch.gold, batch.valid, threshold=got.threshold)
    assert_close(prf.f1, got.f1, **EXACT)
    assert float(prf.tp + prf.fp) == sum(1 for pi, vi in zip(p, v, strict=True) if vi and pi >= cut)


@given(pair_batches())
def test_best_threshold_matches_reference(batch: PairBatch) -> None:
    check_best_threshold(batch)


@given(ulp_batches())
def test_best_threshold_with_adjacent_confidences(batch: PairBatch) -> None:
    check_best_threshold(batch)


@given(pair_batches(), st.sampled_from(["prob", "logit"]))
def test_confidence_gap_matches_reference(batch: PairBatch, space: str) -> None:
    got = confidence_gap(batch.scores, batch.gold, batch.valid, space=space)
    gaps, mean = ref_gaps(batch, space)
    want_mask = torch.zeros_like(batch.gold)
    want_gaps = torch.zeros_like(batch.scores)
    for (b, i, j), gp in gaps.items():
        want_mask[b, i, j] = True
        want_gaps[b, i, j] = gp
    assert torch.equal(got.mask, want_mask)
    assert_close(got.gaps, want_gaps, **TOL)
    assert_close(got.mean, scalar(mean), **TOL)


@given(
    pair_batches(),
    st.sampled_from(["prob", "logit"]),
    st.sampled_from([0.0, 0.2, 0.5]) | st.floats(0.0, 0.99),
)
def test_margin_violations_match_reference(batch: PairBatch, space: str, margin: float) -> None:
    margin = margin if space == "prob" else margin * 10
    got = margin_violations(batch.scores, batch.gold, batch.valid, margin=margin, space=space)
    assert_close(tuple(got), tuple(scalar(x) for x in ref_violations(batch, margin, space)), **TOL)
    assert 0.0 <= float(got.rate) <= 1.0


@given(pair_batches(), st.integers(1, 12), st.sampled_from(["width", "mass"]))
def test_ece_and_reliability_match_reference(batch: PairBatch, n_bins: int, binning: str) -> None:
    _, p, g, v = flat(batch)
    rel = reliability_diagram(batch.scores, batch.gold, batch.valid, n_bins=n_bins, binning=binning)
    conf, acc, count = ref_reliability(p, g, v, n_bins, binning)
    assert_close(rel.counts, torch.tensor(count, dtype=F64), **EXACT)
    assert_close(rel.confidence, torch.tensor(conf, dtype=F64), **TOL)
    assert_close(rel.accuracy, torch.tensor(acc, dtype=F64), **TOL)
    ece = expected_calibration_error(batch.scores, batch.gold, batch.valid, n_bins=n_bins, binning=binning)
    assert_close(ece, scalar(ref_ece(p, g, v, n_bins, binning)), **TOL)
    assert 0.0 <= float(ece) <= 1.0
    if binning == "mass" and sum(v):  # bins of equal mass: sizes differ by at most one
        sizes = [c for c in count if c]
        assert max(sizes) - min(sizes) <= 1


@given(pair_batches())
def test_row_ranking_matches_reference(batch: PairBatch) -> None:
    got = row_ranking(batch.scores, batch.gold, batch.valid)
    assert_close(tuple(got), tuple(scalar(x) for x in ref_row_ranking(batch)), **TOL)
    assert 0.0 <= float(got.top1) <= float(got.mrr) <= 1.0


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@given(pair_batches(), st.integers(0, 2**31 - 1))
def test_values_outside_valid_never_matter(batch: PairBatch, seed: int) -> None:
    before = all_metrics(batch.scores, batch.gold, batch.valid)
    after = all_metrics(regarbage(batch, seed), batch.gold, batch.valid)
    for name, value in before.items():
        assert_close(after[name], value, **EXACT, msg=name)


@given(pair_batches(), st.integers(0, 2**31 - 1))
def test_row_metrics_invariant_to_column_permutation(batch: PairBatch, seed: int) -> None:
    perm = torch.randperm(batch.scores.shape[-1], generator=torch.Generator().manual_seed(seed))
    s, g, v = batch.scores[..., perm], batch.gold[..., perm], batch.valid[..., perm]
    assert_close(row_ranking(s, g, v), row_ranking(batch.scores, batch.gold, batch.valid), **EXACT)
    for space in ("prob", "logit"):
        ref = confidence_gap(batch.scores, batch.gold, batch.valid, space=space)
        got = confidence_gap(s, g, v, space=space)
        assert torch.equal(got.mask, ref.mask[..., perm])
        # Logit gaps are differences, exact under any order. Probability gaps pass through
        # sigmoid, whose CPU kernel rounds a vectorised element and a tail element differently
        # (1 ulp): moving a column can move it between the two, so allow a few ulps there.
        ulps = 0 if space == "logit" else 4 * torch.finfo(got.gaps.dtype).eps
        assert_close(got.gaps, ref.gaps[..., perm], rtol=0.0, atol=ulps)
        assert_close(got.mean, ref.mean, **TOL)
        assert_close(
            margin_violations(s, g, v, margin=0.3, space=space),
            margin_violations(batch.scores, batch.gold, batch.valid, margin=0.3, space=space),
            **TOL,
        )


@given(pair_batches())
def test_flat_metrics_accept_any_shape(batch: PairBatch) -> None:
    """The set metrics only see the multiset of entries: flattening changes nothing."""
    three = all_metrics(batch.scores, batch.gold, batch.valid)
    one = all_metrics(batch.scores.reshape(-1), batch.gold.reshape(-1), batch.valid.reshape(-1))
    for name, value in one.items():
        assert_close(value, three[name], **EXACT, msg=name)


@given(pair_batches(), st.integers(0, 2**31 - 1))
def test_auprc_is_one_for_a_perfect_ranking(batch: PairBatch, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    gold = batch.gold & batch.valid  # every gold pair valid
    noise = torch.rand(batch.scores.shape, generator=g, dtype=F64)
    scores = torch.where(gold, 1.0 + noise, -1.0 - noise)  # gold strictly above every negative
    scores = torch.where(batch.valid, scores, batch.scores)
    expected = 1.0 if gold.any() else 0.0
    assert_close(pair_auprc(scores, gold, batch.valid), scalar(expected), **TOL)


@given(pair_batches(), st.sampled_from([-3.0, 0.0, 0.25, 40.0]))
def test_auprc_of_constant_scores_is_the_gold_rate(batch: PairBatch, c: float) -> None:
    scores = torch.where(batch.valid, torch.full_like(batch.scores, c), batch.scores)
    n_valid = int(batch.valid.sum())
    hits, n_gold = int((batch.gold & batch.valid).sum()), int(batch.gold.sum())
    # One tie group: recall hits/n_gold reached at precision hits/n_valid.
    expected = div(hits, n_gold) * div(hits, n_valid)
    assert_close(pair_auprc(scores, batch.gold, batch.valid), scalar(expected), **TOL)
    # With every gold pair valid this is exactly the gold rate of the candidates.
    all_valid_gold = batch.gold & batch.valid
    assert_close(pair_auprc(scores, all_valid_gold, batch.valid), scalar(div(hits, n_valid)), **TOL)


@given(pair_batches() | ulp_batches())
def test_best_threshold_beats_the_default_threshold(batch: PairBatch) -> None:
    best = best_threshold(batch.scores, batch.gold, batch.valid)
    default = pair_prf(batch.scores, batch.gold, batch.valid)
    assert float(best.f1) >= float(default.f1)
    assert 0.0 <= float(best.f1) <= 1.0


@given(pair_batches(), st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_low_precision_is_the_same_algorithm(batch: PairBatch, dtype: torch.dtype) -> None:
    """Low-precision input gives exactly the result of its float64 upcast (all maths in f64)."""
    # Keep valid logits finite after the cast (float16 overflows above 65504).
    scores = torch.where(batch.valid, batch.scores.clamp(-6e4, 6e4), batch.scores).to(dtype)
    low = all_metrics(scores, batch.gold, batch.valid)
    high = all_metrics(scores.to(F64), batch.gold, batch.valid)
    for name, value in low.items():
        assert_close(value, high[name], **EXACT, msg=name)


@given(pair_batches(), st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_low_precision_is_close_to_float64(batch: PairBatch, dtype: torch.dtype) -> None:
    # Integer logits in [-200, 200] are exact in every float dtype: identical results.
    scores = torch.where(batch.valid, batch.scores.clamp(-200, 200).round(), batch.scores)
    ref = all_metrics(scores, batch.gold, batch.valid)
    low = all_metrics(scores.to(dtype), batch.gold, batch.valid)
    for name, value in low.items():
        assert_close(value, ref[name], **EXACT, msg=name)
    # Continuous metrics stay close on arbitrary logits.
    atol = {torch.float32: 1e-6, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    finite = torch.where(batch.valid, batch.scores.clamp(-6e4, 6e4), batch.scores)
    got = confidence_gap(finite.to(dtype), batch.gold, batch.valid)
    want = confidence_gap(finite, batch.gold, batch.valid)
    assert_close(got.gaps, want.gaps, rtol=0.0, atol=atol)
    assert_close(got.mean, want.mean, rtol=0.0, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_known_scores(dtype: torch.dtype) -> None:
    scores = torch.tensor([[[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]]], dtype=F64)
    gold = torch.tensor([[[True, False, True], [False, True, False]]])
    valid = torch.ones_like(gold)
    ref = all_metrics(scores, gold, valid)
    low = all_metrics(scores.to(dtype), gold, valid)
    for name, value in low.items():
        assert_close(value, ref[name], **EXACT, msg=name)


@pytest.mark.parametrize("shape", [(0, 0, 0), (2, 0, 0), (0, 3, 3), (2, 0, 3), (2, 3, 0)])
def test_empty_inputs_are_finite(shape: tuple[int, int, int]) -> None:
    scores = torch.zeros(shape, dtype=F64)
    gold = torch.zeros(shape, dtype=torch.bool)
    for valid in (torch.ones(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)):
        for name, value in all_metrics(scores, gold, valid).items():
            for t in value if isinstance(value, tuple) else (value,):
                assert torch.isfinite(t.to(F64)).all(), name
        gap = confidence_gap(scores, gold, valid)
        assert gap.gaps.shape == shape and gap.mask.shape == shape
        assert float(row_ranking(scores, gold, valid).rows) == 0.0
        assert_close(tuple(best_threshold(scores, gold, valid)), (scalar(0.5), scalar(0.0)))


@pytest.mark.parametrize(
    ("valid_pattern", "gold_pattern"),
    [("none", "some"), ("all", "none"), ("some", "outside")],
)
def test_degenerate_masks(valid_pattern: str, gold_pattern: str) -> None:
    scores = torch.tensor([[[1.0, -2.0, float("nan")], [0.5, float("inf"), 3.0]]], dtype=F64)
    valid = {
        "none": torch.zeros(1, 2, 3, dtype=torch.bool),
        "all": torch.tensor([[[True, True, False], [True, False, True]]]),
        "some": torch.tensor([[[True, True, False], [False, False, False]]]),
    }[valid_pattern]
    gold = {
        "some": torch.tensor([[[True, False, False], [False, False, True]]]),
        "none": torch.zeros(1, 2, 3, dtype=torch.bool),
        "outside": torch.tensor([[[False, False, True], [True, True, False]]]),
    }[gold_pattern]
    out = all_metrics(scores, gold, valid)
    for name, value in out.items():
        for t in value if isinstance(value, tuple) else (value,):
            assert torch.isfinite(t).all(), name
    # No valid gold pair: nothing can be found, so every recall-based metric is 0.
    assert float(out["prf"].recall) == 0.0 and float(out["prf"].f1) == 0.0
    assert float(out["auprc"]) == 0.0
    assert_close(tuple(out["best"]), (scalar(0.5), scalar(0.0)))
    assert float(out["rank"].top1) == 0.0 and float(out["rank"].mrr) == 0.0
    assert float(out["prf"].fn) == float(gold.sum())


def test_results_are_detached_float64_and_inputs_untouched() -> None:
    scores = torch.tensor([[[2.0, -1.0], [0.5, 0.0]]], requires_grad=True)
    gold = torch.tensor([[[True, False], [False, True]]])
    valid = torch.ones_like(gold)
    before = scores.detach().clone()
    for name, value in all_metrics(scores, gold, valid).items():
        for t in value if isinstance(value, tuple) else (value,):
            assert not t.requires_grad, name
            if t.is_floating_point():
                assert t.dtype == F64, name
    assert torch.equal(scores.detach(), before)


# --------------------------------------------------------------------------------------------
# Known values, computed by hand
# --------------------------------------------------------------------------------------------

# Row 0: logits 2.0 (gold), -1.0, 0.5 (gold); row 1: 0.0, 3.0, and a gold pair outside valid.
KNOWN_S = torch.tensor([[[2.0, -1.0, 0.5], [0.0, 3.0, float("nan")]]], dtype=F64)
KNOWN_G = torch.tensor([[[True, False, True], [False, False, True]]])
KNOWN_V = torch.tensor([[[True, True, True], [True, True, False]]])


def test_known_pair_prf() -> None:
    # Predicted (p > 0.5 <=> logit > 0): 2.0 (hit), 0.5 (hit), 3.0 (false alarm); logit 0.0 has
    # p == 0.5 exactly and is not predicted. The invalid gold pair is a miss.
    got = pair_prf(KNOWN_S, KNOWN_G, KNOWN_V)
    assert_close(tuple(got), tuple(map(scalar, (2 / 3, 2 / 3, 2 / 3, 2, 1, 1))))
    # At threshold 0.7 only 2.0 (p = 0.881) and 3.0 (p = 0.953) are predicted.
    got = pair_prf(KNOWN_S, KNOWN_G, KNOWN_V, threshold=0.7)
    assert_close(tuple(got), tuple(map(scalar, (1 / 2, 1 / 3, 2 / 5, 1, 1, 2))))


def test_known_pair_auprc() -> None:
    # Ranked: 3.0 (neg), 2.0 (gold), 0.5 (gold), 0.0, -1.0; 3 gold pairs in total.
    # AP = (1/3)(1/2) + (1/3)(2/3) = 7/18; the invalid gold pair caps recall at 2/3.
    assert_close(pair_auprc(KNOWN_S, KNOWN_G, KNOWN_V), scalar(7 / 18))
    # Ties form one step: [1 (gold), 1 (neg), 0 (gold)] -> (1/2)(1/2) + (1/2)(2/3) = 7/12.
    s = torch.tensor([1.0, 1.0, 0.0], dtype=F64)
    g = torch.tensor([True, False, True])
    assert_close(pair_auprc(s, g, torch.ones_like(g)), scalar(7 / 12))


def test_known_best_threshold() -> None:
    # F1 = 2 tp / (n_pred + 3) at the cuts sig(3), sig(2), sig(.5), sig(0), sig(-1):
    # 0, 2/5, 2/3, 4/7, 1/2 -> cut sig(0.5), threshold halfway down to sig(0) = 0.5.
    got = best_threshold(KNOWN_S, KNOWN_G, KNOWN_V)
    assert_close(got.f1, scalar(2 / 3))
    assert_close(got.threshold, scalar((sig(0.5) + 0.5) / 2))
    # Tied F1: 2/3 at the cut sig(3) (1 of 1 right) and at sig(0) (2 of 4 right, 2 gold);
    # the higher threshold wins.
    s = torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=F64)
    g = torch.tensor([True, False, False, True])
    got = best_threshold(s, g, torch.ones_like(g))
    assert_close(got.f1, scalar(2 / 3))
    assert_close(got.threshold, scalar((sig(3.0) + sig(2.0)) / 2))
    # The lowest cut halves down to 0; a gold pair outside valid still counts as a miss.
    s = torch.tensor([1.0, 0.0], dtype=F64)
    got = best_threshold(s, torch.tensor([True, True]), torch.tensor([True, False]))
    assert_close(got.f1, scalar(2 / 3))
    assert_close(got.threshold, scalar(sig(1.0) / 2))


def test_best_threshold_adjacent_confidences() -> None:
    """Regression: two adjacent float64 confidences; their midpoint rounds onto the upper one."""
    hi, lo = 1.2100405428878984, 1.210040542887898
    s = torch.tensor([hi, lo], dtype=F64)
    p = torch.sigmoid(s)
    assert float(p[0]) == math.nextafter(float(p[1]), 1.0)  # really adjacent
    g = torch.tensor([True, False])
    v = torch.ones_like(g)
    got = best_threshold(s, g, v)
    assert_close(got.f1, scalar(1.0))
    assert float(p[1]) <= float(got.threshold) < float(p[0])
    assert_close(pair_prf(s, g, v, threshold=got.threshold).f1, scalar(1.0))


def test_best_threshold_zero_confidence() -> None:
    """Regression: confidences that underflow to exactly 0 still need a threshold below them."""
    s = torch.tensor([-800.0, -900.0, -750.0], dtype=F64)
    assert torch.sigmoid(s).eq(0).all()
    g = torch.tensor([True, False, False])
    v = torch.ones_like(g)
    got = best_threshold(s, g, v)
    assert_close(got.f1, scalar(0.5))  # everything predicted: 2 * 1 / (3 + 1)
    assert_close(pair_prf(s, g, v, threshold=got.threshold).f1, got.f1)


def test_best_threshold_agrees_with_pair_prf_across_layouts() -> None:
    """Regression: torch's float64 sigmoid is not position-invariant on CPU (the vectorised
    body and the scalar tail of a kernel can differ by one ulp for the same logit). Confidences
    must therefore be computed in the caller's layout, exactly as pair_prf computes them, and
    not on a sorted copy. Searches near-tied pairs so that it bites on any vector width."""
    g = torch.Generator().manual_seed(0)
    down = torch.tensor(-math.inf, dtype=F64)
    gold = torch.zeros(17, dtype=torch.bool)
    gold[16] = True
    valid = torch.ones_like(gold)
    for _ in range(1000):
        x = torch.randn((), generator=g, dtype=F64) * 3
        y = x
        for _ in range(int(torch.randint(1, 6, (), generator=g))):
            y = torch.nextafter(y, down)
        s = torch.cat(
            [y.repeat(16), x.reshape(1)]
        )  # the gold pair is last, the rest 1-5 ulps lower
        got = best_threshold(s, gold, valid)
        assert_close(pair_prf(s, gold, valid, threshold=got.threshold).f1, got.f1, **EXACT)


def test_confidence_gap_of_tied_logits_is_exactly_zero() -> None:
    """Regression: a gold pair tied with its hardest negative has gap 0 exactly (not a one-ulp
    artefact of computing the two confidences in different layouts), so margin 0 is never
    violated by a tie."""
    g = torch.Generator().manual_seed(0)
    for b, n, m in [(1, 40, 2), (3, 30, 2), (2, 9, 5), (1, 1, 17)] * 20:
        x = torch.randn(b, n, 1, generator=g, dtype=F64) * 3
        s = torch.cat([x, x, torch.full((b, n, m - 2), -50.0, dtype=F64)], -1)
        gold = torch.zeros(b, n, m, dtype=torch.bool)
        gold[..., 0] = True
        valid = torch.ones_like(gold)
        for space in ("prob", "logit"):
            gap = confidence_gap(s, gold, valid, space=space)
            assert gap.mask[..., 0].all()
            assert (gap.gaps[gap.mask] == 0).all(), (b, n, m, space)
            assert float(margin_violations(s, gold, valid, margin=0.0, space=space).violations) == 0.0


def test_known_confidence_gap_and_violations() -> None:
    # Row 0: gold 2.0 and 0.5 against the only negative -1.0. Row 1 has no valid gold pair.
    gp = confidence_gap(KNOWN_S, KNOWN_G, KNOWN_V)
    want = [sig(2.0) - sig(-1.0), sig(0.5) - sig(-1.0)]  # 0.6119, 0.3535
    assert torch.equal(gp.mask, torch.tensor([[[True, False, True], [False, False, False]]]))
    assert_close(gp.gaps[0, 0], torch.tensor([want[0], 0.0, want[1]], dtype=F64))
    assert_close(gp.mean, scalar(sum(want) / 2))
    gl = confidence_gap(KNOWN_S, KNOWN_G, KNOWN_V, space="logit")
    assert_close(gl.gaps[0, 0], torch.tensor([3.0, 0.0, 1.5], dtype=F64))
    assert_close(gl.mean, scalar(2.25))

    v = margin_violations(KNOWN_S, KNOWN_G, KNOWN_V, margin=0.4)  # only 0.3535 < 0.4
    assert_close(tuple(v), (scalar(0.5), scalar(0.4 - want[1]), scalar(1.0)))
    v = margin_violations(KNOWN_S, KNOWN_G, KNOWN_V, margin=2.0, space="logit")
    assert_close(tuple(v), (scalar(0.5), scalar(0.5), scalar(1.0)))
    v = margin_violations(KNOWN_S, KNOWN_G, KNOWN_V, margin=0.0)
    assert_close(tuple(v), (scalar(0.0), scalar(0.0), scalar(0.0)))


def test_known_reliability_and_ece() -> None:
    # Valid confidences: sig(2)=.881 g, sig(-1)=.269, sig(.5)=.622 g, sig(0)=.5, sig(3)=.953.
    # Width, 2 bins: {.269} and {.881 g, .622 g, .5, .953} (0.5 lands in the upper bin).
    rel = reliability_diagram(KNOWN_S, KNOWN_G, KNOWN_V, n_bins=2)
    upper = (sig(2.0) + sig(0.5) + 0.5 + sig(3.0)) / 4
    assert_close(rel.counts, torch.tensor([1.0, 4.0], dtype=F64))
    assert_close(rel.confidence, torch.tensor([sig(-1.0), upper], dtype=F64))
    assert_close(rel.accuracy, torch.tensor([0.0, 0.5], dtype=F64))
    ece = expected_calibration_error(KNOWN_S, KNOWN_G, KNOWN_V, n_bins=2)
    assert_close(ece, scalar((1 * sig(-1.0) + 4 * abs(0.5 - upper)) / 5))
    # Mass, 5 bins: one entry per bin, so ECE = mean |y - c|.
    ece = expected_calibration_error(KNOWN_S, KNOWN_G, KNOWN_V, n_bins=5, binning="mass")
    want = (sig(-1.0) + 0.5 + (1 - sig(0.5)) + (1 - sig(2.0)) + sig(3.0)) / 5
    assert_close(ece, scalar(want))
    # Mass, 2 bins: ranks 0..4 -> bins 0,0,0,1,1 = {.269, .5, .622 g} and {.881 g, .953}.
    rel = reliability_diagram(KNOWN_S, KNOWN_G, KNOWN_V, n_bins=2, binning="mass")
    assert_close(rel.counts, torch.tensor([3.0, 2.0], dtype=F64))
    assert_close(rel.accuracy, torch.tensor([1 / 3, 1 / 2], dtype=F64))
    assert_close(
        rel.confidence,
        torch.tensor([(sig(-1.0) + 0.5 + sig(0.5)) / 3, (sig(2.0) + sig(3.0)) / 2], dtype=F64),
    )
    # Probability 1.0 goes to the last width bin, 0.0 to the first.
    s = torch.tensor([100.0, -100.0], dtype=F64)
    rel = reliability_diagram(s, torch.tensor([True, False]), torch.tensor([True, True]), n_bins=4)
    assert_close(rel.counts, torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=F64))
    assert_close(
        expected_calibration_error(s, torch.tensor([True, False]), torch.tensor([True, True])),
        scalar(0.0),
    )


def test_known_row_ranking() -> None:
    # Row 0: best gold 2.0 above the only negative -> rank 1. Row 1: gold outside valid -> 0.
    assert_close(
        tuple(row_ranking(KNOWN_S, KNOWN_G, KNOWN_V)), (scalar(0.5), scalar(0.5), scalar(2.0))
    )
    # Ties go against gold: gold 1.0 ties one negative and trails 3.0 -> rank 3.
    # Row 2 has no gold pair and is not counted.
    s = torch.tensor([[[1.0, 1.0, 3.0], [0.0, 5.0, -1.0], [9.0, 0.0, 0.0]]], dtype=F64)
    g = torch.tensor([[[True, False, False], [False, True, True], [False, False, False]]])
    v = torch.ones_like(g)
    assert_close(tuple(row_ranking(s, g, v)), (scalar(0.5), scalar((1 / 3 + 1) / 2), scalar(2.0)))


def test_auprc_ranks_by_logit_not_saturated_probability() -> None:
    """Documented choice: AP ranks by score, so logits 40 > 38 stay distinct even though both
    map to probability 1.0 in float64 (sklearn on probabilities would see one tie group)."""
    s = torch.tensor([40.0, 38.0], dtype=F64)
    assert torch.sigmoid(s).eq(1.0).all()
    g = torch.tensor([True, False])
    assert_close(pair_auprc(s, g, torch.ones_like(g)), scalar(1.0))
    # best_threshold works in probability space, where the two cannot be separated.
    assert_close(best_threshold(s, g, torch.ones_like(g)).f1, scalar(2 / 3))


# --------------------------------------------------------------------------------------------
# Argument errors
# --------------------------------------------------------------------------------------------

ANY_SHAPE = [pair_prf, pair_auprc, best_threshold, expected_calibration_error, reliability_diagram]
ROW = [confidence_gap, margin_violations, row_ranking]
ALL = ANY_SHAPE + ROW


def good(shape: tuple[int, ...] = (2, 3, 4)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.zeros(shape),
        torch.zeros(shape, dtype=torch.bool),
        torch.ones(shape, dtype=torch.bool),
    )


@pytest.mark.parametrize("fn", ALL, ids=lambda f: f.__name__)
def test_non_bool_masks_and_integer_scores(fn) -> None:
    s, g, v = good()
    with pytest.raises(TypeError, match=r"gold must be a torch\.bool tensor"):
        fn(s, g.to(torch.uint8), v)
    with pytest.raises(TypeError, match=r"valid must be a torch\.bool tensor"):
        fn(s, g, v.long())
    with pytest.raises(TypeError, match="scores must be a floating-point tensor"):
        fn(s.long(), g, v)
    with pytest.raises(TypeError, match=r"scores must be a torch\.Tensor"):
        fn([[[0.0]]], g, v)


@pytest.mark.parametrize("fn", ALL, ids=lambda f: f.__name__)
def test_mismatched_shapes(fn) -> None:
    s, g, v = good()
    with pytest.raises(ValueError, match=r"gold must have the shape of scores \(2, 3, 4\)"):
        fn(s, g[:, :2], v)
    with pytest.raises(ValueError, match=r"valid must have the shape of scores"):
        fn(s, g, v[0])
    with pytest.raises(ValueError, match=r"gold is on meta but scores is on cpu"):
        fn(s, g.to("meta"), v)


@pytest.mark.parametrize("fn", ALL, ids=lambda f: f.__name__)
def test_transposed_masks_get_a_hint(fn) -> None:
    s, g, v = good()
    with pytest.raises(
        ValueError, match=r"valid must have the shape.*transposed.*transpose\(-1, -2\)"
    ):
        fn(s, g, v.transpose(-1, -2))
    s, g, v = good((3, 4))  # 2-D: no orientation hint for the any-shape metrics
    if fn in ANY_SHAPE:
        with pytest.raises(ValueError, match=r"gold must have the shape") as info:
            fn(s, g.T, v)
        assert "transposed" not in str(info.value)


@pytest.mark.parametrize("fn", ROW, ids=lambda f: f.__name__)
def test_row_metrics_need_three_dims(fn) -> None:
    s, g, v = good((3, 4))
    with pytest.raises(ValueError, match=r"scores must have shape \(B, N, M\).*unsqueeze\(0\)"):
        fn(s, g, v)


@pytest.mark.parametrize("fn", [expected_calibration_error, reliability_diagram])
@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True, "10", None])
def test_bad_n_bins(fn, n_bins) -> None:
    with pytest.raises((ValueError, TypeError), match="n_bins"):
        fn(*good(), n_bins=n_bins)


@pytest.mark.parametrize("fn", [expected_calibration_error, reliability_diagram])
def test_bad_binning(fn) -> None:
    with pytest.raises(ValueError, match=r"binning must be one of \('width', 'mass'\)"):
        fn(*good(), binning="quantile")


@pytest.mark.parametrize("fn", [confidence_gap, margin_violations])
def test_bad_space(fn) -> None:
    with pytest.raises(
        ValueError, match=r"space must be one of \('prob', 'logit'\), got 'probability'"
    ):
        fn(*good(), space="probability")


@pytest.mark.parametrize(
    ("margin", "exc"),
    [
        (-0.1, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        ("0.2", TypeError),
    ],
)
def test_bad_margin(margin, exc) -> None:
    with pytest.raises(exc, match="margin"):
        margin_violations(*good(), margin=margin)
