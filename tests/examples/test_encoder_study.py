"""The trained-encoder study entry points: the dev-search grid, the study script's options, and
a settings-file dev-only study with the tiny random BERT."""

from __future__ import annotations

import itertools
import json
import re
import shlex
from pathlib import Path

import pytest

from examples.mecpe import study as mecpe_study
from examples.mecpe.config import data_key

from .helpers import documented_study_command, study_plan

ROOT = Path(__file__).resolve().parents[2]


def test_search_grid_plans_every_setting_of_the_brief() -> None:
    plan = study_plan("--settings", str(ROOT / "examples/mecpe/search_encoder.txt"), "--out", "o",
                 "--seeds", "42", "--dev-only")  # fmt: skip
    grid = {(c.encoder_lr, c.train_layers, c.epochs) for c in plan}
    assert grid == {(lr, k, e) for lr in (2e-5, 5e-5, 1e-4) for k in (2, 6) for e in (6, 10)}
    assert len(plan) == 12
    for cfg in plan:
        assert (cfg.arm, cfg.text_encoder, cfg.lr_schedule, cfg.dev_only) == (
            "base", "transformer", "linear", True,
        )  # fmt: skip
    # runs of one --train-layers value are adjacent: the study loads the examples twice
    keys = [data_key(c) for c in plan]
    assert sum(a != b for a, b in itertools.pairwise(keys)) == 1


@pytest.mark.parametrize(
    ("arms", "expected"),
    [
        ("--arms base,rpcl", {"base", "rpcl"}),  # the default study
        (f"--settings {ROOT}/examples/mecpe/study_ranking.txt", {"base", "ap-batch-w1"}),
    ],
)
def test_study_script_options_parse(arms: str, expected: set[str]) -> None:
    script = (ROOT / "examples/mecpe/run_ecf_encoder.sh").read_text()
    command = re.search(r"python -m examples\.mecpe\.study (.*?)\n(?!\s)", script, re.S)
    assert command is not None
    assert '"${arms[@]}"' in command.group(1)
    argv = shlex.split(command.group(1).replace("\\\n", " ").replace('"$data"', "d").replace(
        '"$out"', "o").replace('"${THREADS:-2}"', "2").replace(
        '"${SEEDS:-42,123,456}"', "42,123,456").replace('"${arms[@]}"', arms))  # fmt: skip
    plan = study_plan(*argv)
    assert {c.name or c.arm for c in plan} == expected and len(plan) == 6
    assert all(c.text_encoder == "transformer" and c.encoder_model == "minilm" for c in plan)
    assert {c.epochs for c in plan} == {10} and {c.train_layers for c in plan} == {2}


def test_settings_file_dev_only_study_with_the_encoder(
    tiny: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    settings = tmp_path / "search.txt"
    settings.write_text(
        "top1 | --arm base --text-encoder transformer --train-layers 1 --encoder-lr 1e-4\n"
        "top1-lr | --arm base --text-encoder transformer --train-layers 1 --encoder-lr 3e-4\n"
    )
    out = tmp_path / "study"
    argv = ["--settings", str(settings), "--data-dir", str(tiny), "--out", str(out),
            "--seeds", "1", "--epochs", "1", "--dev-only", "--quiet", "--device", "cpu",
            "--encoder-model", str(tiny_bert), "--max-tokens", "16",
            "--cache-dir", str(tmp_path / "cache"), "--threads", "1"]  # fmt: skip
    assert mecpe_study.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {r["arm"] for r in summary["runs"]} == {"top1", "top1-lr"}
    assert all("test" not in r for r in summary["runs"])
    runs = [json.loads((out / f"{a}-seed1" / "run.json").read_text()) for a in ("top1", "top1-lr")]
    assert [r["config"]["encoder_lr"] for r in runs] == [1e-4, 3e-4]


def test_the_encoder_ranking_search_command_plans_its_lines() -> None:
    """search_ranking_encoder.txt's documented command (its header) plans every line dev-only in
    the trained-encoder regime of run_ecf_encoder.sh, with the frozen search's line for each
    candidate, and the selection rule comes before the first setting."""
    path = ROOT / "examples/mecpe/search_ranking_encoder.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    header = "\n".join(lines[:first])
    assert header.index("SELECTION RULE") < header.index("WHAT RAN")
    plan = study_plan(*documented_study_command(path))
    assert len(plan) == 2 * (len(lines) - first) and all(c.dev_only for c in plan)
    assert {(c.text_encoder, c.train_layers, c.encoder_lr, c.epochs) for c in plan} == {
        ("transformer", 2, 5e-5, 10)
    }
    frozen = dict(
        (a.name, a.args) for a in mecpe_study._arms(mecpe_study.StudyConfig(
            settings=str(ROOT / "examples/mecpe/search_ranking.txt"), out="o"))
    )  # fmt: skip
    for arm in mecpe_study._arms(mecpe_study.StudyConfig(settings=str(path), out="o")):
        assert arm.args == frozen[arm.name], arm.name


def test_the_second_encoder_search_changes_one_setting_per_line() -> None:
    """search_encoder2.txt's documented command plans each line dev-only in the study's regime,
    and every line but ``ref`` differs from ``ref`` in exactly one setting."""
    from examples.mecpe.config import resumable_fields

    path = ROOT / "examples/mecpe/search_encoder2.txt"
    plan = {c.name: c for c in study_plan(*documented_study_command(path)) if c.seed == 42}
    assert next(iter(plan)) == "ref" and len(plan) == 6 and all(c.dev_only for c in plan.values())
    ref = plan.pop("ref")
    assert (ref.text_encoder, ref.train_layers, ref.encoder_lr, ref.epochs) == (
        "transformer", 2, 5e-5, 10,
    )  # fmt: skip
    ignore = resumable_fields(finished=True) | {"name"}
    for name, cfg in plan.items():
        changed = cfg.diff(ref.to_dict(), ignore)  # "key: ref's → this line's, ..."
        assert changed and ", " not in changed, (name, changed)
