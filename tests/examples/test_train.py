"""End-to-end tests of ``python -m examples.mecpe.train`` on tiny generated datasets.

Every run trains for at most two epochs on ~40 short conversations and takes about a second.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from examples.mecpe import metrics
from examples.mecpe import train as mecpe_train
from examples.mecpe.data import DataFormatError

from .helpers import error_lines, strip_time, train, train_args, write_mecad


def split_metrics() -> list[str]:
    """What every split of a run.json holds: the registry's metrics (all defined here)."""
    return [m.name for m in metrics.registered()]


def test_train_two_epochs_writes_finite_metrics(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    result = train(
        tiny, out, "--epochs", "2", "--arm", "rpcl", "--rpcl-arg", "consistency_weight=0.5"
    )
    assert result["format"] == 2 and result["complete"]
    for split in ("dev", "test"):
        for key in split_metrics():
            assert key in result[split], (split, key)
            assert math.isfinite(result[split][key]), (split, key, result[split][key])
        assert "undefined" not in result[split]
    assert len(result["history"]) == 2
    assert {"rpcl_margin", "rpcl_consistency"} <= set(result["history"][0])
    assert {f"dev_{m.name}" for m in metrics.registered() if m.epoch} <= set(result["history"][0])
    assert result["data"]["train"]["cause_after_emotion"] == 0
    for name in ("best.pt", "last.pt", "scores_dev.npz", "scores_test.npz"):
        assert (out / name).is_file(), name
    with np.load(out / "scores_test.npz") as z:
        assert z["logits"].shape == z["gold"].shape == z["valid"].shape
        assert z["logits"].shape[0] == 12
    # the final log line shows dev metrics only
    (last,) = capsys.readouterr().out.strip().splitlines()[-1:]
    assert last.startswith("[ecf/rpcl seed=42] best epoch") and "dev F1" in last
    assert "test" not in last


def test_show_test_prints_test_metrics(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = train(tiny, tmp_path / "run", "--epochs", "1", "--show-test")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"test P {result['test']['pair_p']:.4f}" in last
    assert f"F1@dev-thr {result['test']['pair_f1_devthr']:.4f}" in last


def test_dev_only_never_reads_the_test_split(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    (data / "test.txt").write_text("this is not read\n")  # would fail to parse if it were
    out = tmp_path / "run"
    argv = train_args(data, out, "--epochs", "2", "--dev-only")
    argv.remove("--quiet")
    assert mecpe_train.main(argv) == 0
    result = json.loads((out / "run.json").read_text())
    assert "test" not in result and "test" not in result["data"]
    assert result["config"]["dev_only"] is True
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "run.json", "scores_dev.npz"]
    assert all("test" not in line for line in capsys.readouterr().out.splitlines())
    assert "test" not in json.dumps({k: v for k, v in result.items() if k != "config"})
    # the same run without --dev-only has the same dev numbers
    full = train(tiny, tmp_path / "full", "--epochs", "2")
    assert strip_time(full)["dev"] == strip_time(result)["dev"]
    assert strip_time(full)["history"] == strip_time(result)["history"]


def test_rpcl_output_corruption(tiny: Path, tmp_path: Path) -> None:
    """where=output corrupts the BiLSTM output; the consistency term is non-zero."""
    result = train(
        tiny, tmp_path / "out", "--epochs", "1", "--arm", "rpcl",
        "--rpcl-arg", "where=output", "--rpcl-arg", "mode=noise", "--rpcl-arg", "p=0.5",
        "--rpcl-arg", "consistency_weight=1.0", "--rpcl-arg", "margin_weight=0",
    )  # fmt: skip
    assert result["history"][0]["rpcl_consistency"] > 0
    assert math.isfinite(result["test"]["pair_auprc"])


def test_resume_is_bit_identical(tiny: Path, tmp_path: Path) -> None:
    rpcl = ["--arm", "rpcl", "--rpcl-arg", "consistency_weight=1.0", "--rpcl-arg", "mode=shuffle",
            "--rpcl-arg", "warmup_steps=5"]  # fmt: skip
    full = train(tiny, tmp_path / "full", "--epochs", "2", *rpcl)
    part = tmp_path / "part"
    train(tiny, part, "--epochs", "1", *rpcl)
    resumed = train(tiny, part, "--epochs", "2", "--resume", *rpcl)
    assert strip_time(resumed) == strip_time(full)


def test_resume_refuses_other_settings_and_old_formats(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    train(tiny, out, "--epochs", "1")
    capsys.readouterr()
    assert mecpe_train.main(train_args(tiny, out, "--epochs", "2", "--resume", "--lr", "0.01")) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"cannot resume {out / 'last.pt'}" in line and "lr: 0.001 → 0.01" in line
    ckpt = torch.load(out / "last.pt", weights_only=True)
    torch.save({**ckpt, "format": 1}, out / "last.pt")
    assert mecpe_train.main(train_args(tiny, out, "--epochs", "2", "--resume")) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"{out / 'last.pt'}: checkpoint format 1, this trainer reads format 2" in line


def test_ema_weights_are_selected_and_saved(tiny: Path, tmp_path: Path) -> None:
    """Dev selection and best.pt use the weight average; last.pt keeps both for resume."""
    out = tmp_path / "ema"
    # One epoch: it is the best one, so best.pt and last.pt are written from the same state.
    result = train(tiny, out, "--epochs", "1", "--ema-decay", "0.5")
    assert result["best_epoch"] == 1
    last = torch.load(out / "last.pt", weights_only=True)
    best = torch.load(out / "best.pt", weights_only=True)
    averaged = {k.removeprefix("module."): v for k, v in last["ema"].items() if k.startswith("module.")}
    assert set(averaged) == set(last["model"])
    assert any(not torch.equal(averaged[k], last["model"][k]) for k in averaged)
    assert all(torch.equal(best["model"][k], averaged[k]) for k in averaged)
    assert best["dev_threshold"] == result["dev_threshold"]
    # the test split's recalibration metrics use dev's fit, which best.pt keeps for evaluate
    recal = best["dev_recalibration"]
    assert recal["temperature"] == result["dev"]["temperature"] == result["test"]["temperature"]
    assert recal["platt_bias"] == result["dev"]["platt_bias"] == result["test"]["platt_bias"]
    off = train(tiny, tmp_path / "off", "--epochs", "1", "--ema-decay", "0")
    assert torch.load(tmp_path / "off" / "last.pt", weights_only=True)["ema"] == {}
    assert off["complete"]


def test_rpcl_with_zero_weights_equals_base(tiny: Path, tmp_path: Path) -> None:
    common = ["--epochs", "2", "--dropout", "0"]
    base = train(tiny, tmp_path / "base", *common)
    rpcl = train(tiny, tmp_path / "rpcl", *common, "--arm", "rpcl",
                 "--rpcl-arg", "margin_weight=0", "--rpcl-arg", "consistency_weight=0")  # fmt: skip
    b, r = strip_time(base), strip_time(rpcl)
    for h in r["history"]:
        for k in [k for k in h if k.startswith("rpcl_")]:
            del h[k]
    assert b == r


def test_no_keep_last_checkpoint(tiny: Path, tmp_path: Path) -> None:
    train(tiny, tmp_path / "run", "--epochs", "1", "--no-keep-last-checkpoint")
    assert (tmp_path / "run" / "best.pt").is_file()
    assert not (tmp_path / "run" / "last.pt").exists()


def test_mecad_cv_fold_run(tmp_path: Path) -> None:
    data = write_mecad(tmp_path / "mecad")
    out = tmp_path / "cv"
    argv = ["--dataset", "mecad", "--data-dir", str(data), "--fold", "1", "--epochs", "1",
            "--hash-buckets", "1024", "--out", str(out), "--quiet", "--device", "cpu"]  # fmt: skip
    assert mecpe_train.main(argv) == 0
    result = json.loads((out / "run.json").read_text())
    cfg, cv = result["config"], result["data"]["cv"]
    assert cfg["protocol"] == "cv" and cfg["fold"] == 1 and cfg["text_encoder"] == "hash"
    assert cv["dev_fold"] == 2 and sum(cv["fold_sizes"]) == 24
    sizes = {s: result["data"][s]["conversations"] for s in ("train", "dev", "test")}
    assert sizes["test"] == cv["fold_sizes"][1] and sizes["dev"] == cv["fold_sizes"][2]
    assert sum(sizes.values()) == 24
    assert math.isfinite(result["test"]["pair_f1"])


# ------------------------------------------------------------------------------ bad input


def _broken_copy(tiny: Path, tmp_path: Path, split: str, content: bytes) -> Path:
    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    (data / f"{split}.txt").write_bytes(content)
    return data


@pytest.mark.parametrize(
    ("split", "content", "expected"),
    [
        ("dev", b"1 2\n(1,1)\n1 | A | happyish | a | t\n2 | B | joy | b | t\n",
         "line 3: field 'emotion': unknown emotion 'happyish'"),
        ("dev", b"\n", "no conversation in the file"),
        ("train", "1 1\n(1,1)\n1 | A | joy | caf\u00e9 | t\n".encode("latin-1"),
         "line 3: field '<encoding>': byte 27 is not UTF-8"),
    ],
)  # fmt: skip
def test_bad_data_is_one_stderr_line_naming_the_file(
    tiny: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    split: str,
    content: bytes,
    expected: str,
) -> None:
    data = _broken_copy(tiny, tmp_path, split, content)
    argv = train_args(data, tmp_path / "run", "--epochs", "1")
    assert mecpe_train.main(argv) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"train: error: {data / f'{split}.txt'}: ") and expected in line
    with pytest.raises(DataFormatError):  # --debug: the traceback instead
        mecpe_train.main([*argv, "--debug"])


def test_missing_split_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert mecpe_train.main(train_args(tmp_path, tmp_path / "run")) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line == f"train: error: ecf train split not found: {tmp_path / 'train.txt'}"
