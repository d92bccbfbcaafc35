from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from torch_pairconf import ContextCorruption, context_corruption, gold_utterances

MODES = ["zero", "mean", "noise", "shuffle"]


def _inputs(b: int = 4, n: int = 7, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g) * 3 + 1
    lengths = torch.randint(1, n + 1, (b,), generator=g)
    mask = torch.arange(n) < lengths.unsqueeze(-1)
    protect = (torch.rand(b, n, generator=g) < 0.3) & mask
    x = torch.where(mask.unsqueeze(-1), x, torch.nan)  # padding may hold anything
    return x, protect, mask


@given(st.sampled_from(MODES), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_protected_and_padding_untouched(mode: str, p: float, seed: int) -> None:
    x, protect, mask = _inputs(seed=seed)
    y, hit = context_corruption(x, protect, mask, p=p, mode=mode, generator=torch.Generator().manual_seed(seed))
    assert y.shape == x.shape and hit.shape == mask.shape and hit.dtype == torch.bool
    assert not (hit & (protect | ~mask)).any()
    keep = ~hit
    assert torch.equal(y[keep].nan_to_num(123.0), x[keep].nan_to_num(123.0))
    assert torch.isfinite(y[hit]).all()


@pytest.mark.parametrize("mode", MODES)
def test_replacements_follow_the_mode(mode: str) -> None:
    x, protect, mask = _inputs(b=3, n=6, d=4, seed=5)
    y, hit = context_corruption(x, protect, mask, p=1.0, mode=mode, generator=torch.Generator().manual_seed(1))
    assert torch.equal(hit, mask & ~protect)
    real = torch.where(mask.unsqueeze(-1), x, 0.0)
    for b in range(3):
        for i in range(6):
            if not hit[b, i]:
                continue
            if mode == "zero":
                assert y[b, i].eq(0).all()
            elif mode == "mean":
                expected = real[b].sum(0) / mask[b].sum()
                torch.testing.assert_close(y[b, i], expected)
            elif mode == "shuffle":
                rows = real[mask]
                assert any(torch.equal(y[b, i], r) for r in rows)
    if mode == "noise":
        # Gaussian at the conversation's RMS scale: the pooled z-scores look standard normal
        z = []
        for b in range(3):
            rms = real[b].square().sum().div(mask[b].sum() * 4).sqrt()
            z.append(y[b][hit[b]] / rms)
        zz = torch.cat([t.reshape(-1) for t in z])
        assert abs(float(zz.mean())) < 0.6 and 0.4 < float(zz.std()) < 1.8


@pytest.mark.parametrize("p", [0.1, 0.3, 0.7])
def test_corruption_rate_is_p(p: float) -> None:
    x = torch.randn(64, 40, 3)
    mask = torch.ones(64, 40, dtype=torch.bool)
    protect = torch.zeros_like(mask)
    protect[:, :10] = True
    _, hit = context_corruption(x, protect, mask, p=p, generator=torch.Generator().manual_seed(0))
    eligible = 64 * 30
    rate = float(hit.sum()) / eligible
    # binomial standard error; 5 sigma keeps the test from flaking yet catches a wrong rate
    assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / eligible)
    assert not hit[:, :10].any()


@pytest.mark.parametrize("mode", MODES)
def test_identity_in_eval_and_at_p0(mode: str) -> None:
    x, protect, mask = _inputs()
    module = ContextCorruption(0.5, mode=mode)
    module.eval()
    y, hit = module(x, protect, mask)
    assert y is x and not hit.any()
    y, hit = context_corruption(x, protect, mask, p=0.0, mode=mode)
    assert y is x and not hit.any()


@pytest.mark.parametrize("mode", MODES)
def test_same_seed_same_result_and_module_equals_function(mode: str) -> None:
    x, protect, mask = _inputs(seed=2)
    a = context_corruption(x, protect, mask, p=0.5, mode=mode, generator=torch.Generator().manual_seed(7))
    b = context_corruption(x, protect, mask, p=0.5, mode=mode, generator=torch.Generator().manual_seed(7))
    m = ContextCorruption(0.5, mode=mode, generator=torch.Generator().manual_seed(7))(x, protect, mask)
    for other in (b, m):
        assert torch.equal(a[1], other[1])
        assert torch.equal(a[0].nan_to_num(9.0), other[0].nan_to_num(9.0))


def test_gradient_flows_to_kept_utterances_only() -> None:
    x = torch.randn(2, 5, 3, requires_grad=True)
    mask = torch.ones(2, 5, dtype=torch.bool)
    y, hit = context_corruption(x, torch.zeros_like(mask), mask, p=0.5, mode="zero", generator=torch.Generator().manual_seed(0))
    y.sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad[..., 0] == 1, ~hit)


def test_all_padding_batch_is_fine() -> None:
    x = torch.randn(2, 3, 4)
    none = torch.zeros(2, 3, dtype=torch.bool)
    for mode in MODES:
        y, hit = context_corruption(x, none, none, p=1.0, mode=mode)
        assert not hit.any() and torch.equal(y, x)


def test_gold_utterances() -> None:
    gold = torch.zeros(1, 4, 4, dtype=torch.bool)
    gold[0, 2, 0] = True  # emotion 2, cause 0
    assert gold_utterances(gold).tolist() == [[True, False, True, False]]
    with pytest.raises(ValueError, match="gold must have shape"):
        gold_utterances(torch.zeros(1, 3, 4, dtype=torch.bool))


def test_bad_arguments() -> None:
    x, protect, mask = _inputs()
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        ContextCorruption(1.5)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        context_corruption(x, protect, mask, p=-0.1)
    with pytest.raises(ValueError, match="mode must be one of"):
        ContextCorruption(0.2, mode="dropout")
    with pytest.raises(TypeError, match=r"protect must be a torch\.bool"):
        context_corruption(x, protect.float(), mask, p=0.2)
    with pytest.raises(ValueError, match=r"mask must have shape \(B, N\)"):
        context_corruption(x, protect, mask[:, :2], p=0.2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, N, D\)"):
        context_corruption(x[0], protect, mask, p=0.2)


def test_same_device_treats_missing_index_as_current() -> None:
    from torch_pairconf._checks import same_device

    assert same_device(torch.device("cuda"), torch.device("cuda:0"))
    assert not same_device(torch.device("cuda:1"), torch.device("cuda:0"))
    assert not same_device(torch.device("cpu"), torch.device("cuda"))
