"""Tests for ``torch_pairconf.stability`` against explicit pure-Python references.

Every reference loops over plain Python lists. Confidences are taken from ``torch.sigmoid`` of
the float64 logits (one elementwise op on a tensor of the same shape), so that the reference and
the library see bit-identical probabilities; decisions, ties, rankings and hardest negatives are
then decided in plain Python.
"""

from __future__ import annotations

import doctest
import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.testing import assert_close

import torch_pairconf.stability as stability_module
from tests.conftest import PairBatch, pair_batches
from torch_pairconf import (
    ConfidenceChange,
    FlipRate,
    GapChange,
    RankStability,
    Stability,
    confidence_change,
    decision_flips,
    gap_change,
    pair_stability,
    rank_stability,
)

F64 = torch.float64
EXACT = {"rtol": 0.0, "atol": 0.0}
TOL = {"rtol": 0.0, "atol": 1e-12}
POISON = [float("nan"), float("inf"), -float("inf"), 1e30, -1e30]


@dataclass
class Views:
    """A generated ``(clean, perturbed, gold, shared)`` quadruple in float64."""

    clean: torch.Tensor
    perturbed: torch.Tensor
    gold: torch.Tensor
    shared: torch.Tensor


@st.composite
def views(draw: st.DrawFn, max_b: int = 3, max_n: int = 6) -> Views:
    """Clean scores, masks and poison from :func:`pair_batches`; a perturbed view that is the
    same, slightly or strongly moved, independent, tied on a grid, or partly tied with the clean
    one; NaN/inf/huge poison outside ``shared`` in both views."""
    batch: PairBatch = draw(pair_batches(max_b=max_b, max_n=max_n))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    shape = batch.scores.shape
    clean = torch.where(batch.valid, batch.scores, 0.0)
    kind = draw(st.sampled_from(["same", "noise", "independent", "grid", "partial"]))
    if kind == "same":
        moved = clean.clone()
    elif kind == "noise":
        scale = draw(st.sampled_from([1e-6, 0.1, 1.0, 5.0]))
        moved = clean + torch.randn(shape, generator=g, dtype=F64) * scale
    elif kind == "independent":
        moved = torch.randn(shape, generator=g, dtype=F64) * 4
    elif kind == "grid":
        moved = torch.randint(-2, 3, shape, generator=g).double()
    else:  # some entries keep the clean value, the rest are grid values (ties across views)
        keep = torch.rand(shape, generator=g) < 0.5
        moved = torch.where(keep, clean, torch.randint(-2, 3, shape, generator=g).double())
    bad = torch.tensor(POISON, dtype=F64)
    pick = torch.randint(0, len(POISON), shape, generator=g)
    perturbed = torch.where(batch.valid, moved, bad[pick])
    return Views(batch.scores, perturbed, batch.gold, batch.valid)


# --------------------------------------------------------------------------------------------
# Pure-Python references
# --------------------------------------------------------------------------------------------


def div(a: float, b: float) -> float:
    return a / b if b else 0.0


def lists(v: Views) -> tuple[list, list, list, list, list, list]:
    """Nested lists: logits and probabilities of both views, gold, shared."""
    return (
        v.clean.tolist(),
        v.perturbed.tolist(),
        torch.sigmoid(v.clean.to(F64)).tolist(),
        torch.sigmoid(v.perturbed.to(F64)).tolist(),
        v.gold.tolist(),
        v.shared.tolist(),
    )


def cells(v: Views):
    """Every ``(b, i, j)`` of the ``(B, N, M)`` layout."""
    b, n, m = v.clean.shape
    for bb in range(b):
        for i in range(n):
            for j in range(m):
                yield bb, i, j


def ref_flips(v: Views, thr: float) -> tuple[float, ...]:
    _, _, pc, pp, _, sh = lists(v)
    lost = gained = pairs = 0
    for b, i, j in cells(v):
        if not sh[b][i][j]:
            continue
        pairs += 1
        dc, dp = pc[b][i][j] > thr, pp[b][i][j] > thr
        lost += dc and not dp
        gained += dp and not dc
    return div(lost + gained, pairs), lost + gained, lost, gained, pairs


def ref_confidence_change(v: Views) -> tuple[float, ...]:
    _, _, pc, pp, gold, sh = lists(v)
    changes: dict[bool, list[float]] = {True: [], False: []}
    for b, i, j in cells(v):
        if sh[b][i][j]:
            changes[gold[b][i][j]].append(pp[b][i][j] - pc[b][i][j])
    g, n = changes[True], changes[False]
    return (
        div(sum(abs(d) for d in g), len(g)),
        div(sum(abs(d) for d in n), len(n)),
        div(sum(g), len(g)),
        div(sum(n), len(n)),
        len(g),
        len(n),
    )


def ref_kendall_tau_b(x: list[float], y: list[float]) -> float | None:
    """Kendall tau-b from its textbook definition (None where undefined)."""
    n = len(x)
    n0 = n * (n - 1) // 2
    n1 = n2 = nc = nd = 0
    for j in range(n):
        for k in range(j + 1, n):
            dx, dy = x[j] - x[k], y[j] - y[k]
            n1 += dx == 0
            n2 += dy == 0
            if dx * dy > 0:
                nc += 1
            elif dx * dy < 0:
                nd += 1
    if n0 - n1 == 0 or n0 - n2 == 0:
        return None
    return (nc - nd) / math.sqrt((n0 - n1) * (n0 - n2))


def ref_rank_stability(v: Views) -> tuple[float, ...]:
    c, p, _, _, _, sh = lists(v)
    rows = agree = 0
    taus: list[float] = []
    b_, n_, _ = v.clean.shape
    for b in range(b_):
        for i in range(n_):
            cand = [j for j, s in enumerate(sh[b][i]) if s]
            if len(cand) < 2:
                continue
            rows += 1
            x = [c[b][i][j] for j in cand]
            y = [p[b][i][j] for j in cand]
            top_x = {j for j, xv in zip(cand, x, strict=True) if xv == max(x)}
            top_y = {j for j, yv in zip(cand, y, strict=True) if yv == max(y)}
            agree += top_x == top_y
            tau = ref_kendall_tau_b(x, y)
            if tau is not None:
                taus.append(tau)
    return div(agree, rows), div(sum(taus), len(taus)), rows, len(taus), rows - len(taus)


def ref_gaps(logits: list, prob: list, gold: list, sh: list, space: str) -> dict:
    """Gap of every shared gold pair to its row's hardest shared negative (first max logit)."""
    conf = prob if space == "prob" else logits
    out = {}
    for b, conv in enumerate(logits):
        for i, row in enumerate(conv):
            negs = [j for j in range(len(row)) if sh[b][i][j] and not gold[b][i][j]]
            if not negs:
                continue
            hardest = max(negs, key=lambda j: row[j])  # max() keeps the first maximum
            for j in range(len(row)):
                if sh[b][i][j] and gold[b][i][j]:
                    out[(b, i, j)] = conf[b][i][j] - conf[b][i][hardest]
    return out


def ref_gap_change(v: Views, space: str) -> tuple[dict, float, float, float, float, int]:
    c, p, pc, pp, gold, sh = lists(v)
    before = ref_gaps(c, pc, gold, sh, space)
    after = ref_gaps(p, pp, gold, sh, space)
    assert before.keys() == after.keys()
    changes = {k: after[k] - before[k] for k in before}
    n = len(changes)
    return (
        changes,
        div(sum(changes.values()), n),
        div(sum(abs(d) for d in changes.values()), n),
        div(sum(before.values()), n),
        div(sum(after.values()), n),
        n,
    )


def scalars(*xs: float) -> tuple[torch.Tensor, ...]:
    return tuple(torch.tensor(float(x), dtype=F64) for x in xs)


def everything(v: Views, threshold: float = 0.5) -> Stability:
    return pair_stability(v.clean, v.perturbed, v.gold, v.shared, threshold)


def assert_stability_close(a: Stability, b: Stability, **tol: float) -> None:
    for name, x, y in zip(a._fields, a, b, strict=True):
        assert_close(tuple(x), tuple(y), **tol, msg=name)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Reference comparisons on generated inputs
# --------------------------------------------------------------------------------------------


@given(views(), st.sampled_from([0.0, 0.2, 0.5, 0.9, 1.0]) | st.floats(0.0, 1.0))
def test_decision_flips_match_reference(v: Views, thr: float) -> None:
    got = decision_flips(v.clean, v.perturbed, v.shared, thr)
    assert isinstance(got, FlipRate)
    assert_close(tuple(got), scalars(*ref_flips(v, thr)), **EXACT)
    as_tensor = decision_flips(v.clean, v.perturbed, v.shared, torch.tensor(thr, dtype=F64))
    assert_close(tuple(as_tensor), tuple(got), **EXACT)
    assert 0.0 <= float(got.rate) <= 1.0


@given(views())
def test_confidence_change_matches_reference(v: Views) -> None:
    got = confidence_change(v.clean, v.perturbed, v.gold, v.shared)
    assert isinstance(got, ConfidenceChange)
    assert_close(tuple(got), scalars(*ref_confidence_change(v)), **TOL)


@given(views())
def test_rank_stability_matches_reference(v: Views) -> None:
    got = rank_stability(v.clean, v.perturbed, v.shared)
    assert isinstance(got, RankStability)
    assert_close(tuple(got), scalars(*ref_rank_stability(v)), **TOL)
    assert -1.0 <= float(got.tau) <= 1.0 and 0.0 <= float(got.top1) <= 1.0


@given(views(max_b=2, max_n=5), st.sampled_from([1, 2, 3, 7, 25]))
def test_rank_stability_chunking_changes_nothing(v: Views, budget: int) -> None:
    """Rows processed in chunks of few comparisons give exactly the one-chunk result."""
    whole = rank_stability(v.clean, v.perturbed, v.shared)
    saved = stability_module._PAIRWISE_BUDGET
    stability_module._PAIRWISE_BUDGET = budget  # type: ignore[misc]
    try:
        chunked = rank_stability(v.clean, v.perturbed, v.shared)
    finally:
        stability_module._PAIRWISE_BUDGET = saved  # type: ignore[misc]
    assert_close(tuple(chunked), tuple(whole), **EXACT)


@given(views(), st.sampled_from(["prob", "logit"]))
def test_gap_change_matches_reference(v: Views, space: str) -> None:
    got = gap_change(v.clean, v.perturbed, v.gold, v.shared, space)
    assert isinstance(got, GapChange)
    changes, *summary = ref_gap_change(v, space)
    assert_close(tuple(got[2:]), scalars(*summary), **TOL)
    assert got.changes.shape == v.clean.shape and got.changes.dtype == F64
    assert sorted(map(tuple, got.mask.nonzero().tolist())) == sorted(changes)
    for (b, i, j), want in changes.items():
        assert_close(got.changes[b, i, j], torch.tensor(want, dtype=F64), **TOL)
    assert (got.changes[~got.mask] == 0).all()


@given(views(), st.floats(0.0, 1.0))
def test_pair_stability_bundles_the_functions(v: Views, thr: float) -> None:
    got = everything(v, thr)
    assert isinstance(got, Stability)
    assert_close(tuple(got.flips), tuple(decision_flips(v.clean, v.perturbed, v.shared, thr)))
    assert_close(
        tuple(got.confidence), tuple(confidence_change(v.clean, v.perturbed, v.gold, v.shared))
    )
    assert_close(tuple(got.ranking), tuple(rank_stability(v.clean, v.perturbed, v.shared)))
    assert_close(tuple(got.gap), tuple(gap_change(v.clean, v.perturbed, v.gold, v.shared)))


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@given(views())
def test_identical_views_are_perfectly_stable(v: Views) -> None:
    s = pair_stability(v.clean, v.clean.clone(), v.gold, v.shared)
    assert float(s.flips.flips) == 0.0 and float(s.flips.rate) == 0.0
    assert float(s.confidence.gold) == 0.0 and float(s.confidence.negative) == 0.0
    assert float(s.confidence.gold_shift) == 0.0 and float(s.confidence.negative_shift) == 0.0
    if float(s.ranking.rows) > 0:
        assert float(s.ranking.top1) == 1.0
    if float(s.ranking.tau_rows) > 0:
        assert float(s.ranking.tau) == 1.0
    assert (s.gap.changes == 0).all()
    assert float(s.gap.mean) == 0.0 and float(s.gap.mean_abs) == 0.0
    assert_close(s.gap.clean, s.gap.perturbed, **EXACT)


@given(views(), st.integers(0, 2**31 - 1))
def test_invariant_to_column_permutation(v: Views, seed: int) -> None:
    """Permuting the candidate columns (jointly in every tensor) changes no summary."""
    perm = torch.randperm(v.clean.shape[-1], generator=torch.Generator().manual_seed(seed))
    permuted = Views(*(t[..., perm] for t in (v.clean, v.perturbed, v.gold, v.shared)))
    a, b = everything(v), everything(permuted)
    for name, x, y in zip(a._fields, a, b, strict=True):
        if name == "gap":  # compare the summaries, and the per-pair changes after permuting back
            assert_close(tuple(y[2:]), tuple(x[2:]), **TOL)
            assert_close(y.changes, x.changes[..., perm], **TOL)
            assert torch.equal(y.mask, x.mask[..., perm])
        else:
            assert_close(tuple(y), tuple(x), **TOL, msg=name)


@given(views())
def test_swapping_the_views(v: Views) -> None:
    """Flips, absolute changes and rankings are symmetric; lost/gained swap; shifts and gap
    changes change sign."""
    a = everything(v)
    b = pair_stability(v.perturbed, v.clean, v.gold, v.shared)
    fa, fb = a.flips, b.flips
    assert_close((fb.rate, fb.flips, fb.pairs), (fa.rate, fa.flips, fa.pairs), **EXACT)
    assert_close((fb.lost, fb.gained), (fa.gained, fa.lost), **EXACT)
    ca, cb = a.confidence, b.confidence
    assert_close((cb.gold, cb.negative), (ca.gold, ca.negative), **TOL)
    assert_close((cb.gold_shift, cb.negative_shift), (-ca.gold_shift, -ca.negative_shift), **TOL)
    assert_close(tuple(b.ranking), tuple(a.ranking), **EXACT)
    assert_close(b.gap.changes, -a.gap.changes, **TOL)
    assert_close((b.gap.mean, b.gap.mean_abs), (-a.gap.mean, a.gap.mean_abs), **TOL)
    assert_close((b.gap.clean, b.gap.perturbed), (a.gap.perturbed, a.gap.clean), **EXACT)


@given(views(), st.integers(0, 2**31 - 1))
def test_values_outside_shared_never_matter(v: Views, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    bad = torch.tensor([*POISON, 0.0, 7.5, -88.0], dtype=F64)

    def regarbage(x: torch.Tensor) -> torch.Tensor:
        pick = torch.randint(0, bad.numel(), x.shape, generator=g)
        return torch.where(v.shared, x, bad[pick])

    a = everything(v)
    b = pair_stability(regarbage(v.clean), regarbage(v.perturbed), v.gold, v.shared)
    assert_stability_close(b, a, **EXACT)
    for part in b:
        for t in part:
            assert torch.isfinite(t).all()


@given(views())
def test_gold_outside_shared_is_ignored(v: Views) -> None:
    a = everything(v)
    b = pair_stability(v.clean, v.perturbed, v.gold & v.shared, v.shared)
    assert_stability_close(b, a, **EXACT)


@given(views(), st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
def test_low_precision_is_the_float64_upcast(v: Views, dtype: torch.dtype) -> None:
    """Low-precision inputs give exactly the results of their float64 upcast (all maths in
    float64), also when the two views have different dtypes."""
    finite = [torch.where(v.shared, t.clamp(-6e4, 6e4), t) for t in (v.clean, v.perturbed)]
    low = [t.to(dtype) for t in finite]
    want = pair_stability(low[0].to(F64), low[1].to(F64), v.gold, v.shared)
    assert_stability_close(pair_stability(low[0], low[1], v.gold, v.shared), want, **EXACT)
    mixed = pair_stability(low[0], low[1].to(F64), v.gold, v.shared)
    want_mixed = pair_stability(low[0].to(F64), low[1].to(F64), v.gold, v.shared)
    assert_stability_close(mixed, want_mixed, **EXACT)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_close_to_float64(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(4, 9, 9, generator=g, dtype=F64) * 3
    perturbed = clean + torch.randn(4, 9, 9, generator=g, dtype=F64)
    gold = torch.rand(4, 9, 9, generator=g) < 0.2
    shared = torch.rand(4, 9, 9, generator=g) < 0.8
    ref = pair_stability(clean, perturbed, gold, shared)
    low = pair_stability(clean.to(dtype), perturbed.to(dtype), gold, shared)
    atol = {torch.float32: 1e-6, torch.bfloat16: 3e-2}[dtype]
    assert_close(tuple(low.confidence), tuple(ref.confidence), rtol=0.0, atol=atol)
    assert_close(tuple(low.gap[2:6]), tuple(ref.gap[2:6]), rtol=0.0, atol=atol)
    assert float(low.flips.pairs) > 0 and float(low.ranking.tau_rows) > 0  # non-trivial input
    # Rankings and decisions see rounded logits (new ties, moved decisions), but stay close.
    assert abs(float(low.ranking.tau) - float(ref.ranking.tau)) < 10 * atol + 1e-9
    assert abs(float(low.flips.rate) - float(ref.flips.rate)) <= 0.05


@pytest.mark.parametrize("shape", [(0, 0, 0), (2, 0, 0), (0, 3, 3), (2, 0, 3), (2, 3, 0)])
def test_empty_inputs_are_zero(shape: tuple[int, int, int]) -> None:
    x = torch.zeros(shape, dtype=F64)
    gold = torch.zeros(shape, dtype=torch.bool)
    for shared in (torch.ones(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)):
        s = pair_stability(x, x, gold, shared)
        for name, part in zip(s._fields, s, strict=True):
            for field, t in zip(part._fields, part, strict=True):
                if field in ("changes", "mask"):
                    assert t.shape == shape, (name, field)
                else:
                    assert t.dtype == F64 and t.dim() == 0, (name, field)
                assert (t == 0).all(), (name, field)


def test_results_are_detached_float64_and_inputs_untouched() -> None:
    clean = torch.tensor([[[2.0, -1.0, 0.5], [0.5, 0.0, 1.0]]], requires_grad=True)
    perturbed = torch.tensor([[[1.0, 1.0, 0.5], [0.5, 0.0, -1.0]]], requires_grad=True)
    gold = torch.tensor([[[True, False, False], [False, True, False]]])
    shared = torch.ones_like(gold)
    before = (clean.detach().clone(), perturbed.detach().clone())
    for part in pair_stability(clean, perturbed, gold, shared):
        for t in part:
            assert not t.requires_grad
            if t.is_floating_point():
                assert t.dtype == F64
    assert torch.equal(clean.detach(), before[0]) and torch.equal(perturbed.detach(), before[1])


def test_doctests() -> None:
    result = doctest.testmod(stability_module, extraglobs={"torch": torch}, verbose=False)
    assert result.attempted >= 5 and result.failed == 0


# --------------------------------------------------------------------------------------------
# Known values, computed by hand
# --------------------------------------------------------------------------------------------


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_known_values() -> None:
    nan = float("nan")
    # Row 0: gold 2.0 | negatives 1.0, -1.0, (unshared NaN). Row 1: all shared, no gold.
    clean = torch.tensor([[[2.0, 1.0, -1.0, nan], [0.0, 1.0, 2.0, 3.0]]], dtype=F64)
    perturbed = torch.tensor([[[0.5, -1.0, 1.5, nan], [3.0, 2.0, 1.0, 0.0]]], dtype=F64)
    gold = torch.tensor([[[True, False, False, False], [False, False, False, False]]])
    shared = torch.tensor([[[True, True, True, False], [True, True, True, True]]])

    # Decisions at 0.5 (logit > 0): clean T T F | F T T T, perturbed T F T | T T T F.
    f = decision_flips(clean, perturbed, shared)
    assert_close(tuple(f), scalars(4 / 7, 4, 2, 2, 7))
    f = decision_flips(clean, perturbed, shared, threshold=sig(1.2))  # logit > 1.2
    # clean T F F | F F T T, perturbed F F T | T T F F: six flips of seven.
    assert_close(tuple(f), scalars(6 / 7, 6, 3, 3, 7))

    c = confidence_change(clean, perturbed, gold, shared)
    neg = [
        sig(-1.0) - sig(1.0),
        sig(1.5) - sig(-1.0),
        sig(3.0) - sig(0.0),
        sig(2.0) - sig(1.0),
        sig(1.0) - sig(2.0),
        sig(0.0) - sig(3.0),
    ]
    want_gold = sig(0.5) - sig(2.0)
    assert_close(
        tuple(c),
        scalars(
            abs(want_gold),
            sum(map(abs, neg)) / 6,
            want_gold,
            sum(neg) / 6,
            1,
            6,
        ),
    )

    # Row 0: clean order 0 > 1 > 2, perturbed 2 > 0 > 1: tau = (1 - 2) / 3; top-1 differs.
    # Row 1: reversed order, tau = -1; top-1 differs.
    r = rank_stability(clean, perturbed, shared)
    assert_close(tuple(r), scalars(0.0, (-1 / 3 - 1) / 2, 2, 2, 0))

    # Gap of the gold pair: clean 2.0 vs hardest 1.0, perturbed 0.5 vs hardest 1.5.
    g = gap_change(clean, perturbed, gold, shared)
    before, after = sig(2.0) - sig(1.0), sig(0.5) - sig(1.5)
    assert_close(tuple(g[2:]), scalars(after - before, before - after, before, after, 1))
    g = gap_change(clean, perturbed, gold, shared, space="logit")
    assert_close(tuple(g[2:]), scalars(-2.0, 2.0, 1.0, -1.0, 1))


def test_known_ties_in_rankings() -> None:
    shared = torch.ones(1, 4, 3, dtype=torch.bool)
    clean = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [5.0, 5.0, 5.0], [2.0, 1.0, 0.0]]])
    perturbed = torch.tensor(
        [[[1.0, 1.0, -3.0], [2.0, 1.0, 0.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]]
    )
    r = rank_stability(clean, perturbed, shared)
    # Row 0: top sets {0, 1} and {0, 1} agree; tau-b: one tie in both, (2 - 0) / sqrt(2 * 2) = 1.
    # Row 1: {0, 1} vs {0}: disagree; tau-b = 2 / sqrt(2 * 3).
    # Row 2: clean all tied (tau undefined), top {0, 1, 2} vs {2}: disagree.
    # Row 3: perturbed all tied (tau undefined), top {0} vs {0, 1, 2}: disagree.
    assert_close(tuple(r), scalars(1 / 4, (1 + 2 / math.sqrt(6)) / 2, 4, 2, 2))
    # One shared candidate: the row does not count at all.
    one = torch.tensor([[[True, False, False]]])
    assert_close(tuple(rank_stability(clean[:, :1], perturbed[:, :1], one)), scalars(0, 0, 0, 0, 0))


def test_gap_hardest_negative_tie_takes_the_first_column() -> None:
    """Tied negatives: the miner's first-index rule (gaps equal either way in a view, so the
    rule only shows in the logit of a *different* negative in the other view)."""
    clean = torch.tensor([[[3.0, 1.0, 1.0]]], dtype=F64)
    perturbed = torch.tensor([[[3.0, 2.0, 0.0]]], dtype=F64)
    gold = torch.tensor([[[True, False, False]]])
    g = gap_change(clean, perturbed, gold, torch.ones_like(gold), space="logit")
    assert_close(tuple(g[2:]), scalars(-1.0, 1.0, 2.0, 1.0, 1))


# --------------------------------------------------------------------------------------------
# Argument errors
# --------------------------------------------------------------------------------------------


def good(shape: tuple[int, ...] = (2, 3, 4)) -> tuple[torch.Tensor, ...]:
    return (
        torch.zeros(shape),
        torch.zeros(shape),
        torch.zeros(shape, dtype=torch.bool),
        torch.ones(shape, dtype=torch.bool),
    )


CALLS = {
    "decision_flips": lambda c, p, g, s: decision_flips(c, p, s),
    "confidence_change": confidence_change,
    "rank_stability": lambda c, p, g, s: rank_stability(c, p, s),
    "gap_change": gap_change,
    "pair_stability": pair_stability,
}
WITH_GOLD = ["confidence_change", "gap_change", "pair_stability"]


@pytest.mark.parametrize("name", sorted(CALLS))
def test_bad_tensors(name: str) -> None:
    fn = CALLS[name]
    c, p, g, s = good()
    with pytest.raises(TypeError, match="clean must be a floating-point tensor"):
        fn(c.long(), p, g, s)
    with pytest.raises(TypeError, match=r"clean must be a torch\.Tensor"):
        fn([[[0.0]]], p, g, s)
    with pytest.raises(TypeError, match="perturbed must be a floating-point tensor"):
        fn(c, p.int(), g, s)
    with pytest.raises(TypeError, match=r"shared must be a torch\.bool tensor"):
        fn(c, p, g, s.to(torch.uint8))
    with pytest.raises(ValueError, match=r"clean must have shape \(B, N, M\).*unsqueeze\(0\)"):
        fn(c[0], p[0], g[0], s[0])
    with pytest.raises(ValueError, match=r"perturbed must have the shape of clean \(2, 3, 4\)"):
        fn(c, p[:, :2], g, s)
    with pytest.raises(ValueError, match="perturbed is on meta but clean is on cpu"):
        fn(c, p.to("meta"), g, s)
    with pytest.raises(ValueError, match=r"shared must have the shape of clean \(2, 3, 4\)"):
        fn(c, p, g, s[:, :, :3])
    with pytest.raises(ValueError, match="shared is on meta but clean is on cpu"):
        fn(c, p, g, s.to("meta"))
    with pytest.raises(ValueError, match=r"shared must have the shape.*transpose\(-1, -2\)"):
        fn(c, p, g, s.transpose(-1, -2))
    if name in WITH_GOLD:
        c, p, g, s = good()
        with pytest.raises(TypeError, match=r"gold must be a torch\.bool tensor"):
            fn(c, p, g.float(), s)
        with pytest.raises(ValueError, match=r"gold must have the shape of clean"):
            fn(c, p, g[:1], s)


@pytest.mark.parametrize("fn", [decision_flips, pair_stability], ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("threshold", "exc", "match"),
    [
        (-0.1, ValueError, r"threshold must be a probability in \[0, 1\], got -0.1"),
        (1.5, ValueError, r"threshold must be a probability in \[0, 1\]"),
        (float("nan"), ValueError, r"threshold must be a probability"),
        ("0.5", TypeError, "threshold must be a number, got str"),
        (True, TypeError, "threshold must be a number, got bool"),
        (torch.tensor([0.5]), ValueError, "threshold must be a number or a 0-dim float tensor"),
        (torch.tensor(1), ValueError, "threshold must be a number or a 0-dim float tensor"),
        (torch.tensor(0.5, device="meta"), ValueError, "threshold is on meta but clean is on cpu"),
    ],
)
def test_bad_threshold(fn, threshold, exc, match) -> None:
    c, p, g, s = good()
    args = (c, p, s) if fn is decision_flips else (c, p, g, s)
    with pytest.raises(exc, match=match):
        fn(*args, threshold=threshold)


def test_bad_space() -> None:
    with pytest.raises(ValueError, match=r"space must be one of \('prob', 'logit'\)"):
        gap_change(*good(), space="probability")


# --------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(8, 17, 17, generator=g) * 3
    perturbed = clean + torch.randn(8, 17, 17, generator=g)
    gold = torch.rand(8, 17, 17, generator=g) < 0.1
    shared = torch.rand(8, 17, 17, generator=g) < 0.9
    clean, perturbed = (torch.where(shared, t, torch.nan).to(dtype) for t in (clean, perturbed))
    cuda = pair_stability(clean.cuda(), perturbed.cuda(), gold.cuda(), shared.cuda(), 0.4)
    cpu = pair_stability(clean, perturbed, gold, shared, 0.4)
    for name, a, b in zip(cpu._fields, cpu, cuda, strict=True):
        for field, x, y in zip(a._fields, a, b, strict=True):
            assert y.device.type == "cuda", (name, field)
            # Same float64 maths on the same upcast values; sigmoid may differ by an ulp.
            assert_close(y.cpu(), x, rtol=0.0, atol=1e-12, msg=f"{name}.{field}")
