"""The training engine: the state of a run, one training step, one epoch, the weight average.

The RPCL arm is the base plus exactly two lines (:func:`build_state`, :func:`train_step`)::

    rpcl = RPCLoss(model.context, model=model, scores_fn=lambda out: out.pair_logits,
                   generator=g, **args)
    loss = loss + rpcl(out.pair_logits, batch.gold, batch.valid, rerun=lambda: model(batch))

``model=model`` makes the second pass replay the clean outputs of the context encoder and of
every module upstream of it (the utterance encoder), so only the heads and the pair scorer run
twice, and the upstream modules draw no dropout in the second pass.

With an input-level corrupted view (``--view insert|delete|insert+delete``,
:mod:`examples.mecpe.views`) the second pass is the model run on that view instead::

    aligned = view.aligned_logits(model, batch)    # the view's pair logits, clean index space
    loss = loss + rpcl(out.pair_logits, batch.gold, batch.valid,
                       corrupted_scores=aligned.scores, corrupted_valid=aligned.shared)

Random numbers are drawn in a fixed order so that both arms share initial weights and data
order: every global RNG is seeded, the model is built (its initialisation), then the data
order comes from a dedicated generator seeded with ``seed``, the RPCL corruption from one
seeded with ``seed + 1`` and an input-level view from one seeded with ``seed + 2``; dropout
draws from the global torch RNG.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from torch_pairconf import RPCLoss

from .batching import Batch, Example, batch_indices, collate
from .config import TrainConfig
from .featurize import DataBundle
from .metrics import epoch_metrics
from .model import MECPEModel, ModelConfig, mecpe_loss
from .predict import Predictions, predict
from .runtime import seed_everything
from .views import InputView, ViewBatch

__all__ = [
    "EpochResult",
    "TrainState",
    "build_state",
    "evaluate_split",
    "model_config",
    "run_epoch",
    "train_epoch",
    "train_step",
]


@dataclass
class TrainState:
    """Everything that changes while a run trains (what ``last.pt`` saves).

    Attributes:
        model: the trained model.
        optimizer: its AdamW optimizer.
        ema: the exponential moving average of the weights, or ``None`` (no average).
        rpcl: the RPCL loss of the rpcl arm, or ``None``.
        gens: the dedicated generators (``order``; ``corrupt`` for the rpcl arm; ``view`` with
            an input-level view).
        history: one entry per finished epoch (losses, dev metrics, seconds).
        best_f1: the best dev Pair F1 so far (selection rule of both arms).
        best_epoch: its epoch (1-based; -1 before the first).
        epoch: finished epochs.
        train_seconds: wall time spent training so far.
        view: the input-level view builder of the rpcl arm's consistency term, or ``None``
            (``--view repr``, or no consistency term).
    """

    model: MECPEModel
    optimizer: torch.optim.Optimizer
    ema: AveragedModel | None
    rpcl: RPCLoss | None
    gens: dict[str, torch.Generator]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_f1: float = -math.inf
    best_epoch: int = -1
    epoch: int = 0
    train_seconds: float = 0.0
    view: InputView | None = None

    @property
    def eval_model(self) -> MECPEModel:
        """The weights dev selection and evaluation use: the average when there is one."""
        return cast(MECPEModel, self.ema.module) if self.ema is not None else self.model


def model_config(cfg: TrainConfig, data: DataBundle) -> ModelConfig:
    """The model sizes of a run: feature dimensions from the data, the rest from ``cfg``."""
    return ModelConfig(
        text_dim=data.text_dim,
        hash_buckets=cfg.hash_buckets,
        audio_dim=data.audio_dim,
        video_dim=data.video_dim,
        dropout=cfg.dropout,
        pair_rank=cfg.pair_rank,
        pair_dropout=cfg.pair_dropout,
    )


def build_state(
    cfg: TrainConfig, mcfg: ModelConfig, n_train: int, device: torch.device
) -> TrainState:
    """Seed, then build model, optimizer, weight average, generators and RPCL, in this order."""
    seed_everything(cfg.seed)
    model = MECPEModel(mcfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Dev selection, checkpoints and evaluation use an exponential moving average of the weights
    # (updated after every step; made before RPCLoss so that the copy carries none of its hooks).
    decay = cfg.ema_step_decay(math.ceil(n_train / cfg.batch_size))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay)) if decay > 0 else None
    gens = {"order": torch.Generator().manual_seed(cfg.seed)}
    rpcl: RPCLoss | None = None
    view: InputView | None = None
    if cfg.arm == "rpcl":
        gens["corrupt"] = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        input_view = cfg.view != "repr"
        rpcl = RPCLoss(
            None if input_view else model.context,  # an input view: no representation pass
            model=None if input_view else model,  # upstream replay: the encoder runs once
            scores_fn=lambda out: out.pair_logits,
            generator=gens["corrupt"],
            **cfg.rpcl_args,
        ).to(device)
        if input_view:
            gens["view"] = torch.Generator().manual_seed(cfg.seed + 2)
            if rpcl.consistency_weight > 0:
                assert cfg.view_rate is not None  # TrainConfig: an input view has a rate
                view = InputView(cfg.view, cfg.view_rate, gens["view"])
    return TrainState(model, optimizer, ema, rpcl, gens, view=view)


def train_step(
    model: MECPEModel,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    rpcl: RPCLoss | None,
    cfg: TrainConfig,
    *,
    view: ViewBatch | None = None,
) -> dict[str, float]:
    """One optimisation step; returns the detached loss terms (``loss``, ``pair``, ...).

    ``view``: the batch's input-level corrupted view (RPCL's second pass runs the model on it).
    """
    out = model(batch)
    loss, parts = mecpe_loss(out, batch, pair_weight=cfg.pair_weight, pos_weight=cfg.pos_weight)
    if rpcl is not None:
        if view is not None:
            aligned = view.aligned_logits(model, batch)
            loss = loss + rpcl(
                out.pair_logits,
                batch.gold,
                batch.valid,
                corrupted_scores=aligned.scores,
                corrupted_valid=aligned.shared,
            )
        else:
            loss = loss + rpcl(out.pair_logits, batch.gold, batch.valid, rerun=lambda: model(batch))
        parts.update({f"rpcl_{k}": float(v) for k, v in rpcl.last.items()})
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    parts["loss"] = float(loss.detach())
    return parts


def _progress(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar, or ``None`` when disabled or tqdm is missing."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is an examples dependency
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def train_epoch(
    state: TrainState,
    examples: Sequence[Example],
    cfg: TrainConfig,
    device: torch.device,
    *,
    show_bar: bool = False,
) -> dict[str, float]:
    """Train one epoch in the order of ``state.gens["order"]``; the mean of each loss term."""
    state.model.train()
    sums: Counter[str] = Counter()
    n_batches = math.ceil(len(examples) / cfg.batch_size)
    bar = _progress(n_batches, f"epoch {state.epoch + 1}/{cfg.epochs}", show_bar)
    for idx in batch_indices(len(examples), cfg.batch_size, generator=state.gens["order"]):
        batch = collate(
            [examples[i] for i in idx],
            window=cfg.window,
            cause_not_after_emotion=cfg.cause_not_after_emotion,
        ).to(device)
        view = None
        if state.view is not None:  # the training split is the distractor pool
            view = state.view.batch(
                examples,
                idx,
                window=cfg.window,
                cause_not_after_emotion=cfg.cause_not_after_emotion,
                device=device,
            )
        parts = train_step(state.model, batch, state.optimizer, state.rpcl, cfg, view=view)
        if state.ema is not None:
            state.ema.update_parameters(state.model)
        sums.update(parts)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.3f}", refresh=False)
    if bar is not None:
        bar.close()
    return {k: v / n_batches for k, v in sorted(sums.items())}


def evaluate_split(
    model: MECPEModel, examples: Sequence[Example], cfg: TrainConfig, device: torch.device
) -> Predictions:
    """Predictions of ``model`` on ``examples`` with the run's candidate rules."""
    return predict(
        model,
        examples,
        device=device,
        batch_size=cfg.eval_batch_size,
        window=cfg.window,
        cause_not_after_emotion=cfg.cause_not_after_emotion,
    )


@dataclass(frozen=True)
class EpochResult:
    """What one epoch produced: its history entry and whether dev Pair F1 improved."""

    entry: dict[str, Any]
    improved: bool
    seconds: float


def run_epoch(
    state: TrainState, data: DataBundle, cfg: TrainConfig, device: torch.device, *, show_bar: bool
) -> EpochResult:
    """Train one epoch, validate on dev, update the history and the best epoch of ``state``."""
    t0 = time.perf_counter()
    losses = train_epoch(state, data.train, cfg, device, show_bar=show_bar)
    seconds = time.perf_counter() - t0
    state.train_seconds += seconds
    dev = epoch_metrics(evaluate_split(state.eval_model, data.dev, cfg, device), cfg.threshold)
    state.epoch += 1
    entry: dict[str, Any] = {"epoch": state.epoch, **losses}
    entry.update({f"dev_{k}": v for k, v in dev.items()})
    entry["seconds"] = seconds
    state.history.append(entry)
    improved = dev["pair_f1"] > state.best_f1
    if improved:
        state.best_f1, state.best_epoch = dev["pair_f1"], state.epoch
    return EpochResult(entry, improved, seconds)
