"""Tests of ``python -m examples.mecpe.study``: arms studies, settings-file studies, dev-only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from examples.mecpe import study as mecpe_study
from examples.mecpe.featurize import DataBundle
from examples.mecpe.options import values_from

from .helpers import error_lines, study_plan


def test_study_summary_shape(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "study"
    argv = ["--dataset", "ecf", "--data-dir", str(tiny), "--arms", "base,rpcl", "--seeds", "1,2",
            "--epochs", "1", "--text-encoder", "hash", "--hash-buckets", "2048", "--out", str(out),
            "--quiet", "--device", "cpu", "--rpcl-arg", "margin_weight=0.3"]  # fmt: skip
    assert mecpe_study.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"dataset", "modalities", "config", "runs", "aggregate", "delta"}
    assert summary["dataset"] == "ecf" and summary["modalities"] == "T"
    assert len(summary["runs"]) == 4
    assert {(r["arm"], r["seed"]) for r in summary["runs"]} == {
        (a, s) for a in ("base", "rpcl") for s in (1, 2)
    }
    for r in summary["runs"]:
        assert set(r) == {"arm", "seed", "dev", "test", "dev_threshold", "numerics"}
        assert r["numerics"]["cpu"] and "cpu_capability" in r["numerics"]  # the run's machine
        assert {
            "pair_p",
            "pair_r",
            "pair_f1",
            "pair_auprc",
            "pair_f1_devthr",
            "ece",
            "row_top1",
            "row_mrr",
        } <= set(r["test"])
    assert set(summary["aggregate"]) == {"base", "rpcl"}
    assert set(summary["aggregate"]["base"]["pair_f1"]) == {"mean", "std"}
    assert summary["delta"]["pair_f1"] == pytest.approx(
        summary["aggregate"]["rpcl"]["pair_f1"]["mean"]
        - summary["aggregate"]["base"]["pair_f1"]["mean"]
    )
    # the study's --rpcl-arg are the rpcl arm's
    assert summary["config"]["rpcl_args"] == {"margin_weight": 0.3}
    base_run = json.loads((out / "base-seed1" / "run.json").read_text())
    assert base_run["config"]["rpcl_args"] == {}
    md = (out / "summary.md").read_text()
    assert "pair_f1" in md and "Per run" in md and "Paired differences (test" in md
    for name in ("gap_hist.png", "pr_curve.png", "reliability.png"):
        assert (out / name).stat().st_size > 0
    # second invocation: everything is skipped, summary rebuilt identically
    mtime = (out / "base-seed1" / "run.json").stat().st_mtime_ns
    assert mecpe_study.main([*argv, "--summarize-only"]) == 0
    assert mecpe_study.main(argv) == 0
    assert "skip" in capsys.readouterr().out
    assert (out / "base-seed1" / "run.json").stat().st_mtime_ns == mtime
    assert json.loads((out / "summary.json").read_text()) == summary
    # finished runs keep best.pt only; other settings in the same --out are refused
    assert (out / "base-seed1" / "best.pt").is_file()
    assert not (out / "base-seed1" / "last.pt").exists()
    assert mecpe_study.main([*argv, "--epochs", "2"]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "base-seed1 holds a finished run with other settings (epochs: 1 → 2)" in line


SETTINGS = """\
# two settings of a dev study: name | train arguments
base        | --arm base
rpcl-w.3    | --arm rpcl --rpcl-arg margin_weight=0.3
base-win2   | --arm base --window 2
"""


def test_settings_file_study_dev_only(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "settings.txt"
    settings.write_text(SETTINGS)
    loads: list[Any] = []
    real_load = mecpe_study.load_data

    def counting_load(cfg: Any) -> DataBundle:
        loads.append(cfg.window)
        return real_load(cfg)

    monkeypatch.setattr(mecpe_study, "load_data", counting_load)
    out = tmp_path / "dev-study"
    argv = ["--settings", str(settings), "--data-dir", str(tiny), "--seeds", "3", "--epochs", "1",
            "--text-encoder", "hash", "--hash-buckets", "1024", "--out", str(out), "--device", "cpu",
            "--dev-only", "--no-plots"]  # fmt: skip
    assert mecpe_study.main(argv) == 0
    printed = capsys.readouterr().out
    assert loads == [None, 2]  # the first two settings share their examples; --window reloads
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "base-seed3", "base-win2-seed3", "rpcl-w.3-seed3"
    ]  # fmt: skip
    rpcl = json.loads((out / "rpcl-w.3-seed3" / "run.json").read_text())
    assert rpcl["config"]["name"] == "rpcl-w.3" and rpcl["config"]["rpcl_args"] == {"margin_weight": 0.3}
    assert json.loads((out / "base-win2-seed3" / "run.json").read_text())["config"]["window"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"] == {
        "base": "--arm base",
        "rpcl-w.3": "--arm rpcl --rpcl-arg margin_weight=0.3",
        "base-win2": "--arm base --window 2",
    }
    assert [r["arm"] for r in summary["runs"]] == ["base", "rpcl-w.3", "base-win2"]
    md = (out / "summary.md").read_text()
    assert "| setting | runs |" in md and "`--arm rpcl --rpcl-arg margin_weight=0.3`" in md
    # no test metric anywhere: not in the runs, the summary, its tables or the log
    for text in (json.dumps(summary), md, printed):
        known_words = ('"show_test": false', "dev only (the test split was not evaluated)")
        for known in (str(tmp_path), str(tiny), *known_words):  # paths name the test
            text = text.replace(known, "")
        assert "test" not in text
    assert not list(out.glob("*/scores_test.npz"))
    # rerun: every setting is skipped
    assert mecpe_study.main(argv) == 0
    assert capsys.readouterr().out.count("skip") == 3


@pytest.mark.parametrize(
    ("content", "extra", "says"),
    [
        ("a | --arm base\nbroken line\n", [], "settings.txt:2: expected 'name | arguments'"),
        ("a | --arm base\na | --arm rpcl\n", [], "settings.txt:2: empty, duplicate or invalid"),
        ("a | --arm base --seed 3\n", [], "settings.txt:1: unrecognized arguments: --seed 3"),
        ("a | --arm base --lr fast\n", [], "settings.txt:1: argument --lr: invalid float"),
        ("a | --arm base --rpcl-arg k=2\n", [], "--rpcl-arg is a setting of the rpcl arm"),
        ("a | --arm rpcl --rpcl-arg kk=2\n", [], "--rpcl-arg kk: not an RPCLoss setting"),
        ("# nothing\n", [], "no setting"),
        ("a | --arm base\n", ["--only", "b"], "--only names unknown arms: b"),
        ("a | --arm base\n", ["--arms", "base"], "give --arms or --settings, not both"),
    ],
)
def test_bad_settings_fail_before_any_run(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str,
    extra: list[str],
    says: str,
) -> None:
    settings = tmp_path / "settings.txt"
    settings.write_text(content)
    argv = ["--settings", str(settings), "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]
    assert mecpe_study.main([*argv, *extra]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("study: error: ") and says in line, line
    assert not (tmp_path / "o").exists()


def test_unknown_arm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert mecpe_study.main(["--arms", "base,rcpl", "--out", str(tmp_path)]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "unknown arm 'rcpl' in --arms" in line


def test_bad_data_in_a_study_is_one_line(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):
        (data / f"{split}.txt").write_text((tiny / f"{split}.txt").read_text())
    (data / "dev.txt").write_text("x y\n")
    argv = ["--data-dir", str(data), "--out", str(tmp_path / "o"), "--seeds", "1",
            "--text-encoder", "hash", "--quiet"]  # fmt: skip
    assert mecpe_study.main(argv) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"{data / 'dev.txt'}: line 1: field 'header'" in line


def test_old_format_run_in_the_study_folder_is_refused_up_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "o" / "rpcl-seed1"
    old.mkdir(parents=True)
    (old / "run.json").write_text(json.dumps({"complete": True, "config": {"arm": "rpcl"}}))
    argv = ["--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--seeds", "1"]
    assert mecpe_study.main(argv) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"{old / 'run.json'}: run file format none" in line and "format 2" in line
    assert not (tmp_path / "o" / "base-seed1").exists()  # nothing was trained before


SEARCH = Path(mecpe_study.__file__).with_name("search_ranking.txt")


def test_ranking_search_settings_are_runnable_and_state_their_rule_first(tmp_path: Path) -> None:
    """Every line of the ranking search plans (its train arguments and RPCLoss options are
    accepted, before any data is loaded) and builds its RPCLoss; the selection rule comes before
    the first setting."""
    from torch_pairconf import RPCLoss

    text = SEARCH.read_text(encoding="utf-8")
    first_setting = next(i for i, line in enumerate(text.splitlines()) if line.strip() and not line.startswith("#"))
    assert "SELECTION RULE" in "\n".join(text.splitlines()[:first_setting])
    args = mecpe_study.build_parser().parse_args(
        ["--settings", str(SEARCH), "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"),
         "--seeds", "42,123", "--dev-only"]
    )  # fmt: skip
    study = mecpe_study.StudyConfig(**values_from(args, mecpe_study.StudyConfig))
    arms = mecpe_study._arms(study)
    assert len(arms) <= 16 and arms[0].name == "base"
    plan = mecpe_study._plan(study, arms, args)
    assert len(plan) == 2 * len(arms) and all(cfg.dev_only for cfg in plan)
    rankings = set()
    for cfg in plan:
        if cfg.arm == "rpcl":
            rpcl = RPCLoss(**cfg.rpcl_args)
            rankings.add(type(rpcl.ranking).__name__)
            if cfg.name.endswith("+cons"):  # stage 2: the winner with RPCL's consistency term
                assert rpcl.consistency_weight > 0
            elif cfg.name != "rpcl-defaults":  # stage 1: each candidate alone, no consistency
                assert rpcl.consistency_weight == 0
    assert rankings == {"PairMarginLoss", "PairAPLoss", "PairAUCLoss", "PairListwiseLoss", "PairRelativeMarginLoss"}


@pytest.mark.parametrize("name", ["study_views.txt", "study_ranking.txt"])
def test_test_study_settings_reuse_the_arms_study_runs(name: str, tmp_path: Path) -> None:
    """A test study's ``base`` (and ``rpcl``) lines train exactly what ``--arms base,rpcl`` does
    into the same run folders, so a folder holding that study's runs trains only the new lines
    (a finished run with other settings would be refused, not reused)."""
    from examples.mecpe.config import resumable_fields

    def plan(*arms: str) -> dict[str, Any]:
        argv = [*arms, "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--seeds", "42"]
        return {c.out: c for c in study_plan(*argv)}

    settings = plan("--settings", str(SEARCH.with_name(name)))
    arms = plan("--arms", "base,rpcl")
    shared = set(settings) & set(arms)
    assert {Path(out).name for out in shared} >= {"base-seed42"}
    for out in shared:
        diff = settings[out].diff(arms[out].to_dict(), resumable_fields(finished=True))
        assert not diff, (out, diff)
    assert len(settings) > len(shared)  # at least one new line
