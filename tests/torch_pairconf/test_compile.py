"""``torch.compile(fullgraph=True)`` of the miner and the losses (slow: compilation takes seconds)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from torch_pairconf import (
    consistency_loss,
    mine_hard_negatives,
    pair_listwise_loss,
    pair_margin_loss,
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
    "miner_k1": lambda s, g, v: mine_hard_negatives(s, g, v, 1).values.sum(),
    "miner_k4": lambda s, g, v: mine_hard_negatives(s, g, v, 4).values.sum(),
    "margin_k1": lambda s, g, v: pair_margin_loss(s, g, v, 0.2, 1),
    "margin_k3_logit": lambda s, g, v: pair_margin_loss(s, g, v, 1.0, 3, "logit", detach_negatives=True),
    "listwise_k4": lambda s, g, v: pair_listwise_loss(s, g, v, 4, 2.0, 0.5),
    "consistency_kl": lambda s, g, v: consistency_loss(s.detach().flip(-1), s, v, "kl"),
    "consistency_js": lambda s, g, v: consistency_loss(s.detach().flip(-1), s, v, "js"),
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


def test_rpcl_with_a_compiled_model_re_runs_and_matches_eager() -> None:
    """Under torch.compile the output-replay hook records nothing, so RPCLoss re-runs the
    corrupted submodule; the loss equals eager's with the same corruption draws."""
    from torch_pairconf import RPCLoss

    torch.manual_seed(0)
    model = _TinyPairModel()
    x = torch.randn(3, 5, 6)
    valid = torch.ones(3, 5, 5, dtype=torch.bool)
    gold = torch.zeros(3, 5, 5, dtype=torch.bool)
    gold[:, 2, 1] = True
    losses = []
    for compiled in (False, True):
        run = torch.compile(model) if compiled else model
        rpcl = RPCLoss(model.encoder, p=0.5, generator=torch.Generator().manual_seed(3))
        scores = run(x)
        loss = rpcl(scores, gold, valid, rerun=lambda run=run: run(x))
        assert rpcl.last_replayed is not compiled
        loss.backward()
        losses.append(loss.detach())
        rpcl.remove_hooks()
    torch.testing.assert_close(losses[0], losses[1])


def test_traced_code_sees_compiling_and_skips_the_fused_paths() -> None:
    from torch_pairconf._checks import compiling, use_fused

    def probe(x: torch.Tensor) -> torch.Tensor:
        return x + (1 if compiling() else 0) + (10 if use_fused(x, 1) else 0)

    x = torch.zeros(2, 3, 3)
    assert torch.equal(probe(x), torch.full_like(x, 10))
    assert torch.equal(torch.compile(probe, backend="eager", fullgraph=True)(x), torch.ones_like(x))
