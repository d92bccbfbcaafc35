"""Data-parallel training: two gloo processes on the CPU.

What data-parallel must guarantee: every rank holds the same weights; two processes make the
updates of one process accumulating the same two micro-batches per batch (``--grad-accum 2``);
an interrupted run resumes to the same result. The RPCL arm corrupts with ``p=1`` (every
unprotected utterance is zeroed, so the corrupted view does not depend on the per-rank
corruption draws) and dropout is on (each micro-batch re-seeds the dropout RNG from its index).
``--batch-size 13`` on 40 conversations leaves a last batch of one conversation: rank 1's
micro-batch is empty there (it joins the gradient average with a zero-weight pass).

The text encoder is the hash encoder: each spawned process pays torch's start-up again, and
importing ``transformers`` would double it. ``MECPE_TEST_DDP_ENCODER=transformer`` runs the
same test with the tiny random BERT (top layer trained on cached states).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from examples.mecpe import train as mecpe_train
from examples.mecpe.engine import EpochResult, TrainState

from .helpers import encoder_args, strip_time, train, train_args

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is missing")

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ENCODER = os.environ.get("MECPE_TEST_DDP_ENCODER", "hash")


def _options(bert: Path, cache: Path) -> list[str]:
    common = ["--epochs", "2", "--arm", "rpcl", "--rpcl-arg", "p=1.0"]
    if ENCODER == "transformer":
        return [*common, *encoder_args(bert, cache, "--batch-size", "13")]
    return [*common, "--batch-size", "13", "--threads", "1", "--cache-dir", str(cache)]


def _args(data: Path, bert: Path, cache: Path, out: Path) -> list[str]:
    return train_args(data, out, *_options(bert, cache))


class Interrupted(Exception):
    """Stands for a crash during the second epoch."""


def _worker(rank: int, port: int, data: str, bert: str, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    root = Path(tmp)
    real = mecpe_train.run_epoch
    seen: dict[str, Any] = {"calls": 0, "stop_at": None}

    def run_epoch(state: TrainState, *args: Any, **kwargs: Any) -> EpochResult:
        seen["calls"] += 1
        if seen["calls"] == seen["stop_at"]:
            raise Interrupted
        result = real(state, *args, **kwargs)
        # the trained weights (rank 0 loads best.pt into its model after the last epoch)
        seen["weights"] = {k: v.clone() for k, v in state.model.state_dict().items()}
        return result

    mecpe_train.run_epoch = run_epoch  # type: ignore[assignment]  # a spawned process of its own
    try:
        cache = root / "cache"
        full = mecpe_train.run(_config(_args(Path(data), Path(bert), cache, root / "full")))
        torch.save({"weights": seen["weights"], "result": full}, root / f"full-rank{rank}.pt")
        seen.update(calls=0, stop_at=2)
        try:
            mecpe_train.run(_config(_args(Path(data), Path(bert), cache, root / "part")))
        except Interrupted:
            pass
        seen.update(calls=0, stop_at=None)
        argv = [*_args(Path(data), Path(bert), cache, root / "part"), "--resume"]
        resumed = mecpe_train.run(_config(argv))
        (root / f"resumed-rank{rank}.json").write_text(json.dumps(strip_time(resumed)))
    finally:
        dist.destroy_process_group()


def _config(argv: list[str]) -> Any:
    from examples.mecpe.config import config_from_args

    return config_from_args(mecpe_train.build_parser().parse_args(argv))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # multiprocessing's fork warning
def test_two_processes_equal_one_accumulating_two_micro_batches(
    tiny: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tiny), str(tiny_bert), str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"full-rank{r}.pt", weights_only=False) for r in range(WORLD)]
    # every rank: the same weights, bit for bit, and the same result
    for k, v in ranks[0]["weights"].items():
        assert torch.equal(v, ranks[1]["weights"][k]), k
    assert ranks[0]["result"] == ranks[1]["result"]
    ddp = ranks[0]["result"]
    assert ddp["world_size"] == 2 and ddp["config"]["grad_accum"] == 1
    last = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    assert last["world_size"] == 2 and len(last["ranks"]) == 2
    streams = [r["rng"]["generators"]["corrupt"] for r in last["ranks"]]
    assert not torch.equal(*streams)  # each rank its own corruption generator, both saved
    # One process, two micro-batches per batch: the same updates. Tolerance 0 (bit-identical):
    # each micro-batch's gradient is scaled by 1/2 (by the loss here, by DDP's average there), a
    # power of two that commutes with every rounding, and a sum of two terms has one order.
    # (With 3 or more processes the sums' order differs: expect float32 rounding, ~1e-7.)
    one = train(
        tiny, tmp_path / "one", *_options(tiny_bert, tmp_path / "cache"), "--grad-accum", "2"
    )
    single = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["model"]
    for k, v in ranks[0]["weights"].items():
        assert torch.equal(single[k], v), k
    assert strip_time(one)["dev"] == strip_time(ddp)["dev"]
    assert strip_time(one)["test"] == strip_time(ddp)["test"]
    # the logged losses: means over the same micro-batches, summed in another order
    for got, want in zip(one["history"], ddp["history"], strict=True):
        for key in ("loss", "pair", "rpcl_consistency", "dev_pair_auprc"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    # the interrupted data-parallel run resumed to the full run's result
    for r in range(WORLD):
        resumed = json.loads((tmp_path / f"resumed-rank{r}.json").read_text())
        assert resumed == json.loads(json.dumps(strip_time(ddp)))
