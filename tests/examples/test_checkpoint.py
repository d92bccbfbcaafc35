"""Tests for checkpoints and run files: format version, atomic writes, RNG state, resume checks."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from examples.mecpe import checkpoint
from examples.mecpe.checkpoint import FORMAT, CheckpointError
from examples.mecpe.config import TrainConfig


def test_old_format_checkpoint_names_file_and_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    torch.save({"format": 1, "model": {}, "config": {}, "model_config": {}}, path)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: checkpoint format 1, this trainer reads format {FORMAT}")
    torch.save({"model": {}, "config": {}}, path)
    with pytest.raises(CheckpointError, match="checkpoint format none"):
        checkpoint.load(path)


def test_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(text)
    msg = str(info.value)
    assert msg.startswith(f"{text}: not a checkpoint of this trainer")
    assert "weights_only" not in msg and "\n" not in msg
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor)
    with pytest.raises(CheckpointError, match="no model and config"):
        checkpoint.load(tensor)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing.pt"))):
        checkpoint.load(tmp_path / "missing.pt")


def test_run_files(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    checkpoint.write_json({"format": FORMAT, "complete": True, "x": [1.5]}, path)
    assert checkpoint.read_run_file(path) == {"format": FORMAT, "complete": True, "x": [1.5]}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary left over
    with pytest.raises(ValueError, match="Out of range float values"):
        checkpoint.write_json({"x": math.nan}, path)
    path.write_text(json.dumps({"complete": True, "config": {}}))
    with pytest.raises(CheckpointError, match=r"run\.json: run file format none .* format 2"):
        checkpoint.read_run_file(path)
    path.write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        checkpoint.read_run_file(path)


def test_rng_state_round_trip() -> None:
    gens = {"order": torch.Generator().manual_seed(3)}
    state = checkpoint.rng_state(gens)
    draws = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=gens["order"]))  # noqa: NPY002
    random.seed(0)
    torch.manual_seed(0)
    gens["order"].manual_seed(0)
    checkpoint.set_rng_state(state, gens)
    again = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=gens["order"]))  # noqa: NPY002
    assert draws[:2] == again[:2]
    assert torch.equal(draws[2], again[2]) and torch.equal(draws[3], again[3])


def test_check_resumable(tmp_path: Path) -> None:
    saved = TrainConfig(epochs=3).to_dict()
    checkpoint.check_resumable(saved, TrainConfig(epochs=5, device="cpu", dev_only=True), tmp_path)
    with pytest.raises(ValueError, match=r"started with other settings \(lr: 0.001 → 0.01\)"):
        checkpoint.check_resumable(saved, TrainConfig(epochs=3, lr=1e-2), tmp_path)
    with pytest.raises(ValueError, match="fewer epochs"):
        checkpoint.check_resumable(saved, TrainConfig(epochs=2), tmp_path)
