"""Tests for the reference MECPE model and its base loss."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from examples.mecpe.batching import build_examples, collate
from examples.mecpe.data import load_ecf
from examples.mecpe.model import MECPEModel, ModelConfig, mecpe_loss


def test_model_shapes_and_loss(tiny: Path) -> None:
    convs = load_ecf(tiny / "train.txt")[:5]
    exs = build_examples(convs, hash_buckets=512)
    batch = collate(exs)
    model = MECPEModel(ModelConfig(text_dim=None, hash_buckets=512))
    out = model(batch)
    b, n = batch.mask.shape
    assert out.pair_logits.shape == (b, n, n)
    assert out.emotion_logits.shape == (b, n, 7)
    assert out.cause_logits.shape == (b, n)
    loss, parts = mecpe_loss(out, batch)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and set(parts) == {"pair", "emotion", "cause"}
    # the context encoder sees (B, N, D) first and returns (B, N, H): what RPCLoss hooks
    seen: list[tuple[int, ...]] = []
    handle = model.context.register_forward_hook(
        lambda m, a, o: seen.append((*tuple(a[0].shape), *tuple(o.shape)))
    )
    model(batch)
    handle.remove()
    assert seen == [(b, n, 200, b, n, 400)]


def test_pair_weight_and_pos_weight_follow_their_definition(tiny: Path) -> None:
    convs = load_ecf(tiny / "train.txt")[:5]
    batch = collate(build_examples(convs, hash_buckets=512))
    torch.manual_seed(0)
    model = MECPEModel(ModelConfig(text_dim=None, hash_buckets=512)).eval()
    out = model(batch)
    _, parts = mecpe_loss(out, batch)
    loss, weighted = mecpe_loss(out, batch, pair_weight=3.0, pos_weight=2.0)
    # explicit reference: per-candidate BCE, gold terms doubled, mean over valid candidates
    s = out.pair_logits.detach()[batch.valid].double()
    y = batch.gold[batch.valid].double()
    ref = -(2.0 * y * F.logsigmoid(s) + (1 - y) * F.logsigmoid(-s)).mean()
    assert weighted["pair"] == pytest.approx(float(ref), rel=1e-5)
    assert weighted["pair"] > parts["pair"]
    expected = 3.0 * weighted["pair"] + weighted["emotion"] + weighted["cause"]
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("rank", [None, 16])
def test_pair_scorer_rank_and_strict_model_config(tiny: Path, rank: int | None) -> None:
    convs = load_ecf(tiny / "train.txt")[:4]
    batch = collate(build_examples(convs, hash_buckets=512))
    cfg = ModelConfig(text_dim=None, hash_buckets=512, pair_rank=rank, pair_dropout=0.0)
    model = MECPEModel(cfg)
    u = model.pair_scorer.u_prod
    assert (u is None) if rank is None else (u is not None and u.out_features == rank)
    assert model.pair_scorer.w_prod.in_features == (rank or model.context.output_dim)
    # pair dropout 0 is the identity (no Bernoulli draw), so train and eval agree on the pairs
    model.utterance.dropout.p = 0.0
    model.dropout.p = 0.0
    a = model.train()(batch).pair_logits
    b = model.eval()(batch).pair_logits
    torch.testing.assert_close(a, b)
    # a config written before pair_rank / pair_dropout existed is refused, not guessed
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("pair_rank", "pair_dropout")}
    with pytest.raises(ValueError, match=r"best\.pt: .*missing: pair_dropout, pair_rank"):
        ModelConfig.from_dict(old, source="best.pt")
