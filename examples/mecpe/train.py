"""One training run of the reference MECPE model: ``python -m examples.mecpe.train``.

A run is one (dataset, arm, seed[, fold]): build (data, model, optimizer, weight average,
RPCL), then epochs — train on the train split, validate on dev, checkpoint (``last.pt`` always,
``best.pt`` when dev Pair F1 at the fixed threshold improves: the same selection rule for both
arms) — then report: ``best.pt`` is evaluated on dev and test (dev only with ``--dev-only``),
``run.json`` gets the config, the data statistics, the per-epoch history and all metrics of the
metric registry (:mod:`examples.mecpe.metrics`), and ``scores_<split>.npz`` the pair logits,
gold and valid masks for plots. The final log line shows dev metrics (test ones with
``--show-test``). Every option is a field of :class:`~examples.mecpe.config.TrainConfig`.

Data-parallel (``torchrun --nproc-per-node N -m examples.mecpe.train ...``): every process
loads the data (rank 0 first, filling the caches), trains its share of each batch
(:mod:`examples.mecpe.engine`), and rank 0 alone validates (its metrics are broadcast, so
every rank takes the same best-epoch decision), logs, writes the checkpoints (``last.pt`` with
every rank's RNG and RPCL state) and ``run.json``, and evaluates ``best.pt``; ``run()``
returns the same result on every rank.

Example::

    python -m examples.mecpe.train --dataset ecf --data-dir ../shared/data/ecf \\
        --arm rpcl --rpcl-arg margin_weight=0.3 --seed 42 --out runs/ecf/rpcl-seed42
    torchrun --nproc-per-node 2 -m examples.mecpe.train --text-encoder transformer \\
        --data-dir ../shared/data/ecf --out runs/ecf/encoder-seed42
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import checkpoint, distributed
from .cli import add_debug_option, guarded
from .config import TrainConfig, add_train_options, config_from_args
from .distributed import Ranks
from .engine import EpochResult, TrainState, build_state, evaluate_split, model_config, run_epoch
from .featurize import DataBundle, load_data
from .metrics import Recalibration, RunFacts, SplitMetrics, compute_metrics, run_metrics
from .model import ModelConfig
from .options import HelpFormatter
from .predict import save_scores
from .runtime import autocast, configure, numerics, resolve_device

__all__ = ["build_parser", "main", "run"]


def _log(cfg: TrainConfig, msg: str, ranks: Ranks | None = None) -> None:
    if not cfg.quiet and (ranks is None or ranks.main):
        print(msg, flush=True)


def _device(cfg: TrainConfig, ranks: Ranks) -> torch.device:
    """The run's device; data-parallel CUDA runs use ``cuda:LOCAL_RANK``."""
    device = resolve_device(cfg.device)
    if ranks.parallel and device.type == "cuda":
        if cfg.device not in ("auto", "cuda") and device.index != ranks.local_rank:
            raise ValueError(
                f"--device {cfg.device}: under torchrun each process uses cuda:LOCAL_RANK; "
                "give --device cuda (or auto)"
            )
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    autocast(device, cfg.precision)  # an impossible precision fails before the data is read
    return device


def run(cfg: TrainConfig, data: DataBundle | None = None) -> dict[str, Any]:
    """Train and evaluate one run; returns (and writes) the ``run.json`` content.

    Under ``torchrun`` (or inside an initialised process group) the run is data-parallel.
    """
    ranks = distributed.from_environment()
    device = _device(cfg, ranks)
    with distributed.process_group(ranks, device):
        return _run(cfg, data, ranks, device)


def _load(cfg: TrainConfig, ranks: Ranks) -> DataBundle:
    """Rank 0 loads first (it fills the embedding / state caches), then the others."""
    if ranks.main:
        data = load_data(cfg)
    distributed.barrier(ranks)
    if not ranks.main:
        data = load_data(cfg)
    return data


def _run(
    cfg: TrainConfig, data: DataBundle | None, ranks: Ranks, device: torch.device
) -> dict[str, Any]:
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    configure(device, cfg.threads)
    # ---- build
    if data is None:
        data = _load(cfg, ranks)
    mcfg = model_config(cfg, data)
    state = build_state(cfg, mcfg, len(data.train), device, ranks)
    if cfg.resume and last_path.is_file():
        checkpoint.restore_last(last_path, state, cfg)
        _log(cfg, f"resumed from {last_path} after epoch {state.epoch}", ranks)
    elif cfg.resume:
        _log(cfg, f"no {last_path}; starting from scratch", ranks)
    # ---- epochs: train, validate, checkpoint
    show_bar = not cfg.quiet and sys.stderr.isatty()
    while state.epoch < cfg.epochs:
        epoch = run_epoch(state, data, cfg, device, show_bar=show_bar)
        if epoch.improved and ranks.main:
            checkpoint.save_best(best_path, state, cfg, mcfg)
        per_rank = distributed.all_gather(checkpoint.rank_state(state), ranks)
        if ranks.main:
            checkpoint.save_last(last_path, state, cfg, mcfg, per_rank)
        _log(cfg, _epoch_line(cfg, epoch, len(data.train)), ranks)
    # ---- report (rank 0), shared with every rank
    result: dict[str, Any] | None = None
    if ranks.main:
        metrics = _evaluate_best(state, data, cfg, device, out_dir)
        result = _run_record(cfg, mcfg, state, data, device, metrics)
        checkpoint.write_json(result, out_dir / "run.json")
        if not cfg.keep_last_checkpoint:
            last_path.unlink(missing_ok=True)
        print(_final_line(cfg, result), flush=True)
    result = distributed.broadcast(result, ranks)
    assert result is not None
    return result


def _evaluate_best(
    state: TrainState, data: DataBundle, cfg: TrainConfig, device: torch.device, out_dir: Path
) -> dict[str, SplitMetrics]:
    """Evaluate ``best.pt`` on dev (and test), save the scores, store the dev threshold and
    recalibration (test reuses both)."""
    best_path = out_dir / "best.pt"
    best = checkpoint.load(best_path)
    state.model.load_state_dict(best["model"])
    splits = {"dev": data.dev} if data.test is None else {"dev": data.dev, "test": data.test}
    preds = {split: evaluate_split(state.model, exs, cfg, device) for split, exs in splits.items()}
    metrics = {"dev": compute_metrics(preds["dev"], threshold=cfg.threshold)}
    dev_threshold = metrics["dev"].values["threshold_devthr"]
    recalibration = Recalibration.from_values(metrics["dev"].values)
    if "test" in preds:
        metrics["test"] = compute_metrics(
            preds["test"],
            threshold=cfg.threshold,
            tuned_threshold=dev_threshold,
            recalibration=recalibration,
        )
    for split, pred in preds.items():
        save_scores(pred, out_dir / f"scores_{split}.npz")
    best["dev_threshold"] = dev_threshold
    best["dev_recalibration"] = recalibration.to_record()
    checkpoint.atomic_save(best, best_path)
    return metrics


def _run_record(
    cfg: TrainConfig,
    mcfg: ModelConfig,
    state: TrainState,
    data: DataBundle,
    device: torch.device,
    metrics: dict[str, SplitMetrics],
) -> dict[str, Any]:
    """The ``run.json`` content (no test section with ``dev_only``)."""
    dev_threshold = metrics["dev"].values["threshold_devthr"]
    facts = run_metrics(RunFacts(dev_threshold, state.best_epoch, state.train_seconds))
    result: dict[str, Any] = {
        "format": checkpoint.FORMAT,
        "config": cfg.to_dict(),
        "model_config": mcfg.to_dict(),
        "n_parameters": sum(p.numel() for p in state.model.parameters()),
        "device": str(device),
        "world_size": state.ranks.world,
        "torch": torch.__version__,
        "numerics": numerics(),
        "data": data.stats,
        "history": state.history,
        "best_epoch": state.best_epoch,
        "train_seconds": state.train_seconds,
        "dev_threshold": dev_threshold,
    }
    for split, split_metrics in metrics.items():
        result[split] = {**split_metrics.values, **facts}
        if split_metrics.undefined:
            result[split]["undefined"] = split_metrics.undefined
    result["complete"] = True
    return result


def _epoch_line(cfg: TrainConfig, epoch: EpochResult, n_train: int) -> str:
    e, s = epoch.entry, epoch.seconds
    return (
        f"epoch {e['epoch']:>3}/{cfg.epochs} loss {e['loss']:.4f} | dev P {e['dev_pair_p']:.4f} "
        f"R {e['dev_pair_r']:.4f} F1 {e['dev_pair_f1']:.4f} AUPRC {e['dev_pair_auprc']:.4f}"
        f"{' *' if epoch.improved else ''} | {s:.1f}s ({n_train / max(s, 1e-9):.0f} conv/s)"
    )


def _final_line(cfg: TrainConfig, result: dict[str, Any]) -> str:
    """The last log line: dev metrics, and test ones only with ``show_test``."""
    d, thr = result["dev"], result["dev_threshold"]
    fold = f" fold={cfg.fold}" if cfg.fold is not None else ""
    line = (
        f"[{cfg.dataset}/{cfg.name or cfg.arm} seed={cfg.seed}{fold}] best epoch "
        f"{result['best_epoch']} | dev F1 {d['pair_f1']:.4f} AUPRC {d['pair_auprc']:.4f} "
        f"best thr {thr:.3f}"
    )
    if cfg.show_test:
        t = result["test"]
        line += (
            f" | test P {t['pair_p']:.4f} R {t['pair_r']:.4f} F1 {t['pair_f1']:.4f} AUPRC "
            f"{t['pair_auprc']:.4f} F1@dev-thr {t['pair_f1_devthr']:.4f} ECE {t['ece']:.4f}"
        )
    return line + f" | train {result['train_seconds']:.1f}s"


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of ``python -m examples.mecpe.train`` (generated from the config)."""
    ap = argparse.ArgumentParser(
        prog="python -m examples.mecpe.train",
        description="Train one MECPE run (base or RPCL arm) and evaluate it on dev and test.",
        formatter_class=HelpFormatter,
    )
    add_train_options(ap)
    add_debug_option(ap)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m examples.mecpe.train``; bad input: one stderr line, exit 2."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        run(config_from_args(args))
        return 0

    return guarded(body, debug=args.debug, prog="train")


if __name__ == "__main__":
    sys.exit(main())
