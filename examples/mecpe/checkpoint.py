"""Checkpoints and run files: atomic writes, the format version, RNG state and resume checks.

A run directory holds ``best.pt`` (the dev-selected weights), ``last.pt`` (everything needed
to continue: weights, optimizer, learning-rate schedule, gradient scaler, weight average, and
per process its RNG states and RPCL state, history) and ``run.json`` (config, data
statistics, history, metrics). A data-parallel run's ``last.pt`` holds every rank's RNG and
RPCL state and resumes with the same number of processes only. All three carry :data:`FORMAT`; a
file of another format is refused with a message naming the file and both versions (the
trainer never guesses what an older file's missing settings were).

Example::

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "run.json"
    >>> write_json({"format": FORMAT, "complete": True}, path)
    >>> read_run_file(path)["complete"]
    True
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from .config import TrainConfig, resumable_fields
from .engine import TrainState
from .model import ModelConfig

__all__ = [
    "FORMAT",
    "CheckpointError",
    "atomic_save",
    "check_resumable",
    "load",
    "rank_state",
    "read_run_file",
    "restore_last",
    "rng_state",
    "save_best",
    "save_last",
    "set_rng_state",
    "write_json",
]

#: Format of checkpoints and ``run.json``. 2: versioned files, strict configs (no defaults
#: guessed for settings an older file lacks), ``cause_not_after_emotion`` and
#: ``keep_last_checkpoint`` named as on the command line, ``dev_only``/``show_test``/``name``.
#: (Later settings declare their value in older files, ``absent=``; a ``last.pt`` written
#: before the schedule, scaler, step count and per-rank states were saved resumes as one
#: process with a constant schedule, which is what it ran.)
FORMAT = 2


class CheckpointError(ValueError):
    """A file that is not a checkpoint / run file of this trainer, or of another format."""


def _check_format(found: object, path: Path, what: str) -> None:
    if found != FORMAT:
        shown = "none (written before formats were numbered)" if found is None else found
        raise CheckpointError(
            f"{path}: {what} format {shown}, this trainer reads format {FORMAT}; retrain, or "
            "use the trainer version that wrote it"
        )


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(obj: Any, path: Path, *, indent: int | None = 2) -> None:
    """Write ``obj`` as strict JSON (``NaN``/``inf`` raise), atomically."""
    text = json.dumps(obj, indent=indent, allow_nan=False, ensure_ascii=False)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)


def load(path: str | Path) -> dict[str, Any]:
    """Load a ``best.pt`` / ``last.pt`` (on the CPU) and check its format.

    Raises :class:`CheckpointError` naming the file when it is not a checkpoint of this trainer
    or has another format (a missing file raises ``FileNotFoundError``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file: pickle, zip, magic-number errors
        raise CheckpointError(
            f"{path}: not a checkpoint of this trainer (torch.load failed: {type(exc).__name__})"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path}: not a checkpoint of this trainer (no model and config)")
    _check_format(ckpt.get("format"), path, "checkpoint")
    return ckpt


def read_run_file(path: Path) -> dict[str, Any]:
    """Read a ``run.json`` and check its format (``CheckpointError`` naming the file)."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(result, dict):
        raise CheckpointError(f"{path}: not a run file (expected a JSON object)")
    _check_format(result.get("format"), path, "run file")
    return result


def rng_state(gens: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every RNG state of the process (Python, NumPy, torch, CUDA) and of ``gens``."""
    # the legacy global RNG is what we save; legacy=True: the (name, keys, pos, gauss) tuple
    np_state = cast(
        tuple[str, np.ndarray, int, int, float],
        np.random.get_state(legacy=True),  # noqa: NPY002
    )
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (
            np_state[0],
            torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ),
        "torch": torch.get_rng_state(),
        "generators": {k: g.get_state() for k, g in gens.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], gens: dict[str, torch.Generator]) -> None:
    """Restore what :func:`rng_state` saved."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    for k, g in gens.items():
        g.set_state(state["generators"][k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_resumable(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """Refuse to resume ``path`` (a ``last.pt``) with settings it was not started with."""
    details = cfg.diff(saved, resumable_fields(finished=False))
    if details:
        raise ValueError(
            f"cannot resume {path}: the run was started with other settings ({details})"
        )
    if int(saved["epochs"]) > cfg.epochs:
        raise ValueError(f"cannot resume {path} with fewer epochs than it was started with")
    if cfg.lr_schedule == "linear" and int(saved["epochs"]) != cfg.epochs:
        raise ValueError(
            f"cannot resume {path} with --epochs {cfg.epochs}: its linear learning-rate "
            f"schedule is laid out over the {saved['epochs']} epochs it was started with"
        )


def save_best(path: Path, state: TrainState, cfg: TrainConfig, mcfg: ModelConfig) -> None:
    """Write ``best.pt``: the weights dev selection saw (the average when there is one)."""
    atomic_save(
        {
            "format": FORMAT,
            "model": state.eval_model.state_dict(),
            "model_config": mcfg.to_dict(),
            "config": cfg.to_dict(),
            "epoch": state.epoch,
            "dev_pair_f1": state.best_f1,
        },
        path,
    )


def rank_state(state: TrainState) -> dict[str, Any]:
    """What differs between the processes of a run: the RNG states and the RPCL state."""
    return {
        "rng": rng_state(state.gens),
        "rpcl": state.rpcl.state_dict() if state.rpcl is not None else {},
    }


def save_last(
    path: Path,
    state: TrainState,
    cfg: TrainConfig,
    mcfg: ModelConfig,
    ranks: list[dict[str, Any]] | None = None,
) -> None:
    """Write ``last.pt``: everything :func:`restore_last` needs to continue bit-identically.

    ``ranks``: every process's :func:`rank_state`, in rank order (default: this one's only).
    """
    per_rank = ranks if ranks is not None else [rank_state(state)]
    if len(per_rank) != state.ranks.world:
        raise ValueError(f"save_last: {len(per_rank)} rank states for {state.ranks.world} ranks")
    atomic_save(
        {
            "format": FORMAT,
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "schedule": state.schedule.state_dict() if state.schedule is not None else {},
            "scaler": state.scaler.state_dict() if state.scaler is not None else {},
            "steps": state.steps,
            "ema": state.ema.state_dict() if state.ema is not None else {},
            "world_size": state.ranks.world,
            "ranks": per_rank,
            "model_config": mcfg.to_dict(),
            "config": cfg.to_dict(),
            "epoch": state.epoch,
            "best_f1": state.best_f1,
            "best_epoch": state.best_epoch,
            "history": state.history,
            "train_seconds": state.train_seconds,
        },
        path,
    )


def restore_last(path: Path, state: TrainState, cfg: TrainConfig) -> None:
    """Load ``last.pt`` into ``state`` (after checking it was started with ``cfg``'s settings)."""
    ckpt = load(path)
    check_resumable(ckpt["config"], cfg, path)
    if "ranks" not in ckpt:  # written before per-rank states: one process, no schedule
        ckpt = {
            **ckpt,
            "ranks": [{"rng": ckpt["rng"], "rpcl": ckpt["rpcl"]}],
            "world_size": 1,
            "schedule": {},
            "scaler": {},
            "steps": int(ckpt["epoch"]) * state.steps_per_epoch,
        }
    world = int(ckpt["world_size"])
    if world != state.ranks.world:
        how = "without torchrun" if world == 1 else f"with torchrun --nproc-per-node {world}"
        raise ValueError(
            f"cannot resume {path}: it was trained by {world} process(es), this run has "
            f"{state.ranks.world}; each process's random streams are saved: resume {how}"
        )
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    if state.schedule is not None:
        state.schedule.load_state_dict(ckpt["schedule"])
    if state.scaler is not None:
        state.scaler.load_state_dict(ckpt["scaler"])
    state.steps = int(ckpt["steps"])
    if state.ema is not None:
        state.ema.load_state_dict(ckpt["ema"])
    mine = ckpt["ranks"][state.ranks.rank]
    if state.rpcl is not None:
        state.rpcl.load_state_dict(mine["rpcl"])
    set_rng_state(mine["rng"], state.gens)
    state.history = list(ckpt["history"])
    state.best_f1, state.best_epoch = float(ckpt["best_f1"]), int(ckpt["best_epoch"])
    state.epoch, state.train_seconds = int(ckpt["epoch"]), float(ckpt["train_seconds"])
