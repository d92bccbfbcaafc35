"""The training engine: the state of a run, one training step, one epoch, the weight average.

The RPCL arm is the base plus exactly two lines (:func:`build_state`, :func:`train_step`)::

    rpcl = RPCLoss(model.context, model=forward, scores_fn=lambda out: out.pair_logits,
                   generator=g, **args)
    loss = loss + rpcl(out.pair_logits, batch.gold, batch.valid, rerun=lambda: forward(batch))

``forward`` is the model, or its ``DistributedDataParallel`` wrapper under ``torchrun``.
``model=forward`` makes the second pass replay the clean outputs of the context encoder and of
every module upstream of it (the utterance encoder, a transformer included), so only the heads
and the pair scorer run twice, and the upstream modules draw no dropout in the second pass.

With an input-level corrupted view (``--view insert|delete|insert+delete``,
:mod:`examples.mecpe.views`) the second pass is the model run on that view instead::

    aligned = view.aligned_logits(forward, batch)  # the view's pair logits, clean index space
    loss = loss + rpcl(out.pair_logits, batch.gold, batch.valid,
                       corrupted_scores=aligned.scores, corrupted_valid=aligned.shared)

Random numbers are drawn in a fixed order so that both arms share initial weights and data
order: every global RNG is seeded, the model is built (its initialisation), then the data
order comes from a dedicated generator seeded with ``seed`` (the same on every rank), the
RPCL corruption from one seeded with ``seed + 1 + 2 * rank`` and an input-level view from one
seeded with ``seed + 2 + 2 * rank`` (rank 0: ``seed + 1`` and ``seed + 2``; no two streams of
a run share a seed); dropout draws from the global torch RNG.

**Batches, micro-batches, ranks.** Every process draws the same batch plan (one batch per
optimizer step, :mod:`examples.mecpe.batching`). With ``W`` processes and ``--grad-accum A``
each batch is cut into ``W * A`` micro-batches (:func:`~examples.mecpe.batching.split_batch`);
rank ``r`` runs micro-batches ``r * A .. r * A + A - 1``, each loss scaled by ``1 / A``, and
``DistributedDataParallel`` averages the ranks' gradients: the step's gradient is the mean of
the micro-batch gradients, whatever the number of processes, so one process with
``--grad-accum W * A`` makes the same updates as ``W`` processes with ``--grad-accum A``.
Before each micro-batch the global RNG is re-seeded from (seed, step, micro-batch index)
(:func:`~examples.mecpe.runtime.micro_batch_seed`) so that dropout agrees too. (When a batch
has fewer conversations than micro-batches, the empty ones contribute no gradient; a rank whose
last micro-batch is empty runs a zero-weight pass in eval mode to join the gradient average.)
With one process and ``--grad-accum 1`` nothing is split or re-seeded (the trainer's behaviour
before micro-batches existed).
"""

from __future__ import annotations

import inspect
import math
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from torch_pairconf import RPCLoss

from .batching import (
    Batch,
    Example,
    batch_indices,
    bucketed_batch_indices,
    collate,
    count_batches,
    split_batch,
)
from .config import TRANSFORMER, TrainConfig
from .distributed import Ranks, all_gather, broadcast
from .featurize import DataBundle
from .metrics import epoch_metrics
from .model import MECPEModel, ModelConfig, ModelOutput, mecpe_loss
from .optim import build_optimizer, build_schedule
from .predict import Predictions, predict
from .runtime import autocast, micro_batch_seed, seed_everything
from .views import InputView, ViewBatch

__all__ = [
    "EpochResult",
    "TrainState",
    "batch_plan",
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
        model: the trained model (never a wrapper).
        optimizer: its AdamW optimizer.
        ema: the exponential moving average of the weights, or ``None`` (no average).
        rpcl: the RPCL loss of the rpcl arm, or ``None``.
        gens: the dedicated generators (``order``; ``corrupt`` for the rpcl arm; ``view`` with
            an input-level view).
        forward: what a step calls: ``model``, or its ``DistributedDataParallel`` wrapper.
        ranks: this process's rank and the number of processes.
        schedule: the per-step learning-rate schedule, or ``None`` (constant).
        scaler: the gradient scaler of ``--precision fp16``, or ``None``.
        steps: optimizer steps taken.
        history: one entry per finished epoch (losses, dev metrics, seconds).
        best_f1: the best dev Pair F1 so far (selection rule of both arms).
        best_epoch: its epoch (1-based; -1 before the first).
        epoch: finished epochs.
        train_seconds: wall time spent training so far.
        view: the input-level view builder of the rpcl arm's consistency term, or ``None``
            (``--view repr``, or no consistency term).
        steps_per_epoch: optimizer steps (batches) per epoch.
    """

    model: MECPEModel
    optimizer: torch.optim.Optimizer
    ema: AveragedModel | None
    rpcl: RPCLoss | None
    gens: dict[str, torch.Generator]
    forward: nn.Module
    ranks: Ranks = field(default_factory=Ranks)
    schedule: LambdaLR | None = None
    scaler: torch.amp.GradScaler | None = None
    steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_f1: float = -math.inf
    best_epoch: int = -1
    epoch: int = 0
    train_seconds: float = 0.0
    view: InputView | None = None
    steps_per_epoch: int = 0

    @property
    def eval_model(self) -> MECPEModel:
        """The weights dev selection and evaluation use: the average when there is one."""
        return cast(MECPEModel, self.ema.module) if self.ema is not None else self.model


def model_config(cfg: TrainConfig, data: DataBundle) -> ModelConfig:
    """The model sizes of a run: feature dimensions from the data, the rest from ``cfg``."""
    info = data.transformer if cfg.text_encoder == TRANSFORMER else None
    if cfg.text_encoder == TRANSFORMER and info is None:
        raise ValueError("--text-encoder transformer: the data were loaded without a transformer")
    return ModelConfig(
        text_dim=data.text_dim,
        hash_buckets=cfg.hash_buckets,
        audio_dim=data.audio_dim,
        video_dim=data.video_dim,
        dropout=cfg.dropout,
        pair_rank=cfg.pair_rank,
        pair_dropout=cfg.pair_dropout,
        transformer=cfg.encoder_model if info is not None else None,
        transformer_fingerprint=info.fingerprint if info is not None else None,
        train_layers=cfg.train_layers if info is not None else 0,
        pooling=cfg.pooling,
        grad_checkpoint=cfg.grad_checkpoint,
    )


def build_state(
    cfg: TrainConfig,
    mcfg: ModelConfig,
    n_train: int,
    device: torch.device,
    ranks: Ranks | None = None,
) -> TrainState:
    """Seed, then build model, optimizer, weight average, the data-parallel wrapper, generators
    and RPCL, in this order."""
    ranks = ranks or Ranks()
    autocast(device, cfg.precision)  # refuses fp16 on the CPU before anything is built
    seed_everything(cfg.seed)
    model = MECPEModel(mcfg).to(device)
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = count_batches(n_train, cfg.batch_size, cfg.length_buckets)
    schedule = build_schedule(optimizer, cfg, cfg.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    # Dev selection, checkpoints and evaluation use an exponential moving average of the weights
    # (updated after every step; made before RPCLoss so that the copy carries none of its hooks).
    decay = cfg.ema_step_decay(steps_per_epoch)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay)) if decay > 0 else None
    forward: nn.Module = model
    if ranks.parallel:
        forward = _data_parallel(model)
    gens = {"order": torch.Generator().manual_seed(cfg.seed)}
    rpcl: RPCLoss | None = None
    view: InputView | None = None
    if cfg.arm == "rpcl":
        corrupt_seed = cfg.seed + 1 + 2 * ranks.rank
        gens["corrupt"] = torch.Generator(device=device).manual_seed(corrupt_seed)
        input_view = cfg.view != "repr"
        rpcl = RPCLoss(
            None if input_view else model.context,  # an input view: no representation pass
            model=None if input_view else forward,  # upstream replay: the encoder runs once
            scores_fn=lambda out: out.pair_logits,
            generator=gens["corrupt"],
            **cfg.rpcl_args,
        ).to(device)
        if input_view:
            gens["view"] = torch.Generator().manual_seed(cfg.seed + 2 + 2 * ranks.rank)
            if rpcl.consistency_weight > 0:
                assert cfg.view_rate is not None  # TrainConfig: an input view has a rate
                view = InputView(cfg.view, cfg.view_rate, gens["view"])
    return TrainState(
        model, optimizer, ema, rpcl, gens, forward, ranks, schedule=schedule, scaler=scaler,
        view=view, steps_per_epoch=steps_per_epoch,
    )  # fmt: skip


def _data_parallel(model: nn.Module) -> DistributedDataParallel:
    """``model`` wrapped for data-parallel training.

    ``device_ids=None``: inputs pass through unmoved (the batch object that RPCL's upstream
    replay compares with the recorded call); buffers are synced once, at construction (the
    model's buffers never change: position ids), not before every forward.
    """
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        return DistributedDataParallel(model, forward_sync_buffers=False)
    return DistributedDataParallel(model, broadcast_buffers=False)  # torch < 2.13


def _micro_loss(
    state: TrainState,
    batch: Batch,
    cfg: TrainConfig,
    device: torch.device,
    view: ViewBatch | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward, base loss and RPCL of one micro-batch (``view``: its input-level view)."""
    forward = state.forward
    with autocast(device, cfg.precision):
        out = cast(ModelOutput, forward(batch))
    loss, parts = mecpe_loss(out, batch, pair_weight=cfg.pair_weight, pos_weight=cfg.pos_weight)
    if state.rpcl is not None:
        if view is not None:
            with autocast(device, cfg.precision):
                aligned = view.aligned_logits(forward, batch)
            loss = loss + state.rpcl(
                out.pair_logits,
                batch.gold,
                batch.valid,
                corrupted_scores=aligned.scores.float(),
                corrupted_valid=aligned.shared,
            )
        else:
            loss = loss + state.rpcl(
                out.pair_logits, batch.gold, batch.valid, rerun=lambda: forward(batch)
            )
        parts.update({f"rpcl_{k}": float(v) for k, v in state.rpcl.last.items()})
    parts["loss"] = float(loss.detach())
    return loss, parts


def _backward(state: TrainState, loss: torch.Tensor) -> None:
    (state.scaler.scale(loss) if state.scaler is not None else loss).backward()


def _join_average(state: TrainState, batch: Batch, cfg: TrainConfig, device: torch.device) -> None:
    """A zero-weight pass so that a rank without a micro-batch joins the gradient average: eval
    mode (no dropout draw, no RPCL recording), every parameter in the graph, gradient 0."""
    state.model.eval()
    try:
        with autocast(device, cfg.precision):
            out = cast(ModelOutput, state.forward(batch))
        loss = mecpe_loss(out, batch)[0] * 0.0
        _backward(state, loss)
    finally:
        state.model.train()


def train_step(
    state: TrainState,
    micro: Sequence[Batch | None],
    cfg: TrainConfig,
    device: torch.device,
    *,
    first_index: int = 0,
    split: bool = False,
    share: float = 1.0,
    join: Batch | None = None,
    views: Sequence[ViewBatch | None] | None = None,
) -> dict[str, float]:
    """One optimizer step over this process's micro-batches of a batch.

    Args:
        micro: this process's micro-batches (``None``: an empty one), in order.
        views: their input-level corrupted views (RPCL's second pass runs the model on them).
        first_index: the batch-level index of ``micro[0]`` (``rank * grad_accum``).
        split: re-seed the global RNG before each micro-batch (the batch is split).
        share: the weight of one micro-batch's loss terms in the returned log values
            (``1 / number of non-empty micro-batches of the whole batch``).
        join: a batch for the zero-weight pass of a rank whose last micro-batch is empty
            (data-parallel only).

    Returns:
        The detached loss terms (``loss``, ``pair``, ...) of this process's micro-batches,
        each weighted by ``share``: summed over the ranks, the batch's mean.
    """
    parallel = isinstance(state.forward, DistributedDataParallel)
    scale = 1.0 / len(micro)
    logged: dict[str, float] = {}
    for j, batch in enumerate(micro):
        last = j == len(micro) - 1
        if split:
            torch.manual_seed(micro_batch_seed(cfg.seed, state.steps, first_index + j))
        sync = nullcontext() if last or not parallel else state.forward.no_sync()  # type: ignore[operator]
        with sync:
            if batch is None:
                if last and parallel:
                    if join is None:
                        raise ValueError("train_step: a rank without micro-batch needs join=")
                    _join_average(state, join, cfg, device)
                continue
            view = views[j] if views is not None else None
            loss, parts = _micro_loss(state, batch, cfg, device, view)
            _backward(state, loss * scale if scale != 1.0 else loss)
        for k, v in parts.items():
            logged[k] = logged.get(k, 0.0) + (v * share if share != 1.0 else v)
    if state.scaler is not None:
        state.scaler.unscale_(state.optimizer)
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
    if state.scaler is not None:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    if state.schedule is not None:
        state.schedule.step()
    state.steps += 1
    return logged


def batch_plan(
    examples: Sequence[Example], cfg: TrainConfig, generator: torch.Generator
) -> list[list[int]]:
    """One epoch's batches (example indices), drawn from ``generator``."""
    if cfg.length_buckets:
        lengths = [ex.length for ex in examples]
        return bucketed_batch_indices(
            lengths, cfg.batch_size, pool=cfg.length_buckets, generator=generator
        )
    return list(batch_indices(len(examples), cfg.batch_size, generator=generator))


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
    """Train one epoch in the order of ``state.gens["order"]``; the mean of each loss term
    over the epoch's batches (each batch's: the mean over its micro-batches, all ranks)."""
    state.model.train()
    ranks = state.ranks
    parts_per_batch = ranks.world * cfg.grad_accum
    first = ranks.rank * cfg.grad_accum
    sums: Counter[str] = Counter()
    plan = batch_plan(examples, cfg, state.gens["order"])
    bar = _progress(len(plan), f"epoch {state.epoch + 1}/{cfg.epochs}", show_bar and ranks.main)

    def load(idx: Sequence[int]) -> Batch:
        return collate(
            [examples[i] for i in idx],
            window=cfg.window,
            cause_not_after_emotion=cfg.cause_not_after_emotion,
            chunk_tokens=cfg.chunk_tokens,
        ).to(device)

    def view_of(idx: Sequence[int]) -> ViewBatch | None:
        if state.view is None or not idx:
            return None
        return state.view.batch(  # the training split is the distractor pool
            examples,
            idx,
            window=cfg.window,
            cause_not_after_emotion=cfg.cause_not_after_emotion,
            device=device,
        )

    for idx in plan:
        parts = split_batch(idx, parts_per_batch)
        mine = parts[first : first + cfg.grad_accum]
        filled = sum(1 for p in parts if p)
        join = load(idx[:1]) if ranks.parallel and not mine[-1] else None
        batches = [load(p) if p else None for p in mine]
        logged = train_step(
            state,
            batches,
            cfg,
            device,
            first_index=first,
            split=parts_per_batch > 1,
            share=1.0 / filled,
            join=join,
            views=[view_of(p) for p in mine] if state.view is not None else None,
        )
        if state.ema is not None:
            state.ema.update_parameters(state.model)
        sums.update(logged)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{logged.get('loss', 0.0):.3f}", refresh=False)
    if bar is not None:
        bar.close()
    if ranks.parallel:  # the mean over every rank's micro-batches
        total: Counter[str] = Counter()
        for rank_sums in all_gather(dict(sums), ranks):
            total.update(rank_sums)
        sums = total
    return {k: v / len(plan) for k, v in sorted(sums.items())}


def evaluate_split(
    model: MECPEModel, examples: Sequence[Example], cfg: TrainConfig, device: torch.device
) -> Predictions:
    """Predictions of ``model`` on ``examples`` with the run's candidate rules and precision."""
    return predict(
        model,
        examples,
        device=device,
        batch_size=cfg.eval_batch_size,
        window=cfg.window,
        cause_not_after_emotion=cfg.cause_not_after_emotion,
        precision=cfg.precision,
        chunk_tokens=cfg.chunk_tokens,
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
    """Train one epoch, validate on dev, update the history and the best epoch of ``state``.

    Data-parallel: rank 0 validates and every rank takes its metrics (one decision, the same
    on every rank; the others wait in the broadcast).
    """
    t0 = time.perf_counter()
    losses = train_epoch(state, data.train, cfg, device, show_bar=show_bar)
    seconds = time.perf_counter() - t0
    state.train_seconds += seconds
    dev: dict[str, float] | None = None
    if state.ranks.main:
        dev = epoch_metrics(evaluate_split(state.eval_model, data.dev, cfg, device), cfg.threshold)
    dev = broadcast(dev, state.ranks)
    assert dev is not None
    state.epoch += 1
    entry: dict[str, Any] = {"epoch": state.epoch, **losses}
    entry.update({f"dev_{k}": v for k, v in dev.items()})
    entry["seconds"] = seconds
    state.history.append(entry)
    improved = dev["pair_f1"] > state.best_f1
    if improved:
        state.best_f1, state.best_epoch = dev["pair_f1"], state.epoch
    return EpochResult(entry, improved, seconds)
