"""``torch.compile(fullgraph=True)`` of the miner and the losses (slow: compilation takes seconds)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from torch_pairconf import (
    consistency_loss,
    mine_hard_negatives,
    pair_ap_loss,
    pair_auc_loss,
    pair_listwise_loss,
    pair_margin_loss,
    pair_relative_margin_loss,
)

pytestmark = pytest.mark.slow


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 9, 9, generator=g)
    gold = torch.rand(4, 9, 9, generator=g) < 0.2
    valid = torch.rand(4, 9, 9, generator=g) < 0.9
    scores = torch.where(valid, scores, torch.nan)
    return scores, gold, valid


CASES: dict[str, Callable[..., Any]] = {
    "miner_k1": lambda s, g, v: mine_hard_negatives(s, g, v, k=1).values.sum(),
    "miner_k4": lambda s, g, v: mine_hard_negatives(s, g, v, k=4).values.sum(),
    "margin_k1": lambda s, g, v: pair_margin_loss(s, g, v, margin=0.2, k=1),
    "margin_k3_logit": lambda s, g, v: pair_margin_loss(s, g, v, margin=1.0, k=3, space="logit", detach_negatives=True),
    "listwise_k4": lambda s, g, v: pair_listwise_loss(s, g, v, k=4, temperature=2.0, margin=0.5),
    "listwise_all": lambda s, g, v: pair_listwise_loss(s, g, v, k=None, temperature=2.0),
    "ap_batch": lambda s, g, v: pair_ap_loss(s, g, v, scope="batch", temperature=0.5),
    "ap_row": lambda s, g, v: pair_ap_loss(s, g, v, scope="row"),
    "auc_batch": lambda s, g, v: pair_auc_loss(s, g, v, scope="batch", margin=1.0),
    "auc_row_hinge": lambda s, g, v: pair_auc_loss(s, g, v, scope="row", surrogate="hinge"),
    "auc_row_k3": lambda s, g, v: pair_auc_loss(s, g, v, scope="row", k=3),
    "relative_hardest": lambda s, g, v: pair_relative_margin_loss(s, g, v, margin=1.0),
    "relative_mean": lambda s, g, v: pair_relative_margin_loss(s, g, v, margin=1.0, anchor="mean"),
    "consistency_kl": lambda s, g, v: consistency_loss(s.detach().flip(-1), s, v, divergence="kl"),
    "consistency_js": lambda s, g, v: consistency_loss(s.detach().flip(-1), s, v, divergence="js"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fullgraph_compile_matches_eager(name: str) -> None:
    torch._dynamo.reset()
    fn = CASES[name]
    scores, gold, valid = _inputs()
    if name.startswith("consistency"):
        scores = torch.where(valid, scores, 0.0)
    s1 = scores.clone().requires_grad_()
    s2 = scores.clone().requires_grad_()
    eager = fn(s1, gold, valid)
    compiled = torch.compile(fn, fullgraph=True, backend="inductor")(s2, gold, valid)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    eager.backward()
    compiled.backward()
    assert s1.grad is not None and s2.grad is not None
    torch.testing.assert_close(s2.grad, s1.grad, rtol=1e-5, atol=1e-6)


class _TinyPairModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(6, 8)
        self.encoder = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(torch.relu(self.proj(x)))
        return h @ h.transpose(-1, -2)


def _rpcl_losses(compiled: bool, where: str, reuse: bool, built_after: bool, steps: int = 3) -> tuple[list[float], Any]:
    """RPCL losses of a few SGD steps on one model, eager or compiled; the loss is built before
    the model's first (compiled) call or right after it."""
    from torch_pairconf import RPCLoss

    torch.manual_seed(0)
    model = _TinyPairModel()
    run = torch.compile(model) if compiled else model
    x = torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(1))
    valid = torch.ones(3, 5, 5, dtype=torch.bool)
    gold = torch.zeros(3, 5, 5, dtype=torch.bool)
    gold[:, 2, 1] = True
    gen = torch.Generator().manual_seed(3)

    def build() -> RPCLoss:
        return RPCLoss(model.encoder, model=model, where=where, reuse_output=reuse, p=0.5, generator=gen)

    rpcl = None if built_after else build()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        scores = run(x)
        rpcl = rpcl or build()
        loss = rpcl(scores, gold, valid, rerun=lambda: run(x))
        opt.zero_grad()
        (scores.square().mean() + loss).backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses, rpcl.last_replayed


@pytest.mark.slow
@pytest.mark.parametrize("where", ["input", "output"])
@pytest.mark.parametrize("reuse", [True, False])
@pytest.mark.parametrize("built_after", [False, True])
def test_rpcl_with_a_compiled_model_matches_eager(where: str, reuse: bool, built_after: bool) -> None:
    """Every where x reuse_output, RPCLoss built before or after the first compiled call: the
    second pass arms the corrupted module's forward, which compiled graphs guard on, so the
    compiled step runs the corruption and its losses equal eager's (same corruption draws).
    Under compilation nothing is recorded, so nothing is replayed."""
    import torch._dynamo

    torch._dynamo.reset()
    eager, _ = _rpcl_losses(False, where, reuse, built_after)
    compiled, replayed = _rpcl_losses(True, where, reuse, built_after)
    assert not replayed
    assert eager == pytest.approx(compiled, rel=1e-5, abs=1e-7)
    assert all(v > 0 for v in eager)


def test_traced_code_sees_compiling_and_skips_the_fused_paths() -> None:
    from torch_pairconf import _fused
    from torch_pairconf._tracing import compiling

    def probe(x: torch.Tensor) -> torch.Tensor:
        return x + (1 if compiling() else 0) + (10 if _fused.applies(x, "mean") else 0)

    x = torch.zeros(2, 3, 3)
    assert torch.equal(probe(x), torch.full_like(x, 10))
    assert torch.equal(torch.compile(probe, backend="eager", fullgraph=True)(x), torch.ones_like(x))
