"""Tests of ``python -m examples.mecpe.evaluate``: metrics, predictions and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from examples.mecpe import evaluate as mecpe_evaluate

from .helpers import error_lines, train
from .test_data import mec4_row


def strict_json(text: str) -> Any:
    """Parse ``text`` refusing NaN / Infinity (which ``json.loads`` accepts by default)."""

    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def text_run(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch text-only run (its directory)."""
    out = tmp_path_factory.mktemp("eval") / "run"
    train(tiny, out, "--epochs", "1")
    return out


def evaluate(*argv: str) -> int:
    return mecpe_evaluate.main([*argv, "--device", "cpu"])


def test_evaluate_cli_matches_training_metrics(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tav"
    result = train(
        tiny, out, "--epochs", "1", "--modalities", "TAV",
        "--audio-table", str(tiny / "audio.npz"), "--video-table", str(tiny / "video.npz"),
    )  # fmt: skip
    capsys.readouterr()
    preds = tmp_path / "preds.json"
    rc = evaluate("--checkpoint", str(out / "best.pt"), "--file", str(tiny / "test.txt"),
                  "--out", str(preds))  # fmt: skip
    assert rc == 0
    printed = strict_json(capsys.readouterr().out)
    assert printed["format"] == "ecf" and printed["dev_threshold"] == result["dev_threshold"]
    assert printed["dev_recalibration"]["temperature"] == result["dev"]["temperature"]
    keys = ("pair_f1", "pair_auprc", "ece", "pair_f1_devthr", "row_mrr", "temperature",
            "ece_tempscaled", "nll", "pair_f1_platt", "nll_platt")  # fmt: skip
    for key in keys:
        assert printed["metrics"][key] == result["test"][key], key
    saved = strict_json(preds.read_text())
    assert len(saved["predictions"]) == 12
    assert all(
        isinstance(p, list) and len(p) == 2 for c in saved["predictions"] for p in c["pairs"]
    )


def test_file_without_emotion_labels_gives_valid_json(
    text_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [mec4_row(f"d{k}", ["A", "B"], ["we go home", "great party"], "(2,1)") for k in range(3)]
    path = tmp_path / "mec4.json"
    path.write_text(json.dumps(rows))
    capsys.readouterr()
    assert evaluate("--checkpoint", str(text_run / "best.pt"), "--file", str(path),
                    "--format", "mec4") == 0  # fmt: skip
    report = strict_json(capsys.readouterr().out)
    assert "emotion_f1" not in report["metrics"]
    assert report["metrics"]["undefined"]["emotion_f1"] == "no utterance with a known emotion label"
    assert report["metrics"]["n_conversations"] == 3


def _bad_inputs(tmp_path: Path, text_run: Path, tiny: Path) -> dict[str, tuple[list[str], str, str]]:
    """Per case: evaluate arguments, the file the error names, and what it says."""
    best = str(text_run / "best.pt")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("1 1\n(1,1)\n1 | A | joy | caf\u00e9 | t\n".encode("latin-1"))
    malformed = tmp_path / "bad.txt"
    malformed.write_text("1 2\n(1,3)\n1 | A | joy | a | t\n2 | B | joy | b | t\n")
    notes = tmp_path / "notes.pt"
    notes.write_text("not a checkpoint")
    old = tmp_path / "old.pt"
    torch.save({**torch.load(best, weights_only=True), "format": 1}, old)
    test = str(tiny / "test.txt")
    return {
        "empty": (["--checkpoint", best, "--file", str(empty)], str(empty), "no conversation"),
        "latin1": (["--checkpoint", best, "--file", str(latin)], str(latin), "not UTF-8"),
        "malformed": (
            ["--checkpoint", best, "--file", str(malformed)],
            str(malformed),
            "line 2 (conversation '1'): field 'pairs': pair (1,3) outside utterances 1..2",
        ),
        "not-a-checkpoint": (
            ["--checkpoint", str(notes), "--file", test],
            str(notes),
            "not a checkpoint of this trainer",
        ),
        "old-format": (
            ["--checkpoint", str(old), "--file", test],
            str(old),
            "checkpoint format 1, this trainer reads format 2",
        ),
        "unknown-suffix": (
            ["--checkpoint", best, "--file", str(tmp_path / "x.csv")],
            str(tmp_path / "x.csv"),
            "give --format",
        ),
        "missing-file": (
            ["--checkpoint", best, "--file", str(tmp_path / "none.txt")],
            str(tmp_path / "none.txt"),
            "No such file",
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["empty", "latin1", "malformed", "not-a-checkpoint", "old-format", "unknown-suffix", "missing-file"],
)
def test_bad_input_is_one_stderr_line(
    case: str, text_run: Path, tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, path, says = _bad_inputs(tmp_path, text_run, tiny)[case]
    capsys.readouterr()
    assert evaluate(*argv) == 2
    captured = capsys.readouterr()
    (line,) = error_lines(captured.err)
    assert line.startswith("evaluate: error: ") and path in line and says in line, line
    assert captured.out == ""
    with pytest.raises((ValueError, OSError)):
        evaluate(*argv, "--debug")
