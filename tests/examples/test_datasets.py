"""Tests for the dataset registry."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.mecpe import datasets
from examples.mecpe import evaluate as mecpe_evaluate
from examples.mecpe import train as mecpe_train
from examples.mecpe.data import DataFormatError, load_ecf

from .helpers import train
from .test_data import ECF_SAMPLE, mec4_row, mecad_sample, write, write_json


def test_load_split_paths(tmp_path: Path) -> None:
    write(tmp_path / "ecf", "dev.txt", ECF_SAMPLE)
    write_json(tmp_path / "mecad", "valid_data_pair.json", mecad_sample())
    write_json(tmp_path / "mecad", "test_data_pair.json", mecad_sample())
    write_json(tmp_path / "mec4", "MEC4_text/valid.json", [mec4_row("1", ["A"], ["a"], "")])
    assert len(datasets.load_split("ecf", tmp_path / "ecf", "dev")) == 2
    assert len(datasets.load_split("mecad", tmp_path / "mecad", "dev")) == 2
    assert len(datasets.load_split("mecad", tmp_path / "mecad", "valid")) == 2
    assert len(datasets.load_split("mecad", tmp_path / "mecad", "test")) == 2
    assert len(datasets.load_split("mec4", tmp_path / "mec4", "dev")) == 1
    missing = tmp_path / "mecad" / "train_data_pair.json"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        datasets.load_split("mecad", tmp_path / "mecad", "train")
    with pytest.raises(ValueError, match="unknown dataset 'meld'; expected one of ecf, mecad"):
        datasets.load_split("meld", tmp_path, "dev")
    with pytest.raises(ValueError, match="unknown split"):
        datasets.load_split("ecf", tmp_path / "ecf", "validation")


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    empty = write(tmp_path, "dev.txt", "\n\n")
    assert load_ecf(empty) == []  # the loader itself reads zero conversations ...
    with pytest.raises(DataFormatError, match=re.escape(f"{empty}: no conversation")):
        datasets.load_file("ecf", empty)  # ... which the registry refuses


def test_guess_format() -> None:
    assert datasets.guess_format("a/test.txt") == "ecf"
    assert datasets.guess_format("valid_data_pair.JSON") == "mecad"
    with pytest.raises(ValueError, match="give --format"):
        datasets.guess_format("a/test.csv")


def test_spec_is_checked() -> None:
    with pytest.raises(ValueError, match="splits lacks"):
        datasets.DatasetSpec("x", load_ecf, {"train": "a", "dev": "b"})
    with pytest.raises(ValueError, match="already registered"):
        datasets.register(datasets.get("ecf"))


@pytest.fixture
def dummy() -> Iterator[datasets.DatasetSpec]:
    """An ECF-format dataset under other file names, registered for one test."""
    spec = datasets.register(
        datasets.DatasetSpec(
            "dummy",
            load_ecf,
            {"train": "a.txt", "dev": "b.txt", "test": "c.txt"},
            text_encoder="hash",
            suffix=".dmy",
        )
    )
    yield spec
    datasets.unregister("dummy")


def test_one_entry_registers_a_dataset_everywhere(
    dummy: datasets.DatasetSpec, tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "dummy"
    data.mkdir()
    for split, name in dummy.splits.items():
        (data / name).write_text((tiny / f"{split}.txt").read_text())
    parser_choices = {a.dest: a.choices for a in mecpe_train.build_parser()._actions}
    assert "dummy" in parser_choices["dataset"]
    result = train(data, tmp_path / "run", "--epochs", "1", "--dataset", "dummy")
    assert result["config"]["dataset"] == "dummy"
    assert result["config"]["text_encoder"] == "hash"  # the dataset's default
    assert result["data"]["dev"]["conversations"] == 12
    eval_choices = {a.dest: a.choices for a in mecpe_evaluate.build_parser()._actions}
    assert list(eval_choices["format"]) == ["auto", "ecf", "mecad", "mec4", "semeval", "dummy"]
    test_file = tmp_path / "test.dmy"
    test_file.write_text((tiny / "test.txt").read_text())
    capsys.readouterr()
    argv = ["--checkpoint", str(tmp_path / "run" / "best.pt"), "--file", str(test_file)]
    assert mecpe_evaluate.main([*argv, "--device", "cpu"]) == 0
    assert '"format": "dummy"' in capsys.readouterr().out
