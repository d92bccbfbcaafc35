"""Tests for the metric registry and the split metrics."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from examples.mecpe import metrics
from examples.mecpe.metrics import Metric, RunFacts, compute_metrics, epoch_metrics, run_metrics
from examples.mecpe.predict import Predictions
from examples.mecpe.summary import summarize
from torch_pairconf import best_threshold, pair_prf

from .helpers import train


def make_predictions(seed: int, c: int = 4, n: int = 5, labels: bool = True) -> Predictions:
    """Random predictions of ``c`` conversations of up to ``n`` utterances."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, n + 1, (c,), generator=g)
    mask = torch.arange(n)[None, :] < lengths[:, None]
    valid = mask[:, :, None] & mask[:, None, :]
    gold = valid & (torch.rand(c, n, n, generator=g) < 0.2)
    emotions = torch.randint(0, 7, (c, n), generator=g) if labels else torch.full((c, n), -1)
    return Predictions(
        conv_ids=[f"c{k}" for k in range(c)],
        lengths=lengths,
        pair_logits=torch.randn(c, n, n, generator=g) * 2,
        gold=gold,
        valid=valid,
        emotion_logits=torch.randn(c, n, 7, generator=g),
        emotions=torch.where(mask, emotions, -1),
        cause_logits=torch.randn(c, n, generator=g),
        causes=(gold.any(dim=1) & mask).float(),
        mask=mask,
    )


def _loop_emotion_scores(pred: Predictions) -> tuple[float, float]:
    ys = [(int(y), int(p.argmax())) for y, p in zip(pred.emotions.flatten(), pred.emotion_logits.reshape(-1, 7), strict=True) if y >= 0]  # fmt: skip
    f1s, supports = [], []
    for k in range(7):
        tp = sum(y == k and p == k for y, p in ys)
        fp = sum(y != k and p == k for y, p in ys)
        fn = sum(y == k and p != k for y, p in ys)
        f1s.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None)
        supports.append(tp + fn)
    macro = [f for f in f1s[1:] if f is not None]
    weighted = sum(s * f for s, f in zip(supports, f1s, strict=True) if s) / sum(supports)
    return (sum(macro) / len(macro) if macro else math.nan), weighted


@given(st.integers(0, 10_000), st.sampled_from([0.3, 0.5, 0.7]))
def test_split_metrics_match_their_definition(seed: int, threshold: float) -> None:
    pred = make_predictions(seed)
    got = compute_metrics(pred, threshold=threshold)
    s, g, v = pred.pair_logits, pred.gold, pred.valid
    prf = pair_prf(s, g, v, threshold=threshold)
    assert got.values["pair_p"] == float(prf.precision)
    assert got.values["pair_f1"] == float(prf.f1)
    assert got.values["threshold_devthr"] == float(best_threshold(s, g, v)[0])
    assert got.values["n_candidates"] == float(v.sum()) and got.values["n_conversations"] == 4
    macro, weighted = _loop_emotion_scores(pred)
    if math.isnan(macro):
        assert "emotion_f1" in got.undefined
    else:
        assert got.values["emotion_f1"] == pytest.approx(macro)
    assert got.values["emotion_wf1"] == pytest.approx(weighted)
    y = [bool(a > 0.5) for a in pred.causes[pred.mask]]
    yhat = [bool(a > 0) for a in pred.cause_logits[pred.mask]]
    tp = sum(a and b for a, b in zip(y, yhat, strict=True))
    denom = 2 * tp + sum(b and not a for a, b in zip(y, yhat, strict=True)) + sum(a and not b for a, b in zip(y, yhat, strict=True))  # fmt: skip
    assert got.values["cause_f1"] == pytest.approx(2 * tp / denom if denom else 0.0)
    # the tuned threshold is used as given; the per-epoch metrics are the same values
    tuned = compute_metrics(pred, threshold=threshold, tuned_threshold=0.42)
    assert tuned.values["threshold_devthr"] == 0.42
    assert tuned.values["pair_f1_devthr"] == float(pair_prf(s, g, v, threshold=0.42).f1)
    per_epoch = epoch_metrics(pred, threshold)
    assert set(per_epoch) == {m.name for m in metrics.registered() if m.epoch}
    assert all(per_epoch[k] == got.values[k] for k in per_epoch)


def test_undefined_metrics_are_left_out_with_a_reason() -> None:
    got = compute_metrics(make_predictions(0, labels=False))
    assert "emotion_f1" not in got.values and "emotion_wf1" not in got.values
    assert got.undefined["emotion_f1"] == "no utterance with a known emotion label"
    report = got.to_json()
    assert report["undefined"] == got.undefined
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN anywhere
    assert all(math.isfinite(v) for v in got.values.values())


def test_registry_entries() -> None:
    names = [m.name for m in metrics.registered()]
    assert len(names) == len(set(names))
    assert names[:4] == ["pair_f1", "pair_p", "pair_r", "pair_auprc"]
    assert {m.name for m in metrics.registered() if m.higher_is_better is False} == {
        "ece", "ece_mass", "violation_rate", "violation_severity"
    }  # fmt: skip
    assert run_metrics(RunFacts(0.4, 3, 1.5)) == {
        "dev_threshold": 0.4, "best_epoch": 3.0, "train_seconds": 1.5
    }  # fmt: skip
    with pytest.raises(ValueError, match="exactly one of"):
        Metric("x", "x")
    with pytest.raises(ValueError, match="already registered"):
        metrics.register(metrics.get("ece"))


@pytest.fixture
def dummy_metric() -> Iterator[Metric]:
    """A metric registered for one test: the number of utterances, and one never finite."""
    added = [
        metrics.register(
            Metric("n_utterances", "utts", lambda e: float(e.pred.lengths.sum()), columns=("dev",))
        ),
        metrics.register(Metric("always_nan", "nan", lambda e: math.nan, summary=False)),
    ]
    yield added[0]
    for m in added:
        metrics.unregister(m.name)


def test_one_entry_reaches_run_json_and_the_summary(
    dummy_metric: Metric, tiny: Path, tmp_path: Path
) -> None:
    out = tmp_path / "study" / "base-seed42"
    result = train(tiny, out, "--epochs", "1")
    assert result["test"]["n_utterances"] == float(sum(1 for line in (tiny / "test.txt").read_text().splitlines() if " | " in line))  # fmt: skip
    assert result["dev"]["undefined"]["always_nan"] == "not finite (nan)"
    summary = summarize(tmp_path / "study", plots=False)
    assert summary["aggregate"]["base"]["n_utterances"]["mean"] == result["test"]["n_utterances"]
    md = (tmp_path / "study" / "summary.md").read_text()
    assert "| n_utterances |" in md and "dev utts" in md  # a summary row and a per-run column
    assert "always_nan" not in md
