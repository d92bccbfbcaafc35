"""RPCLoss under DistributedDataParallel (gloo, two CPU processes)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from tests.integrations._models import WordModel, base_loss, inputs, structure
from torch_pairconf import ContextCorruption, Replay, RPCLoss

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rpcl(model: torch.nn.Module, reuse: bool, wrapped: torch.nn.Module | None = None) -> RPCLoss:
    # p = 1: every unprotected utterance is zeroed, so the corrupted view does not depend on the
    # draws and a single process can reproduce the two ranks exactly.
    return RPCLoss("context", model=wrapped or model, p=1.0, reuse_output=reuse)


def _step(model: torch.nn.Module, rpcl: RPCLoss, x: torch.Tensor) -> torch.Tensor:
    gold, valid = structure(x.shape[0])
    scores = model(x)
    loss = base_loss(scores, gold, valid) + rpcl(scores, gold, valid, rerun=lambda: model(x))
    loss.backward()
    return loss.detach()


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        result: dict[str, Any] = {}
        x = inputs(2 * 4)[rank * 4 : (rank + 1) * 4]  # this rank's half of the global batch
        for reuse in (True, False):
            torch.manual_seed(0)
            net = WordModel()
            ddp = DDP(net)
            rpcl = _rpcl(net, reuse, wrapped=ddp)  # the name resolves inside the DDP wrapper
            _step(ddp, rpcl, x)
            result[f"grads_{reuse}"] = [p.grad.clone() for p in net.parameters()]
            result[f"replay_{reuse}"] = rpcl.last_replayed.value
        # default corruption draws: one generator per rank, seeded from torch.initial_seed()
        for attempt in (0, 1):
            torch.manual_seed(42)  # the usual: the same seed on every rank
            corruption = ContextCorruption(0.5)
            z = torch.randn(8, 6, 4)
            none = torch.zeros(8, 6, dtype=torch.bool)
            result[f"hit_{attempt}"] = corruption(z, none, ~none)[1]
            result[f"state_{attempt}"] = corruption.state_dict()
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gradients_equal_one_process_over_the_concatenated_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    x = inputs(2 * 4)
    for reuse in (True, False):
        torch.manual_seed(0)
        net = WordModel()
        rpcl = _rpcl(net, reuse)
        _step(net, rpcl, x)  # one process, the whole batch
        expected = "upstream" if reuse else "none"
        assert rpcl.last_replayed is Replay(expected)
        for r in ranks:
            assert r[f"replay_{reuse}"] == expected
            for got, want in zip(r[f"grads_{reuse}"], net.parameters(), strict=True):
                assert want.grad is not None
                torch.testing.assert_close(got, want.grad, rtol=0, atol=1e-6)
    # the usual same seed on every rank still corrupts different utterances, reproducibly
    assert not torch.equal(ranks[0]["hit_0"], ranks[1]["hit_0"])
    for r in ranks:
        assert torch.equal(r["hit_0"], r["hit_1"])
        assert set(r["state_0"]["_extra_state"]) == {"cpu"}
