"""The fused CPU implementations of the margin and KL consistency losses against the composite
expressions and the Python-loop references.

``pair_margin_loss`` and ``consistency_loss(divergence="kl")`` pick their implementation with
``torch_pairconf._fused.applies`` and its ``MIN_NUMEL``; every test here forces one path or the
other by monkeypatching that constant, so both stay covered whatever its value.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import PairBatch, pair_batches
from tests.torch_pairconf.test_consistency import divergence_reference
from tests.torch_pairconf.test_margin import loop_reference
from torch_pairconf import _fused, consistency_loss, mine_hard_negatives, pair_margin_loss

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@contextmanager
def path(fused: bool) -> Iterator[None]:
    """Force the fused (``True``) or the composite (``False``) implementation."""
    with pytest.MonkeyPatch.context() as mp:
        threshold = 1 if fused else sys.maxsize
        mp.setattr(_fused, "MIN_NUMEL", threshold)
        yield


def margin_run(
    batch: PairBatch, fused: bool, dtype: torch.dtype = torch.float64, **kwargs: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and gradient with respect to the scores on one path."""
    scores = batch.scores.to(dtype, copy=True).requires_grad_()
    with path(fused):
        loss = pair_margin_loss(scores, batch.gold, batch.valid, **kwargs)  # type: ignore[arg-type]
    (grad,) = torch.autograd.grad(loss, scores)
    return loss.detach(), grad


def kl_run(
    clean: torch.Tensor, corrupted: torch.Tensor, valid: torch.Tensor, fused: bool, **kwargs: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """KL consistency loss and the gradients with respect to both views on one path."""
    a = clean.clone().requires_grad_()
    b = corrupted.clone().requires_grad_()
    with path(fused):
        loss = consistency_loss(a, b, valid, divergence="kl", **kwargs)  # type: ignore[arg-type]
    loss.backward()
    assert b.grad is not None
    return loss.detach(), b.grad, a.grad


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    """Half precision: a few units in the last place (the fused path sums the k slots of a pair
    with one rounding each where the composite sums them in one reduction)."""
    return {
        torch.float64: {"rtol": 1e-12, "atol": 1e-14},
        torch.float32: {"rtol": 1e-6, "atol": 1e-7},
        torch.bfloat16: {"rtol": 2e-2, "atol": 2e-3},
        torch.float16: {"rtol": 4e-3, "atol": 1e-4},
    }[dtype]


def check_clean_grad(
    fused_a: torch.Tensor,
    composite_a: torch.Tensor,
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    valid: torch.Tensor,
    mean: bool,
) -> None:
    """d KL / d clean of both paths against the closed form sigmoid(a) sigmoid(-a) (a - b) (times
    1 / count for the mean), in float64, where the clamp at 0 passes gradient: the KL before
    clamping, as both paths round it (in at least float32), is >= 0."""
    work = torch.promote_types(clean.dtype, torch.float32)
    aw, bw = clean.to(work), corrupted.to(work)
    unclamped = F.softplus(bw) - F.softplus(aw) - torch.sigmoid(aw) * (bw - aw)
    g = 1.0 / max(int(valid.sum()), 1) if mean else 1.0
    a64, b64 = clean.double(), corrupted.double()
    exact = torch.sigmoid(a64) * torch.sigmoid(-a64) * (a64 - b64) * g
    exact = torch.where(valid & (unclamped >= 0), exact, 0.0)
    scale = float(exact.abs().max()) if exact.numel() else 0.0
    tol = tolerance(clean.dtype)
    atol = tol["atol"] + tol["rtol"] * scale
    torch.testing.assert_close(fused_a.double(), exact, rtol=tol["rtol"], atol=atol)
    # The composite's autograd sums -sigmoid(a) (softplus' backward) and +sigmoid(a) (the product
    # rule), two O(1) terms rounded apart (a few ulps of 1), and above 20 softplus' backward is
    # exactly 1: off by up to sigmoid(-20) ~ 2.1e-9 more.
    ulps = 8 * torch.finfo(work).eps + 2.1e-9
    torch.testing.assert_close(composite_a.double(), exact, rtol=tol["rtol"], atol=atol + ulps * g)


def assert_grad_support(grad: torch.Tensor, valid: torch.Tensor) -> None:
    assert torch.isfinite(grad).all()
    assert grad.masked_select(~valid).eq(0).all()


# --------------------------------------------------------------------------- the gate


def test_gate_selects_the_implementation() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, 5, generator=g, requires_grad=True)
    gold = torch.rand(2, 4, 5, generator=g) < 0.3
    valid = torch.ones(2, 4, 5, dtype=torch.bool)
    for fused in (True, False):
        with path(fused):
            names = {
                type(pair_margin_loss(scores, gold, valid, k=k, reduction=r).grad_fn).__name__
                for k in (1, 3)
                for r in ("mean", "sum")
            }
            kl = consistency_loss(scores.detach(), scores, valid, divergence="kl").grad_fn
        if fused:
            assert names == {"_HingeK1Backward", "_HingeTopKBackward"}
            assert type(kl).__name__ == "_KLLossBackward"
        else:
            assert not any(n.startswith(("_Hinge", "_KL")) for n in names)
            assert not type(kl).__name__.startswith("_KL")
    # Shape and device facts only: CPU, at least one element, not under torch.compile.
    assert _fused.MIN_NUMEL == 1  # the shipped setting: every non-empty CPU input
    assert _fused.applies(torch.zeros(1, 1, 1), "mean")
    assert _fused.applies(torch.zeros(1, 1, 1), "sum")
    assert not _fused.applies(torch.zeros(1, 1, 1), "none")
    assert not _fused.applies(torch.zeros(2, 3, 0), "mean")
    assert not _fused.applies(torch.zeros(2, 3, 3, device="meta"), "mean")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_fused, "MIN_NUMEL", 19)
        assert not _fused.applies(torch.zeros(2, 3, 3), "mean")


def test_compiling_probe_falls_back_before_torch_2_3(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch import _dynamo

    from torch_pairconf import _tracing

    assert _tracing._is_compiling_fn() is torch.compiler.is_compiling
    monkeypatch.delattr(torch.compiler, "is_compiling")
    assert _tracing._is_compiling_fn() is _dynamo.is_compiling
    assert _tracing.compiling() is False  # eager here


# --------------------------------------------------------------------------- margin loss


@given(
    pair_batches(),
    st.sampled_from([0.0, 0.2, 0.5]),
    st.integers(1, 4),
    st.sampled_from(["prob", "logit"]),
    st.sampled_from([1.0, 0.5, 3.0]),
    st.booleans(),
    st.sampled_from(["mean", "sum"]),
)
def test_margin_fused_matches_composite_and_loop(
    batch: PairBatch, margin: float, k: int, space: str, temperature: float, detach: bool, reduction: str
) -> None:
    kwargs = {"margin": margin, "k": k, "space": space, "temperature": temperature}
    kwargs |= {"detach_negatives": detach, "reduction": reduction}
    fused, fused_grad = margin_run(batch, True, **kwargs)
    composite, composite_grad = margin_run(batch, False, **kwargs)
    # The loop reference (NaN/inf poison at the invalid positions, empty rows, ties, extremes).
    ref, count = loop_reference(batch, margin, k, space, temperature)
    total = sum(v for plane in ref for row in plane for v in row)
    expected = total / max(count, 1) if reduction == "mean" else total
    torch.testing.assert_close(fused, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    if k == 1:  # same expression, same order: bit for bit
        assert torch.equal(fused, composite)
        assert torch.equal(fused_grad, composite_grad)
    torch.testing.assert_close(fused, composite, **tolerance(torch.float64))
    torch.testing.assert_close(fused_grad, composite_grad, **tolerance(torch.float64))
    assert_grad_support(fused_grad, batch.valid)
    if detach:  # only gold pairs are pushed: never upward
        assert (fused_grad <= 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    batch=pair_batches(max_b=3, max_n=9),
    k=st.integers(1, 3),
    space=st.sampled_from(["prob", "logit"]),
    detach=st.booleans(),
)
def test_margin_fused_matches_composite_in_every_dtype(
    dtype: torch.dtype, batch: PairBatch, k: int, space: str, detach: bool
) -> None:
    kwargs = {"margin": 0.3 if space == "prob" else 1.0, "k": k, "space": space}
    kwargs["detach_negatives"] = detach
    fused, fused_grad = margin_run(batch, True, dtype, **kwargs)
    composite, composite_grad = margin_run(batch, False, dtype, **kwargs)
    assert fused.dtype == fused_grad.dtype == dtype
    if k == 1:
        assert torch.equal(fused, composite)
    tol = tolerance(dtype)
    torch.testing.assert_close(fused, composite, **tol)
    scale = float(composite_grad.abs().max()) if composite_grad.numel() else 0.0
    torch.testing.assert_close(fused_grad, composite_grad, rtol=tol["rtol"], atol=tol["atol"] + tol["rtol"] * scale)
    assert_grad_support(fused_grad, batch.valid)


def test_margin_schedule_keeps_the_constant_cache_bounded() -> None:
    # A margin warm-up passes a new float every step; each must be used exactly, none kept forever.
    from torch_pairconf._fused import _common

    scores = torch.tensor([[[2.0, 1.5, -1.0]]])
    gold = torch.tensor([[[True, False, False]]])
    valid = torch.ones(1, 1, 3, dtype=torch.bool)
    for step in range(200):
        m = 0.5 + step / 100
        loss = pair_margin_loss(scores, gold, valid, margin=m, space="logit")
        composite = pair_margin_loss(scores, gold, valid, margin=m, space="logit", reduction="none")
        assert torch.equal(loss, composite.sum())  # one contributing pair: mean == sum
        torch.testing.assert_close(loss, torch.tensor(max(0.0, m - 0.5)))
    assert len(_common._CONSTANTS) < 100  # far fewer than the 200 margins used


@given(pair_batches(), st.integers(1, 3), st.sampled_from(["prob", "logit"]))
def test_margin_fused_forward_without_grad(batch: PairBatch, k: int, space: str) -> None:
    # Inputs without grad (or under no_grad) take the fused forward without the autograd.Function.
    with path(True):
        plain = pair_margin_loss(batch.scores, batch.gold, batch.valid, margin=0.2, k=k, space=space)
        with torch.no_grad():
            no_grad = pair_margin_loss(batch.scores.clone().requires_grad_(), batch.gold, batch.valid, margin=0.2, k=k, space=space)
    with_grad, _ = margin_run(batch, True, margin=0.2, k=k, space=space)
    assert torch.equal(plain, with_grad) and torch.equal(no_grad, with_grad)


@pytest.mark.parametrize("space", ["prob", "logit"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_margin_fused_gradcheck(space: str, k: int, temperature: float, reduction: str) -> None:
    # (detach_negatives=True deliberately is not the gradient of the value: covered against the
    # composite path above.)
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, 6, dtype=torch.float64, generator=g)
    gold = torch.rand(2, 4, 6, generator=g) < 0.3
    valid = torch.rand(2, 4, 6, generator=g) < 0.85
    gold[0, 0] = valid[0, 0] = True  # a row with gold pairs and no negative
    scores = torch.where(valid, scores, torch.nan).requires_grad_()  # NaN at masked positions
    margin = 0.3 if space == "prob" else 2.0
    with path(True):
        assert torch.autograd.gradcheck(
            lambda s: pair_margin_loss(s, gold, valid, margin=margin, k=k, space=space, temperature=temperature, detach_negatives=False, reduction=reduction),
            (scores,),
        )


def test_margin_fused_empty_rows_ties_and_extremes() -> None:
    scores = torch.tensor(
        [
            [[1.0, 1.0, 1.0, -1e4], [2.0, 0.0, 0.0, 0.0], [1e4, -1e4, 3.0, 30.0]],
            [[0.5, float("nan"), float("inf"), -float("inf")], [0.0, 0.0, 0.0, 0.0], [1e30, 1.0, 2.0, 3.0]],
        ],
        dtype=torch.float64,
    )
    gold = torch.tensor(
        [
            [[True, False, False, False], [True, True, True, True], [False, True, False, False]],
            [[True, True, True, True], [False, False, False, False], [True, True, False, False]],
        ]
    )
    valid = torch.tensor(
        [
            [[True, True, True, True], [True, True, True, True], [True, True, True, True]],
            [[True, False, False, False], [False, False, False, False], [False, True, True, True]],
        ]
    )
    batch = PairBatch(scores, gold, valid)
    for k in (1, 2):
        for space in ("prob", "logit"):
            kwargs = {"margin": 0.5, "k": k, "space": space}
            fused, fused_grad = margin_run(batch, True, **kwargs)
            composite, composite_grad = margin_run(batch, False, **kwargs)
            assert torch.equal(fused, composite)
            torch.testing.assert_close(fused_grad, composite_grad, rtol=1e-12, atol=1e-15)
            assert_grad_support(fused_grad, valid)
    # Rows without negatives / without gold / nothing valid: an attached zero, zero gradients.
    s = torch.randn(2, 3, 3, requires_grad=True)
    ones = torch.ones(2, 3, 3, dtype=torch.bool)
    with path(True):
        for gold_, valid_ in [(~ones, ones), (ones, ones), (ones, ~ones)]:
            for k in (1, 2):
                loss = pair_margin_loss(s, gold_, valid_, k=k)
                assert loss.requires_grad and float(loss.detach()) == 0.0
                (grad,) = torch.autograd.grad(loss, s)
                assert grad.eq(0).all()


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize(("space", "margin", "gold_score"), [("logit", 0.5, 1.5), ("logit", 0.0, 1.0), ("prob", 0.0, 1.0)])
def test_margin_fused_gradient_at_the_hinge_kink(k: int, space: str, margin: float, gold_score: float) -> None:
    # The gold pair sits exactly at c_neg + margin: clamp_min(0) passes the gradient at 0, so
    # both the gold pair and the negative get one (the composite path's convention).
    scores = torch.tensor([[[gold_score, 1.0, 1.0, -2.0], [gold_score, 1.0, -5.0, 3.0]]], dtype=torch.float64)
    gold = torch.tensor([[[True, False, False, False], [True, False, False, False]]])
    valid = torch.ones_like(gold)
    batch = PairBatch(scores, gold, valid)
    kwargs = {"margin": margin, "k": k, "space": space}
    fused, fused_grad = margin_run(batch, True, **kwargs)
    composite, composite_grad = margin_run(batch, False, **kwargs)
    assert torch.equal(fused, composite)
    assert fused_grad[0, 0, 0] < 0 and fused_grad[0, 0, 1:].abs().sum() > 0
    torch.testing.assert_close(fused_grad, composite_grad, rtol=1e-12, atol=1e-15)


def test_margin_fused_degenerate_shapes_and_none_reduction() -> None:
    with path(True):
        for shape in [(2, 3, 0), (0, 3, 3), (2, 0, 3)]:
            s = torch.zeros(shape, requires_grad=True)
            m = torch.ones(shape, dtype=torch.bool)
            assert float(pair_margin_loss(s, m, m).detach()) == 0.0
        g = torch.Generator().manual_seed(4)
        batch = PairBatch(torch.randn(2, 4, 4, generator=g), torch.rand(2, 4, 4, generator=g) < 0.3, torch.ones(2, 4, 4, dtype=torch.bool))
        none = pair_margin_loss(batch.scores, batch.gold, batch.valid, reduction="none")
    with path(False):
        assert torch.equal(none, pair_margin_loss(batch.scores, batch.gold, batch.valid, reduction="none"))


def test_margin_fused_backward_twice_and_not_twice_differentiable() -> None:
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(2, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    gold = torch.rand(2, 5, 5, generator=g) < 0.3
    valid = torch.ones(2, 5, 5, dtype=torch.bool)
    with path(True):
        for k in (1, 3):
            loss = pair_margin_loss(scores, gold, valid, k=k)
            (first,) = torch.autograd.grad(3 * loss, scores, retain_graph=True)
            (second,) = torch.autograd.grad(3 * loss, scores)
            assert torch.equal(first, second)
            # A gradient penalty would otherwise silently see a constant gradient.
            with pytest.raises(RuntimeError, match="not twice differentiable"):
                torch.autograd.grad(pair_margin_loss(scores, gold, valid, k=k), scores, create_graph=True)
        with pytest.raises(RuntimeError, match="not twice differentiable"):
            torch.autograd.grad(consistency_loss(scores.detach(), scores, valid), scores, create_graph=True)


# --------------------------------------------------------------------------- KL consistency


def kl_inputs(batch: PairBatch, seed: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch.scores.shape, generator=g, dtype=torch.float64)
    clean = batch.scores
    # The corrupted view keeps the poison of the clean one at masked positions, with its own.
    corrupted = torch.where(batch.valid, clean + noise, -clean)
    return clean.to(dtype), corrupted.to(dtype)


@given(pair_batches(), st.integers(0, 2**31 - 1), st.booleans(), st.sampled_from(["mean", "sum"]))
def test_kl_fused_matches_composite_and_loop(batch: PairBatch, seed: int, detach: bool, reduction: str) -> None:
    clean, corrupted = kl_inputs(batch, seed)
    kwargs = {"detach_clean": detach, "reduction": reduction}
    fused, fused_b, fused_a = kl_run(clean, corrupted, batch.valid, True, **kwargs)
    composite, composite_b, composite_a = kl_run(clean, corrupted, batch.valid, False, **kwargs)
    # Same expression, same order: values and d/d corrupted bit for bit.
    assert torch.equal(fused, composite)
    assert torch.equal(fused_b, composite_b)
    assert_grad_support(fused_b, batch.valid)
    if detach:
        assert fused_a is None
    else:  # d/d clean in closed form (the composite sums three rounded terms)
        assert fused_a is not None and composite_a is not None
        assert_grad_support(fused_a, batch.valid)
        check_clean_grad(fused_a, composite_a, clean, corrupted, batch.valid, mean=reduction == "mean")
    ref = torch.zeros_like(clean)
    for idx in zip(*torch.where(batch.valid), strict=True):
        ref[idx] = divergence_reference(float(clean[idx]), float(corrupted[idx]), "kl")
    expected = ref.sum() / max(int(batch.valid.sum()), 1) if reduction == "mean" else ref.sum()
    # Extreme logits (|x| up to ~1e4) lose relative precision in the reference's log(sigmoid).
    torch.testing.assert_close(fused, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
@given(batch=pair_batches(max_b=3, max_n=9), seed=st.integers(0, 2**31 - 1), detach=st.booleans())
def test_kl_fused_matches_composite_in_every_dtype(dtype: torch.dtype, batch: PairBatch, seed: int, detach: bool) -> None:
    clean, corrupted = kl_inputs(batch, seed, dtype)
    fused, fused_b, fused_a = kl_run(clean, corrupted, batch.valid, True, detach_clean=detach)
    composite, composite_b, composite_a = kl_run(clean, corrupted, batch.valid, False, detach_clean=detach)
    assert fused.dtype == fused_b.dtype == dtype
    assert torch.equal(fused, composite) and torch.equal(fused_b, composite_b)
    if not detach:
        assert fused_a is not None and composite_a is not None
        check_clean_grad(fused_a, composite_a, clean, corrupted, batch.valid, mean=True)
        assert_grad_support(fused_a, batch.valid)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kl_fused_gradcheck(reduction: str) -> None:
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(2, 3, 5, dtype=torch.float64, generator=g)
    corrupted = torch.randn(2, 3, 5, dtype=torch.float64, generator=g)
    valid = torch.rand(2, 3, 5, generator=g) < 0.8
    clean = torch.where(valid, clean, torch.inf).requires_grad_()
    corrupted = torch.where(valid, corrupted, torch.nan).requires_grad_()
    with path(True):
        assert torch.autograd.gradcheck(
            lambda a, b: consistency_loss(a, b, valid, divergence="kl", detach_clean=False, reduction=reduction),
            (clean, corrupted),
        )


def test_kl_fused_forward_without_grad_and_empty_valid() -> None:
    g = torch.Generator().manual_seed(6)
    clean, corrupted = torch.randn(2, 4, 4, generator=g), torch.randn(2, 4, 4, generator=g)
    valid = torch.rand(2, 4, 4, generator=g) < 0.6
    with path(True):
        plain = consistency_loss(clean, corrupted, valid)
        attached = consistency_loss(clean, corrupted.clone().requires_grad_(), valid)
        empty = consistency_loss(clean, corrupted.clone().requires_grad_(), torch.zeros_like(valid))
    assert torch.equal(plain, attached.detach())
    assert empty.requires_grad and float(empty.detach()) == 0.0


# --------------------------------------------------------------------------- miner


def test_miner_k1_picks_the_first_of_tied_negatives() -> None:
    # k=1 uses max(dim): among tied best negatives the first column, as the fused margin loss;
    # the values do not depend on the tie-break.
    scores = torch.tensor([[[3.0, 1.0, 2.0, 2.0, 2.0], [0.0, 5.0, 5.0, 5.0, float("nan")]]])
    gold = torch.tensor([[[True, False, False, False, False], [False, True, False, False, False]]])
    valid = torch.tensor([[[True] * 5, [True, True, True, True, False]]])
    neg = mine_hard_negatives(scores, gold, valid, k=1)
    assert neg.indices.tolist() == [[[2], [2]]]
    assert neg.values.tolist() == [[[2.0], [5.0]]] and neg.mask.all()
    for k in (2, 3):
        assert mine_hard_negatives(scores, gold, valid, k=k).values[..., 0].tolist() == [[2.0, 5.0]]
