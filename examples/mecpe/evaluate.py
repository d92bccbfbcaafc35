"""Evaluate a trained checkpoint on any file of a registered format: ``python -m examples.mecpe.evaluate``.

::

    python -m examples.mecpe.evaluate --checkpoint runs/ecf/base-seed42/best.pt \\
        --file /path/to/any_ecf_format.txt [--out predictions.json] [--threshold 0.5] \\
        [--perturb insert --rate 0.3 [--perturb-seed 7]]

prints a JSON object of the metric registry's split metrics (at the fixed threshold and, when
the checkpoint knows its dev threshold, at that threshold as well) and optionally writes the
decoded pairs per conversation. With ``--perturb FAMILY --rate R`` the file's conversations are
also perturbed (:mod:`examples.mecpe.perturb`; the file is its own distractor pool) and the
report gets a ``robustness`` object: the perturbation (``oracle`` for the families that use gold
labels), its realised counts and every number of
:func:`examples.mecpe.robustness.view_metrics` (F1 / AUPRC on all pairs of the perturbed
conversations and on the pairs of the original utterances, decision flips, confidence change,
row ranking agreement, gap change). Bad input (a malformed, empty or non-UTF-8 file, a file that
is not a checkpoint, a bad ``--perturb``/``--rate``) ends with one line on stderr and exit
status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import checkpoint, datasets
from .batching import Example
from .cli import add_debug_option, guarded
from .config import TrainConfig
from .featurize import featurize
from .metrics import Recalibration, compute_metrics
from .model import MECPEModel, ModelConfig
from .options import UNIT_OPEN
from .perturb import FAMILIES
from .predict import Predictions, decode_pairs, predict
from .robustness import DEFAULT_PERTURB_SEED, check_rate, perturbed_split, view_metrics
from .runtime import resolve_device

__all__ = ["build_parser", "load_model", "main"]


def load_model(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[MECPEModel, dict[str, Any]]:
    """Load a ``best.pt`` / ``last.pt``; returns ``(model in eval mode, checkpoint)``."""
    ckpt = checkpoint.load(path)
    model = MECPEModel(ModelConfig.from_dict(ckpt["model_config"], source=str(path)))
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    return model, ckpt


def _file_key(path: Path) -> str:
    digest = hashlib.sha1(path.read_bytes()).hexdigest()[:12]
    return f"file-{path.stem}-{digest}"


def _threshold(text: str) -> float:
    value = float(text)
    if not UNIT_OPEN.predicate(value):
        raise argparse.ArgumentTypeError(f"must be {UNIT_OPEN.rule}, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of ``python -m examples.mecpe.evaluate``."""
    ap = argparse.ArgumentParser(
        prog="python -m examples.mecpe.evaluate",
        description="Evaluate a trained MECPE checkpoint on a file of any registered format.",
    )
    ap.add_argument("--checkpoint", required=True, help="best.pt / last.pt of a training run")
    ap.add_argument("--file", required=True, help="conversations in a registered format")
    ap.add_argument(
        "--format",
        choices=("auto", *datasets.names()),
        default="auto",
        help="file format (auto: from the file suffix, e.g. .txt → ecf, .json → mecad)",
    )
    ap.add_argument(
        "--threshold", type=_threshold, default=None, help="default: the training threshold"
    )
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--cache-dir", default=None, help="text embedding cache (default: training's)")
    ap.add_argument("--audio-table", default=None, help="override the training audio table")
    ap.add_argument("--video-table", default=None, help="override the training video table")
    ap.add_argument("--mapping", default=None, help="override the training feature mapping")
    ap.add_argument("--out", default=None, help="write decoded pairs + metrics as JSON here")
    ap.add_argument(
        "--perturb",
        default=None,
        metavar="FAMILY",
        help=f"also evaluate the conversations perturbed by FAMILY, one of {', '.join(FAMILIES)} "
        "(delete, replace, speaker are oracle: they use the gold labels)",
    )
    ap.add_argument("--rate", default=None, metavar="R", help="rate of --perturb, in [0, 1]")
    ap.add_argument(
        "--perturb-seed",
        default=None,
        metavar="S",
        help=f"seed of --perturb (default {DEFAULT_PERTURB_SEED}, as in the robustness study)",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    add_debug_option(ap)
    return ap


def _perturbation(args: argparse.Namespace) -> tuple[str, float, int] | None:
    """``(family, rate, seed)`` of ``--perturb``, or ``None``; bad values raise naming the flag."""
    if args.perturb is None:
        for flag, value in (("--rate", args.rate), ("--perturb-seed", args.perturb_seed)):
            if value is not None:
                raise ValueError(f"{flag} is a setting of --perturb FAMILY")
        return None
    if args.perturb not in FAMILIES:
        raise ValueError(f"--perturb: unknown family {args.perturb!r}; expected {', '.join(FAMILIES)}")
    if args.rate is None:
        raise ValueError("--perturb needs --rate R (in [0, 1])")
    try:
        rate = float(args.rate)
    except ValueError:
        rate = math.nan
    if not math.isfinite(rate):
        raise ValueError(f"--rate must be a number in [0, 1], got {args.rate!r}")
    rate = check_rate(rate, "--rate")
    seed = DEFAULT_PERTURB_SEED
    if args.perturb_seed is not None:
        try:
            seed = int(args.perturb_seed)
        except ValueError:
            raise ValueError(f"--perturb-seed must be an integer, got {args.perturb_seed!r}") from None
    return args.perturb, rate, seed


def _evaluate(args: argparse.Namespace) -> int:
    perturbation = _perturbation(args)
    device = resolve_device(args.device)
    model, ckpt = load_model(args.checkpoint, device)
    cfg = TrainConfig.from_dict(ckpt["config"], source=str(args.checkpoint))
    for name in ("cache_dir", "audio_table", "video_table", "mapping"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    cfg.quiet = cfg.quiet or args.quiet
    path = Path(args.file)
    fmt = datasets.guess_format(path) if args.format == "auto" else args.format
    convs = datasets.load_file(fmt, path)
    key = _file_key(path)
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the JSON report
        examples = featurize(convs, cfg, cache_dataset=key, cache_split="eval")
        view = None
        if perturbation is not None:
            family, rate, seed = perturbation
            view = perturbed_split(
                convs, cfg, family=family, rate=rate, seed=seed, cache_dataset=key,
                cache_split="eval",
            )  # fmt: skip

    def scores(exs: Sequence[Example]) -> Predictions:
        return predict(
            model,
            exs,
            device=device,
            window=cfg.window,
            cause_not_after_emotion=cfg.cause_not_after_emotion,
            precision=cfg.precision,
            chunk_tokens=cfg.chunk_tokens,
        )

    pred = scores(examples)
    threshold = cfg.threshold if args.threshold is None else args.threshold
    dev_thr = ckpt.get("dev_threshold")
    dev_recal = ckpt.get("dev_recalibration")
    recalibration = (
        None if dev_recal is None else Recalibration.from_record(dev_recal, str(args.checkpoint))
    )
    metrics = compute_metrics(
        pred,
        threshold=threshold,
        tuned_threshold=None if dev_thr is None else float(dev_thr),
        recalibration=recalibration,
    )
    report: dict[str, Any] = {
        "checkpoint": str(args.checkpoint),
        "file": str(path),
        "format": fmt,
        "threshold": threshold,
        "dev_threshold": dev_thr,
        "dev_recalibration": dev_recal,
        "metrics": metrics.to_json(),
    }
    notes = []
    if dev_thr is None:
        notes.append("the checkpoint has no dev threshold: *_devthr use this file's best")
    if dev_recal is None:
        notes.append(
            "the checkpoint has no dev recalibration: *_tempscaled / *_platt are fitted on this file"
        )
    if notes:
        report["note"] = "; ".join(notes)
    perturbed = None
    if view is not None:
        perturbed = scores(view.examples)
        robust = view_metrics(pred, perturbed, view.origins, threshold=threshold)
        report["robustness"] = view.report(robust, threshold)
    print(json.dumps(report, indent=2, sort_keys=True, allow_nan=False))
    if args.out:
        decoded = decode_pairs(pred, threshold)
        report["predictions"] = [
            {"conv_id": cid, "pairs": [list(p) for p in pairs]}
            for cid, pairs in zip(pred.conv_ids, decoded, strict=True)
        ]
        if view is not None and perturbed is not None:
            # pairs in the perturbed conversation's own indices; origin maps them back
            report["perturbed_predictions"] = [
                {"conv_id": cid, "origin": list(origin), "pairs": [list(p) for p in pairs]}
                for cid, origin, pairs in zip(
                    perturbed.conv_ids, view.origins, decode_pairs(perturbed, threshold), strict=True
                )
            ]
        checkpoint.write_json(report, Path(args.out), indent=1)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m examples.mecpe.evaluate``; bad input: one stderr line, exit 2."""
    args = build_parser().parse_args(argv)
    return guarded(lambda: _evaluate(args), debug=args.debug, prog="evaluate")


if __name__ == "__main__":
    sys.exit(main())
