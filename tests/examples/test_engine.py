"""The training engine: what one step of each arm runs, and how batches are planned and split."""

from __future__ import annotations

from pathlib import Path

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

from examples.mecpe.batching import bucketed_batch_indices, collate, count_batches, split_batch
from examples.mecpe.config import TrainConfig
from examples.mecpe.engine import build_state, model_config, train_step
from examples.mecpe.featurize import load_data
from examples.mecpe.optim import linear_factor
from torch_pairconf import Replay


@pytest.mark.parametrize("encoder", ["hash", "transformer"])
def test_rpcl_arm_replays_the_utterance_encoder(
    tiny: Path, tiny_bert: Path, tmp_path: Path, encoder: str
) -> None:
    """RPCLoss(model.context, model=model): the second pass replays the context encoder and
    everything upstream of it, so the utterance encoder (its layers) runs once per step."""
    cfg = TrainConfig(
        data_dir=str(tiny), text_encoder=encoder, hash_buckets=512, arm="rpcl", quiet=True,
        encoder_model=str(tiny_bert), train_layers=1, cache_dir=str(tmp_path), max_tokens=16,
    )  # fmt: skip
    data = load_data(cfg)
    state = build_state(cfg, model_config(cfg, data), len(data.train), torch.device("cpu"))
    utterance = state.model.utterance
    inner = utterance.transformer.layers[0] if utterance.transformer is not None else utterance.fuse
    calls: list[int] = []
    inner.register_forward_hook(lambda *_: calls.append(1))
    batch = collate(data.train[:4])
    parts = train_step(state, [batch], cfg, torch.device("cpu"))
    assert state.rpcl is not None and state.rpcl.last_replayed is Replay.UPSTREAM
    assert len(calls) == 1 and parts["rpcl_consistency"] >= 0


def test_encoder_parameters_get_their_own_learning_rate(
    tiny: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    cfg = TrainConfig(
        data_dir=str(tiny), text_encoder="transformer", encoder_model=str(tiny_bert),
        train_layers=2, cache_dir=str(tmp_path), max_tokens=16, epochs=2, batch_size=10,
        warmup_ratio=0.25, encoder_lr=1e-4, encoder_weight_decay=0.05, quiet=True,
    )  # fmt: skip
    data = load_data(cfg)
    state = build_state(cfg, model_config(cfg, data), len(data.train), torch.device("cpu"))
    groups = state.optimizer.param_groups
    encoder = {id(p) for p in state.model.utterance.transformer.parameters()}  # type: ignore[union-attr]
    assert [len(g["params"]) for g in groups] == [
        sum(1 for p in state.model.parameters() if id(p) not in encoder),
        sum(1 for p in state.model.parameters() if id(p) in encoder and p.ndim > 1),
        sum(1 for p in state.model.parameters() if id(p) in encoder and p.ndim <= 1),
    ]
    assert [g["weight_decay"] for g in groups] == [cfg.weight_decay, 0.05, 0.0]
    total, warmup = 2 * 4, 2  # 40 conversations in batches of 10, 2 epochs; 25 % warm-up
    seen = []
    for _ in range(total):
        seen.append([g["lr"] for g in groups])
        train_step(state, [collate(data.train[:2])], cfg, torch.device("cpu"))
    for step, lrs in enumerate(seen):
        f = linear_factor(step, total=total, warmup=warmup)
        assert lrs == pytest.approx([cfg.lr * f, 1e-4 * f, 1e-4 * f])
    assert seen[0][1] == pytest.approx(1e-4 / 3) and seen[-1][1] == pytest.approx(1e-4 / 6)


def test_linear_factor_matches_its_formula() -> None:
    for total in (1, 5, 12):
        for warmup in range(total):
            for s in range(total):
                want = (s + 1) / (warmup + 1) if s < warmup else (total - s) / (total - warmup)
                assert linear_factor(s, total=total, warmup=warmup) == pytest.approx(want)
                assert linear_factor(s, total=total, warmup=warmup) > 0


@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=60),
    batch_size=st.integers(1, 7),
    pool=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_bucketed_batches_partition_the_items_by_pool(
    lengths: list[int], batch_size: int, pool: int, seed: int
) -> None:
    plan = bucketed_batch_indices(
        lengths, batch_size, pool=pool, generator=torch.Generator().manual_seed(seed)
    )
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    assert len(plan) == count_batches(len(lengths), batch_size, pool)
    assert all(1 <= len(b) <= batch_size for b in plan)
    assert all(
        [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True) for b in plan
    )
    # the reference: the rule written out with the same two draws
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=g).tolist()
    batches = []
    for start in range(0, len(order), batch_size * pool):
        ranked = sorted(order[start : start + batch_size * pool], key=lambda i: -lengths[i])
        batches += [ranked[k : k + batch_size] for k in range(0, len(ranked), batch_size)]
    assert plan == [batches[k] for k in torch.randperm(len(batches), generator=g).tolist()]


@given(items=st.lists(st.integers(), max_size=20), parts=st.integers(1, 6))
def test_split_batch_keeps_order_and_balances(items: list[int], parts: int) -> None:
    out = split_batch(items, parts)
    assert len(out) == parts and [x for p in out for x in p] == items
    sizes = [len(p) for p in out]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
