from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import PairBatch, pair_batches
from tests.torch_pairconf.test_ranking_ap import scopes
from torch_pairconf import PairAUCLoss, RPCLoss, mine_hard_negatives, pair_auc_loss


def phi(x: float, surrogate: str) -> float:
    h = max(0.0, x)
    return h * h if surrogate == "squared_hinge" else h


def loop_reference(
    batch: PairBatch, scope: str, margin: float, surrogate: str, k: int | None
) -> tuple[torch.Tensor, int]:
    """Per-pair loss (0 where nothing contributes) and the number of contributing gold pairs."""
    out = torch.zeros(batch.scores.shape, dtype=torch.float64)
    count = 0
    for pairs in scopes(batch.scores.shape, scope):
        negs = [float(batch.scores[p]) for p in pairs if batch.valid[p] and not batch.gold[p]]
        if k is not None:
            negs = sorted(negs, reverse=True)[:k]
        if not negs:
            continue
        for g in pairs:
            if batch.valid[g] and batch.gold[g]:
                sg = float(batch.scores[g])
                out[g] = sum(phi(margin - (sg - n), surrogate) for n in negs) / len(negs)
                count += 1
    return out, count


def _atol(batch: PairBatch) -> float:
    """Rounding of the float64 moment expansion grows with the squared logit spread."""
    spread = float(batch.scores.masked_fill(~batch.valid, 0).abs().max()) if batch.valid.any() else 0.0
    return 1e-12 * (1 + spread) ** 2


@given(
    pair_batches(),
    st.sampled_from(["row", "batch"]),
    st.sampled_from([0.0, 1.0, 2.5]),
    st.sampled_from(["squared_hinge", "hinge"]),
)
def test_matches_loop_reference_against_every_negative(batch: PairBatch, scope: str, margin: float, surrogate: str) -> None:
    ref, count = loop_reference(batch, scope, margin, surrogate, None)
    args = (batch.scores, batch.gold, batch.valid)
    kw = {"scope": scope, "margin": margin, "surrogate": surrogate}
    atol = _atol(batch)
    torch.testing.assert_close(pair_auc_loss(*args, **kw, reduction="none"), ref, rtol=1e-9, atol=atol)
    torch.testing.assert_close(pair_auc_loss(*args, **kw, reduction="sum"), ref.sum(), rtol=1e-9, atol=atol * ref.numel())
    torch.testing.assert_close(pair_auc_loss(*args, **kw), ref.sum() / max(count, 1), rtol=1e-9, atol=atol * ref.numel())


@given(pair_batches(), st.integers(1, 4), st.sampled_from([0.0, 1.0]), st.sampled_from(["squared_hinge", "hinge"]))
def test_matches_loop_reference_against_the_k_hardest(batch: PairBatch, k: int, margin: float, surrogate: str) -> None:
    ref, count = loop_reference(batch, "row", margin, surrogate, k)
    args = (batch.scores, batch.gold, batch.valid)
    kw = {"scope": "row", "margin": margin, "surrogate": surrogate}
    torch.testing.assert_close(pair_auc_loss(*args, **kw, k=k, reduction="none"), ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(pair_auc_loss(*args, **kw, k=k), ref.sum() / max(count, 1))
    negatives = mine_hard_negatives(batch.scores, batch.gold, batch.valid, k=k)
    torch.testing.assert_close(pair_auc_loss(*args, **kw, negatives=negatives, reduction="none"), ref, rtol=1e-9, atol=1e-9)


@given(pair_batches(), st.sampled_from(["row", "batch"]), st.sampled_from([None, 2]), st.sampled_from(["squared_hinge", "hinge"]))
def test_finite_values_and_gradients_only_on_valid_pairs(batch: PairBatch, scope: str, k: int | None, surrogate: str) -> None:
    if k is not None:
        scope = "row"
    scores = batch.scores.clone().requires_grad_()
    loss = pair_auc_loss(scores, batch.gold, batch.valid, scope=scope, k=k, surrogate=surrogate)
    loss.backward()
    assert scores.grad is not None
    assert torch.isfinite(loss) and loss >= 0 and torch.isfinite(scores.grad).all()
    assert scores.grad.masked_select(~batch.valid).eq(0).all()


@given(pair_batches(extreme=False), st.sampled_from(["row", "batch"]), st.integers(0, 2**31 - 1))
def test_shift_invariant_and_gradient_sums_to_zero_per_scope(batch: PairBatch, scope: str, seed: int) -> None:
    B, N, _ = batch.scores.shape
    g = torch.Generator().manual_seed(seed)
    shift = torch.randn(B, N, 1, generator=g, dtype=torch.float64) * 5 if scope == "row" else torch.tensor(3.7)
    args = (batch.gold, batch.valid)
    a = pair_auc_loss(batch.scores, *args, scope=scope, reduction="none")
    b = pair_auc_loss(batch.scores + shift, *args, scope=scope, reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    scores = batch.scores.clone().requires_grad_()
    pair_auc_loss(scores, *args, scope=scope).backward()
    assert scores.grad is not None
    grad = scores.grad.masked_fill(~batch.valid, 0)
    sums = grad.sum(-1) if scope == "row" else grad.sum()
    torch.testing.assert_close(sums, torch.zeros_like(sums), rtol=0, atol=1e-9)


def test_zero_exactly_when_every_gold_pair_clears_every_negative_by_the_margin() -> None:
    scores = torch.tensor([[[3.0, 1.9, -1.0], [0.0, 2.0, 1.0]]])
    gold = torch.tensor([[[True, False, False], [False, True, False]]])
    valid = torch.ones_like(gold)
    # each gold pair leads its own row's negatives by >= 1 ...
    assert float(pair_auc_loss(scores, gold, valid, scope="row")) == 0.0
    # ... but gold 2.0 leads the batch's negative 1.9 by only 0.1
    assert float(pair_auc_loss(scores, gold, valid, scope="batch")) > 0.0
    # mean / phi(m) bounds the misordered fraction: one of two pairs misordered
    mis = torch.tensor([[[0.0, 1.0, -1.0]]])
    one = torch.tensor([[[True, False, False]]])
    loss = pair_auc_loss(mis, one, torch.ones_like(one), scope="row", margin=1.0)
    assert float(loss) == pytest.approx((2.0**2 + 0.0) / 2) and float(loss) >= 1.0**2 * 0.5


def test_rows_without_gold_or_negative_give_attached_zero() -> None:
    scores = torch.randn(2, 3, 3, requires_grad=True)
    ones = torch.ones(2, 3, 3, dtype=torch.bool)
    for kw in ({"scope": "row"}, {"scope": "batch"}, {"scope": "row", "k": 2}):
        for gold, valid in [(~ones, ones), (ones, ones), (ones, ~ones)]:
            loss = pair_auc_loss(scores, gold, valid, **kw)  # type: ignore[arg-type]
            assert loss.requires_grad and float(loss.detach()) == 0.0
            (grad,) = torch.autograd.grad(loss, scores)
            assert grad.eq(0).all()
    empty = torch.zeros(2, 0, 3, requires_grad=True)
    assert float(pair_auc_loss(empty, empty > 0, empty > 0).detach()) == 0.0


@pytest.mark.parametrize("kw", [{"scope": "row"}, {"scope": "batch"}, {"scope": "row", "k": 3}, {"scope": "batch", "surrogate": "hinge"}])
def test_gradcheck_and_module(kw: dict[str, object]) -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    gold = torch.rand(2, 4, 5, generator=g) < 0.3
    valid = torch.rand(2, 4, 5, generator=g) < 0.9
    assert torch.autograd.gradcheck(lambda s: pair_auc_loss(s, gold, valid, margin=1.5, **kw), (scores,))  # type: ignore[arg-type]
    s = scores.detach()
    assert torch.equal(PairAUCLoss(margin=1.5, **kw)(s, gold, valid), pair_auc_loss(s, gold, valid, margin=1.5, **kw))  # type: ignore[arg-type]
    rpcl = RPCLoss(ranking="auc", margin=1.5, margin_weight=0.5, consistency_weight=0.0, **kw)
    torch.testing.assert_close(rpcl(s, gold, valid), 0.5 * pair_auc_loss(s, gold, valid, margin=1.5, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kw", [{"scope": "row"}, {"scope": "batch"}, {"scope": "row", "k": 2}])
def test_low_precision_close_to_float64_and_finite_at_extremes(dtype: torch.dtype, kw: dict[str, object]) -> None:
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(4, 8, 8, generator=g) * 3
    gold = torch.rand(4, 8, 8, generator=g) < 0.2
    valid = torch.rand(4, 8, 8, generator=g) < 0.9
    ref = pair_auc_loss(scores.double(), gold, valid, **kw)  # type: ignore[arg-type]
    low = pair_auc_loss(scores.to(dtype), gold, valid, **kw)  # type: ignore[arg-type]
    assert low.dtype == dtype
    assert abs(float(low) - float(ref)) < (3e-2 * max(1.0, float(ref)) if dtype != torch.float32 else 1e-5)
    # Squared gaps must stay representable: (2 * 100)^2 < 65504 (half's max); 6e4 elsewhere.
    big = 100.0 if dtype == torch.float16 else 6e4
    extreme = torch.tensor([[[big, -big, 0.0], [-big, big, 3.0]]], dtype=dtype, requires_grad=True)
    gold2 = torch.tensor([[[True, False, False], [True, False, False]]])
    loss = pair_auc_loss(extreme, gold2, torch.ones_like(gold2), reduction="none", **kw)  # type: ignore[arg-type]
    loss.sum().backward()
    assert extreme.grad is not None
    assert torch.isfinite(loss).all() and torch.isfinite(extreme.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"scope": "conversation"}, ValueError, "scope must be one of"),
        ({"margin": -1.0}, ValueError, "margin must be a finite number >= 0"),
        ({"surrogate": "logistic"}, ValueError, "surrogate must be one of"),
        ({"k": 0, "scope": "row"}, ValueError, "k must be >= 1"),
        ({"k": 2}, ValueError, "use scope='row'"),
        ({"reduction": "avg"}, ValueError, "reduction must be one of"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    s = torch.zeros(1, 2, 2)
    m = torch.ones(1, 2, 2, dtype=torch.bool)
    with pytest.raises(error, match=match):
        pair_auc_loss(s, m, m, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        PairAUCLoss(**kwargs)  # type: ignore[arg-type]


def test_negatives_need_row_scope() -> None:
    s = torch.zeros(1, 2, 2)
    m = torch.ones(1, 2, 2, dtype=torch.bool)
    neg = mine_hard_negatives(s, ~m, m, k=1)
    with pytest.raises(ValueError, match="use scope='row'"):
        pair_auc_loss(s, ~m, m, negatives=neg)
