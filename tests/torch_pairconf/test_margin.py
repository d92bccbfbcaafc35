from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import PairBatch, pair_batches
from torch_pairconf import PairMarginLoss, pair_margin_loss


def _conf(x: float, space: str, temperature: float) -> float:
    x = x / temperature
    if space == "logit":
        return x
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def loop_reference(
    batch: PairBatch, margin: float, k: int, space: str, temperature: float
) -> tuple[list[list[list[float]]], int]:
    """Per-pair hinge (0 for non-contributing pairs) and the number of contributing gold pairs."""
    B, N, M = batch.scores.shape
    out = [[[0.0] * M for _ in range(N)] for _ in range(B)]
    count = 0
    for b in range(B):
        for i in range(N):
            negs = sorted(
                (
                    float(batch.scores[b, i, j])
                    for j in range(M)
                    if batch.valid[b, i, j] and not batch.gold[b, i, j]
                ),
                reverse=True,
            )[:k]
            if not negs:
                continue
            for j in range(M):
                if batch.valid[b, i, j] and batch.gold[b, i, j]:
                    cg = _conf(float(batch.scores[b, i, j]), space, temperature)
                    hinges = [max(0.0, margin - (cg - _conf(n, space, temperature))) for n in negs]
                    out[b][i][j] = sum(hinges) / len(hinges)
                    count += 1
    return out, count


@given(
    pair_batches(),
    st.sampled_from([0.0, 0.2, 0.5]),
    st.integers(1, 4),
    st.sampled_from(["prob", "logit"]),
    st.sampled_from([1.0, 0.5, 3.0]),
)
def test_matches_loop_reference(batch: PairBatch, margin: float, k: int, space: str, temperature: float) -> None:
    ref, count = loop_reference(batch, margin, k, space, temperature)
    args = (batch.scores, batch.gold, batch.valid)
    kw = {"margin": margin, "k": k, "space": space, "temperature": temperature}
    none = pair_margin_loss(*args, **kw, reduction="none")
    torch.testing.assert_close(none, torch.tensor(ref, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    total = sum(v for plane in ref for row in plane for v in row)
    torch.testing.assert_close(pair_margin_loss(*args, **kw, reduction="sum"), torch.tensor(total, dtype=torch.float64))
    mean = total / count if count else 0.0
    torch.testing.assert_close(pair_margin_loss(*args, **kw, reduction="mean"), torch.tensor(mean, dtype=torch.float64))


@given(pair_batches(), st.integers(1, 3), st.sampled_from(["prob", "logit"]), st.booleans())
def test_finite_values_and_gradients(batch: PairBatch, k: int, space: str, detach: bool) -> None:
    scores = batch.scores.clone().requires_grad_()
    loss = pair_margin_loss(scores, batch.gold, batch.valid, margin=0.3, k=k, space=space, detach_negatives=detach)
    assert loss.requires_grad
    loss.backward()
    assert scores.grad is not None
    assert torch.isfinite(loss) and loss >= 0
    assert torch.isfinite(scores.grad).all()
    assert scores.grad.masked_select(~batch.valid).eq(0).all()


@given(pair_batches(extreme=False), st.integers(1, 3), st.booleans())
def test_gradient_reaches_only_gold_and_selected_negatives(batch: PairBatch, k: int, detach: bool) -> None:
    scores = batch.scores.clone().requires_grad_()
    pair_margin_loss(scores, batch.gold, batch.valid, margin=0.5, k=k, space="logit", detach_negatives=detach).backward()
    assert scores.grad is not None
    allowed = batch.gold & batch.valid
    if not detach:
        B, N, M = scores.shape
        for b in range(B):
            for i in range(N):
                negs = sorted(
                    (j for j in range(M) if batch.valid[b, i, j] and not batch.gold[b, i, j]),
                    key=lambda j: -float(batch.scores[b, i, j]),
                )
                kth = [float(batch.scores[b, i, j]) for j in negs][:k]
                # with ties any tied column may be selected: allow every column at a selected value
                for j in negs:
                    if kth and float(batch.scores[b, i, j]) >= kth[-1]:
                        allowed[b, i, j] = True
    assert scores.grad.masked_select(~allowed).eq(0).all()


@given(pair_batches(poison=False), st.sampled_from(["prob", "logit"]))
def test_invariant_to_values_at_masked_positions(batch: PairBatch, space: str) -> None:
    other = torch.where(batch.valid, batch.scores, torch.full_like(batch.scores, float("nan")))
    a = pair_margin_loss(batch.scores, batch.gold, batch.valid, margin=0.2, k=2, space=space, reduction="none")
    b = pair_margin_loss(other, batch.gold, batch.valid, margin=0.2, k=2, space=space, reduction="none")
    assert torch.equal(a, b)


@given(pair_batches(), st.integers(0, 2**31 - 1))
def test_invariant_to_permuting_columns(batch: PairBatch, seed: int) -> None:
    perm = torch.randperm(batch.scores.shape[-1], generator=torch.Generator().manual_seed(seed))
    a = pair_margin_loss(batch.scores, batch.gold, batch.valid, margin=0.2, k=2, reduction="none")
    b = pair_margin_loss(batch.scores[..., perm], batch.gold[..., perm], batch.valid[..., perm], margin=0.2, k=2, reduction="none")
    torch.testing.assert_close(a[..., perm], b)


@given(pair_batches(), st.sampled_from([0.0, 0.1, 0.4]), st.sampled_from(["prob", "logit"]))
def test_zero_exactly_when_all_gold_clear_the_margin(batch: PairBatch, margin: float, space: str) -> None:
    ref, _ = loop_reference(batch, margin, 1, space, 1.0)
    loss = pair_margin_loss(batch.scores, batch.gold, batch.valid, margin=margin, k=1, space=space, reduction="sum")
    all_clear = all(v == 0 for plane in ref for row in plane for v in row)
    assert bool(loss == 0) == all_clear


def test_known_value_and_multi_positive_rows() -> None:
    # Row 0: two gold pairs (2.0 and 0.5) vs hardest negative 1.0; the gold pairs are never
    # compared with each other. Logit space, margin 1: hinges 0.0 and 1.5 -> mean 0.75.
    scores = torch.tensor([[[2.0, 0.5, 1.0, -3.0]]])
    gold = torch.tensor([[[True, True, False, False]]])
    valid = torch.ones_like(gold)
    assert float(pair_margin_loss(scores, gold, valid, margin=1.0, space="logit")) == pytest.approx(0.75)
    # k=2 averages over 1.0 and -3.0: gold 2.0 -> (0 + 0)/2, gold 0.5 -> (1.5 + 0)/2
    assert float(pair_margin_loss(scores, gold, valid, margin=1.0, k=2, space="logit")) == pytest.approx(0.375)


def test_rows_without_gold_or_negative_give_attached_zero() -> None:
    scores = torch.randn(2, 3, 3, requires_grad=True)
    all_gold = torch.ones(2, 3, 3, dtype=torch.bool)
    for gold, valid in [
        (torch.zeros_like(all_gold), all_gold),  # no gold
        (all_gold, all_gold),  # no negative
        (all_gold, torch.zeros_like(all_gold)),  # nothing valid
    ]:
        loss = pair_margin_loss(scores, gold, valid)
        assert loss.requires_grad and float(loss.detach()) == 0.0
        (grad,) = torch.autograd.grad(loss, scores)
        assert grad.eq(0).all()


@pytest.mark.parametrize("space", ["prob", "logit"])
@pytest.mark.parametrize("k", [1, 3])
def test_gradcheck(space: str, k: int) -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    gold = torch.rand(2, 4, 5, generator=g) < 0.3
    valid = torch.rand(2, 4, 5, generator=g) < 0.9
    assert torch.autograd.gradcheck(
        lambda s: pair_margin_loss(s, gold, valid, margin=0.3 if space == "prob" else 2.0, k=k, space=space), (scores,)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_close_to_float64(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(4, 8, 8, generator=g)
    gold = torch.rand(4, 8, 8, generator=g) < 0.2
    valid = torch.rand(4, 8, 8, generator=g) < 0.9
    ref = pair_margin_loss(scores.double(), gold, valid, margin=0.2)
    low = pair_margin_loss(scores.to(dtype), gold, valid, margin=0.2)
    assert low.dtype == dtype
    assert abs(float(low) - float(ref)) < (2e-2 if dtype != torch.float32 else 1e-6)


def test_module_equals_function() -> None:
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(3, 5, 5, generator=g)
    gold = torch.rand(3, 5, 5, generator=g) < 0.3
    valid = torch.rand(3, 5, 5, generator=g) < 0.8
    for kwargs in [{}, {"k": 2, "space": "logit", "margin": 1.0, "reduction": "none"}, {"temperature": 2.0, "detach_negatives": True}]:
        assert torch.equal(PairMarginLoss(**kwargs)(scores, gold, valid), pair_margin_loss(scores, gold, valid, **kwargs))
    assert "margin=0.2" in repr(PairMarginLoss())


def test_detach_negatives_only_pushes_gold() -> None:
    scores = torch.tensor([[[0.0, 0.1, -1.0]]], requires_grad=True)
    gold = torch.tensor([[[True, False, False]]])
    valid = torch.ones_like(gold)
    pair_margin_loss(scores, gold, valid, margin=0.2, detach_negatives=True).backward()
    assert scores.grad is not None
    assert scores.grad[0, 0, 0] < 0 and scores.grad[0, 0, 1:].eq(0).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"margin": -0.1}, ValueError, "margin must be a finite number >= 0"),
        ({"margin": 1.0}, ValueError, "margin must be < 1 in space='prob'"),
        ({"k": 0}, ValueError, "k must be >= 1"),
        ({"k": 1.5}, TypeError, "k must be an int"),
        ({"space": "softmax"}, ValueError, "space must be one of"),
        ({"reduction": "avg"}, ValueError, "reduction must be one of"),
        ({"temperature": 0.0}, ValueError, "temperature must be > 0"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    s = torch.zeros(1, 2, 2)
    m = torch.ones(1, 2, 2, dtype=torch.bool)
    with pytest.raises(error, match=match):
        pair_margin_loss(s, m, m, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        PairMarginLoss(**kwargs)  # type: ignore[arg-type]


def test_mismatched_devices_rejected() -> None:
    s = torch.zeros(1, 2, 2, device="meta")
    m = torch.ones(1, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="gold is on cpu but scores is on meta"):
        pair_margin_loss(s, m, m)
