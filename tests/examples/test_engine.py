"""The training engine: what one step of each arm runs."""

from __future__ import annotations

from pathlib import Path

import torch

from examples.mecpe.batching import collate
from examples.mecpe.config import TrainConfig
from examples.mecpe.engine import build_state, model_config, train_step
from examples.mecpe.featurize import load_data
from torch_pairconf import Replay


def test_rpcl_arm_replays_the_utterance_encoder(tiny: Path) -> None:
    """RPCLoss(model.context, model=model): the second pass replays the context encoder and
    everything upstream of it, so the utterance encoder (its layers) runs once per step."""
    cfg = TrainConfig(
        data_dir=str(tiny), text_encoder="hash", hash_buckets=512, arm="rpcl", quiet=True
    )
    data = load_data(cfg)
    state = build_state(cfg, model_config(cfg, data), len(data.train), torch.device("cpu"))
    calls: list[int] = []
    state.model.utterance.fuse.register_forward_hook(lambda *_: calls.append(1))
    batch = collate(data.train[:4])
    parts = train_step(state.model, batch, state.optimizer, state.rpcl, cfg)
    assert state.rpcl is not None and state.rpcl.last_replayed is Replay.UPSTREAM
    assert len(calls) == 1 and parts["rpcl_consistency"] >= 0
