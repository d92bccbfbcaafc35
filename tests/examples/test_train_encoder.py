"""End-to-end runs with the trainable transformer encoder (a tiny random BERT, never real
weights): cached frozen layers, the learning-rate schedule, resume, bf16, length buckets."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from examples.mecpe import train as mecpe_train
from examples.mecpe.engine import EpochResult

from .helpers import encoder_args, error_lines, strip_time, train, train_args

RPCL = ("--arm", "rpcl", "--rpcl-arg", "consistency_weight=1.0", "--rpcl-arg", "mode=shuffle")


class Interrupted(Exception):
    """Stands for a crash (or a kill) during the second epoch."""


def _interrupt_after_first_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    real = mecpe_train.run_epoch
    calls = [0]

    def run_epoch(*args: Any, **kwargs: Any) -> EpochResult:
        calls[0] += 1
        if calls[0] == 2:
            raise Interrupted
        return real(*args, **kwargs)

    monkeypatch.setattr(mecpe_train, "run_epoch", run_epoch)


def test_top_layer_on_cached_states_trains_and_resumes_bit_identically(
    tiny: Path, tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    extra = ("--epochs", "2", *RPCL, *encoder_args(tiny_bert, cache))
    full = train(tiny, tmp_path / "full", *extra)
    assert full["config"]["lr_schedule"] == "linear"  # the encoder's default
    for split in ("dev", "test"):
        assert all(math.isfinite(v) for v in full[split].values() if isinstance(v, float))
    assert full["data"]["transformer"]["trained_layers"] == 1
    assert full["data"]["train"]["transformer_inputs"]["sequences"] > 0
    # one cache file per split: the frozen embeddings + layer 1, float16
    assert sorted(p.name.split("__")[1] for p in cache.glob("*.npz")) == ["dev", "test", "train"]
    last = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    assert last["steps"] == 10 and last["schedule"]["last_epoch"] == 10
    assert last["world_size"] == 1 and len(last["ranks"]) == 1
    # the model holds the trained layer only (the frozen part lives in the cache)
    assert any(k.startswith("utterance.transformer.layers.0.") for k in last["model"])
    assert not any(".layers.1." in k or "embeddings" in k for k in last["model"])
    # a crash during epoch 2, then --resume: the same run, bit for bit
    part = tmp_path / "part"
    _interrupt_after_first_epoch(monkeypatch)
    with pytest.raises(Interrupted):
        mecpe_train.main(train_args(tiny, part, *extra))
    monkeypatch.undo()
    resumed = train(tiny, part, *extra, "--resume")
    assert strip_time(resumed) == strip_time(full)
    a = torch.load(part / "best.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "full" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_resume_refuses_a_stretched_linear_schedule(
    tiny: Path, tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = encoder_args(tiny_bert, tmp_path / "cache")
    out = tmp_path / "run"
    train(tiny, out, "--epochs", "1", *extra)
    capsys.readouterr()
    assert mecpe_train.main(train_args(tiny, out, "--epochs", "2", "--resume", *extra)) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "its linear learning-rate schedule is laid out over the 1 epochs" in line
    # the other way round: a constant schedule may be extended
    constant = tmp_path / "constant"
    train(tiny, constant, "--epochs", "1", "--lr-schedule", "constant", *extra)
    assert train(tiny, constant, "--epochs", "2", "--resume", "--lr-schedule", "constant", *extra)
    # another number of processes: refused (each process's random streams are in last.pt)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    torch.save({**ckpt, "world_size": 2, "ranks": ckpt["ranks"] * 2}, out / "last.pt")
    capsys.readouterr()
    assert mecpe_train.main(train_args(tiny, out, "--epochs", "1", "--resume", *extra)) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "trained by 2 process(es), this run has 1" in line
    assert "resume with torchrun --nproc-per-node 2" in line


def test_bf16_autocast_on_cpu_is_finite(tiny: Path, tiny_bert: Path, tmp_path: Path) -> None:
    result = train(
        tiny, tmp_path / "bf16", "--epochs", "2", "--precision", "bf16", *RPCL,
        *encoder_args(tiny_bert, tmp_path / "cache"),
    )  # fmt: skip
    assert result["config"]["precision"] == "bf16"
    for h in result["history"]:
        assert all(math.isfinite(v) for v in h.values())
    assert all(math.isfinite(v) for v in result["test"].values() if isinstance(v, float))


def test_all_layers_on_whole_conversations_with_length_buckets(
    tiny: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    """Every layer trained (the embeddings too, nothing cached), conversation sequences."""
    cache = tmp_path / "cache"
    result = train(
        tiny, tmp_path / "all", "--epochs", "1", *encoder_args(tiny_bert, cache),
        "--train-layers", "2", "--encoder-input", "conversation", "--max-tokens", "64",
        "--length-buckets", "2", "--grad-checkpoint",
    )  # fmt: skip
    assert not cache.exists()
    stats = result["data"]["train"]["transformer_inputs"]
    assert stats["sequences"] == result["data"]["train"]["conversations"]  # one per conversation
    assert math.isfinite(result["dev"]["pair_auprc"])
    keys = torch.load(tmp_path / "all" / "best.pt", weights_only=True)["model"]
    assert any("transformer.embeddings." in k for k in keys)


def test_fp16_on_cpu_is_one_error_line(
    tiny: Path, tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = train_args(tiny, tmp_path / "run", "--precision", "fp16",
                      *encoder_args(tiny_bert, tmp_path / "cache"))  # fmt: skip
    assert mecpe_train.main(argv) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line == "train: error: --precision fp16 needs a CUDA device (on the CPU use bf16)"
    assert not (tmp_path / "cache").exists()  # refused before any data was read


def test_run_json_records_the_processes(tiny: Path, tmp_path: Path) -> None:
    result = train(tiny, tmp_path / "run", "--epochs", "1")
    assert result["world_size"] == 1
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["world_size"] == 1
