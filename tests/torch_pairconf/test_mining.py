from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import PairBatch, pair_batches
from torch_pairconf import mine_hard_negatives


def loop_reference(batch: PairBatch, k: int) -> list[list[list[float]]]:
    """Per row, the k largest scores among valid non-gold candidates (descending)."""
    out = []
    for b in range(batch.scores.shape[0]):
        rows = []
        for i in range(batch.scores.shape[1]):
            negs = [
                float(batch.scores[b, i, j])
                for j in range(batch.scores.shape[2])
                if batch.valid[b, i, j] and not batch.gold[b, i, j]
            ]
            rows.append(sorted(negs, reverse=True)[:k])
        out.append(rows)
    return out


@given(pair_batches(), st.integers(1, 8))
def test_matches_loop_reference(batch: PairBatch, k: int) -> None:
    res = mine_hard_negatives(batch.scores, batch.gold, batch.valid, k=k)
    ref = loop_reference(batch, k)
    assert res.values.shape == res.indices.shape == res.mask.shape == (*batch.scores.shape[:2], k)
    negative = batch.valid & ~batch.gold
    for b, rows in enumerate(ref):
        for i, expected in enumerate(rows):
            n = len(expected)
            assert res.mask[b, i].tolist() == [True] * n + [False] * (k - n)
            assert res.values[b, i, :n].tolist() == expected
            assert res.values[b, i, n:].eq(0).all()
            # indices point at negatives carrying exactly those scores
            for r in range(n):
                j = int(res.indices[b, i, r])
                assert negative[b, i, j]
                assert float(batch.scores[b, i, j]) == expected[r]
    assert (res.indices >= 0).all() and (res.indices < batch.scores.shape[2]).all()


@given(pair_batches(extreme=False))
def test_gradient_reaches_only_selected_negatives(batch: PairBatch) -> None:
    scores = batch.scores.clone().requires_grad_()
    res = mine_hard_negatives(scores, batch.gold, batch.valid, k=2)
    res.values.sum().backward()
    assert scores.grad is not None
    expected = torch.zeros_like(scores)
    for b, i, r in zip(*torch.where(res.mask), strict=True):
        expected[b, i, res.indices[b, i, r]] += 1
    assert torch.equal(scores.grad, expected)
    assert not res.indices.requires_grad and not res.mask.requires_grad


def test_ties_are_deterministic_and_valid() -> None:
    scores = torch.zeros(1, 2, 4)
    gold = torch.tensor([[[True, False, False, False], [False] * 4]])
    valid = torch.ones(1, 2, 4, dtype=torch.bool)
    res = mine_hard_negatives(scores, gold, valid, k=4)
    assert res.mask.tolist() == [[[True, True, True, False], [True] * 4]]
    assert 0 not in res.indices[0, 0, :3].tolist()


def test_k_larger_than_m_is_masked() -> None:
    scores = torch.tensor([[[1.0, 2.0]]])
    res = mine_hard_negatives(scores, torch.zeros(1, 1, 2, dtype=torch.bool), torch.ones(1, 1, 2, dtype=torch.bool), k=5)
    assert res.values.tolist() == [[[2.0, 1.0, 0.0, 0.0, 0.0]]]
    assert res.mask.tolist() == [[[True, True, False, False, False]]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_and_poisoned_padding(dtype: torch.dtype) -> None:
    scores = torch.tensor([[[math.nan, 0.5, math.inf, -1.0]]], dtype=dtype)
    valid = torch.tensor([[[False, True, False, True]]])
    gold = torch.zeros_like(valid)
    res = mine_hard_negatives(scores, gold, valid, k=3)
    assert res.values.dtype == dtype
    assert res.indices[0, 0, :2].tolist() == [1, 3]
    assert res.mask.tolist() == [[[True, True, False]]]
    assert torch.isfinite(res.values).all()


def test_errors_name_the_argument() -> None:
    s = torch.zeros(1, 2, 3)
    m = torch.ones(1, 2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="k must be >= 1"):
        mine_hard_negatives(s, m, m, k=0)
    with pytest.raises(TypeError, match=r"gold must be a torch\.bool"):
        mine_hard_negatives(s, m.float(), m)
    with pytest.raises(ValueError, match="valid must have the shape"):
        mine_hard_negatives(s, m, m[:, :1])
    with pytest.raises(ValueError, match="transpose"):
        mine_hard_negatives(s, m.transpose(-1, -2), m)
    with pytest.raises(ValueError, match=r"scores must have shape \(B, N, M\)"):
        mine_hard_negatives(s[0], m[0], m[0])
    with pytest.raises(TypeError, match="scores must be a floating-point"):
        mine_hard_negatives(s.long(), m, m)
