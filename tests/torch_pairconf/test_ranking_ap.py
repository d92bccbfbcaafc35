from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import PairBatch, pair_batches
from torch_pairconf import PairAPLoss, RPCLoss, pair_ap_loss, pair_auprc

Pair = tuple[int, int, int]


def kappa(d: float) -> float:
    """The Laplace-CDF smooth step of the module docstring."""
    return 1 - 0.5 * math.exp(-d) if d >= 0 else 0.5 * math.exp(d)


def scopes(shape: torch.Size, scope: str) -> list[list[Pair]]:
    """The pairs of each scope: one list per emotion row, or one list for the whole batch."""
    B, N, M = shape
    rows = [[(b, i, j) for j in range(M)] for b in range(B) for i in range(N)]
    return rows if scope == "row" else [[p for row in rows for p in row]]


def loop_reference(batch: PairBatch, scope: str, temperature: float) -> tuple[torch.Tensor, int]:
    """Per-pair loss (0 where nothing contributes) and the number of contributing gold pairs."""
    out = torch.zeros(batch.scores.shape, dtype=torch.float64)
    count = 0
    for pairs in scopes(batch.scores.shape, scope):
        valid = [p for p in pairs if batch.valid[p]]
        gold = [p for p in valid if batch.gold[p]]
        if len(gold) == len(valid):  # no negative (or nothing valid): nothing contributes
            continue
        z = {p: float(batch.scores[p]) / temperature for p in valid}
        for g in gold:
            r_valid = 1 + sum(kappa(z[v] - z[g]) for v in valid if v != g)
            r_gold = 1 + sum(kappa(z[v] - z[g]) for v in gold if v != g)
            out[g] = (r_valid - r_gold) / r_valid
            count += 1
    return out, count


@given(pair_batches(), st.sampled_from(["row", "batch"]), st.sampled_from([1.0, 0.5, 3.0]))
def test_matches_loop_reference(batch: PairBatch, scope: str, temperature: float) -> None:
    ref, count = loop_reference(batch, scope, temperature)
    args = (batch.scores, batch.gold, batch.valid)
    kw = {"scope": scope, "temperature": temperature}
    torch.testing.assert_close(pair_ap_loss(*args, **kw, reduction="none"), ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(pair_ap_loss(*args, **kw, reduction="sum"), ref.sum())
    torch.testing.assert_close(pair_ap_loss(*args, **kw), ref.sum() / max(count, 1))


@given(pair_batches(), st.sampled_from(["row", "batch"]), st.sampled_from([1.0, 0.3]))
def test_finite_values_and_gradients_only_on_valid_pairs(batch: PairBatch, scope: str, temperature: float) -> None:
    scores = batch.scores.clone().requires_grad_()
    loss = pair_ap_loss(scores, batch.gold, batch.valid, scope=scope, temperature=temperature)
    loss.backward()
    assert scores.grad is not None
    assert torch.isfinite(loss) and 0 <= float(loss.detach()) < 1
    assert torch.isfinite(scores.grad).all()
    assert scores.grad.masked_select(~batch.valid).eq(0).all()


@given(pair_batches(extreme=False), st.sampled_from(["row", "batch"]), st.integers(0, 2**31 - 1))
def test_shift_invariant_and_gradient_sums_to_zero_per_scope(batch: PairBatch, scope: str, seed: int) -> None:
    """Adding a constant to every logit of a scope changes nothing; the gradient sums to zero
    over each scope (the term cannot move the score scale)."""
    B, N, _ = batch.scores.shape
    g = torch.Generator().manual_seed(seed)
    shift = torch.randn(B, N, 1, generator=g, dtype=torch.float64) * 5 if scope == "row" else torch.tensor(3.7)
    args = (batch.gold, batch.valid)
    a = pair_ap_loss(batch.scores, *args, scope=scope, reduction="none")
    b = pair_ap_loss(batch.scores + shift, *args, scope=scope, reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    scores = batch.scores.clone().requires_grad_()
    pair_ap_loss(scores, *args, scope=scope).backward()
    assert scores.grad is not None
    grad = scores.grad.masked_fill(~batch.valid, 0)
    sums = grad.sum(-1) if scope == "row" else grad.sum()
    torch.testing.assert_close(sums, torch.zeros_like(sums), rtol=0, atol=1e-12)


@given(pair_batches(), st.integers(0, 2**31 - 1))
def test_invariant_to_permuting_pairs_within_rows(batch: PairBatch, seed: int) -> None:
    perm = torch.randperm(batch.scores.shape[-1], generator=torch.Generator().manual_seed(seed))
    for scope in ("row", "batch"):
        a = pair_ap_loss(batch.scores, batch.gold, batch.valid, scope=scope, reduction="none")
        b = pair_ap_loss(batch.scores[..., perm], batch.gold[..., perm], batch.valid[..., perm], scope=scope, reduction="none")
        torch.testing.assert_close(a[..., perm], b, rtol=1e-12, atol=1e-12)


def test_low_temperature_approaches_one_minus_auprc() -> None:
    """Without ties, the batch-scope mean is 1 - AP over the valid pairs as T -> 0."""
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(3, 7, 7, generator=g, dtype=torch.float64)
    gold = torch.rand(3, 7, 7, generator=g) < 0.2
    valid = torch.rand(3, 7, 7, generator=g) < 0.9
    ap = pair_auprc(scores, gold & valid, valid)  # recall over the valid gold pairs
    loss = pair_ap_loss(scores, gold, valid, scope="batch", temperature=1e-4)
    torch.testing.assert_close(loss, 1 - ap, rtol=0, atol=1e-6)
    # a larger temperature is a smoother, strictly different surrogate
    assert abs(float(pair_ap_loss(scores, gold, valid, temperature=1.0)) - float(1 - ap)) > 1e-3


def test_known_values_and_rows_with_several_gold_pairs() -> None:
    # Row: gold 2.0 and 0.5, negatives 1.0 and -3.0; T -> 0: precision 1/1 and 2/3.
    scores = torch.tensor([[[2.0, 0.5, 1.0, -3.0]]], dtype=torch.float64)
    gold = torch.tensor([[[True, True, False, False]]])
    valid = torch.ones_like(gold)
    loss = pair_ap_loss(scores, gold, valid, scope="row", temperature=1e-4, reduction="none")
    torch.testing.assert_close(loss, torch.tensor([[[0.0, 1 / 3, 0.0, 0.0]]], dtype=torch.float64), rtol=0, atol=1e-9)
    # a tie with a negative counts half a place: precision 1 / 1.5
    tie = torch.tensor([[[1.0, 1.0, -5.0]]], dtype=torch.float64)
    one = torch.tensor([[[True, False, False]]])
    got = pair_ap_loss(tie, one, torch.ones_like(one), scope="row", temperature=1e-3)
    torch.testing.assert_close(got, torch.tensor(1 - 1 / 1.5, dtype=torch.float64), rtol=0, atol=1e-9)


def test_rows_without_gold_or_negative_give_attached_zero() -> None:
    scores = torch.randn(2, 3, 3, requires_grad=True)
    ones = torch.ones(2, 3, 3, dtype=torch.bool)
    for scope in ("row", "batch"):
        for gold, valid in [(~ones, ones), (ones, ones), (ones, ~ones)]:
            loss = pair_ap_loss(scores, gold, valid, scope=scope)
            assert loss.requires_grad and float(loss.detach()) == 0.0
            (grad,) = torch.autograd.grad(loss, scores)
            assert grad.eq(0).all()
    empty = torch.zeros(2, 0, 3, requires_grad=True)
    assert float(pair_ap_loss(empty, empty > 0, empty > 0).detach()) == 0.0


@pytest.mark.parametrize("scope", ["row", "batch"])
def test_gradcheck_and_module(scope: str) -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    gold = torch.rand(2, 4, 5, generator=g) < 0.3
    valid = torch.rand(2, 4, 5, generator=g) < 0.9
    assert torch.autograd.gradcheck(lambda s: pair_ap_loss(s, gold, valid, scope=scope, temperature=0.7), (scores,))
    s = scores.detach()
    assert torch.equal(PairAPLoss(scope, temperature=0.7)(s, gold, valid), pair_ap_loss(s, gold, valid, scope=scope, temperature=0.7))
    assert "scope=" in repr(PairAPLoss())
    rpcl = RPCLoss(ranking="ap", scope=scope, temperature=0.7, margin_weight=2.0, consistency_weight=0.0)
    torch.testing.assert_close(rpcl(s, gold, valid), 2.0 * pair_ap_loss(s, gold, valid, scope=scope, temperature=0.7))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("scope", ["row", "batch"])
def test_low_precision_close_to_float64_and_finite_at_extremes(dtype: torch.dtype, scope: str) -> None:
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(4, 8, 8, generator=g) * 3
    gold = torch.rand(4, 8, 8, generator=g) < 0.2
    valid = torch.rand(4, 8, 8, generator=g) < 0.9
    ref = pair_ap_loss(scores.double(), gold, valid, scope=scope)
    low = pair_ap_loss(scores.to(dtype), gold, valid, scope=scope)
    assert low.dtype == dtype
    assert abs(float(low) - float(ref)) < (2e-2 if dtype != torch.float32 else 1e-6)
    extreme = torch.tensor([[[6e4, -6e4, 0.0], [-6e4, 6e4, 3.0]]], dtype=dtype, requires_grad=True)
    gold2 = torch.tensor([[[True, False, False], [True, False, False]]])
    loss = pair_ap_loss(extreme, gold2, torch.ones_like(gold2), scope=scope, temperature=0.01, reduction="none")
    loss.sum().backward()
    assert extreme.grad is not None
    assert torch.isfinite(loss).all() and torch.isfinite(extreme.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"scope": "conversation"}, ValueError, "scope must be one of"),
        ({"temperature": 0.0}, ValueError, "temperature must be > 0"),
        ({"temperature": float("nan")}, ValueError, "temperature must be a finite number"),
        ({"reduction": "avg"}, ValueError, "reduction must be one of"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    s = torch.zeros(1, 2, 2)
    m = torch.ones(1, 2, 2, dtype=torch.bool)
    with pytest.raises(error, match=match):
        pair_ap_loss(s, m, m, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        PairAPLoss(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"gold must be a torch\.bool tensor"):
        pair_ap_loss(s, m.float(), m)
