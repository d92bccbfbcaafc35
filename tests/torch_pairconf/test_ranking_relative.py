from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import PairBatch, pair_batches
from torch_pairconf import (
    PairRelativeMarginLoss,
    RPCLoss,
    pair_margin_loss,
    pair_relative_margin_loss,
)


def loop_reference(batch: PairBatch, margin: float, anchor: str) -> tuple[torch.Tensor, int]:
    B, N, M = batch.scores.shape
    out = torch.zeros(B, N, M, dtype=torch.float64)
    count = 0
    for b in range(B):
        for i in range(N):
            negs = [float(batch.scores[b, i, j]) for j in range(M) if batch.valid[b, i, j] and not batch.gold[b, i, j]]
            if not negs:
                continue
            a = max(negs) if anchor == "hardest" else sum(negs) / len(negs)
            for j in range(M):
                if batch.valid[b, i, j] and batch.gold[b, i, j]:
                    out[b, i, j] = max(0.0, margin - (float(batch.scores[b, i, j]) - a))
                    count += 1
    return out, count


@given(pair_batches(), st.sampled_from([0.0, 1.0, 2.5]), st.sampled_from(["hardest", "mean"]))
def test_matches_loop_reference(batch: PairBatch, margin: float, anchor: str) -> None:
    ref, count = loop_reference(batch, margin, anchor)
    args = (batch.scores, batch.gold, batch.valid)
    kw = {"margin": margin, "anchor": anchor}
    torch.testing.assert_close(pair_relative_margin_loss(*args, **kw, reduction="none"), ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(pair_relative_margin_loss(*args, **kw, reduction="sum"), ref.sum())
    torch.testing.assert_close(pair_relative_margin_loss(*args, **kw), ref.sum() / max(count, 1))


@given(pair_batches(), st.sampled_from(["hardest", "mean"]))
def test_finite_values_and_gradients_only_on_valid_pairs(batch: PairBatch, anchor: str) -> None:
    scores = batch.scores.clone().requires_grad_()
    loss = pair_relative_margin_loss(scores, batch.gold, batch.valid, anchor=anchor)
    loss.backward()
    assert scores.grad is not None
    assert torch.isfinite(loss) and loss >= 0 and torch.isfinite(scores.grad).all()
    assert scores.grad.masked_select(~batch.valid).eq(0).all()


@given(pair_batches(extreme=False), st.sampled_from(["hardest", "mean"]), st.integers(0, 2**31 - 1))
def test_row_shift_invariant_and_gradient_sums_to_zero_per_row(batch: PairBatch, anchor: str, seed: int) -> None:
    B, N, _ = batch.scores.shape
    shift = torch.randn(B, N, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 5
    args = (batch.gold, batch.valid)
    a = pair_relative_margin_loss(batch.scores, *args, anchor=anchor, reduction="none")
    b = pair_relative_margin_loss(batch.scores + shift, *args, anchor=anchor, reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    scores = batch.scores.clone().requires_grad_()
    pair_relative_margin_loss(scores, *args, anchor=anchor).backward()
    assert scores.grad is not None
    sums = scores.grad.sum(-1)
    torch.testing.assert_close(sums, torch.zeros_like(sums), rtol=0, atol=1e-12)


@given(pair_batches())
def test_hardest_anchor_is_the_undetached_logit_hinge(batch: PairBatch) -> None:
    args = (batch.scores, batch.gold, batch.valid)
    torch.testing.assert_close(
        pair_relative_margin_loss(*args, margin=1.5, reduction="none"),
        pair_margin_loss(*args, margin=1.5, k=1, space="logit", detach_negatives=False, reduction="none"),
    )


def test_mean_anchor_pushes_every_negative_of_a_violating_row() -> None:
    scores = torch.tensor([[[1.0, 0.5, -2.0, 3.0]]], requires_grad=True)
    gold = torch.tensor([[[True, False, False, False]]])
    valid = torch.tensor([[[True, True, True, False]]])
    loss = pair_relative_margin_loss(scores, gold, valid, margin=2.0, anchor="mean")
    assert float(loss.detach()) == pytest.approx(2.0 - (1.0 - (-0.75)))
    loss.backward()
    assert scores.grad is not None
    torch.testing.assert_close(scores.grad, torch.tensor([[[-1.0, 0.5, 0.5, 0.0]]]))


def test_rows_without_gold_or_negative_give_attached_zero() -> None:
    scores = torch.randn(2, 3, 3, requires_grad=True)
    ones = torch.ones(2, 3, 3, dtype=torch.bool)
    for anchor in ("hardest", "mean"):
        for gold, valid in [(~ones, ones), (ones, ones), (ones, ~ones)]:
            loss = pair_relative_margin_loss(scores, gold, valid, anchor=anchor)
            assert loss.requires_grad and float(loss.detach()) == 0.0
            (grad,) = torch.autograd.grad(loss, scores)
            assert grad.eq(0).all()


@pytest.mark.parametrize("anchor", ["hardest", "mean"])
def test_gradcheck_and_module(anchor: str) -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    gold = torch.rand(2, 4, 5, generator=g) < 0.3
    valid = torch.rand(2, 4, 5, generator=g) < 0.9
    assert torch.autograd.gradcheck(lambda s: pair_relative_margin_loss(s, gold, valid, margin=2.0, anchor=anchor), (scores,))
    s = scores.detach()
    assert torch.equal(PairRelativeMarginLoss(2.0, anchor=anchor)(s, gold, valid), pair_relative_margin_loss(s, gold, valid, margin=2.0, anchor=anchor))
    rpcl = RPCLoss(ranking="relative", anchor=anchor, margin=2.0, margin_weight=0.3, consistency_weight=0.0)
    torch.testing.assert_close(rpcl(s, gold, valid), 0.3 * pair_relative_margin_loss(s, gold, valid, margin=2.0, anchor=anchor))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("anchor", ["hardest", "mean"])
def test_low_precision_close_to_float64_and_finite_at_extremes(dtype: torch.dtype, anchor: str) -> None:
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(4, 8, 8, generator=g) * 3
    gold = torch.rand(4, 8, 8, generator=g) < 0.2
    valid = torch.rand(4, 8, 8, generator=g) < 0.9
    ref = pair_relative_margin_loss(scores.double(), gold, valid, anchor=anchor)
    low = pair_relative_margin_loss(scores.to(dtype), gold, valid, anchor=anchor)
    assert low.dtype == dtype
    assert abs(float(low) - float(ref)) < (3e-2 if dtype != torch.float32 else 1e-5)
    extreme = torch.tensor([[[3e4, -3e4, 0.0], [-3e4, 3e4, 3.0]]], dtype=dtype, requires_grad=True)
    gold2 = torch.tensor([[[True, False, False], [True, False, False]]])
    loss = pair_relative_margin_loss(extreme, gold2, torch.ones_like(gold2), anchor=anchor, reduction="none")
    loss.sum().backward()
    assert extreme.grad is not None
    assert torch.isfinite(loss).all() and torch.isfinite(extreme.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"margin": -0.1}, ValueError, "margin must be a finite number >= 0"),
        ({"anchor": "median"}, ValueError, "anchor must be one of"),
        ({"reduction": "avg"}, ValueError, "reduction must be one of"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    s = torch.zeros(1, 2, 2)
    m = torch.ones(1, 2, 2, dtype=torch.bool)
    with pytest.raises(error, match=match):
        pair_relative_margin_loss(s, m, m, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        PairRelativeMarginLoss(**kwargs)  # type: ignore[arg-type]
