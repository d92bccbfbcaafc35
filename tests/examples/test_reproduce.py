"""The run comparison behind the README's reproducibility figures."""

from __future__ import annotations

import json
from pathlib import Path

from examples.mecpe import reproduce


def _run(folder: Path, f1: float, history_loss: float = 1.0) -> None:
    folder.mkdir(parents=True)
    run = {
        "dev": {"pair_f1": 0.5, "train_seconds": 3.0},
        "test": {"pair_f1": f1, "pair_auprc": 0.4},
        "history": [{"epoch": 1, "loss": history_loss, "seconds": 2.0}],
        "numerics": {"cpu_capability": "AVX2"},
    }
    (folder / "run.json").write_text(json.dumps(run))


def test_identical_and_different_runs(tmp_path: Path) -> None:
    _run(tmp_path / "a" / "base-seed1", 0.6)
    _run(tmp_path / "b" / "base-seed1", 0.6)
    _run(tmp_path / "a" / "rpcl-seed1", 0.6)
    _run(tmp_path / "b" / "rpcl-seed1", 0.6, history_loss=1.5)  # differs in the history only
    text = reproduce.report(tmp_path / "a", tmp_path / "b")
    assert "| base-seed1 | yes | 4 |" in text  # timings are not compared
    assert "| rpcl-seed1 | no | 4 |" in text and "epoch1.loss 0.5" in text


def test_a_committed_summary_against_runs(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    entry = {"arm": "base", "seed": 1, "dev": {"pair_f1": 0.5}, "test": {"pair_f1": 0.61, "pair_auprc": 0.4}}
    (tmp_path / "old" / "summary.json").write_text(json.dumps({"runs": [entry]}))
    _run(tmp_path / "new" / "base-seed1", 0.6)
    assert reproduce.main([str(tmp_path / "old"), str(tmp_path / "new"), "--out", str(tmp_path / "r.md")]) == 0
    assert "| base-seed1 | no | 3 | 0.6100 / 0.6000 |" in (tmp_path / "r.md").read_text()
