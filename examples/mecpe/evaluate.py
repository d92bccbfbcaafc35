"""Prediction, metrics and the evaluation CLI of the reference MECPE trainer.

Library use: all pair metrics come from :mod:`torch_pairconf` (scores are pair *logits*, rows =
emotion utterance, columns = candidate cause; thresholds are in probability space). Only the
utterance-level emotion / cause F1 are computed here.

CLI::

    python -m examples.mecpe.evaluate --checkpoint runs/ecf/base-seed42/best.pt \\
        --file /path/to/any_ecf_format.txt [--out predictions.json] [--threshold 0.5]

prints a JSON object of metrics (at the fixed threshold and, when the checkpoint knows its dev
threshold, at that threshold as well) and optionally writes the decoded pairs per conversation.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from torch_pairconf import (
    best_threshold,
    confidence_gap,
    expected_calibration_error,
    margin_violations,
    pair_auprc,
    pair_prf,
    row_ranking,
)

from .batching import Example, collate
from .model import MECPEModel, ModelConfig, PairScorer

__all__ = [
    "Predictions",
    "compute_metrics",
    "decode_pairs",
    "emotion_scores",
    "load_checkpoint",
    "main",
    "pair_summary",
    "predict",
    "save_scores",
]

#: Margin (probability space) used by the violation metrics.
VIOLATION_MARGIN = 0.2


@dataclass
class Predictions:
    """Model outputs on a whole split, padded to the longest conversation ``N`` (on the CPU).

    Attributes:
        conv_ids: the ``C`` conversation ids.
        lengths: ``(C,)`` number of utterances.
        pair_logits: ``(C, N, N)`` float32 pair logits (row = emotion, column = cause).
        gold: ``(C, N, N)`` bool gold pairs (including any outside ``valid``).
        valid: ``(C, N, N)`` bool candidate pairs.
        emotion_logits: ``(C, N, 7)``.
        emotions: ``(C, N)`` gold emotion, ``-1`` unknown / padding.
        cause_logits: ``(C, N)``.
        causes: ``(C, N)`` gold utterance-level cause labels.
        mask: ``(C, N)`` real utterances.
    """

    conv_ids: list[str]
    lengths: Tensor
    pair_logits: Tensor
    gold: Tensor
    valid: Tensor
    emotion_logits: Tensor
    emotions: Tensor
    cause_logits: Tensor
    causes: Tensor
    mask: Tensor


@torch.no_grad()
def predict(
    model: MECPEModel,
    examples: Sequence[Example],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    window: int | None = None,
    cause_not_after_emotion: bool = False,
) -> Predictions:
    """Run ``model`` in eval mode over ``examples`` (in order) and gather padded outputs."""
    was_training = model.training
    model.eval()
    c = len(examples)
    n = max((ex.length for ex in examples), default=1)
    n_emo = model.cfg.n_emotions
    pair_logits = torch.full((c, n, n), PairScorer.pad_logit)
    gold = torch.zeros(c, n, n, dtype=torch.bool)
    valid = torch.zeros(c, n, n, dtype=torch.bool)
    emotion_logits = torch.zeros(c, n, n_emo)
    emotions = torch.full((c, n), -1, dtype=torch.long)
    cause_logits = torch.zeros(c, n)
    causes = torch.zeros(c, n)
    mask = torch.zeros(c, n, dtype=torch.bool)
    for start in range(0, c, batch_size):
        chunk = examples[start : start + batch_size]
        batch = collate(chunk, window=window, cause_not_after_emotion=cause_not_after_emotion)
        out = model(batch.to(device))
        sl = slice(start, start + len(chunk))
        m = batch.mask.shape[1]
        pair_logits[sl, :m, :m] = out.pair_logits.float().cpu()
        gold[sl, :m, :m] = batch.gold
        valid[sl, :m, :m] = batch.valid
        emotion_logits[sl, :m] = out.emotion_logits.float().cpu()
        emotions[sl, :m] = batch.emotions
        cause_logits[sl, :m] = out.cause_logits.float().cpu()
        causes[sl, :m] = batch.causes
        mask[sl, :m] = batch.mask
    model.train(was_training)
    return Predictions(
        conv_ids=[ex.conv_id for ex in examples],
        lengths=torch.tensor([ex.length for ex in examples], dtype=torch.long),
        pair_logits=pair_logits,
        gold=gold,
        valid=valid,
        emotion_logits=emotion_logits,
        emotions=emotions,
        cause_logits=cause_logits,
        causes=causes,
        mask=mask,
    )


def emotion_scores(pred: Predictions) -> tuple[float, float]:
    """Utterance-level emotion F1 from argmax predictions over utterances with a known label.

    Returns:
        ``(macro_f1_non_neutral, weighted_f1_all)``: the macro-F1 over the six non-neutral
        classes (class 0 = neutral excluded; classes with neither gold nor predicted support are
        skipped) and the support-weighted F1 over all seven classes.
    """
    known = pred.emotions >= 0
    if not bool(known.any()):
        return math.nan, math.nan
    y = pred.emotions[known]
    yhat = pred.emotion_logits[known].argmax(dim=-1)
    n_cls = pred.emotion_logits.shape[-1]
    f1s: list[float] = []
    supports: list[int] = []
    for k in range(n_cls):
        tp = int(((yhat == k) & (y == k)).sum())
        fp = int(((yhat == k) & (y != k)).sum())
        fn = int(((yhat != k) & (y == k)).sum())
        denom = 2 * tp + fp + fn
        f1s.append(2 * tp / denom if denom else math.nan)
        supports.append(tp + fn)
    macro = [f for f in f1s[1:] if not math.isnan(f)]
    macro_f1 = float(np.mean(macro)) if macro else math.nan
    total = sum(supports)
    weighted = sum(s * f for s, f in zip(supports, f1s, strict=True) if s) / total if total else 0.0
    return macro_f1, float(weighted)


def _cause_f1(pred: Predictions) -> float:
    y = pred.causes[pred.mask] > 0.5
    yhat = pred.cause_logits[pred.mask] > 0.0
    tp = int((y & yhat).sum())
    denom = 2 * tp + int((~y & yhat).sum()) + int((y & ~yhat).sum())
    return 2 * tp / denom if denom else 0.0


def pair_summary(pred: Predictions, threshold: float = 0.5) -> dict[str, float]:
    """Cheap per-epoch pair metrics: precision, recall, F1 at ``threshold`` and AUPRC."""
    p, r, f1, *_ = pair_prf(pred.pair_logits, pred.gold, pred.valid, threshold=threshold)
    auprc = pair_auprc(pred.pair_logits, pred.gold, pred.valid)
    return {
        "pair_p": float(p),
        "pair_r": float(r),
        "pair_f1": float(f1),
        "pair_auprc": float(auprc),
    }


def compute_metrics(
    pred: Predictions, *, threshold: float = 0.5, tuned_threshold: float | None = None
) -> dict[str, float]:
    """All metrics of one split (plain floats).

    Args:
        pred: the split's predictions.
        threshold: the fixed decision threshold (probability space) of ``pair_p/r/f1``.
        tuned_threshold: the threshold of the ``*_devthr`` metrics. ``None`` (use on dev): the
            split's own F1-optimal threshold (:func:`torch_pairconf.best_threshold`), reported as
            ``threshold_devthr``; on test pass the dev-chosen threshold.

    Returns:
        ``pair_p, pair_r, pair_f1, pair_auprc, ece (15 equal-width bins), ece_mass (15
        equal-mass bins), row_top1, row_mrr, gap_mean (gold minus hardest negative, probability
        space), violation_rate, violation_severity (margin 0.2, probability space), emotion_f1
        (macro over the 6 non-neutral classes), emotion_wf1 (weighted over all 7), cause_f1
        (binary, utterance level, logit > 0), pair_p/r/f1_devthr, threshold_devthr`` and counts.
    """
    s, g, v = pred.pair_logits, pred.gold, pred.valid
    out = pair_summary(pred, threshold)
    out["ece"] = float(expected_calibration_error(s, g, v, n_bins=15, binning="width"))
    out["ece_mass"] = float(expected_calibration_error(s, g, v, n_bins=15, binning="mass"))
    top1, mrr, _ = row_ranking(s, g, v)
    out["row_top1"] = float(top1)
    out["row_mrr"] = float(mrr)
    out["gap_mean"] = float(confidence_gap(s, g, v, space="prob")[2])
    rate, severity, _ = margin_violations(s, g, v, margin=VIOLATION_MARGIN, space="prob")
    out["violation_rate"] = float(rate)
    out["violation_severity"] = float(severity)
    out["emotion_f1"], out["emotion_wf1"] = emotion_scores(pred)
    out["cause_f1"] = _cause_f1(pred)
    if tuned_threshold is None:
        tuned_threshold = float(best_threshold(s, g, v)[0])
    p, r, f1, *_ = pair_prf(s, g, v, threshold=tuned_threshold)
    out["pair_p_devthr"] = float(p)
    out["pair_r_devthr"] = float(r)
    out["pair_f1_devthr"] = float(f1)
    out["threshold_devthr"] = float(tuned_threshold)
    out["n_conversations"] = float(len(pred.conv_ids))
    out["n_gold_pairs"] = float(g.sum())
    out["n_gold_outside_valid"] = float((g & ~v).sum())
    out["n_candidates"] = float(v.sum())
    return out


def decode_pairs(pred: Predictions, threshold: float = 0.5) -> list[list[tuple[int, int]]]:
    """Predicted ``(emotion, cause)`` pairs (1-based) per conversation: valid pairs whose
    ``sigmoid(logit) > threshold``."""
    hits = (torch.sigmoid(pred.pair_logits) > threshold) & pred.valid
    result: list[list[tuple[int, int]]] = []
    for c in range(hits.shape[0]):
        idx = hits[c].nonzero().tolist()
        result.append([(int(i) + 1, int(j) + 1) for i, j in idx])
    return result


def save_scores(pred: Predictions, path: str | Path) -> None:
    """Save pair logits / gold / valid ``(C, N, N)``, lengths and ids to a compressed ``.npz``."""
    np.savez_compressed(
        path,
        logits=pred.pair_logits.numpy().astype(np.float32),
        gold=pred.gold.numpy(),
        valid=pred.valid.numpy(),
        lengths=pred.lengths.numpy(),
        conv_ids=np.asarray(pred.conv_ids),
    )


def load_checkpoint(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[MECPEModel, dict[str, Any]]:
    """Load a ``best.pt`` / ``last.pt`` checkpoint; returns ``(model in eval mode, checkpoint)``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = MECPEModel(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    return model, ckpt


def _file_key(path: Path) -> str:
    digest = hashlib.sha1(path.read_bytes()).hexdigest()[:12]
    return f"file-{path.stem}-{digest}"


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of ``python -m examples.mecpe.evaluate``."""
    ap = argparse.ArgumentParser(
        prog="python -m examples.mecpe.evaluate",
        description="Evaluate a trained MECPE checkpoint on any ECF-format (or MECAD json) file.",
    )
    ap.add_argument("--checkpoint", required=True, help="best.pt / last.pt of a training run")
    ap.add_argument(
        "--file", required=True, help="conversations in ECF .txt (or MECAD .json) format"
    )
    ap.add_argument(
        "--format",
        choices=("auto", "ecf", "mecad", "mec4"),
        default="auto",
        help="file format (auto: .json → mecad, else ecf)",
    )
    ap.add_argument("--threshold", type=float, default=None, help="default: the training threshold")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--cache-dir", default=None, help="text embedding cache (default: training's)")
    ap.add_argument("--audio-table", default=None, help="override the training audio table")
    ap.add_argument("--video-table", default=None, help="override the training video table")
    ap.add_argument("--mapping", default=None, help="override the training feature mapping")
    ap.add_argument("--out", default=None, help="write decoded pairs + metrics as JSON here")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m examples.mecpe.evaluate``."""
    from . import data as mecpe_data
    from .train import TrainConfig, featurize, resolve_device

    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    model, ckpt = load_checkpoint(args.checkpoint, device)
    cfg = TrainConfig.from_dict(ckpt["config"])
    for name in ("cache_dir", "audio_table", "video_table", "mapping"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    cfg.quiet = cfg.quiet or args.quiet
    path = Path(args.file)
    fmt = args.format
    if fmt == "auto":
        fmt = "mecad" if path.suffix.lower() == ".json" else "ecf"
    loader = {
        "ecf": mecpe_data.load_ecf,
        "mecad": mecpe_data.load_mecad,
        "mec4": mecpe_data.load_mec4,
    }[fmt]
    convs = loader(path)
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the JSON report
        examples = featurize(convs, cfg, cache_dataset=_file_key(path), cache_split="eval")
    pred = predict(
        model,
        examples,
        device=device,
        window=cfg.window,
        cause_not_after_emotion=cfg.cause_not_after,
    )
    threshold = cfg.threshold if args.threshold is None else args.threshold
    dev_thr = ckpt.get("dev_threshold")
    metrics = compute_metrics(
        pred, threshold=threshold, tuned_threshold=None if dev_thr is None else float(dev_thr)
    )
    report: dict[str, Any] = {
        "checkpoint": str(args.checkpoint),
        "file": str(path),
        "threshold": threshold,
        "dev_threshold": dev_thr,
        "metrics": metrics,
    }
    if dev_thr is None:
        report["note"] = "the checkpoint has no dev threshold: *_devthr use this file's best"
    print(json.dumps(report, indent=2, sort_keys=True))
    if args.out:
        decoded = decode_pairs(pred, threshold)
        report["predictions"] = [
            {"conv_id": cid, "pairs": [list(p) for p in pairs]}
            for cid, pairs in zip(pred.conv_ids, decoded, strict=True)
        ]
        Path(args.out).write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
