"""Shared Hypothesis profiles and strategies for pair-matrix inputs.

Profiles: ``ci`` (derandomised, fixed example budget; chosen automatically when ``CI`` is set)
and ``dev`` (random, more examples). Select one with ``HYPOTHESIS_PROFILE=dev``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import hypothesis.strategies as st
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@dataclass
class PairBatch:
    """One generated ``(scores, gold, valid)`` triple in float64."""

    scores: torch.Tensor
    gold: torch.Tensor
    valid: torch.Tensor


@st.composite
def pair_batches(
    draw: st.DrawFn,
    max_b: int = 3,
    max_n: int = 6,
    max_m: int | None = None,
    square: bool = False,
    ties: bool = True,
    extreme: bool = True,
    poison: bool = True,
) -> PairBatch:
    """Random ``(B, N, M)`` inputs: random masks (empty rows, all-masked rows, gold outside valid),
    tied scores (drawn from a small grid), extreme logits and NaN/inf at invalid positions."""
    b = draw(st.integers(1, max_b))
    n = draw(st.integers(1, max_n))
    m = n if square else draw(st.integers(1, max_m or max_n))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["normal", "grid", "extreme"] if extreme else ["normal", "grid"]))
    if kind == "grid" and ties:
        scores = torch.randint(-2, 3, (b, n, m), generator=g).double()
    elif kind == "extreme":
        scale = torch.tensor([1e-3, 1.0, 30.0, 1e4], dtype=torch.float64)
        pick = torch.randint(0, 4, (b, n, m), generator=g)
        scores = torch.randn(b, n, m, generator=g, dtype=torch.float64) * scale[pick]
    else:
        scores = torch.randn(b, n, m, generator=g, dtype=torch.float64) * 3
    p_valid = draw(st.sampled_from([0.0, 0.5, 0.8, 1.0]))
    p_gold = draw(st.sampled_from([0.0, 0.15, 0.4, 1.0]))
    valid = torch.rand(b, n, m, generator=g) < p_valid
    gold = torch.rand(b, n, m, generator=g) < p_gold
    if poison:
        bad = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30], dtype=torch.float64)
        pick = torch.randint(0, 4, (b, n, m), generator=g)
        scores = torch.where(valid, scores, bad[pick])
    return PairBatch(scores, gold, valid)


@st.composite
def ulp_batches(draw: st.DrawFn, max_b: int = 2, max_n: int = 5) -> PairBatch:
    """Like :func:`pair_batches`, but the valid scores are consecutive float64 logits.

    Starting from a base logit, the scores step up one ulp at a time until four distinct
    probabilities have been reached: several distinct logits then share one probability
    (sigmoid merges them) and the distinct probabilities are adjacent floats, the case where a
    threshold "halfway between two confidences" rounds onto one of them. Most entries are
    valid, and half of the batches have gold exactly at the upper levels, so that the best cut
    falls between two neighbours. Invalid positions keep the NaN/inf poison.
    """
    batch = draw(pair_batches(max_b=max_b, max_n=max_n))
    base = draw(st.sampled_from([-3.0, -0.7, 1.21, 2.5, 36.5]) | st.floats(-4, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.tensor(base, dtype=torch.float64)
    ulp = torch.nextafter(x, torch.tensor(float("inf"), dtype=torch.float64)) - x
    steps = x + torch.arange(64, dtype=torch.float64) * ulp
    new_prob = torch.ones(64, dtype=torch.bool)
    new_prob[1:] = torch.sigmoid(steps[1:]) != torch.sigmoid(steps[:-1])
    n_steps = int(new_prob.nonzero()[:4].max()) + 1 if int(new_prob.sum()) > 3 else 64
    steps = steps[: max(n_steps, 2)]
    shape = batch.scores.shape
    pick = torch.randint(0, steps.numel(), shape, generator=g)
    valid = batch.valid | (torch.rand(shape, generator=g) < 0.75)
    scores = torch.where(valid, steps[pick], batch.scores)
    gold = batch.gold
    if draw(st.booleans()):
        cut = draw(st.integers(1, steps.numel() - 1))
        gold = torch.sigmoid(steps[pick]) >= torch.sigmoid(steps[cut])
    return PairBatch(scores, gold, valid)
