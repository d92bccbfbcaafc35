from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import PairBatch, pair_batches
from torch_pairconf import ConsistencyLoss, consistency_loss


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def _xlogy(x: float, y: float) -> float:
    return 0.0 if x == 0 else x * math.log(y)


def _kl(p: float, q: float) -> float:
    return _xlogy(p, p) - _xlogy(p, q) + _xlogy(1 - p, 1 - p) - _xlogy(1 - p, 1 - q)


def _logsig(x: float) -> float:
    """log(sigmoid(x)) without underflow: sigmoid(-8000) is 0.0 in floating point, its log is not."""
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def divergence_reference(a: float, b: float, kind: str) -> float:
    p, q = _sig(a), _sig(b)
    if kind == "mse":
        return (p - q) ** 2
    if kind == "kl":  # from log-probabilities: q may underflow to 0 where log q is finite
        return p * (_logsig(a) - _logsig(b)) + (1 - p) * (_logsig(-a) - _logsig(-b))
    m = (p + q) / 2
    return 0.5 * _kl(p, m) + 0.5 * _kl(q, m)


@given(pair_batches(extreme=False), st.sampled_from(["kl", "js", "mse"]), st.integers(0, 2**31 - 1))
def test_matches_loop_reference(batch: PairBatch, divergence: str, seed: int) -> None:
    clean = batch.scores
    g = torch.Generator().manual_seed(seed)
    corrupted = torch.where(batch.valid, clean + torch.randn(clean.shape, generator=g, dtype=clean.dtype), clean)
    ref = torch.zeros_like(clean)
    for idx in zip(*torch.where(batch.valid), strict=True):
        ref[idx] = divergence_reference(float(clean[idx]), float(corrupted[idx]), divergence)
    none = consistency_loss(clean, corrupted, batch.valid, divergence=divergence, reduction="none")
    torch.testing.assert_close(none, ref, rtol=1e-7, atol=1e-10)
    count = int(batch.valid.sum())
    mean = consistency_loss(clean, corrupted, batch.valid, divergence=divergence)
    torch.testing.assert_close(mean, ref.sum() / max(count, 1), rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(consistency_loss(clean, corrupted, batch.valid, divergence=divergence, reduction="sum"), ref.sum())


@pytest.mark.parametrize("divergence", ["kl", "js", "mse"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_extreme_logits_finite(divergence: str, dtype: torch.dtype) -> None:
    vals = torch.tensor([-1e4, -30.0, 0.0, 30.0, 1e4])
    a, b = torch.meshgrid(vals, vals, indexing="ij")
    clean = a.reshape(1, 5, 5).to(dtype)
    corrupted = b.reshape(1, 5, 5).to(dtype).requires_grad_()
    valid = torch.ones(1, 5, 5, dtype=torch.bool)
    loss = consistency_loss(clean, corrupted, valid, divergence=divergence, detach_clean=False, reduction="none")
    assert torch.isfinite(loss).all() and (loss >= 0).all()
    loss.sum().backward()
    assert corrupted.grad is not None and torch.isfinite(corrupted.grad).all()
    # identical views: zero (exactly for kl/mse; js up to log-sum-exp rounding)
    same = float(consistency_loss(clean, clean, valid, divergence=divergence))
    assert same == 0.0 if divergence != "js" else abs(same) < 1e-6
    if divergence == "kl" and dtype == torch.float64:
        # KL(p=1 || q=sigmoid(-1e4)) = -log sigmoid(-1e4) = 1e4
        assert float(loss[0, 4, 0].detach()) == pytest.approx(1e4)


@given(pair_batches(), st.sampled_from(["kl", "js", "mse"]), st.booleans())
def test_finite_gradients_and_masked_positions(batch: PairBatch, divergence: str, detach: bool) -> None:
    clean = batch.scores.clone().requires_grad_()
    finite = torch.where(batch.valid, batch.scores, 0.0)
    corrupted = torch.where(batch.valid, finite.flip(-1) + 1, torch.nan).requires_grad_()
    loss = consistency_loss(clean, corrupted, batch.valid, divergence=divergence, detach_clean=detach)
    assert torch.isfinite(loss) and loss >= 0
    loss.backward()
    assert corrupted.grad is not None
    assert torch.isfinite(corrupted.grad).all() and corrupted.grad.masked_select(~batch.valid).eq(0).all()
    if detach:
        assert clean.grad is None
    else:
        assert clean.grad is not None and torch.isfinite(clean.grad).all()


def test_empty_valid_gives_attached_zero() -> None:
    clean = torch.randn(2, 3, 3)
    corrupted = torch.randn(2, 3, 3, requires_grad=True)
    loss = consistency_loss(clean, corrupted, torch.zeros(2, 3, 3, dtype=torch.bool))
    assert loss.requires_grad and loss.detach().eq(0)


@pytest.mark.parametrize("divergence", ["kl", "js", "mse"])
def test_gradcheck(divergence: str) -> None:
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    corrupted = torch.randn(2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    valid = torch.rand(2, 3, 4, generator=g) < 0.8
    assert torch.autograd.gradcheck(
        lambda a, b: consistency_loss(a, b, valid, divergence=divergence, detach_clean=False), (clean, corrupted)
    )


def test_module_equals_function_and_validation() -> None:
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 4, 4, generator=g), torch.randn(2, 4, 4, generator=g)
    valid = torch.rand(2, 4, 4, generator=g) < 0.7
    for kw in [{}, {"divergence": "js", "reduction": "sum"}, {"divergence": "mse", "reduction": "none"}]:
        assert torch.equal(ConsistencyLoss(**kw)(a, b, valid), consistency_loss(a, b, valid, **kw))
    with pytest.raises(ValueError, match="divergence must be one of"):
        ConsistencyLoss(divergence="wasserstein")
    with pytest.raises(ValueError, match="reduction must be one of"):
        consistency_loss(a, b, valid, reduction="avg")
    with pytest.raises(ValueError, match="corrupted must have the shape of clean"):
        consistency_loss(a, b[:, :2], valid)
    with pytest.raises(TypeError, match="corrupted has dtype"):
        consistency_loss(a, b.double(), valid)
    with pytest.raises(TypeError, match=r"valid must be a torch\.bool"):
        consistency_loss(a, b, valid.long())
    with pytest.raises(ValueError, match="valid must have the shape of clean"):
        consistency_loss(a, b, valid[:1])
