from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import PairBatch, pair_batches
from torch_pairconf import PairListwiseLoss, RPCLoss, pair_listwise_loss


def loop_reference(batch: PairBatch, k: int, temperature: float, margin: float) -> tuple[torch.Tensor, int]:
    B, N, M = batch.scores.shape
    out = torch.zeros(B, N, M, dtype=torch.float64)
    count = 0
    for b in range(B):
        for i in range(N):
            negs = sorted(
                (float(batch.scores[b, i, j]) for j in range(M) if batch.valid[b, i, j] and not batch.gold[b, i, j]),
                reverse=True,
            )[:k]
            if not negs:
                continue
            for j in range(M):
                if batch.valid[b, i, j] and batch.gold[b, i, j]:
                    zg = float(batch.scores[b, i, j]) / temperature - margin
                    zs = [zg] + [n / temperature for n in negs]
                    top = max(zs)
                    out[b, i, j] = top + math.log(sum(math.exp(z - top) for z in zs)) - zg
                    count += 1
    return out, count


@given(pair_batches(), st.integers(1, 4), st.sampled_from([1.0, 0.5, 4.0]), st.sampled_from([0.0, 1.0]))
def test_matches_loop_reference(batch: PairBatch, k: int, temperature: float, margin: float) -> None:
    ref, count = loop_reference(batch, k, temperature, margin)
    args = (batch.scores, batch.gold, batch.valid)
    kw = {"k": k, "temperature": temperature, "margin": margin}
    torch.testing.assert_close(pair_listwise_loss(*args, **kw, reduction="none"), ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(pair_listwise_loss(*args, **kw, reduction="sum"), ref.sum())
    torch.testing.assert_close(pair_listwise_loss(*args, **kw), ref.sum() / max(count, 1))


@given(pair_batches(), st.integers(1, 3), st.booleans())
def test_finite_gradients_only_on_gold_and_negatives(batch: PairBatch, k: int, detach: bool) -> None:
    scores = batch.scores.clone().requires_grad_()
    loss = pair_listwise_loss(scores, batch.gold, batch.valid, k=k, detach_negatives=detach)
    loss.backward()
    assert scores.grad is not None
    assert torch.isfinite(loss) and loss >= 0 and torch.isfinite(scores.grad).all()
    assert scores.grad.masked_select(~batch.valid).eq(0).all()
    if detach:
        assert scores.grad.masked_select(~(batch.gold & batch.valid)).eq(0).all()


def test_gradcheck_and_module() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    gold = torch.rand(2, 4, 5, generator=g) < 0.3
    valid = torch.rand(2, 4, 5, generator=g) < 0.9
    assert torch.autograd.gradcheck(lambda s: pair_listwise_loss(s, gold, valid, k=3, temperature=2.0, margin=0.5), (scores,))
    s = scores.detach()
    assert torch.equal(PairListwiseLoss(k=2, margin=0.5)(s, gold, valid), pair_listwise_loss(s, gold, valid, k=2, margin=0.5))
    rpcl = RPCLoss(ranking="softmax", margin_weight=1.0, consistency_weight=0.0, k=2, margin=0.5, detach_negatives=False)
    torch.testing.assert_close(rpcl(s, gold, valid), pair_listwise_loss(s, gold, valid, k=2, margin=0.5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_and_extremes(dtype: torch.dtype) -> None:
    scores = torch.tensor([[[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0]]], dtype=dtype, requires_grad=True)
    gold = torch.tensor([[[True, False, False], [True, False, False]]])
    valid = torch.ones_like(gold)
    loss = pair_listwise_loss(scores, gold, valid, k=2, reduction="none")
    loss.sum().backward()
    assert loss.dtype == dtype and torch.isfinite(loss).all() and scores.grad is not None
    assert torch.isfinite(scores.grad).all()
    assert float(loss[0, 1, 0].detach()) == pytest.approx(2e4, rel=1e-2)


def test_empty_cases_and_errors() -> None:
    s = torch.randn(1, 3, 3, requires_grad=True)
    ones = torch.ones(1, 3, 3, dtype=torch.bool)
    for gold, valid in [(~ones, ones), (ones, ones), (ones, ~ones)]:
        loss = pair_listwise_loss(s, gold, valid)
        assert loss.requires_grad and float(loss.detach()) == 0.0
    with pytest.raises(ValueError, match="k must be >= 1"):
        PairListwiseLoss(k=0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        pair_listwise_loss(s, ones, ones, temperature=0.0)
    with pytest.raises(ValueError, match="ranking must be one of"):
        RPCLoss(ranking="pairwise")


@given(pair_batches(), st.sampled_from([1.0, 0.5, 4.0]), st.sampled_from([0.0, 1.0]))
def test_every_negative_of_the_row_matches_loop_reference(batch: PairBatch, temperature: float, margin: float) -> None:
    """k=None: each gold pair against all of its row's negatives (k = M in the reference)."""
    ref, count = loop_reference(batch, batch.scores.shape[-1], temperature, margin)
    args = (batch.scores, batch.gold, batch.valid)
    kw = {"k": None, "temperature": temperature, "margin": margin}
    torch.testing.assert_close(pair_listwise_loss(*args, **kw, reduction="none"), ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(pair_listwise_loss(*args, **kw), ref.sum() / max(count, 1))
    scores = batch.scores.clone().requires_grad_()
    loss = pair_listwise_loss(scores, batch.gold, batch.valid, k=None, temperature=temperature, margin=margin)
    loss.backward()
    assert scores.grad is not None
    assert torch.isfinite(loss) and torch.isfinite(scores.grad).all()
    assert scores.grad.masked_select(~batch.valid).eq(0).all()


@given(pair_batches(extreme=False), st.integers(0, 2**31 - 1))
def test_every_negative_form_is_row_shift_invariant(batch: PairBatch, seed: int) -> None:
    B, N, _ = batch.scores.shape
    shift = torch.randn(B, N, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 5
    a = pair_listwise_loss(batch.scores, batch.gold, batch.valid, k=None, reduction="none")
    b = pair_listwise_loss(batch.scores + shift, batch.gold, batch.valid, k=None, reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    scores = batch.scores.clone().requires_grad_()
    pair_listwise_loss(scores, batch.gold, batch.valid, k=None).backward()
    assert scores.grad is not None
    sums = scores.grad.sum(-1)
    torch.testing.assert_close(sums, torch.zeros_like(sums), rtol=0, atol=1e-12)


def test_listwise_ranking_of_rpcl_uses_every_negative() -> None:
    g = torch.Generator().manual_seed(4)
    s = torch.randn(2, 5, 6, generator=g)
    gold = torch.rand(2, 5, 6, generator=g) < 0.3
    valid = torch.rand(2, 5, 6, generator=g) < 0.9
    rpcl = RPCLoss(ranking="listwise", margin_weight=1.0, consistency_weight=0.0, temperature=2.0)
    torch.testing.assert_close(rpcl(s, gold, valid), pair_listwise_loss(s, gold, valid, k=None, temperature=2.0))
    assert rpcl.ranking.k is None and not rpcl.ranking.detach_negatives
    with pytest.raises(TypeError, match="ranking='softmax' takes no option 'space'"):
        RPCLoss(ranking="softmax", space="logit")
