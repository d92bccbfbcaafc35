"""End-to-end tests of the reference MECPE trainer on a tiny generated ECF-format dataset.

The text encoder is the trainable ``hash`` encoder (no model weights needed); audio / video
features are random ``.npz`` tables. Every test trains for at most two epochs on ~40 short
conversations and runs in a few seconds.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from examples.mecpe import evaluate as mecpe_evaluate
from examples.mecpe import study as mecpe_study
from examples.mecpe import train as mecpe_train
from examples.mecpe.batching import build_examples, collate, hash_ngrams
from examples.mecpe.data import EMOTIONS, load_ecf
from examples.mecpe.model import MECPEModel, ModelConfig, mecpe_loss

SPLIT_METRICS = (
    "pair_p",
    "pair_r",
    "pair_f1",
    "pair_auprc",
    "ece",
    "ece_mass",
    "row_top1",
    "row_mrr",
    "gap_mean",
    "violation_rate",
    "violation_severity",
    "emotion_f1",
    "cause_f1",
    "dev_threshold",
    "pair_f1_devthr",
    "pair_p_devthr",
    "pair_r_devthr",
    "best_epoch",
    "train_seconds",
)

_WORDS = "we you they go see home work coffee party phone dream day night the a it".split()
_CUES = {
    "anger": "furious",
    "disgust": "gross",
    "fear": "scared",
    "joy": "great",
    "sadness": "sorry",
    "surprise": "what",
}


def _write_split(
    path: Path, n_conv: int, first_id: int, rng: random.Random, max_len: int = 7
) -> None:
    blocks = []
    for c in range(first_id, first_id + n_conv):
        n = rng.randint(2, max_len)
        emotions = [rng.choice(EMOTIONS) if rng.random() < 0.5 else "neutral" for _ in range(n)]
        pairs = []
        causes = set()
        for i, emo in enumerate(emotions, start=1):
            if emo != "neutral":
                cause = max(1, i - rng.randint(0, 1))
                pairs.append((i, cause))
                causes.add(cause)
        lines = [f"{c} {n}", ",".join(f"({e},{k})" for e, k in pairs)]
        for i, emo in enumerate(emotions, start=1):
            words = rng.sample(_WORDS, 4)
            if emo != "neutral":
                words.insert(1, _CUES[emo])
            if i in causes:
                words.append("because")
            speaker = rng.choice(("Ross", "Rachel", "Monica"))
            lines.append(
                f"{i} | {speaker} | {emo} | {' '.join(words)} . | Friends_S1E1: 00:00:0{i}.000"
            )
        blocks.append("\n".join(lines))
    path.write_text("\n".join(blocks) + "\n")


def make_tiny_ecf(root: Path, seed: int = 0) -> Path:
    """Write train/dev/test.txt (40/12/12 conversations) in the ECF format, plus random
    audio.npz / video.npz feature tables keyed like the ECF loader (``dia{c}utt{u}``)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    _write_split(root / "train.txt", 40, 1, rng)
    _write_split(root / "dev.txt", 12, 100, rng)
    _write_split(root / "test.txt", 12, 200, rng)
    keys = [
        k
        for s in ("train", "dev", "test")
        for c in load_ecf(root / f"{s}.txt")
        for k in c.feature_keys
    ]
    gen = np.random.default_rng(seed)
    for name, dim in (("audio", 6), ("video", 5)):
        np.savez(
            root / f"{name}.npz", keys=np.asarray(keys), features=gen.normal(size=(len(keys), dim))
        )
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_ecf(tmp_path_factory.mktemp("tiny_ecf"))


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--dataset", "ecf", "--data-dir", str(data), "--text-encoder", "hash",
        "--hash-buckets", "4096", "--out", str(out), "--quiet", "--device", "cpu", *extra,
    ]  # fmt: skip


def _train(data: Path, out: Path, *extra: str) -> dict[str, Any]:
    assert mecpe_train.main(_args(data, out, *extra)) == 0
    return json.loads((out / "run.json").read_text())


def _strip_time(result: dict[str, Any]) -> dict[str, Any]:
    """Metrics and history without wall-clock fields."""
    drop = {"train_seconds", "seconds"}
    return {
        "dev": {k: v for k, v in result["dev"].items() if k not in drop},
        "test": {k: v for k, v in result["test"].items() if k not in drop},
        "history": [{k: v for k, v in h.items() if k not in drop} for h in result["history"]],
    }


# ----------------------------------------------------------------------------- unit checks


def test_hash_ngrams_stable_and_bounded() -> None:
    ids = hash_ngrams("Oh my God !", buckets=64)
    assert ids == hash_ngrams("oh  my god !", buckets=64)
    assert ids and all(0 <= i < 64 for i in ids)
    assert hash_ngrams("你好吗", buckets=1 << 18)
    assert hash_ngrams("", buckets=64) == []


def test_series_folds_group_series_and_are_deterministic() -> None:
    ids = [f"show{s}_{k}" for s in range(9) for k in range(1, 2 + s % 4)]
    folds = mecpe_train.series_folds(ids, 5)
    assert folds == mecpe_train.series_folds(list(ids), 5)
    assert set(folds) == set(range(5))
    by_series: dict[str, set[int]] = {}
    for cid, f in zip(ids, folds, strict=True):
        by_series.setdefault(mecpe_train.series_of(cid), set()).add(f)
    assert all(len(v) == 1 for v in by_series.values())
    assert mecpe_train.series_of("bianchengnidenayitian_12") == "bianchengnidenayitian"


def test_parse_rpcl_args() -> None:
    got = mecpe_train.parse_rpcl_args(
        ["margin_weight=0.3", "where=output", "k=2", "detach_negatives=false"]
    )
    assert got == {"margin_weight": 0.3, "where": "output", "k": 2, "detach_negatives": False}
    with pytest.raises(ValueError):
        mecpe_train.parse_rpcl_args(["margin_weight"])


def test_model_shapes_and_loss(tiny: Path) -> None:
    convs = load_ecf(tiny / "train.txt")[:5]
    exs = build_examples(convs, hash_buckets=512)
    batch = collate(exs)
    model = MECPEModel(ModelConfig(text_dim=None, hash_buckets=512))
    out = model(batch)
    b, n = batch.mask.shape
    assert out.pair_logits.shape == (b, n, n)
    assert out.emotion_logits.shape == (b, n, 7)
    assert out.cause_logits.shape == (b, n)
    loss, parts = mecpe_loss(out, batch)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and set(parts) == {"pair", "emotion", "cause"}
    # the context encoder sees (B, N, D) first and returns (B, N, H): what RPCLoss hooks
    seen: list[tuple[int, ...]] = []
    handle = model.context.register_forward_hook(
        lambda m, a, o: seen.append((*tuple(a[0].shape), *tuple(o.shape)))
    )
    model(batch)
    handle.remove()
    assert seen == [(b, n, 200, b, n, 400)]


def test_pair_weight_and_pos_weight_follow_their_definition(tiny: Path) -> None:
    convs = load_ecf(tiny / "train.txt")[:5]
    batch = collate(build_examples(convs, hash_buckets=512))
    torch.manual_seed(0)
    model = MECPEModel(ModelConfig(text_dim=None, hash_buckets=512)).eval()
    out = model(batch)
    _, parts = mecpe_loss(out, batch)
    loss, weighted = mecpe_loss(out, batch, pair_weight=3.0, pos_weight=2.0)
    # explicit reference: per-candidate BCE, gold terms doubled, mean over valid candidates
    s = out.pair_logits.detach()[batch.valid].double()
    y = batch.gold[batch.valid].double()
    ref = -(2.0 * y * F.logsigmoid(s) + (1 - y) * F.logsigmoid(-s)).mean()
    assert weighted["pair"] == pytest.approx(float(ref), rel=1e-5)
    assert weighted["pair"] > parts["pair"]
    expected = 3.0 * weighted["pair"] + weighted["emotion"] + weighted["cause"]
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="pos_weight must be > 0"):
        mecpe_train.TrainConfig(pos_weight=0.0)
    with pytest.raises(ValueError, match="pair_weight must be > 0"):
        mecpe_train.TrainConfig(pair_weight=-1.0)
    with pytest.raises(ValueError, match="pair_rank must be >= 1"):
        mecpe_train.TrainConfig(pair_rank=0)
    with pytest.raises(ValueError, match="pair_dropout must be in"):
        mecpe_train.TrainConfig(pair_dropout=1.0)


@pytest.mark.parametrize("rank", [None, 16])
def test_pair_scorer_rank_and_legacy_checkpoints(tiny: Path, rank: int | None) -> None:
    convs = load_ecf(tiny / "train.txt")[:4]
    batch = collate(build_examples(convs, hash_buckets=512))
    cfg = ModelConfig(text_dim=None, hash_buckets=512, pair_rank=rank, pair_dropout=0.0)
    model = MECPEModel(cfg)
    u = model.pair_scorer.u_prod
    assert (u is None) if rank is None else (u is not None and u.out_features == rank)
    assert model.pair_scorer.w_prod.in_features == (rank or model.context.output_dim)
    # pair dropout 0 is the identity (no Bernoulli draw), so train and eval agree on the pairs
    model.utterance.dropout.p = 0.0
    model.dropout.p = 0.0
    a = model.train()(batch).pair_logits
    b = model.eval()(batch).pair_logits
    torch.testing.assert_close(a, b)
    # a checkpoint written before pair_rank / pair_dropout existed was a full-rank scorer
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("pair_rank", "pair_dropout")}
    legacy = ModelConfig.from_dict(old)
    assert legacy.pair_rank is None and legacy.pair_dropout is None
    assert mecpe_train.TrainConfig.from_dict({"epochs": 3}).pair_rank is None


def test_config_diff_reads_old_run_configs() -> None:
    cfg = mecpe_train.TrainConfig(pos_weight=1.0, pair_rank=None, pair_dropout=None)
    old_keys = ("pair_rank", "pair_dropout", "pos_weight", "pair_weight")
    saved = {k: v for k, v in cfg.to_dict().items() if k not in old_keys}
    assert mecpe_train.config_diff(saved, cfg, ()) == ""
    diff = mecpe_train.config_diff(saved, mecpe_train.TrainConfig(), ())
    assert "pair_rank: None → 64" in diff and "pos_weight: 1.0 → 2.0" in diff
    assert "pair_weight" not in diff


# ------------------------------------------------------------------------------ end to end


def test_train_two_epochs_writes_finite_metrics(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _train(
        tiny, out, "--epochs", "2", "--arm", "rpcl", "--rpcl-arg", "consistency_weight=0.5"
    )
    for split in ("dev", "test"):
        for key in SPLIT_METRICS:
            assert key in result[split], (split, key)
            assert math.isfinite(result[split][key]), (split, key, result[split][key])
    assert len(result["history"]) == 2
    assert {"rpcl_margin", "rpcl_consistency"} <= set(result["history"][0])
    assert result["data"]["train"]["cause_after_emotion"] == 0
    for name in ("best.pt", "last.pt", "scores_dev.npz", "scores_test.npz"):
        assert (out / name).is_file(), name
    with np.load(out / "scores_test.npz") as z:
        assert z["logits"].shape == z["gold"].shape == z["valid"].shape
        assert z["logits"].shape[0] == 12


def test_rpcl_output_corruption(tiny: Path, tmp_path: Path) -> None:
    """where=output corrupts the BiLSTM output; the consistency term is non-zero."""
    result = _train(
        tiny, tmp_path / "out", "--epochs", "1", "--arm", "rpcl",
        "--rpcl-arg", "where=output", "--rpcl-arg", "mode=noise", "--rpcl-arg", "p=0.5",
        "--rpcl-arg", "consistency_weight=1.0", "--rpcl-arg", "margin_weight=0",
    )  # fmt: skip
    assert result["history"][0]["rpcl_consistency"] > 0
    assert math.isfinite(result["test"]["pair_auprc"])


def test_resume_is_bit_identical(tiny: Path, tmp_path: Path) -> None:
    rpcl = ["--arm", "rpcl", "--rpcl-arg", "consistency_weight=1.0", "--rpcl-arg", "mode=shuffle",
            "--rpcl-arg", "warmup_steps=5"]  # fmt: skip
    full = _train(tiny, tmp_path / "full", "--epochs", "2", *rpcl)
    part = tmp_path / "part"
    _train(tiny, part, "--epochs", "1", *rpcl)
    resumed = _train(tiny, part, "--epochs", "2", "--resume", *rpcl)
    assert _strip_time(resumed) == _strip_time(full)


def test_ema_weights_are_selected_and_saved(tiny: Path, tmp_path: Path) -> None:
    """Dev selection and best.pt use the weight average; last.pt keeps both for resume."""
    out = tmp_path / "ema"
    # One epoch: it is the best one, so best.pt and last.pt are written from the same state.
    result = _train(tiny, out, "--epochs", "1", "--ema-decay", "0.5")
    assert result["best_epoch"] == 1
    last = torch.load(out / "last.pt", weights_only=True)
    best = torch.load(out / "best.pt", weights_only=True)
    averaged = {k.removeprefix("module."): v for k, v in last["ema"].items() if k.startswith("module.")}
    assert set(averaged) == set(last["model"])
    assert any(not torch.equal(averaged[k], last["model"][k]) for k in averaged)
    assert all(torch.equal(best["model"][k], averaged[k]) for k in averaged)
    off = _train(tiny, tmp_path / "off", "--epochs", "1", "--ema-decay", "0")
    assert torch.load(tmp_path / "off" / "last.pt", weights_only=True)["ema"] == {}
    assert off["complete"]
    with pytest.raises(ValueError, match="ema_decay must be in"):
        mecpe_train.TrainConfig(ema_decay=1.0)
    # the default is a horizon in epochs: the same averaging time for short and long epochs
    cfg = mecpe_train.TrainConfig()
    assert cfg.ema_step_decay(63) == pytest.approx(1 - 1 / (1.6 * 63))
    assert cfg.ema_step_decay(12) == pytest.approx(1 - 1 / (1.6 * 12))
    assert mecpe_train.TrainConfig(ema_epochs=0).ema_step_decay(63) == 0.0
    assert mecpe_train.TrainConfig(ema_decay=0.9).ema_step_decay(63) == 0.9
    assert mecpe_train.TrainConfig.from_dict({"epochs": 3}).ema_step_decay(63) == 0.0  # older runs


def test_rpcl_with_zero_weights_equals_base(tiny: Path, tmp_path: Path) -> None:
    common = ["--epochs", "2", "--dropout", "0"]
    base = _train(tiny, tmp_path / "base", *common)
    rpcl = _train(tiny, tmp_path / "rpcl", *common, "--arm", "rpcl",
                  "--rpcl-arg", "margin_weight=0", "--rpcl-arg", "consistency_weight=0")  # fmt: skip
    b, r = _strip_time(base), _strip_time(rpcl)
    for h in r["history"]:
        for k in [k for k in h if k.startswith("rpcl_")]:
            del h[k]
    assert b == r


def test_evaluate_cli_matches_training_metrics(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tav"
    result = _train(
        tiny, out, "--epochs", "1", "--modalities", "TAV",
        "--audio-table", str(tiny / "audio.npz"), "--video-table", str(tiny / "video.npz"),
    )  # fmt: skip
    capsys.readouterr()
    preds = tmp_path / "preds.json"
    rc = mecpe_evaluate.main(
        [
            "--checkpoint",
            str(out / "best.pt"),
            "--file",
            str(tiny / "test.txt"),
            "--out",
            str(preds),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    for key in ("pair_f1", "pair_auprc", "ece", "pair_f1_devthr", "row_mrr"):
        assert printed["metrics"][key] == result["test"][key], key
    saved = json.loads(preds.read_text())
    assert len(saved["predictions"]) == 12
    assert all(
        isinstance(p, list) and len(p) == 2 for c in saved["predictions"] for p in c["pairs"]
    )


def test_study_summary_shape(tiny: Path, tmp_path: Path) -> None:
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
        assert set(r) == {"arm", "seed", "dev", "test", "dev_threshold"}
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
    assert summary["config"]["rpcl_args"] == {"margin_weight": 0.3}
    md = (out / "summary.md").read_text()
    assert "pair_f1" in md and "Per run" in md
    for name in ("gap_hist.png", "pr_curve.png", "reliability.png"):
        assert (out / name).stat().st_size > 0
    # second invocation: everything is skipped, summary rebuilt identically
    mtime = (out / "base-seed1" / "run.json").stat().st_mtime_ns
    assert mecpe_study.main([*argv, "--summarize-only"]) == 0
    assert mecpe_study.main(argv) == 0
    assert (out / "base-seed1" / "run.json").stat().st_mtime_ns == mtime
    assert json.loads((out / "summary.json").read_text()) == summary
    # finished runs keep best.pt only; other settings in the same --out are refused
    assert (out / "base-seed1" / "best.pt").is_file()
    assert not (out / "base-seed1" / "last.pt").exists()
    with pytest.raises(SystemExit, match="other settings"):
        mecpe_study.main([*argv, "--epochs", "2"])


def test_cv_protocol_on_mecad_like_ids(tmp_path: Path) -> None:
    """The fold split keeps series together and uses fold f+1 as dev."""
    ids = [f"series{s}_{k}" for s in range(7) for k in range(1, 4)]
    folds = mecpe_train.series_folds(ids, 5)
    f = 2
    test = {i for i, x in zip(ids, folds, strict=True) if x == f}
    dev = {i for i, x in zip(ids, folds, strict=True) if x == (f + 1) % 5}
    assert test and dev and not test & dev
    assert torch.tensor(folds).bincount().tolist() == [6, 6, 3, 3, 3]


def _write_mecad(root: Path, seed: int = 0) -> Path:
    """valid/test_data_pair.json in the MECAD layout: 6 series x 4 dialogues, split over files."""
    rng = random.Random(seed)
    names = {"neutral": "Neutral", **{e: e.capitalize() for e in EMOTIONS[1:]}}
    files: dict[str, dict[str, Any]] = {"valid": {}, "test": {}}
    for s in range(6):
        for k in range(1, 5):
            conv_id = f"show{s}_{k}"
            n = rng.randint(2, 6)
            utts = []
            for t in range(1, n + 1):
                emo = rng.choice(EMOTIONS) if rng.random() < 0.5 else "neutral"
                utt: dict[str, Any] = {
                    "turn": t, "speaker": rng.choice(("甲", "乙")), "emotion": names[emo],
                    "utterance": "".join(rng.sample("我你他好不是的了吗在有人这个", 5)),
                    "utterance_name": f"{conv_id}_{t}",
                }  # fmt: skip
                if emo != "neutral":
                    utt["expanded emotion cause evidence"] = [max(1, t - rng.randint(0, 1))]
                utts.append(utt)
            files["valid" if (s + k) % 2 else "test"][conv_id] = [utts]
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (root / f"{name}_data_pair.json").write_text(json.dumps(content, ensure_ascii=False))
    return root


def test_mecad_cv_fold_run(tmp_path: Path) -> None:
    data = _write_mecad(tmp_path / "mecad")
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
