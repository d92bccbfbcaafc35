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
from examples.mecpe.calibration import T_MAX, T_MIN, Platt, fit_platt, fit_temperature
from examples.mecpe.metrics import (
    Metric,
    Recalibration,
    RunFacts,
    compute_metrics,
    epoch_metrics,
    run_metrics,
)
from examples.mecpe.predict import Predictions
from examples.mecpe.summary import summarize
from torch_pairconf import best_threshold, expected_calibration_error, pair_prf

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
        "ece", "ece_mass", "violation_rate", "violation_severity", "nll", "brier",
        "ece_tempscaled", "nll_tempscaled", "ece_platt", "nll_platt",
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


# ------------------------------------------------------------------ post-hoc recalibration


def _loop_nll(pred: Predictions, scale: float = 1.0, bias: float = 0.0) -> float:
    """Mean BCE over the valid pairs of sigmoid(scale * logit + bias), one pair at a time."""
    terms = []
    for z, y, v in zip(pred.pair_logits.flatten().tolist(), pred.gold.flatten().tolist(), pred.valid.flatten().tolist(), strict=True):
        if v:
            x = scale * z + bias
            log1p_exp = max(x, 0.0) + math.log1p(math.exp(-abs(x)))  # softplus(x)
            terms.append(log1p_exp - (x if y else 0.0))
    return sum(terms) / len(terms)


def _loop_brier(pred: Predictions) -> float:
    terms = [
        (1 / (1 + math.exp(-z)) - float(y)) ** 2
        for z, y, v in zip(pred.pair_logits.flatten().tolist(), pred.gold.flatten().tolist(), pred.valid.flatten().tolist(), strict=True)
        if v
    ]
    return sum(terms) / len(terms)


def calibrated_predictions(seed: int, true_temperature: float, c: int = 40, n: int = 8) -> Predictions:
    """Predictions whose gold labels are drawn from sigmoid(logit / true_temperature)."""
    pred = make_predictions(seed, c=c, n=n)
    g = torch.Generator().manual_seed(seed + 1)
    p = torch.sigmoid(pred.pair_logits / true_temperature)
    pred.gold = pred.valid & (torch.rand(p.shape, generator=g) < p)
    return pred


@given(st.integers(0, 10_000), st.sampled_from([0.5, 1.0, 3.0]))
def test_fitted_temperature_is_the_nll_minimiser(seed: int, true_temperature: float) -> None:
    """Against a dense brute-force scan of log T: no temperature in the range does better."""
    pred = calibrated_predictions(seed, true_temperature)
    t = fit_temperature(pred.pair_logits, pred.gold, pred.valid)
    assert T_MIN <= t <= T_MAX
    best = _loop_nll(pred, 1 / t)
    scan = [math.exp(u / 200) for u in range(round(200 * math.log(T_MIN)), round(200 * math.log(T_MAX)) + 1)]
    assert all(best <= _loop_nll(pred, 1 / s) + 1e-12 for s in scan[::7])
    if T_MIN < t < T_MAX:  # interior: the derivative in 1/T vanishes (mean of (p - y) * z)
        z = pred.pair_logits[pred.valid].double()
        y = pred.gold[pred.valid].double()
        assert abs(float(((torch.sigmoid(z / t) - y) * z).mean())) < 1e-6


def test_fit_recovers_a_known_miscalibration() -> None:
    pred = calibrated_predictions(7, 3.0, c=400, n=10)
    assert fit_temperature(pred.pair_logits, pred.gold, pred.valid) == pytest.approx(3.0, rel=0.1)
    platt = fit_platt(pred.pair_logits, pred.gold, pred.valid)
    assert platt.scale == pytest.approx(1 / 3, rel=0.1) and abs(platt.bias) < 0.15
    # a shifted base: Platt finds the shift, a temperature cannot
    shifted = calibrated_predictions(8, 1.0, c=400, n=10)
    shifted.pair_logits = shifted.pair_logits + 1.5
    platt = fit_platt(shifted.pair_logits, shifted.gold, shifted.valid)
    assert platt.scale == pytest.approx(1.0, rel=0.1) and platt.bias == pytest.approx(-1.5, abs=0.15)


@given(st.integers(0, 10_000), st.sampled_from([0.5, 2.0]), st.sampled_from([0.0, 2.0]))
def test_fitted_platt_map_is_a_stationary_point_of_the_nll(seed: int, true_temperature: float, shift: float) -> None:
    pred = calibrated_predictions(seed, true_temperature)
    pred.pair_logits = pred.pair_logits + shift
    a, b = fit_platt(pred.pair_logits, pred.gold, pred.valid)
    best = _loop_nll(pred, a, b)
    for da, db in [(0.01, 0), (-0.01, 0), (0, 0.01), (0, -0.01), (0.01, -0.01)]:
        assert best <= _loop_nll(pred, a * (1 + da), b + db) + 1e-12
    if T_MIN < 1 / a < T_MAX:
        z = pred.pair_logits[pred.valid].double()
        r = torch.sigmoid(a * z + b) - pred.gold[pred.valid].double()
        assert abs(float(r.mean())) < 1e-6 and abs(float((r * z).mean())) < 1e-6


def test_recalibration_metrics_on_dev_and_dev_fitted_on_test() -> None:
    dev = calibrated_predictions(1, 2.0)
    test = calibrated_predictions(2, 2.0)
    got = compute_metrics(dev)
    s, g, v = dev.pair_logits, dev.gold, dev.valid
    t = fit_temperature(s, g, v)
    a, b = fit_platt(s, g, v)
    assert got.values["temperature"] == t
    assert (got.values["platt_scale"], got.values["platt_bias"]) == (a, b)
    assert got.values["nll"] == pytest.approx(_loop_nll(dev), rel=1e-12)
    assert got.values["brier"] == pytest.approx(_loop_brier(dev), rel=1e-12)
    assert got.values["nll_tempscaled"] == pytest.approx(_loop_nll(dev, 1 / t), rel=1e-12)
    assert got.values["nll_platt"] == pytest.approx(_loop_nll(dev, a, b), rel=1e-12)
    assert got.values["nll_tempscaled"] <= got.values["nll"] and got.values["nll_platt"] <= got.values["nll_tempscaled"] + 1e-12
    assert got.values["ece_tempscaled"] == float(expected_calibration_error(s.double() / t, g, v, n_bins=15))
    assert got.values["pair_f1_platt"] == float(pair_prf(s.double() * a + b, g, v, threshold=0.5).f1)
    # a temperature never moves the 0.5 decision; at another threshold it does
    assert got.values["pair_f1_tempscaled"] == got.values["pair_f1"]
    at3 = compute_metrics(dev, threshold=0.3)
    assert at3.values["pair_f1_tempscaled"] == float(pair_prf(s.double() / t, g, v, threshold=0.3).f1)
    # test: dev's fit is used as given, never refitted on test
    recal = Recalibration.from_values(got.values)
    on_test = compute_metrics(test, recalibration=recal)
    assert on_test.values["temperature"] == t and on_test.values["platt_bias"] == b
    ts, tg, tv = test.pair_logits, test.gold, test.valid
    assert on_test.values["ece_tempscaled"] == float(expected_calibration_error(ts.double() / t, tg, tv, n_bins=15))
    assert on_test.values["nll_platt"] == pytest.approx(_loop_nll(test, a, b), rel=1e-12)
    assert fit_temperature(ts, tg, tv) != t
    # record round trip (the checkpoint form), and an undefined dev fit stays undefined on test
    assert Recalibration.from_record(recal.to_record()) == recal
    missing = compute_metrics(test, recalibration=Recalibration(math.nan, Platt(math.nan, math.nan)))
    assert missing.undefined["temperature"] == "no dev-fitted temperature (it was undefined on dev)"
    assert "ece_platt" in missing.undefined and "nll" in missing.values
    assert Recalibration(math.nan, Platt(1.0, math.nan)).to_record() == {"temperature": None, "platt_scale": 1.0, "platt_bias": None}
    with pytest.raises(ValueError, match="ckpt: dev_recalibration must hold exactly"):
        Recalibration.from_record({"temperature": 1.0}, "ckpt")


def test_recalibration_is_undefined_without_valid_pairs() -> None:
    pred = make_predictions(3)
    pred.valid = torch.zeros_like(pred.valid)
    got = compute_metrics(pred)
    for name in ("nll", "brier", "temperature", "nll_tempscaled", "platt_scale", "pair_f1_platt"):
        assert name not in got.values, name
    assert got.undefined["temperature"] == "no valid pair to fit a temperature on"
    assert got.undefined["nll"] == "no valid pair"
    json.dumps(got.to_json(), allow_nan=False)
