"""Helpers of the reference-trainer tests: tiny generated ECF-format and MECAD-format datasets,
a tiny random BERT, quick training runs.

The text encoder is the trainable ``hash`` encoder (no model weights needed) or a tiny random
BERT written to a temporary folder (:func:`make_tiny_bert`; never a downloaded model); audio /
video features are random ``.npz`` tables. A training run on these takes well under a second an
epoch.
"""

from __future__ import annotations

import json
import random
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import torch

from examples.mecpe import study as mecpe_study
from examples.mecpe import train as mecpe_train
from examples.mecpe.config import TrainConfig
from examples.mecpe.data import EMOTIONS, load_ecf
from examples.mecpe.options import values_from

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


def make_tiny_bert(root: Path, *, layers: int = 2, dropout: float = 0.1) -> Path:
    """A random BERT (hidden 16, ``layers`` layers, 2 heads, 64 positions) and a word-level
    tokenizer over the words of :func:`make_tiny_ecf`, saved as a Hugging Face model folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    words = sorted({*_WORDS, *_CUES.values(), "because", "."})
    (root / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n"
    )
    BertTokenizerFast(str(root / "vocab.txt")).save_pretrained(str(root))
    config = BertConfig(
        vocab_size=5 + len(words), hidden_size=16, num_hidden_layers=layers,
        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        BertModel(config).save_pretrained(str(root))
    return root


def write_mecad(root: Path, seed: int = 0) -> Path:
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


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """``train`` arguments of a quick CPU run on ``data`` (hash encoder, quiet)."""
    return [
        "--dataset", "ecf", "--data-dir", str(data), "--text-encoder", "hash",
        "--hash-buckets", "4096", "--out", str(out), "--quiet", "--device", "cpu", *extra,
    ]  # fmt: skip


def encoder_args(bert: Path, cache: Path, *extra: str) -> list[str]:
    """The ``train`` options of a quick run with the tiny BERT (top layer trained, cached)."""
    return [
        "--text-encoder", "transformer", "--encoder-model", str(bert), "--train-layers", "1",
        "--cache-dir", str(cache), "--max-tokens", "16", "--chunk-tokens", "256",
        "--encoder-lr", "1e-3", "--batch-size", "8", "--threads", "1", *extra,
    ]  # fmt: skip


def train(data: Path, out: Path, *extra: str) -> dict[str, Any]:
    """Run ``train`` (must succeed) and return its ``run.json``."""
    assert mecpe_train.main(train_args(data, out, *extra)) == 0
    result: dict[str, Any] = json.loads((out / "run.json").read_text())
    return result


def strip_time(result: dict[str, Any]) -> dict[str, Any]:
    """Metrics and history of a ``run.json`` without wall-clock fields."""
    drop = {"train_seconds", "seconds"}
    out = {
        split: {k: v for k, v in result[split].items() if k not in drop}
        for split in ("dev", "test")
        if split in result
    }
    out["history"] = [{k: v for k, v in h.items() if k not in drop} for h in result["history"]]
    return out


def error_lines(err: str) -> list[str]:
    """The non-empty lines a command wrote to stderr."""
    return [line for line in err.splitlines() if line.strip()]


def study_plan(*argv: str) -> list[TrainConfig]:
    """The run configs ``python -m examples.mecpe.study ARGV`` would train, in order (every
    setting validated; nothing is read or trained)."""
    args = mecpe_study.build_parser().parse_args(list(argv))
    study = mecpe_study.StudyConfig(**values_from(args, mecpe_study.StudyConfig))
    return mecpe_study._plan(study, mecpe_study._arms(study), args)


def documented_study_command(path: Path) -> list[str]:
    """The arguments of the first ``python -m examples.mecpe.study`` command in the ``#`` header
    of the settings file ``path`` (its ``\\`` continuation lines joined)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if "python -m examples.mecpe.study" in line)
    command = []
    for line in lines[start:]:
        command.append(line.lstrip("# ").rstrip("\\ "))
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(" ".join(command))[3:]  # drop "python -m examples.mecpe.study"
