"""CUDA agreement with the CPU results, every dtype, eager and compiled.

Skipped where no GPU is present (CI); run on a GPU machine with ``python -m pytest tests/torch_pairconf/test_cuda.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import torch_pairconf as tp

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
TOL = {torch.float16: 2e-2, torch.bfloat16: 6e-2, torch.float32: 1e-5, torch.float64: 1e-10}


def _inputs(device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(8, 17, 17, generator=g) * 3
    gold = torch.rand(8, 17, 17, generator=g) < 0.1
    valid = torch.rand(8, 17, 17, generator=g) < 0.9
    scores = torch.where(valid, scores, torch.nan)
    return scores.to(device, dtype), gold.to(device), valid.to(device)


LOSSES: dict[str, Callable[..., Any]] = {
    "margin_prob_k1": lambda s, g, v: tp.pair_margin_loss(s, g, v, margin=0.2, k=1),
    "margin_logit_k4": lambda s, g, v: tp.pair_margin_loss(s, g, v, margin=1.0, k=4, space="logit"),
    "listwise_k4": lambda s, g, v: tp.pair_listwise_loss(s, g, v, k=4),
    "listwise_all": lambda s, g, v: tp.pair_listwise_loss(s, g, v, k=None),
    "ap_batch": lambda s, g, v: tp.pair_ap_loss(s, g, v, scope="batch", temperature=0.5),
    "ap_row": lambda s, g, v: tp.pair_ap_loss(s, g, v, scope="row"),
    "auc_batch": lambda s, g, v: tp.pair_auc_loss(s, g, v, scope="batch"),
    "auc_row_k3": lambda s, g, v: tp.pair_auc_loss(s, g, v, scope="row", k=3, surrogate="hinge"),
    "relative_hardest": lambda s, g, v: tp.pair_relative_margin_loss(s, g, v),
    "relative_mean": lambda s, g, v: tp.pair_relative_margin_loss(s, g, v, anchor="mean"),
    "consistency_kl": lambda s, g, v: tp.consistency_loss(torch.where(v, s, 0).detach().flip(-1), torch.where(v, s, 0), v),
    "consistency_js": lambda s, g, v: tp.consistency_loss(torch.where(v, s, 0).detach().flip(-1), torch.where(v, s, 0), v, divergence="js"),
    "miner_k3": lambda s, g, v: tp.mine_hard_negatives(s, g, v, k=3).values.float().sum(),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("compiled", [False, True])
def test_cuda_matches_cpu(name: str, dtype: torch.dtype, compiled: bool) -> None:
    if compiled and dtype != torch.float32:
        pytest.skip("compile is checked in float32")
    fn = LOSSES[name]
    results = []
    for device in ("cpu", "cuda"):
        s, g, v = _inputs(device, dtype)
        s.requires_grad_()
        f = torch.compile(fn, fullgraph=True) if compiled and device == "cuda" else fn
        out = f(s, g, v)
        out.backward()
        assert s.grad is not None
        assert torch.isfinite(out) and torch.isfinite(s.grad).all()
        results.append((out.detach().double().cpu(), s.grad.double().cpu()))
    tol = TOL[dtype]
    torch.testing.assert_close(results[1][0], results[0][0], rtol=tol, atol=tol)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=tol, atol=tol)


def test_cuda_corruption_and_diagnostics() -> None:
    x = torch.randn(4, 6, 5, device="cuda")
    mask = torch.ones(4, 6, dtype=torch.bool, device="cuda")
    protect = torch.zeros_like(mask)
    for mode in ("zero", "mean", "noise", "shuffle"):
        gen = torch.Generator(device="cuda").manual_seed(0)
        y, hit = tp.context_corruption(x, protect, mask, p=0.5, mode=mode, generator=gen)
        assert y.device.type == "cuda" and torch.isfinite(y).all() and hit.any()
    s, g, v = _inputs("cuda", torch.float32)
    cs, cg, cv = _inputs("cpu", torch.float32)
    for fn in (tp.pair_auprc, lambda *a: tp.pair_prf(*a).f1, lambda *a: tp.best_threshold(*a).f1,
               tp.expected_calibration_error, lambda *a: tp.row_ranking(*a).mrr):
        torch.testing.assert_close(fn(s, g, v).cpu(), fn(cs, cg, cv), rtol=1e-6, atol=1e-9)
