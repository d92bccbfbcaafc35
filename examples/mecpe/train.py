"""One training run of the reference MECPE model: ``python -m examples.mecpe.train``.

A run is one (dataset, arm, seed[, fold]). Each epoch trains on the train split (data order from
a dedicated, seeded ``torch.Generator``), evaluates on dev, atomically saves ``last.pt`` (model,
optimizer, RPCL state, every RNG state, history) and keeps ``best.pt`` by dev Pair F1 at the fixed
threshold (same selection rule for both arms). After training, ``best.pt`` is evaluated on dev and
test; ``run.json`` gets the config, the data statistics, the per-epoch history and all metrics;
``scores_dev.npz`` / ``scores_test.npz`` get the pair logits, gold and valid masks for plots.

The RPCL arm is the base plus exactly two lines::

    rpcl = RPCLoss(model.context, scores_fn=lambda out: out.pair_logits, generator=g, **args)
    loss = loss + rpcl(out.pair_logits, batch.gold, batch.valid, rerun=lambda: model(batch))

Example::

    python -m examples.mecpe.train --dataset ecf --data-dir ../shared/data/ecf \\
        --arm rpcl --rpcl-arg margin_weight=0.3 --seed 42 --out runs/ecf/rpcl-seed42
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from torch_pairconf import RPCLoss

from . import data as mecpe_data
from .batching import DEFAULT_HASH_BUCKETS, Batch, Example, batch_indices, build_examples, collate
from .evaluate import compute_metrics, pair_summary, predict, save_scores
from .features import FeatureTable, modality_flags
from .model import MECPEModel, ModelConfig, mecpe_loss

__all__ = [
    "DataBundle",
    "TrainConfig",
    "build_parser",
    "config_from_args",
    "featurize",
    "load_data",
    "main",
    "parse_rpcl_args",
    "resolve_device",
    "run",
    "series_folds",
    "series_of",
]

CHECKPOINT_FORMAT = 1
DATASETS = ("ecf", "mecad", "mec4")


# ----------------------------------------------------------------------------------- config


#: What a run saved before a field existed was trained with (fields added later with a new default).
_LEGACY_RUN: dict[str, Any] = {
    "pos_weight": 1.0,
    "pair_rank": None,
    "pair_dropout": None,
    "ema_decay": 0.0,
}


@dataclass
class TrainConfig:
    """Everything that defines one run (stored in checkpoints and ``run.json``)."""

    dataset: str = "ecf"
    data_dir: str | None = None
    protocol: str = "split"
    fold: int | None = None
    n_folds: int = 5
    modalities: str = "T"
    audio_table: str | None = None
    video_table: str | None = None
    mapping: str | None = None
    text_encoder: str | None = None
    hash_buckets: int = DEFAULT_HASH_BUCKETS
    cache_dir: str = ".cache/emb"
    arm: str = "base"
    rpcl_args: dict[str, Any] = field(default_factory=dict)
    seed: int = 42
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-5
    grad_clip: float = 5.0
    dropout: float = 0.1  # chosen on ECF dev (runs/ablations: base vs base-drop0.1)
    pair_weight: float = 1.0
    pos_weight: float = 2.0  # chosen on ECF dev (ablations_calibrated.txt): calibrated at 0.5
    pair_rank: int | None = ModelConfig.pair_rank
    pair_dropout: float | None = ModelConfig.pair_dropout
    # Dev selection, best.pt and evaluation use an exponential moving average of the weights with
    # a time constant of ema_epochs epochs (per-step decay 1 - 1 / (ema_epochs * steps per
    # epoch); 0: off), or the per-step decay ema_decay when it is given.
    ema_epochs: float = 1.6
    ema_decay: float | None = None
    window: int | None = None
    cause_not_after: bool = False
    threshold: float = 0.5
    out: str = "runs/run"
    device: str = "auto"
    resume: bool = False
    quiet: bool = False
    eval_batch_size: int = 64
    keep_last: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; expected one of {DATASETS}")
        if self.arm not in ("base", "rpcl"):
            raise ValueError(f"unknown arm {self.arm!r}; expected base or rpcl")
        if self.protocol not in ("split", "cv"):
            raise ValueError(f"unknown protocol {self.protocol!r}; expected split or cv")
        if self.protocol == "cv" and (self.fold is None or not 0 <= self.fold < self.n_folds):
            raise ValueError(f"protocol cv needs --fold in 0..{self.n_folds - 1}")
        if self.text_encoder is None:
            self.text_encoder = "hash" if self.dataset == "mecad" else "minilm"
        modality_flags(self.modalities)
        if not self.pair_weight > 0:
            raise ValueError(f"pair_weight must be > 0, got {self.pair_weight!r}")
        if not self.pos_weight > 0:
            raise ValueError(f"pos_weight must be > 0, got {self.pos_weight!r}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay!r}")
        if not self.ema_epochs >= 0:
            raise ValueError(f"ema_epochs must be >= 0 (0: off), got {self.ema_epochs!r}")
        if self.pair_rank is not None and self.pair_rank < 1:
            raise ValueError(f"pair_rank must be >= 1 or None, got {self.pair_rank!r}")
        if self.pair_dropout is not None and not 0 <= self.pair_dropout < 1:
            raise ValueError(f"pair_dropout must be in [0, 1) or None, got {self.pair_dropout!r}")

    def ema_step_decay(self, steps_per_epoch: int) -> float:
        """Per-step decay of the weight average (0: no average)."""
        if self.ema_decay is not None:
            return self.ema_decay
        if self.ema_epochs == 0:
            return 0.0
        return 1.0 - 1.0 / max(self.ema_epochs * steps_per_epoch, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{**_LEGACY_RUN, **{k: v for k, v in d.items() if k in names}})


def parse_rpcl_args(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings; a value is read as a JSON scalar, else kept as a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--rpcl-arg expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if isinstance(value, (dict, list)):
            raise ValueError(f"--rpcl-arg {key}: only scalar values are allowed, got {raw!r}")
        out[key] = value
    return out


def resolve_device(name: str) -> torch.device:
    """``auto`` → ``cuda`` when available, else ``cpu``; ``cuda`` gets its explicit index."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        # an explicit index: torch.device("cuda") != torch.device("cuda:0") in device checks
        device = torch.device("cuda", torch.cuda.current_device())
    return device


# ------------------------------------------------------------------------------------- data


def series_of(conv_id: str) -> str:
    """TV series of a MECAD dialogue id: the prefix before the last ``_<number>``."""
    m = re.match(r"^(.*)_\d+$", conv_id)
    return m.group(1) if m else conv_id


def series_folds(conv_ids: Sequence[str], n_folds: int = 5) -> list[int]:
    """Deterministic fold of each dialogue, grouping dialogues of one series in one fold.

    Series are taken largest first (ties by name) and each goes to the fold with the fewest
    dialogues so far (ties: lowest fold index).
    """
    counts = Counter(series_of(c) for c in conv_ids)
    if len(counts) < n_folds:
        raise ValueError(f"{len(counts)} series cannot fill {n_folds} folds")
    load = [0] * n_folds
    fold_of: dict[str, int] = {}
    for s in sorted(counts, key=lambda s: (-counts[s], s)):
        f = min(range(n_folds), key=lambda k: (load[k], k))
        fold_of[s] = f
        load[f] += counts[s]
    return [fold_of[series_of(c)] for c in conv_ids]


def load_feature_tables(cfg: TrainConfig) -> dict[str, FeatureTable]:
    """The audio / video tables ``cfg.modalities`` asks for (a missing path raises)."""
    _, use_audio, use_video = modality_flags(cfg.modalities)
    tables: dict[str, FeatureTable] = {}
    for name, used, path in (("audio", use_audio, cfg.audio_table), ("video", use_video, cfg.video_table)):
        if not used:
            continue
        if not path:
            raise ValueError(f"modalities {cfg.modalities} need --{name}-table")
        tables[name] = _feature_table(path, cfg.mapping)
    return tables


def _feature_table(path: str, mapping: str | None) -> FeatureTable:
    if mapping:
        return FeatureTable.from_ecf(path, mapping)
    return FeatureTable.from_file(path)


def featurize(
    convs: Sequence[mecpe_data.Conversation],
    cfg: TrainConfig,
    *,
    cache_dataset: str,
    cache_split: str,
    tables: dict[str, FeatureTable] | None = None,
) -> list[Example]:
    """Examples of ``convs`` with the features ``cfg`` asks for.

    Text: hashed n-grams (``hash``) or frozen sentence embeddings from
    :func:`examples.mecpe.text.encode_conversations`, cached under
    ``cfg.cache_dir`` as ``(cache_dataset, cache_split, encoder)``. Audio / video: rows of the
    feature tables (``FeatureTable.from_ecf`` when ``cfg.mapping`` is set, else ``from_file``).
    """
    _, use_audio, use_video = modality_flags(cfg.modalities)
    if tables is None:
        tables = load_feature_tables(cfg)
    text = None
    if cfg.text_encoder != "hash":
        from .text import encode_conversations

        text = encode_conversations(
            convs,
            encoder=cfg.text_encoder or "minilm",
            cache_dir=cfg.cache_dir,
            dataset=cache_dataset,
            split=cache_split,
            show_progress=not cfg.quiet and sys.stderr.isatty(),
        )
    audio = [tables["audio"].lookup(c.feature_keys) for c in convs] if use_audio else None
    video = [tables["video"].lookup(c.feature_keys) for c in convs] if use_video else None
    return build_examples(
        convs,
        text=text,
        hash_buckets=cfg.hash_buckets if cfg.text_encoder == "hash" else None,
        audio=audio,
        video=video,
    )


@dataclass
class DataBundle:
    """Train / dev / test examples, the feature dimensions and data statistics."""

    train: list[Example]
    dev: list[Example]
    test: list[Example]
    text_dim: int | None
    audio_dim: int | None
    video_dim: int | None
    stats: dict[str, Any]


def _pair_stats(convs: Sequence[mecpe_data.Conversation], window: int | None) -> dict[str, Any]:
    pairs = [p for c in convs for p in c.pairs]
    after = sum(1 for e, c in pairs if c > e)
    stats: dict[str, Any] = {
        **mecpe_data.summarize(convs),
        "cause_after_emotion": after,
        "cause_after_emotion_frac": after / len(pairs) if pairs else 0.0,
    }
    if window is not None:
        outside = sum(1 for e, c in pairs if abs(e - c) > window)
        stats["outside_window"] = outside
        stats["outside_window_frac"] = outside / len(pairs) if pairs else 0.0
    return stats


def load_data(cfg: TrainConfig) -> DataBundle:
    """Load the splits of ``cfg.dataset`` (or the ``cv`` fold) and build their examples."""
    data_dir = cfg.data_dir or os.environ.get("MECPE_DATA_DIR")
    if not data_dir:
        raise ValueError("give --data-dir or set MECPE_DATA_DIR")
    tables = load_feature_tables(cfg)

    def load(split: str) -> tuple[list[mecpe_data.Conversation], list[Example]]:
        convs = mecpe_data.load_split(cfg.dataset, data_dir, split)
        return convs, featurize(
            convs, cfg, cache_dataset=cfg.dataset, cache_split=split, tables=tables
        )

    if cfg.protocol == "cv":
        pooled_convs: list[mecpe_data.Conversation] = []
        pooled: list[Example] = []
        for split in ("dev", "test"):
            try:
                convs, exs = load(split)
            except FileNotFoundError:
                continue
            pooled_convs += convs
            pooled += exs
        for split in ("train",):
            try:
                convs, exs = load(split)
            except FileNotFoundError:
                continue
            pooled_convs = convs + pooled_convs
            pooled = exs + pooled
        folds = series_folds([c.conv_id for c in pooled_convs], cfg.n_folds)
        assert cfg.fold is not None
        test_f, dev_f = cfg.fold, (cfg.fold + 1) % cfg.n_folds
        parts: dict[str, list[int]] = {"train": [], "dev": [], "test": []}
        for k, f in enumerate(folds):
            parts["test" if f == test_f else "dev" if f == dev_f else "train"].append(k)
        split_convs = {s: [pooled_convs[k] for k in idx] for s, idx in parts.items()}
        split_exs = {s: [pooled[k] for k in idx] for s, idx in parts.items()}
        fold_sizes = Counter(folds)
        cv_info: dict[str, Any] = {
            "fold": cfg.fold,
            "dev_fold": dev_f,
            "fold_sizes": [fold_sizes[f] for f in range(cfg.n_folds)],
            "series": {series_of(c.conv_id): f for c, f in zip(pooled_convs, folds, strict=True)},
        }
    else:
        split_convs, split_exs = {}, {}
        for split in ("train", "dev", "test"):
            split_convs[split], split_exs[split] = load(split)
        cv_info = {}
    for split, exs in split_exs.items():
        if not exs:
            raise ValueError(f"the {split} split is empty")
    first = split_exs["train"][0]
    stats: dict[str, Any] = {s: _pair_stats(c, cfg.window) for s, c in split_convs.items()}
    if cv_info:
        stats["cv"] = cv_info
    return DataBundle(
        train=split_exs["train"],
        dev=split_exs["dev"],
        test=split_exs["test"],
        text_dim=None if first.text is None else int(first.text.shape[1]),
        audio_dim=None if first.audio is None else int(first.audio.shape[1]),
        video_dim=None if first.video is None else int(first.video.shape[1]),
        stats=stats,
    )


# ------------------------------------------------------------------------------ checkpoints


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state(gens: dict[str, torch.Generator]) -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG is what we save
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


def _set_rng_state(state: dict[str, Any], gens: dict[str, torch.Generator]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    for k, g in gens.items():
        g.set_state(state["generators"][k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


#: Settings that may change when a run is resumed (``epochs`` may grow).
RESUMABLE_CHANGES = (
    "epochs",
    "out",
    "resume",
    "quiet",
    "device",
    "keep_last",
    "data_dir",
    "cache_dir",
    "eval_batch_size",
    "threads",
)


def config_diff(saved: dict[str, Any], cfg: TrainConfig, may_differ: Sequence[str]) -> str:
    """``"key: saved → asked, ..."`` for the settings outside ``may_differ`` that differ ("" if none).

    Keys missing from an older saved config take what that run was trained with.
    """
    had = TrainConfig.from_dict(saved).to_dict()
    return ", ".join(
        f"{k}: {had.get(k)!r} → {v!r}"
        for k, v in sorted(cfg.to_dict().items())
        if k not in may_differ and had.get(k) != v
    )


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    details = config_diff(saved, cfg, RESUMABLE_CHANGES)
    if details:
        raise ValueError(
            f"cannot resume {path}: the run was started with other settings ({details})"
        )
    if int(saved.get("epochs", 0)) > cfg.epochs:
        raise ValueError(f"cannot resume {path} with fewer epochs than it was started with")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds third-party code using the global RNG
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------- training


def _train_step(
    model: MECPEModel,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    rpcl: RPCLoss | None,
    cfg: TrainConfig,
) -> dict[str, float]:
    out = model(batch)
    loss, parts = mecpe_loss(out, batch, pair_weight=cfg.pair_weight, pos_weight=cfg.pos_weight)
    if rpcl is not None:
        loss = loss + rpcl(out.pair_logits, batch.gold, batch.valid, rerun=lambda: model(batch))
        parts.update({f"rpcl_{k}": float(v) for k, v in rpcl.last.items()})
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    parts["loss"] = float(loss.detach())
    return parts


def _progress(total: int, desc: str, disable: bool) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is an examples dependency
        return None
    return tqdm(
        total=total, desc=desc, unit="batch", disable=disable, leave=False, dynamic_ncols=True
    )


def _log(cfg: TrainConfig, msg: str) -> None:
    if not cfg.quiet:
        print(msg, flush=True)


def _split_metrics(metrics: dict[str, float], **extra: float) -> dict[str, float]:
    return {**metrics, **{k: float(v) for k, v in extra.items()}}


def run(cfg: TrainConfig, data: DataBundle | None = None) -> dict[str, Any]:
    """Train and evaluate one run; returns (and writes) the ``run.json`` content."""
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if data is None:
        data = load_data(cfg)
    seed_everything(cfg.seed)
    mcfg = ModelConfig(
        text_dim=data.text_dim,
        hash_buckets=cfg.hash_buckets,
        audio_dim=data.audio_dim,
        video_dim=data.video_dim,
        dropout=cfg.dropout,
        pair_rank=cfg.pair_rank,
        pair_dropout=cfg.pair_dropout,
    )
    model = MECPEModel(mcfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Dev selection, checkpoints and evaluation use an exponential moving average of the weights
    # (updated after every step; made before RPCLoss so that the copy carries none of its hooks).
    decay = cfg.ema_step_decay(math.ceil(len(data.train) / cfg.batch_size))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay)) if decay > 0 else None
    eval_model = cast(MECPEModel, ema.module) if ema is not None else model
    order_gen = torch.Generator().manual_seed(cfg.seed)
    gens = {"order": order_gen}
    rpcl: RPCLoss | None = None
    if cfg.arm == "rpcl":
        corrupt_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        gens["corrupt"] = corrupt_gen
        rpcl = RPCLoss(
            model.context,
            scores_fn=lambda out: out.pair_logits,
            generator=corrupt_gen,
            **cfg.rpcl_args,
        ).to(device)

    history: list[dict[str, Any]] = []
    best_f1, best_epoch, start_epoch, train_seconds = -math.inf, -1, 0, 0.0
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if cfg.resume and last_path.is_file():
        ckpt = torch.load(last_path, map_location="cpu", weights_only=True)
        _check_resumable(ckpt["config"], cfg, last_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        if rpcl is not None:
            rpcl.load_state_dict(ckpt["rpcl"])
        _set_rng_state(ckpt["rng"], gens)
        history = list(ckpt["history"])
        best_f1, best_epoch = float(ckpt["best_f1"]), int(ckpt["best_epoch"])
        start_epoch, train_seconds = int(ckpt["epoch"]), float(ckpt["train_seconds"])
        _log(cfg, f"resumed from {last_path} after epoch {start_epoch}")
    elif cfg.resume:
        _log(cfg, f"no {last_path}; starting from scratch")

    n_params = sum(p.numel() for p in model.parameters())
    show_bar = not cfg.quiet and sys.stderr.isatty()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        sums: Counter[str] = Counter()
        n_batches = math.ceil(len(data.train) / cfg.batch_size)
        bar = _progress(n_batches, f"epoch {epoch + 1}/{cfg.epochs}", not show_bar)
        for idx in batch_indices(len(data.train), cfg.batch_size, generator=order_gen):
            batch = collate(
                [data.train[i] for i in idx],
                window=cfg.window,
                cause_not_after_emotion=cfg.cause_not_after,
            ).to(device)
            parts = _train_step(model, batch, optimizer, rpcl, cfg)
            if ema is not None:
                ema.update_parameters(model)
            sums.update(parts)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{parts['loss']:.3f}", refresh=False)
        if bar is not None:
            bar.close()
        epoch_seconds = time.perf_counter() - t0
        train_seconds += epoch_seconds
        dev_pred = predict(
            eval_model,
            data.dev,
            device=device,
            batch_size=cfg.eval_batch_size,
            window=cfg.window,
            cause_not_after_emotion=cfg.cause_not_after,
        )
        dev = pair_summary(dev_pred, cfg.threshold)
        entry: dict[str, Any] = {"epoch": epoch + 1}
        entry.update({k: v / n_batches for k, v in sorted(sums.items())})
        entry.update({f"dev_{k}": v for k, v in dev.items()})
        entry["seconds"] = epoch_seconds
        history.append(entry)
        improved = dev["pair_f1"] > best_f1
        if improved:
            best_f1, best_epoch = dev["pair_f1"], epoch + 1
            _atomic_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "model": eval_model.state_dict(),
                    "model_config": mcfg.to_dict(),
                    "config": cfg.to_dict(),
                    "epoch": epoch + 1,
                    "dev_pair_f1": best_f1,
                },
                best_path,
            )
        _atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "ema": ema.state_dict() if ema is not None else {},
                "rpcl": rpcl.state_dict() if rpcl is not None else {},
                "rng": _rng_state(gens),
                "model_config": mcfg.to_dict(),
                "config": cfg.to_dict(),
                "epoch": epoch + 1,
                "best_f1": best_f1,
                "best_epoch": best_epoch,
                "history": history,
                "train_seconds": train_seconds,
            },
            last_path,
        )
        _log(
            cfg,
            f"epoch {epoch + 1:>3}/{cfg.epochs} loss {entry['loss']:.4f} | dev P {dev['pair_p']:.4f} "
            f"R {dev['pair_r']:.4f} F1 {dev['pair_f1']:.4f} AUPRC {dev['pair_auprc']:.4f}"
            f"{' *' if improved else ''} | {epoch_seconds:.1f}s "
            f"({len(data.train) / max(epoch_seconds, 1e-9):.0f} conv/s)",
        )

    # ---- final evaluation of the dev-selected model
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    model.load_state_dict(best["model"])
    preds = {
        split: predict(
            model,
            exs,
            device=device,
            batch_size=cfg.eval_batch_size,
            window=cfg.window,
            cause_not_after_emotion=cfg.cause_not_after,
        )
        for split, exs in (("dev", data.dev), ("test", data.test))
    }
    dev_metrics = compute_metrics(preds["dev"], threshold=cfg.threshold)
    dev_threshold = dev_metrics["threshold_devthr"]
    test_metrics = compute_metrics(
        preds["test"], threshold=cfg.threshold, tuned_threshold=dev_threshold
    )
    common = {
        "dev_threshold": dev_threshold,
        "best_epoch": float(best_epoch),
        "train_seconds": train_seconds,
    }
    for split, pred in preds.items():
        save_scores(pred, out_dir / f"scores_{split}.npz")
    best["dev_threshold"] = dev_threshold
    _atomic_save(best, best_path)
    result: dict[str, Any] = {
        "config": cfg.to_dict(),
        "model_config": mcfg.to_dict(),
        "n_parameters": n_params,
        "device": str(device),
        "torch": torch.__version__,
        "data": data.stats,
        "history": history,
        "best_epoch": best_epoch,
        "train_seconds": train_seconds,
        "dev_threshold": dev_threshold,
        "dev": _split_metrics(dev_metrics, **common),
        "test": _split_metrics(test_metrics, **common),
        "complete": True,
    }
    tmp = out_dir / ".run.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, sort_keys=False))
    os.replace(tmp, out_dir / "run.json")
    if not cfg.keep_last:
        last_path.unlink(missing_ok=True)
    d, t = result["dev"], result["test"]
    fold = f" fold={cfg.fold}" if cfg.fold is not None else ""
    print(
        f"[{cfg.dataset}/{cfg.arm} seed={cfg.seed}{fold}] best epoch {best_epoch} | "
        f"dev F1 {d['pair_f1']:.4f} AUPRC {d['pair_auprc']:.4f} | test P {t['pair_p']:.4f} "
        f"R {t['pair_r']:.4f} F1 {t['pair_f1']:.4f} AUPRC {t['pair_auprc']:.4f} "
        f"F1@dev-thr({dev_threshold:.3f}) {t['pair_f1_devthr']:.4f} ECE {t['ece']:.4f} | "
        f"train {train_seconds:.1f}s",
        flush=True,
    )
    return result


# -------------------------------------------------------------------------------------- CLI


def _optional_int(value: str) -> int | None:
    return None if value.lower() in ("none", "") else int(value)


def _optional_float(value: str) -> float | None:
    return None if value.lower() in ("none", "") else float(value)


def add_training_args(ap: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``study``: data, features, optimisation, decoding."""
    d = TrainConfig()
    ap.add_argument("--dataset", choices=DATASETS, default=d.dataset)
    ap.add_argument("--data-dir", default=None, help="dataset folder (default: $MECPE_DATA_DIR)")
    ap.add_argument(
        "--protocol",
        choices=("split", "cv"),
        default=None,
        help="split: the dataset's train/dev/test; cv: folds by TV series over all dialogues "
        "(default: cv for mecad, split otherwise)",
    )
    ap.add_argument("--n-folds", type=int, default=d.n_folds, help="folds of --protocol cv")
    ap.add_argument("--modalities", default=d.modalities, help="T | TA | TV | TAV")
    ap.add_argument(
        "--audio-table",
        default=None,
        help="audio feature table (.npy with --mapping, .npz, .npy dict)",
    )
    ap.add_argument("--video-table", default=None, help="video feature table")
    ap.add_argument("--mapping", default=None, help="ECF video_id_mapping.npy (key → table row)")
    ap.add_argument(
        "--text-encoder",
        default=None,
        help="minilm | hash | sentence-transformers path or name (default: hash for mecad, else minilm)",
    )
    ap.add_argument(
        "--hash-buckets", type=int, default=d.hash_buckets, help="buckets of the hash encoder"
    )
    ap.add_argument("--cache-dir", default=d.cache_dir, help="text embedding cache")
    ap.add_argument(
        "--rpcl-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="RPCLoss keyword of the rpcl arm (repeatable), e.g. margin_weight=0.3 where=output",
    )
    ap.add_argument("--epochs", type=int, default=d.epochs)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--weight-decay", type=float, default=d.weight_decay)
    ap.add_argument("--grad-clip", type=float, default=d.grad_clip)
    ap.add_argument("--dropout", type=float, default=d.dropout)
    ap.add_argument(
        "--pair-weight", type=float, default=d.pair_weight, help="weight of the pair BCE term"
    )
    ap.add_argument(
        "--pos-weight", type=float, default=d.pos_weight, help="BCE weight of gold pairs"
    )
    ap.add_argument(
        "--pair-rank",
        type=_optional_int,
        default=d.pair_rank,
        help="rank of the pair scorer's product term (none: full)",
    )
    ap.add_argument(
        "--pair-dropout",
        type=_optional_float,
        default=d.pair_dropout,
        help="dropout in the pair MLP (none: --dropout)",
    )
    ap.add_argument(
        "--ema-epochs",
        type=float,
        default=d.ema_epochs,
        help="time constant (epochs) of the weight average used for dev selection and "
        "evaluation (0: off)",
    )
    ap.add_argument(
        "--ema-decay",
        type=_optional_float,
        default=d.ema_decay,
        help="per-step decay of that average instead of --ema-epochs (0: off)",
    )
    ap.add_argument(
        "--window", type=_optional_int, default=None, help="max |emotion - cause| of candidates"
    )
    ap.add_argument(
        "--cause-not-after", action="store_true", help="only candidates with cause <= emotion"
    )
    ap.add_argument(
        "--threshold", type=float, default=d.threshold, help="decision threshold (probability)"
    )
    ap.add_argument("--device", default=d.device, help="auto | cpu | cuda")
    ap.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); use 1 when the cores are shared. "
        "Bit-identical resume needs the same thread count.",
    )


def training_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`TrainConfig` keywords of the options added by :func:`add_training_args`."""
    return {
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "protocol": args.protocol or ("cv" if args.dataset == "mecad" else "split"),
        "n_folds": args.n_folds,
        "modalities": args.modalities,
        "audio_table": args.audio_table,
        "video_table": args.video_table,
        "mapping": args.mapping,
        "text_encoder": args.text_encoder,
        "hash_buckets": args.hash_buckets,
        "cache_dir": args.cache_dir,
        "rpcl_args": parse_rpcl_args(args.rpcl_arg),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "grad_clip": args.grad_clip,
        "dropout": args.dropout,
        "pair_weight": args.pair_weight,
        "pos_weight": args.pos_weight,
        "pair_rank": args.pair_rank,
        "pair_dropout": args.pair_dropout,
        "ema_epochs": args.ema_epochs,
        "ema_decay": args.ema_decay,
        "window": args.window,
        "cause_not_after": args.cause_not_after,
        "threshold": args.threshold,
        "device": args.device,
        "quiet": args.quiet,
        "threads": args.threads,
    }


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of ``python -m examples.mecpe.train``."""
    ap = argparse.ArgumentParser(
        prog="python -m examples.mecpe.train",
        description="Train one MECPE run (base or RPCL arm) and evaluate it on dev and test.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = TrainConfig()
    add_training_args(ap)
    ap.add_argument("--arm", choices=("base", "rpcl"), default=d.arm)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--fold", type=int, default=None, help="test fold of --protocol cv")
    ap.add_argument("--out", default=d.out, help="run directory")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    ap.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    ap.add_argument("--drop-last-checkpoint", action="store_true", help="delete last.pt when done")
    return ap


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Turn parsed CLI arguments into a :class:`TrainConfig`."""
    kw = training_kwargs(args)
    return TrainConfig(
        **kw,
        arm=args.arm,
        seed=args.seed,
        fold=args.fold if kw["protocol"] == "cv" else None,
        out=args.out,
        resume=args.resume,
        eval_batch_size=args.eval_batch_size,
        keep_last=not args.drop_last_checkpoint,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m examples.mecpe.train``."""
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
