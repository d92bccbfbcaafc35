"""Tests for the run config and its generated command line."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from examples.mecpe import study as mecpe_study
from examples.mecpe import train as mecpe_train
from examples.mecpe.config import TrainConfig, config_from_args, resumable_fields
from examples.mecpe.options import info

from .helpers import error_lines

#: For every TrainConfig field: command-line arguments that set it, and the value they give.
#: (A new field without an entry here fails test_every_field_is_reachable_from_the_cli.)
SAMPLES: dict[str, tuple[list[str], Any]] = {
    "dataset": (["--dataset", "mec4"], "mec4"),
    "data_dir": (["--data-dir", "d/ecf"], "d/ecf"),
    "protocol": (["--protocol", "cv", "--fold", "0"], "cv"),
    "fold": (["--protocol", "cv", "--fold", "3"], 3),
    "n_folds": (["--n-folds", "7", "--protocol", "cv", "--fold", "6"], 7),
    "modalities": (["--modalities", "TAV"], "TAV"),
    "audio_table": (["--audio-table", "a.npz"], "a.npz"),
    "video_table": (["--video-table", "v.npz"], "v.npz"),
    "mapping": (["--mapping", "m.npy"], "m.npy"),
    "text_encoder": (["--text-encoder", "hash"], "hash"),
    "hash_buckets": (["--hash-buckets", "64"], 64),
    "cache_dir": (["--cache-dir", "c"], "c"),
    "encoder_model": (["--encoder-model", "models/bert"], "models/bert"),
    "train_layers": (["--train-layers", "6"], 6),
    "encoder_input": (["--encoder-input", "conversation"], "conversation"),
    "max_tokens": (["--max-tokens", "64"], 64),
    "pooling": (["--pooling", "cls"], "cls"),
    "encoder_lr": (["--encoder-lr", "2e-5"], 2e-5),
    "encoder_weight_decay": (["--encoder-weight-decay", "0"], 0.0),
    "chunk_tokens": (["--chunk-tokens", "2048"], 2048),
    "grad_checkpoint": (["--grad-checkpoint"], True),
    "arm": (["--arm", "rpcl"], "rpcl"),
    "rpcl_args": (
        ["--arm", "rpcl", "--rpcl-arg", "margin_weight=0.3", "--rpcl-arg", "where=input"],
        {"margin_weight": 0.3, "where": "input"},
    ),
    "view": (["--arm", "rpcl", "--view", "insert+delete"], "insert+delete"),
    "view_rate": (["--arm", "rpcl", "--view", "delete", "--view-rate", "0.5"], 0.5),
    "seed": (["--seed", "7"], 7),
    "epochs": (["--epochs", "3"], 3),
    "batch_size": (["--batch-size", "4"], 4),
    "lr": (["--lr", "5e-4"], 5e-4),
    "weight_decay": (["--weight-decay", "0.01"], 0.01),
    "lr_schedule": (["--lr-schedule", "linear"], "linear"),
    "warmup_ratio": (["--warmup-ratio", "0"], 0.0),
    "grad_accum": (["--grad-accum", "2"], 2),
    "length_buckets": (["--length-buckets", "50"], 50),
    "precision": (["--precision", "bf16"], "bf16"),
    "grad_clip": (["--grad-clip", "0"], 0.0),
    "dropout": (["--dropout", "0.3"], 0.3),
    "pair_weight": (["--pair-weight", "3"], 3.0),
    "pos_weight": (["--pos-weight", "1"], 1.0),
    "pair_rank": (["--pair-rank", "none"], None),
    "pair_dropout": (["--pair-dropout", "none"], None),
    "ema_epochs": (["--ema-epochs", "0"], 0.0),
    "ema_decay": (["--ema-decay", "0.99"], 0.99),
    "window": (["--window", "3"], 3),
    "cause_not_after_emotion": (["--cause-not-after-emotion"], True),
    "threshold": (["--threshold", "0.4"], 0.4),
    "eval_batch_size": (["--eval-batch-size", "8"], 8),
    "dev_only": (["--dev-only"], True),
    "show_test": (["--show-test"], True),
    "out": (["--out", "runs/x"], "runs/x"),
    "name": (["--name", "probe"], "probe"),
    "resume": (["--resume"], True),
    "keep_last_checkpoint": (["--no-keep-last-checkpoint"], False),
    "device": (["--device", "cpu"], "cpu"),
    "threads": (["--threads", "1"], 1),
    "quiet": (["--quiet"], True),
}


def cfg_from(*argv: str) -> TrainConfig:
    return config_from_args(mecpe_train.build_parser().parse_args(list(argv)))


def test_every_field_is_reachable_from_the_cli() -> None:
    assert set(SAMPLES) == {f.name for f in fields(TrainConfig)}
    assert cfg_from() == TrainConfig()
    for name, (argv, expected) in SAMPLES.items():
        got = getattr(cfg_from(*argv), name)
        assert got == expected and type(got) is type(expected), (name, got)


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in ("help", "debug")}


def test_cli_help_types_and_choices_come_from_the_fields() -> None:
    actions = _actions(mecpe_train.build_parser())
    assert set(actions) == {f.name for f in fields(TrainConfig)}
    for f in fields(TrainConfig):
        action = actions[f.name]
        assert action.help == info(f).help and action.help, f.name
        allowed = info(f).allowed()
        assert (list(allowed) if allowed is not None else None) == action.choices, f.name
    assert actions["dataset"].choices == ["ecf", "mecad", "mec4", "semeval"]
    assert "--cause-not-after-emotion" in actions["cause_not_after_emotion"].option_strings
    assert "--no-keep-last-checkpoint" in actions["keep_last_checkpoint"].option_strings
    text = mecpe_train.build_parser().format_help()
    assert "--rpcl-arg KEY=VALUE" in text and "(default: 0.001)" in " ".join(text.split())


def test_study_cli_has_the_shared_training_options_only() -> None:
    actions = _actions(mecpe_study.build_parser())
    shared = {f.name for f in fields(TrainConfig) if info(f).scope == "shared"}
    assert shared <= set(actions)
    for per_run in ("seed", "fold", "arm", "resume", "name"):
        assert per_run not in actions
    assert actions["keep_last_checkpoint"].default is False  # the study's own default
    assert actions["dev_only"].option_strings == ["--dev-only", "--no-dev-only"]


def test_dataset_defaults_come_from_the_registry() -> None:
    mecad = TrainConfig(dataset="mecad", fold=0)
    assert (mecad.protocol, mecad.text_encoder) == ("cv", "hash")
    ecf = TrainConfig()
    assert (ecf.protocol, ecf.text_encoder) == ("split", "minilm")
    assert TrainConfig(dataset="mecad", protocol="split", text_encoder="x").protocol == "split"


def test_schedule_default_follows_the_text_encoder() -> None:
    assert TrainConfig().lr_schedule == "constant"
    assert TrainConfig(text_encoder="transformer").lr_schedule == "linear"
    assert TrainConfig(text_encoder="transformer", lr_schedule="constant").lr_schedule == "constant"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pos_weight": 0.0}, "pos_weight must be > 0"),
        ({"pair_weight": -1.0}, "pair_weight must be > 0"),
        ({"pair_rank": 0}, "pair_rank must be >= 1"),
        ({"pair_dropout": 1.0}, "pair_dropout must be in"),
        ({"ema_decay": 1.0}, "ema_decay must be in"),
        ({"ema_epochs": -1.0}, "ema_epochs must be >= 0"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"threshold": 1.0}, r"threshold must be in \(0, 1\)"),
        ({"dataset": "meld"}, "unknown dataset 'meld'"),
        ({"arm": "both"}, "unknown arm 'both'"),
        ({"modalities": "AV"}, "modality spec"),
        ({"protocol": "cv"}, "protocol cv needs --fold in 0..4"),
        ({"protocol": "cv", "fold": 5}, "protocol cv needs --fold in 0..4"),
        ({"fold": 1}, "--fold is a setting of --protocol cv"),
        ({"dev_only": True, "show_test": True}, "--show-test asks for test metrics"),
        ({"rpcl_args": {"margin_weight": 0.3}}, "--rpcl-arg is a setting of the rpcl arm"),
        ({"arm": "rpcl", "rpcl_args": {"margn_weight": 0.3}}, "--rpcl-arg margn_weight: not an"),
        ({"arm": "rpcl", "rpcl_args": {"generator": 1}}, "--rpcl-arg generator: not an"),
        ({"view": "insert"}, "--view insert is a setting of the rpcl arm, not of 'base'"),
        ({"view": "shuffle"}, "unknown view 'shuffle'"),
        ({"arm": "rpcl", "view_rate": 0.2}, "--view-rate is a setting of an input-level --view"),
        ({"arm": "rpcl", "view": "delete", "view_rate": 1.5}, r"view_rate must be in \[0, 1\]"),
        (
            {"arm": "rpcl", "view": "insert", "rpcl_args": {"p": 0.5}},
            "--rpcl-arg p: a setting of RPCLoss's own representation view",
        ),
        (
            {"arm": "rpcl", "view": "delete", "rpcl_args": {"where": "input"}},
            "--rpcl-arg where: a setting of RPCLoss's own representation view",
        ),
        ({"pooling": "cls", "encoder_input": "conversation"}, "--pooling cls needs"),
        ({"max_tokens": 2}, r"max_tokens must be >= 3 or None, got 2 \(--max-tokens\)"),
        ({"train_layers": -1}, "train_layers must be >= 0"),
        ({"precision": "fp8"}, "unknown precision 'fp8'"),
        ({"grad_accum": 0}, "grad_accum must be >= 1"),
        ({"warmup_ratio": 1.0}, r"warmup_ratio must be in \[0, 1\)"),
        (
            {"arm": "rpcl", "view": "delete", "text_encoder": "transformer"},
            "--view delete splices per-utterance features; --text-encoder transformer",
        ),
    ],
)
def test_validation_names_the_setting(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_ema_horizon_in_epochs() -> None:
    # the default is a horizon in epochs: the same averaging time for short and long epochs
    cfg = TrainConfig()
    assert cfg.ema_step_decay(63) == pytest.approx(1 - 1 / (1.6 * 63))
    assert cfg.ema_step_decay(12) == pytest.approx(1 - 1 / (1.6 * 12))
    assert TrainConfig(ema_epochs=0).ema_step_decay(63) == 0.0
    assert TrainConfig(ema_decay=0.9).ema_step_decay(63) == 0.9
    assert TrainConfig(ema_decay=0.0, ema_epochs=1.6).ema_step_decay(63) == 0.0


def test_dict_round_trip_is_strict() -> None:
    cfg = TrainConfig(arm="rpcl", rpcl_args={"k": 2}, window=3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("pair_rank", "pos_weight")}
    with pytest.raises(ValueError, match=r"run\.json: .*missing: pair_rank, pos_weight"):
        TrainConfig.from_dict(old, source="run.json")
    with pytest.raises(ValueError, match="unknown: cause_not_after"):
        TrainConfig.from_dict({**cfg.to_dict(), "cause_not_after": False})


def test_an_input_view_defaults_its_rate_and_composes_with_the_rpcl_settings() -> None:
    cfg = TrainConfig(arm="rpcl", view="insert", rpcl_args={"margin_weight": 0.3, "divergence": "js"})
    assert cfg.view_rate == 0.3
    assert TrainConfig(arm="rpcl").view_rate is None  # repr takes no rate
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_files_written_before_the_view_setting_read_as_the_repr_view() -> None:
    """view / view_rate declare absent=: a format-2 file without them is RPCLoss's own view."""
    cfg = TrainConfig(arm="rpcl", rpcl_args={"p": 0.5})
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("view", "view_rate")}
    assert TrainConfig.from_dict(old) == cfg
    assert cfg.diff(old, set()) == ""
    absent = {f.name for f in fields(TrainConfig) if info(f).has_absent}
    assert absent == {"view", "view_rate", *ENCODER_ERA}  # every other setting must be in the file


#: Settings added with the trainable transformer encoder, micro-batches and the LR schedule.
ENCODER_ERA = (
    "encoder_model", "train_layers", "encoder_input", "max_tokens", "pooling", "encoder_lr",
    "encoder_weight_decay", "chunk_tokens", "grad_checkpoint", "lr_schedule", "warmup_ratio",
    "grad_accum", "length_buckets", "precision",
)  # fmt: skip


def test_files_written_before_the_encoder_settings_read_as_what_they_ran() -> None:
    """A file of a run from before the transformer encoder, the schedule, micro-batches and
    autocast: a constant schedule, one micro-batch, float32 (and an unused encoder)."""
    cfg = TrainConfig(arm="rpcl")
    old = {k: v for k, v in cfg.to_dict().items() if k not in ENCODER_ERA}
    restored = TrainConfig.from_dict(old)
    assert restored == cfg and cfg.diff(old, set()) == ""
    assert (restored.lr_schedule, restored.grad_accum, restored.precision) == ("constant", 1, "fp32")
    assert restored.length_buckets == 0


def test_diff_lists_what_differs() -> None:
    saved = TrainConfig(pos_weight=1.0, pair_rank=None, epochs=3).to_dict()
    assert TrainConfig(pos_weight=1.0, pair_rank=None, epochs=3).diff(saved, set()) == ""
    diff = TrainConfig(epochs=5).diff(saved, {"epochs"})
    assert "pair_rank: None → 64" in diff and "pos_weight: 1.0 → 2.0" in diff
    assert "epochs" not in diff and "pair_weight" not in diff
    with pytest.raises(ValueError, match="missing: pos_weight"):
        TrainConfig().diff({k: v for k, v in saved.items() if k != "pos_weight"}, set())


def test_resumable_settings() -> None:
    interrupted, finished = resumable_fields(finished=False), resumable_fields(finished=True)
    assert {"epochs", "dev_only"} <= interrupted - finished
    assert {"out", "device", "threads", "quiet", "keep_last_checkpoint"} <= finished
    assert not {"seed", "lr", "arm", "rpcl_args", "pos_weight", "dataset"} & interrupted


def test_bad_setting_on_the_command_line_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = mecpe_train.main(["--data-dir", str(tmp_path), "--pos-weight", "0", "--quiet"])
    lines = error_lines(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1
    assert "pos_weight must be > 0" in lines[0] and "--pos-weight" in lines[0]
