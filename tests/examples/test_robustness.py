"""Tests of the robustness evaluation (``examples.mecpe.robustness``) and its study command, on
the tiny generated dataset and tiny trained models (hash encoder, one epoch)."""

from __future__ import annotations

import json
import math
import random
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from examples.mecpe import evaluate as mecpe_evaluate
from examples.mecpe import robustness, study
from examples.mecpe import text as text_mod
from examples.mecpe import train as mecpe_train
from examples.mecpe.batching import build_examples, collate
from examples.mecpe.config import TrainConfig
from examples.mecpe.data import Conversation
from examples.mecpe.evaluate import load_model
from examples.mecpe.featurize import featurize, load_split_examples
from examples.mecpe.perturb import FAMILIES, Family, perturb_split
from examples.mecpe.predict import Predictions
from examples.mecpe.robustness import (
    METRICS,
    clean_view_problems,
    evaluate_views,
    perturbed_split,
    view_metrics,
)

from .helpers import encoder_args, error_lines, train, write_mecad
from .test_evaluate_cli import strict_json
from .test_perturb import make_split

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_study(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-arm, two-seed, one-epoch study of the tiny dataset."""
    out = tmp_path_factory.mktemp("robust") / "study"
    argv = ["--dataset", "ecf", "--data-dir", str(tiny), "--arms", "base,rpcl", "--seeds", "1,2",
            "--epochs", "1", "--text-encoder", "hash", "--hash-buckets", "2048", "--out", str(out),
            "--quiet", "--device", "cpu", "--no-plots"]  # fmt: skip
    assert study.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def robust_out(tiny_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The robustness study of ``tiny_study`` with the default families and rates."""
    out = tmp_path_factory.mktemp("robust_out") / "robustness"
    argv = ["--study", str(tiny_study), "--out", str(out), "--device", "cpu", "--quiet"]
    assert robustness.main(argv) == 0
    return out


def loaded(run: Path) -> tuple[Any, TrainConfig, list[Conversation], list[Any]]:
    model, ckpt = load_model(run / "best.pt")
    cfg = TrainConfig.from_dict(ckpt["config"])
    convs, examples = load_split_examples(cfg, "test")
    return model, cfg, convs, examples


def evaluate_one(run: Path, family: str, rate: float, seed: int = 7) -> dict[str, Any]:
    model, cfg, convs, examples = loaded(run)
    view = perturbed_split(
        convs, cfg, family=family, rate=rate, seed=seed, cache_dataset="ecf", cache_split="test"
    )
    _, (report,) = evaluate_views(model, examples, [view], cfg, CPU)
    return report


# ------------------------------------------------------------------------- one evaluation


@pytest.mark.parametrize("family", FAMILIES)
def test_the_evaluation_returns_every_metric_and_marks_oracles(
    tiny_study: Path, family: str
) -> None:
    rate = 1.0 if family == "speaker" else 0.5  # few non-gold utterances share a conversation
    report = evaluate_one(tiny_study / "rpcl-seed1", family, rate)
    assert report["family"] == family and report["rate"] == rate and report["perturb_seed"] == 7
    assert report["oracle"] is Family(family).oracle and report["tag"] == f"{family}-r{rate}-s7"
    values, undefined = report["metrics"], report.get("undefined", {})
    for metric in METRICS:
        assert (metric.name in values) != (metric.name in undefined), metric.name
    assert not undefined  # every number is defined on this split
    assert all(math.isfinite(v) for v in values.values())
    counts = report["perturbation"]
    assert 0 < counts["realised_rate"] <= 1 and counts["conversations"] == 12
    # gold utterances are never touched: every gold pair is shared (no --window here)
    assert values["n_shared_gold"] == values["n_clean_gold"] == values["n_perturbed_gold"]
    if family == "insert":
        assert values["n_shared_pairs"] == values["n_clean_pairs"] < values["n_perturbed_pairs"]
        assert counts["foreign"] == counts["affected"] > 0 and counts["removed"] == 0
    elif family == "speaker":
        assert values["n_shared_pairs"] == values["n_clean_pairs"] == values["n_perturbed_pairs"]
        assert counts["relabelled"] == counts["affected"] > 0 and counts["removed"] == 0
    elif family == "delete":
        assert values["n_shared_pairs"] == values["n_perturbed_pairs"] < values["n_clean_pairs"]
        assert counts["removed"] == counts["affected"] > 0 and counts["foreign"] == 0
    else:  # replace: the replacing utterances' pairs are not shared
        assert values["n_shared_pairs"] < values["n_perturbed_pairs"] == values["n_clean_pairs"]
        assert counts["removed"] == counts["foreign"] == counts["affected"] > 0
    assert 0 <= values["flip_rate"] <= 1 and -1 <= values["kendall_tau"] <= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_rate_zero_is_the_clean_view(tiny_study: Path, family: str) -> None:
    report = evaluate_one(tiny_study / "base-seed2", family, 0.0)
    v = report["metrics"]
    assert v["flips"] == 0 and v["flip_rate"] == 0 and v["max_logit_change"] == 0
    assert v["top1_agreement"] == 1 and v["kendall_tau"] == 1
    assert v["conf_change_gold"] == v["conf_change_negative"] == v["gap_change_abs"] == 0
    assert v["n_shared_pairs"] == v["n_clean_pairs"] == v["n_perturbed_pairs"]
    for k in ("pair_f1", "pair_p", "pair_r", "pair_auprc"):
        assert v[f"all_{k}"] == v[f"shared_{k}"] == v[f"shared_clean_{k}"] == v[f"clean_{k}"]
    assert report["perturbation"]["affected"] == 0 and clean_view_problems(v) == []
    assert clean_view_problems({**v, "flips": 1.0}) == ["flips 1.0 (expected 0.0)"]


def test_results_are_deterministic_for_a_seed(tiny_study: Path) -> None:
    run = tiny_study / "rpcl-seed2"
    first, again = evaluate_one(run, "insert", 0.3), evaluate_one(run, "insert", 0.3)
    assert first == again
    other = evaluate_one(run, "insert", 0.3, seed=8)
    assert other["tag"] == "insert-r0.3-s8" and other["metrics"] != first["metrics"]


def test_the_clean_numbers_equal_the_runs_own(tiny_study: Path) -> None:
    report = evaluate_one(tiny_study / "base-seed1", "delete", 0.1)
    stored = json.loads((tiny_study / "base-seed1" / "run.json").read_text())["test"]
    for k in ("pair_f1", "pair_p", "pair_r", "pair_auprc"):
        assert report["metrics"][f"clean_{k}"] == pytest.approx(stored[k], abs=1e-12)


# ----------------------------------------------------------------- a Python-loop reference


def logits_of(convs: Sequence[Conversation], n: int, salt: int) -> torch.Tensor:
    """A context-dependent 'model': each pair's logit mixes its texts and its distance."""
    out = torch.full((len(convs), n, n), float("nan"))
    for b, conv in enumerate(convs):
        for i, ti in enumerate(conv.texts):
            for j, tj in enumerate(conv.texts):
                h = zlib.crc32(f"{salt}\0{ti}\0{tj}".encode()) / 2**32
                out[b, i, j] = h * 6 - 3 + 0.4 * math.cos(i - j) + 0.05 * len(conv)
    return out


def predictions(convs: Sequence[Conversation], window: int | None, salt: int) -> Predictions:
    batch = collate(build_examples(convs, hash_buckets=32), window=window)
    n = batch.mask.shape[1]
    b = len(convs)
    return Predictions(
        [c.conv_id for c in convs], batch.lengths, logits_of(convs, n, salt), batch.gold,
        batch.valid, torch.zeros(b, n, 7), batch.emotions, torch.zeros(b, n), batch.causes,
        batch.mask,
    )  # fmt: skip


def reference(
    clean: Predictions, pert: Predictions, origins: Sequence[Sequence[int | None]], thr: float
) -> dict[str, float]:
    """Shared pairs, flips, confidence change and shared F1 by explicit loops."""
    shared = flips = tp = fp = 0
    gold_changes: list[float] = []
    negative_changes: list[float] = []
    for b, origin in enumerate(origins):
        where = {o - 1: k for k, o in enumerate(origin) if o is not None}
        n = int(clean.lengths[b])
        for u in range(n):
            for v in range(n):
                if not clean.valid[b, u, v] or u not in where or v not in where:
                    continue
                pu, pv = where[u], where[v]
                if not pert.valid[b, pu, pv]:
                    continue
                shared += 1
                c = 1 / (1 + math.exp(-float(clean.pair_logits[b, u, v])))
                p = 1 / (1 + math.exp(-float(pert.pair_logits[b, pu, pv])))
                flips += (c > thr) != (p > thr)
                gold = bool(clean.gold[b, u, v])
                (gold_changes if gold else negative_changes).append(abs(p - c))
                tp += gold and p > thr
                fp += (not gold) and p > thr
    n_gold = int(clean.gold.sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / n_gold if n_gold else 0.0
    out = {
        "n_shared_pairs": float(shared),
        "flips": float(flips),
        "shared_pair_f1": 2 * precision * recall / (precision + recall) if tp else 0.0,
    }
    if gold_changes:
        out["conf_change_gold"] = sum(gold_changes) / len(gold_changes)
    if negative_changes:
        out["conf_change_negative"] = sum(negative_changes) / len(negative_changes)
    return out


@given(
    seed=st.integers(0, 2**20),
    family=st.sampled_from(FAMILIES),
    rate=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
    window=st.sampled_from([None, 1, 3]),
    thr=st.sampled_from([0.3, 0.5]),
)
def test_view_metrics_match_a_loop_reference(
    seed: int, family: str, rate: float, window: int | None, thr: float
) -> None:
    convs = make_split(5, seed, min_n=1, max_n=8)
    out, origins = perturb_split(convs, family, rate, seed)
    clean, pert = predictions(convs, window, seed), predictions(out, window, seed)
    got = view_metrics(clean, pert, origins, threshold=thr)
    expected = reference(clean, pert, origins, thr)
    for name, value in expected.items():
        assert got.values[name] == pytest.approx(value, abs=1e-9), name
    for name in ("conf_change_gold", "conf_change_negative"):
        assert (name in expected) == (name in got.values), name
        if name not in expected:
            assert got.undefined[name].startswith("no shared")
    if rate == 0:
        assert clean_view_problems(got.values) == []


def test_view_metrics_refuses_other_conversations() -> None:
    convs = make_split(3, 1, min_n=2)
    clean = predictions(convs, None, 0)
    with pytest.raises(ValueError, match="perturbed predictions must be of the clean conversations"):
        view_metrics(clean, predictions(convs[::-1], None, 0), [(1,)] * 3)
    with pytest.raises(ValueError, match="origins has 2 index maps for 3 conversations"):
        view_metrics(clean, clean, [(1,), (1,)])


# --------------------------------------------------------------------------- text cache


class FakeEncoder:
    """A frozen 'sentence encoder' that counts what it encodes."""

    def __init__(self) -> None:
        self.name = "fake"
        self.encoded = 0

    def encode(self, sentences: list[str], **kwargs: Any) -> np.ndarray:
        self.encoded += len(sentences)
        return np.asarray([[len(s), zlib.crc32(s.encode()) % 97] for s in sentences], float)


def test_a_perturbed_split_gets_its_own_cache_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeEncoder()
    monkeypatch.setattr(text_mod, "_load_encoder", lambda name, device: fake)
    cfg = TrainConfig(text_encoder="fake", cache_dir=str(tmp_path), quiet=True)
    convs = make_split(6, 4, min_n=3)
    featurize(convs, cfg, cache_dataset="ecf", cache_split="test")
    clean_file = tmp_path / "ecf__test__fake.npz"
    before = clean_file.read_bytes()
    view = perturbed_split(convs, cfg, family="replace", rate=0.5, seed=3, cache_dataset="ecf",
                           cache_split="test")  # fmt: skip
    assert (tmp_path / "ecf__test-replace-r0.5-s3__fake.npz").is_file()
    assert clean_file.read_bytes() == before  # the clean cache is never overwritten
    assert view.examples[0].text is not None and view.examples[0].text.shape[1] == 2
    encoded = fake.encoded
    perturbed_split(convs, cfg, family="replace", rate=0.5, seed=3, cache_dataset="ecf",
                    cache_split="test")  # fmt: skip
    assert fake.encoded == encoded  # the second time is a cache hit


# ---------------------------------------------------------------------------- the study


def test_the_study_writes_its_json_tables_and_plots(robust_out: Path) -> None:
    report = strict_json((robust_out / "robustness.json").read_text())
    assert report["families"] == list(FAMILIES) and report["rates"] == [0.0, 0.1, 0.3, 0.5]
    assert report["perturb_seed"] == 7 and report["split"] == "test"
    assert report["oracle"] == {"insert": False, "delete": True, "replace": True, "speaker": True}
    assert {(r["arm"], r["seed"]) for r in report["runs"]} == {
        (a, s) for a in ("base", "rpcl") for s in (1, 2)
    }
    for run in report["runs"]:
        assert len(run["views"]) == 16
        assert run["checks"] == {"clean_matches_run": True, "rate0_identical": True}
        for view in run["views"]:
            assert view["oracle"] is Family(view["family"]).oracle
    agg = report["aggregate"]["replace"]["0.3"]
    assert set(agg) == {"base", "rpcl"} and set(agg["base"]["flip_rate"]) == {"mean", "std", "n"}
    base = [
        v["metrics"]["flip_rate"]
        for r in report["runs"] if r["arm"] == "base"
        for v in r["views"] if (v["family"], v["rate"]) == ("replace", 0.3)
    ]  # fmt: skip
    assert agg["base"]["flip_rate"]["mean"] == pytest.approx(float(np.mean(base)))
    paired = report["paired"]["rpcl"]["insert"]["0.5"]["all_pair_f1"]
    assert paired["n"] == 2 and 0 <= paired["better"] <= 2
    assert "better" not in report["paired"]["rpcl"]["insert"]["0.5"]["conf_shift_gold"]
    md = (robust_out / "robustness.md").read_text()
    assert "## insert (not oracle)" in md and "## delete (oracle)" in md
    assert "| metric | rate | base | rpcl | Δ rpcl − base (paired) | rpcl better in |" in md
    assert "| flip rate | 0.3 |" in md and "/2 |" in md
    assert "Checks — the clean numbers equal each run's run.json: 4/4 runs" in md
    for family in FAMILIES:
        png = robust_out / f"robustness_{family}.png"
        assert png.stat().st_size > 0 and f"]({png.name})" in md


def test_the_study_resumes_and_rebuilds_its_report(
    tiny_study: Path, robust_out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (robust_out / "robustness.json").read_text()
    argv = ["--study", str(tiny_study), "--out", str(robust_out), "--device", "cpu"]
    capsys.readouterr()
    assert robustness.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("reuse ") == 4 and "evaluate " not in printed
    assert (robust_out / "robustness.json").read_text() == before
    md = (robust_out / "robustness.md").read_text()
    (robust_out / "robustness.md").unlink()
    assert robustness.main([*argv, "--report-only", "--quiet"]) == 0
    assert (robust_out / "robustness.md").read_text() == md


def test_a_dev_split_study_and_a_dev_only_run(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train(tiny, tmp_path / "s" / "base-seed1", "--epochs", "1", "--dev-only")
    argv = ["--study", str(tmp_path / "s"), "--families", "insert,speaker", "--rates", "0,0.5",
            "--device", "cpu", "--quiet", "--no-plots"]  # fmt: skip
    capsys.readouterr()
    assert robustness.main(argv) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"{tmp_path / 's' / 'base-seed1' / 'run.json'}: the run was trained with --dev-only" in line
    assert robustness.main([*argv, "--split", "dev"]) == 0
    report = strict_json((tmp_path / "s" / "robustness-dev" / "robustness.json").read_text())
    assert report["split"] == "dev" and report["paired"] == {}
    (run,) = report["runs"]
    assert [(v["family"], v["rate"]) for v in run["views"]] == [
        ("insert", 0.0), ("insert", 0.5), ("speaker", 0.0), ("speaker", 0.5)
    ]
    assert run["checks"]["clean_matches_run"] and run["checks"]["rate0_identical"]


def test_a_trained_encoder_run_is_evaluated_through_its_own_transformer(
    tiny: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    # The trained-encoder regime: every perturbed split is tokenized and run through the run's
    # own fine-tuned transformer (its cached frozen lower layer keyed by the perturbed texts), so
    # the clean view must still reproduce the run's own test numbers and rate 0 the clean view.
    train(tiny, tmp_path / "s" / "rpcl-seed1", "--epochs", "1", "--arm", "rpcl",
          *encoder_args(tiny_bert, tmp_path / "cache"))  # fmt: skip
    argv = ["--study", str(tmp_path / "s"), "--families", "insert,delete", "--rates", "0,0.5",
            "--device", "cpu", "--quiet", "--no-plots", "--baseline", "rpcl"]  # fmt: skip
    assert robustness.main(argv) == 0
    report = strict_json((tmp_path / "s" / "robustness-test" / "robustness.json").read_text())
    (run,) = report["runs"]
    assert run["checks"] == {"clean_matches_run": True, "rate0_identical": True}
    moved = [v["metrics"] for v in run["views"] if v["rate"] == 0.5]
    assert len(moved) == 2 and all(m["max_logit_change"] > 0 for m in moved)
    cached = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert any("insert-r0.5-s7" in name for name in cached), cached


def test_a_cross_validation_study_evaluates_each_runs_own_test_fold(tmp_path: Path) -> None:
    data = write_mecad(tmp_path / "mecad")
    for fold in (0, 3):
        argv = ["--dataset", "mecad", "--data-dir", str(data), "--fold", str(fold),
                "--epochs", "1", "--hash-buckets", "1024", "--quiet", "--device", "cpu",
                "--out", str(tmp_path / "s" / f"base-seed1-fold{fold}")]  # fmt: skip
        assert mecpe_train.main(argv) == 0
    argv = ["--study", str(tmp_path / "s"), "--families", "delete", "--rates", "0,0.5",
            "--device", "cpu", "--quiet", "--no-plots"]  # fmt: skip
    assert robustness.main(argv) == 0
    report = strict_json((tmp_path / "s" / "robustness-test" / "robustness.json").read_text())
    assert [r["fold"] for r in report["runs"]] == [0, 3]
    for run in report["runs"]:
        assert run["checks"] == {"clean_matches_run": True, "rate0_identical": True}
        stored = json.loads((Path(run["run"]) / "run.json").read_text())
        convs = run["views"][0]["perturbation"]["conversations"]
        assert convs == stored["data"]["test"]["conversations"]  # the fold's own test dialogues


# ----------------------------------------------------------------------- evaluate --perturb


def test_evaluate_perturb_reports_the_view(
    tiny: Path, tiny_study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    best = str(tiny_study / "base-seed1" / "best.pt")
    out = tmp_path / "preds.json"
    capsys.readouterr()
    argv = ["--checkpoint", best, "--file", str(tiny / "test.txt"), "--device", "cpu",
            "--perturb", "delete", "--rate", "0.4", "--out", str(out)]  # fmt: skip
    assert mecpe_evaluate.main(argv) == 0
    report = strict_json(capsys.readouterr().out)
    robust = report["robustness"]
    assert (robust["family"], robust["rate"], robust["perturb_seed"]) == ("delete", 0.4, 7)
    assert robust["oracle"] is True and robust["perturbation"]["removed"] > 0
    assert robust["metrics"]["clean_pair_f1"] == report["metrics"]["pair_f1"]
    assert robust["metrics"]["clean_pair_auprc"] == report["metrics"]["pair_auprc"]
    saved = strict_json(out.read_text())
    assert len(saved["perturbed_predictions"]) == 12
    assert all(len(p["origin"]) >= 1 for p in saved["perturbed_predictions"])
    assert mecpe_evaluate.main([*argv[:-2], "--perturb-seed", "7"]) == 0
    assert strict_json(capsys.readouterr().out)["robustness"] == robust  # 7 is the default


# -------------------------------------------------------------------------- bad input


def _evaluate_errors(best: str, data: str) -> dict[str, tuple[list[str], str]]:
    base = ["--checkpoint", best, "--file", data, "--device", "cpu"]
    return {
        "rate-without-perturb": ([*base, "--rate", "0.3"], "--rate is a setting of --perturb"),
        "seed-without-perturb": (
            [*base, "--perturb-seed", "2"],
            "--perturb-seed is a setting of --perturb",
        ),
        "unknown-family": (
            [*base, "--perturb", "shuffle", "--rate", "0.3"],
            "--perturb: unknown family 'shuffle'; expected insert, delete, replace, speaker",
        ),
        "no-rate": ([*base, "--perturb", "insert"], "--perturb needs --rate R"),
        "rate-too-big": (
            [*base, "--perturb", "insert", "--rate", "1.5"],
            "--rate must be a number in [0, 1], got 1.5",
        ),
        "rate-not-a-number": (
            [*base, "--perturb", "insert", "--rate", "abc"],
            "--rate must be a number in [0, 1], got 'abc'",
        ),
        "rate-nan": (
            [*base, "--perturb", "insert", "--rate", "nan"],
            "--rate must be a number in [0, 1], got 'nan'",
        ),
        "bad-seed": (
            [*base, "--perturb", "insert", "--rate", "0.1", "--perturb-seed", "x"],
            "--perturb-seed must be an integer, got 'x'",
        ),
    }


@pytest.mark.parametrize("case", list(_evaluate_errors("b", "f")))
def test_evaluate_perturb_errors_are_one_line(
    case: str, tiny: Path, tiny_study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    best = str(tiny_study / "base-seed1" / "best.pt")
    argv, says = _evaluate_errors(best, str(tiny / "test.txt"))[case]
    capsys.readouterr()
    assert mecpe_evaluate.main(argv) == 2
    captured = capsys.readouterr()
    (line,) = error_lines(captured.err)
    assert line.startswith("evaluate: error: ") and says in line, line
    assert captured.out == ""


def _study_errors(study_dir: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    no_ckpt = tmp / "nockpt"
    (no_ckpt / "base-seed1").mkdir(parents=True, exist_ok=True)
    run_json = (study_dir / "base-seed1" / "run.json").read_text()
    (no_ckpt / "base-seed1" / "run.json").write_text(run_json)
    return {
        "no-study": (
            ["--study", str(tmp / "none")],
            f"no complete run (run.json) under {tmp / 'none'}",
        ),
        "family": (
            ["--study", str(study_dir), "--families", "insert,shuffle"],
            "--families: unknown family 'shuffle'",
        ),
        "rate": (
            ["--study", str(study_dir), "--rates", "0,2"],
            "every --rates value must be a number in [0, 1], got 2.0",
        ),
        "repeat": (["--study", str(study_dir), "--rates", "0,0"], "must not repeat a value"),
        "no-checkpoint": (
            ["--study", str(no_ckpt)],
            f"checkpoint not found: {no_ckpt / 'base-seed1' / 'best.pt'}",
        ),
        "report-only": (
            ["--study", str(study_dir), "--out", str(tmp / "empty"), "--report-only"],
            f"--report-only: no {tmp / 'empty' / 'robustness.json'}",
        ),
    }


@pytest.mark.parametrize(
    "case", ["no-study", "family", "rate", "repeat", "no-checkpoint", "report-only"]
)
def test_study_errors_are_one_line(
    case: str, tiny_study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, says = _study_errors(tiny_study, tmp_path)[case]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "o")]
    capsys.readouterr()
    assert robustness.main([*argv, "--device", "cpu", "--quiet"]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("robustness: error: ") and says in line, line
    assert not (tmp_path / "o" / "robustness.json").exists()


def test_the_evaluation_draws_from_no_global_rng(tiny_study: Path) -> None:
    """Perturbations are hash-seeded and scoring runs in eval mode: the results cannot depend
    on what drew random numbers before."""
    model, cfg, convs, examples = loaded(tiny_study / "base-seed1")
    state = (random.getstate(), torch.get_rng_state())
    view = perturbed_split(
        convs, cfg, family="replace", rate=0.3, seed=7, cache_dataset="ecf", cache_split="test"
    )
    evaluate_views(model, examples, [view], cfg, CPU)
    assert random.getstate() == state[0] and torch.equal(torch.get_rng_state(), state[1])
