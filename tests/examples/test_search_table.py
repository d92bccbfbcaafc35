"""search_table: the dev table of a settings-file search, from run folders built here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from examples.mecpe import search_table


def _run(folder: Path, name: str, seed: int, *, complete: bool = True, test: bool = False,
         **dev: float) -> None:  # fmt: skip
    metrics = {k: 0.5 for k, _, _ in search_table.COLUMNS} | dev
    path = folder / f"{name}-seed{seed}"
    path.mkdir(parents=True)
    record = {"complete": complete, "dev": metrics, "test": {"pair_f1": 0.1} if test else None}
    (path / "run.json").write_text(json.dumps(record))


def test_means_deltas_spread_and_paired_wins(tmp_path: Path) -> None:
    _run(tmp_path, "base", 1, pair_auprc=0.50, ece=0.02)
    _run(tmp_path, "base", 2, pair_auprc=0.54, ece=0.02)
    _run(tmp_path, "ap", 1, pair_auprc=0.53, ece=0.03)  # beats the base on seed 1 only
    _run(tmp_path, "ap", 2, pair_auprc=0.53, ece=0.01)
    _run(tmp_path, "half", 1, complete=False)  # an unfinished run is not read
    rows, spread = search_table.search_rows(search_table.load_search(tmp_path), "base")
    by = {r["setting"]: r for r in rows}
    assert set(by) == {"base", "ap"}
    assert spread["pair_auprc"] == pytest.approx(0.04)
    assert by["ap"]["pair_auprc"] == pytest.approx(0.53)
    assert by["ap"]["pair_auprc_delta"] == pytest.approx(0.01)
    assert by["ap"]["pair_auprc_wins"] == (1, 2)
    assert by["ap"]["ece_wins"] == (1, 2)  # lower is better: 0.01 < 0.02 on seed 2 only
    assert by["ap"]["temperature_wins"] is None
    text = search_table.write_markdown(rows, spread, "base", "t")
    lines = [line for line in text.splitlines() if line.startswith("| `")]
    assert lines[0].startswith("| `base` | 1,2 | 0.5000 |")  # base first, plain values
    assert "0.5300 (+0.0100, 1/2)" in lines[1]


def test_test_metrics_and_unknown_base_are_errors(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    _run(tmp_path, "base", 1, test=True)
    with pytest.raises(ValueError, match="holds test metrics"):
        search_table.load_search(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        search_table.main([str(tmp_path)])
    assert exit_info.value.code == 2 and "test metrics" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no complete run"):
        search_table.load_search(tmp_path / "empty")
    other = tmp_path / "other"
    _run(other, "x", 1)
    with pytest.raises(ValueError, match="--base: no setting named 'base'"):
        search_table.search_rows(search_table.load_search(other), "base")
