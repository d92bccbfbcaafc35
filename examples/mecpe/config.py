"""The run config: every setting of one training run, declared once.

Each field of :class:`TrainConfig` is one setting — default, help, allowed values and value
check in one :func:`~examples.mecpe.options.option` — and the command line of ``train`` (and the
training options of ``study``) is generated from these fields by :func:`add_train_options`.
Validation happens in one place (``__post_init__``), and :meth:`TrainConfig.to_dict` /
:meth:`TrainConfig.from_dict` are the form stored in checkpoints and ``run.json``.

Adding a setting is one field here (then use it where it acts). Files written before a field
existed lack its key and are refused: bump :data:`examples.mecpe.checkpoint.FORMAT` with it, so
that they are refused by their format version. The exception is a new switch whose value before
it existed is unambiguous (``view``: every older run used RPCLoss's representation view; the
transformer encoder's settings: no older run used that encoder; ``lr_schedule``: constant;
``grad_accum``: 1; ``precision``: fp32; ...): it declares that value as ``absent=`` and older
files read as it, so finished studies stay readable.

Example::

    >>> cfg = TrainConfig(dataset="mecad", fold=1)
    >>> cfg.protocol, cfg.text_encoder          # the dataset's defaults
    ('cv', 'hash')
    >>> TrainConfig(text_encoder="transformer").lr_schedule   # the encoder's default schedule
    'linear'
    >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import argparse
from dataclasses import Field, asdict, dataclass, fields
from typing import Any

from torch_pairconf import RPCLoss

from . import datasets
from .batching import DEFAULT_HASH_BUCKETS
from .features import modality_flags
from .model import ModelConfig
from .options import (
    AT_LEAST_1,
    NON_NEGATIVE,
    POSITIVE,
    UNIT_INTERVAL,
    UNIT_OPEN,
    Check,
    add_options,
    check_options,
    info,
    option,
    values_from,
)
from .segments import INPUTS
from .transformer import DEFAULT_MODEL, POOLINGS

__all__ = [
    "ARMS",
    "DEFAULT_VIEW_RATE",
    "PRECISIONS",
    "SCHEDULES",
    "TRANSFORMER",
    "VIEWS",
    "TrainConfig",
    "add_train_options",
    "config_from_args",
    "data_key",
    "resumable_fields",
    "run_fields",
]

ARMS: tuple[str, ...] = ("base", "rpcl")
#: ``--precision``: float32, or autocast to bfloat16 / float16 (CUDA, with a gradient scaler).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: ``--lr-schedule``: constant learning rates, or linear warm-up then linear decay (per step).
SCHEDULES: tuple[str, ...] = ("constant", "linear")
#: the value of ``--text-encoder`` that selects the trainable transformer
TRANSFORMER = "transformer"

#: RPCL's corrupted views: ``repr`` (RPCLoss corrupts the context encoder's output in its own
#: second pass) or an input-level view built per batch (:mod:`examples.mecpe.views`).
VIEWS: tuple[str, ...] = ("repr", "insert", "delete", "insert+delete")

#: RPCLoss keywords that configure its own representation view (meaningless with an input view).
_REPR_VIEW_RPCL_ARGS = ("where", "field", "reuse_output", "p", "mode")

#: Rate of an input-level view when ``--view-rate`` is not given.
DEFAULT_VIEW_RATE = 0.3

#: RPCLoss keywords the trainer sets itself (or that take modules, which a CLI cannot pass).
_RESERVED_RPCL_ARGS = ("model", "scores_fn", "generator", "corruption", "consistency")

_AT_LEAST_2 = Check(lambda v: v >= 2, ">= 2")
_RATE = Check(lambda v: 0 <= v <= 1, "in [0, 1]")


@dataclass
class TrainConfig:
    """Everything that defines one run (stored in checkpoints and ``run.json``)."""

    # ---- data (data=True: what load_data reads; runs that agree on these share their examples)
    dataset: str = option(
        "ecf", "dataset (see examples/mecpe/datasets.py)", choices=datasets.names, data=True
    )
    data_dir: str | None = option(
        None, "dataset folder (default: $MECPE_DATA_DIR)", on_resume="any", data=True
    )
    protocol: str | None = option(
        None,
        "split: the dataset's train/dev/test; cv: folds by TV series over all dialogues "
        "(default: the dataset's: cv for mecad, split otherwise)",
        choices=("split", "cv"),
        data=True,
    )
    fold: int | None = option(
        None, "test fold of --protocol cv (dev: the next one)", scope="run", data=True
    )
    n_folds: int = option(5, "folds of --protocol cv", check=_AT_LEAST_2, data=True)
    modalities: str = option("T", "T | TA | TV | TAV", data=True)
    audio_table: str | None = option(
        None, "audio feature table (.npy with --mapping, .npz, .npy dict)", data=True
    )
    video_table: str | None = option(None, "video feature table", data=True)
    mapping: str | None = option(None, "ECF video_id_mapping.npy (key → table row)", data=True)
    text_encoder: str | None = option(
        None,
        "minilm (frozen sentence embeddings) | hash (trainable n-gram bags) | transformer "
        "(a transformer trained end to end, see --encoder-model) | a sentence-transformers "
        "path or name, frozen (default: the dataset's: hash for mecad, minilm otherwise)",
        data=True,
    )
    hash_buckets: int = option(
        DEFAULT_HASH_BUCKETS, "buckets of the hash text encoder", check=AT_LEAST_1, data=True
    )
    cache_dir: str = option(
        ".cache/emb",
        "text embedding cache (and the frozen layers' states of --text-encoder transformer)",
        on_resume="any",
        data=True,
    )
    # ---- the trainable transformer (--text-encoder transformer)
    encoder_model: str = option(
        DEFAULT_MODEL,
        "Hugging Face model folder of a BERT-style encoder (minilm: the packaged "
        "all-MiniLM-L6-v2); read offline",
        data=True,
        absent=DEFAULT_MODEL,
    )
    train_layers: int = option(
        2,
        "top transformer layers trained; the embeddings and the layers below are frozen and "
        "their output is cached under --cache-dir (all layers, e.g. 6 for MiniLM: the "
        "embeddings are trained too and nothing is cached)",
        check=NON_NEGATIVE,
        data=True,
        absent=2,
    )
    encoder_input: str = option(
        "utterance",
        "utterance: one sequence per utterance; conversation: consecutive utterances packed "
        "into [CLS] u1 [SEP] u2 [SEP] ... sequences of at most --max-tokens, each utterance "
        "pooled over its own tokens",
        choices=INPUTS,
        data=True,
        absent="utterance",
    )
    max_tokens: int | None = option(
        None,
        "tokens per sequence, special tokens included; longer utterances are truncated and "
        "counted in run.json (default: 128 per utterance; the model's limit, 512 for MiniLM, "
        "per conversation sequence)",
        check=Check(lambda v: v >= 3, ">= 3"),
        data=True,
        absent=None,
    )
    pooling: str = option(
        "mean",
        "utterance vector: mean of its tokens' top-layer states (attention-masked), or cls: "
        "the [CLS] state (--encoder-input utterance)",
        choices=POOLINGS,
        absent="mean",
    )
    encoder_lr: float = option(
        5e-5, "AdamW learning rate of the transformer", check=POSITIVE, absent=5e-5
    )
    encoder_weight_decay: float = option(
        0.01,
        "AdamW weight decay of the transformer (not of biases and norms)",
        check=NON_NEGATIVE,
        absent=0.01,
    )
    chunk_tokens: int = option(
        4096,
        "padded tokens per transformer call: a batch's sequences are sorted by length and "
        "encoded in chunks of at most this many (count x longest) tokens",
        check=AT_LEAST_1,
        absent=4096,
    )
    grad_checkpoint: bool = option(
        False,
        "recompute the trained transformer layers in the backward pass (less memory)",
        absent=False,
    )
    # ---- the arm
    arm: str = option("base", "base, or rpcl: base + RPCLoss", choices=ARMS, scope="arm")
    rpcl_args: dict[str, Any] = option(
        None,
        "RPCLoss keyword of the rpcl arm (repeatable), e.g. margin_weight=0.3 where=output",
        factory=dict,
        flag="--rpcl-arg",
    )
    view: str = option(
        "repr",
        "corrupted view of the rpcl arm's consistency term: repr (RPCLoss zeroes non-gold "
        "context representations in its own second pass), or a second input built per batch "
        "from the training conversations and run through the model: insert (utterances of "
        "other conversations inserted), delete (non-gold utterances removed), insert+delete",
        choices=VIEWS,
        absent="repr",
    )
    view_rate: float | None = option(
        None,
        f"per-utterance probability of an input-level --view (default {DEFAULT_VIEW_RATE})",
        check=_RATE,
        absent=None,
    )
    seed: int = option(42, "seed of the weights, data order, dropout and corruption", scope="run")
    # ---- optimisation
    epochs: int = option(20, "training epochs", check=AT_LEAST_1, on_resume="interrupted")
    batch_size: int = option(16, "conversations per training batch", check=AT_LEAST_1)
    lr: float = option(
        1e-3, "AdamW learning rate (of everything but the transformer)", check=POSITIVE
    )
    weight_decay: float = option(1e-5, "AdamW weight decay", check=NON_NEGATIVE)
    lr_schedule: str | None = option(
        None,
        "constant, or linear: warm-up over --warmup-ratio of the optimizer steps, then linear "
        "decay, every learning rate, per step (default: linear with --text-encoder "
        "transformer, constant otherwise)",
        choices=SCHEDULES,
        absent="constant",
    )
    warmup_ratio: float = option(
        0.1, "share of the optimizer steps spent warming up (--lr-schedule linear)",
        check=UNIT_INTERVAL,
        absent=0.1,
    )  # fmt: skip
    grad_accum: int = option(
        1,
        "micro-batches per batch and process: each batch is split into processes x "
        "grad-accum parts whose losses / (processes x grad-accum) are accumulated into one "
        "step, so one process with --grad-accum N makes the updates of N data-parallel ones",
        check=AT_LEAST_1,
        absent=1,
    )
    length_buckets: int = option(
        0,
        "batches by length: the shuffled conversations are cut into pools of this many "
        "batches, each pool sorted by conversation length and cut into batches, and the "
        "batches shuffled (0: plain shuffled batches)",
        check=NON_NEGATIVE,
        absent=0,
    )
    precision: str = option(
        "fp32",
        "fp32, or autocast to bf16 (CPU or CUDA) / fp16 (CUDA, with a gradient scaler)",
        choices=PRECISIONS,
        absent="fp32",
    )
    grad_clip: float = option(5.0, "gradient norm clip (0: off)", check=NON_NEGATIVE)
    # chosen on ECF dev (runs/ablations: base vs base-drop0.1)
    dropout: float = option(0.1, "dropout rate", check=UNIT_INTERVAL)
    pair_weight: float = option(1.0, "weight of the pair BCE term", check=POSITIVE)
    # chosen on ECF dev (ablations_calibrated.txt): calibrated at 0.5
    pos_weight: float = option(2.0, "BCE weight of gold pairs", check=POSITIVE)
    pair_rank: int | None = option(
        ModelConfig.pair_rank,
        "rank of the pair scorer's product term (none: full)",
        check=AT_LEAST_1,
    )
    pair_dropout: float | None = option(
        ModelConfig.pair_dropout, "dropout in the pair MLP (none: --dropout)", check=UNIT_INTERVAL
    )
    # Dev selection, best.pt and evaluation use an exponential moving average of the weights
    # with a time constant of ema_epochs epochs (per-step decay 1 - 1 / (ema_epochs * steps per
    # epoch); 0: off), or the per-step decay ema_decay when it is given.
    ema_epochs: float = option(
        1.6,
        "time constant (epochs) of the weight average used for dev selection and evaluation "
        "(0: off)",
        check=NON_NEGATIVE,
    )
    ema_decay: float | None = option(
        None,
        "per-step decay of that average instead of --ema-epochs (0: off)",
        check=Check(UNIT_INTERVAL.predicate, "in [0, 1) (0: off)"),
    )
    # ---- candidates and decoding
    window: int | None = option(
        None, "max |emotion - cause| of candidates", check=NON_NEGATIVE, data=True
    )
    cause_not_after_emotion: bool = option(False, "only candidates with cause <= emotion")
    threshold: float = option(0.5, "decision threshold (probability)", check=UNIT_OPEN)
    eval_batch_size: int = option(
        64, "conversations per evaluation batch", check=AT_LEAST_1, on_resume="any"
    )
    # ---- what is evaluated and reported
    dev_only: bool = option(
        False,
        "never evaluate the test split: run.json, logs and summaries hold dev metrics only "
        "(for choosing settings)",
        on_resume="interrupted",
        data=True,
    )
    show_test: bool = option(
        False,
        "print test metrics in the final log line (run.json always has them)",
        on_resume="any",
    )
    # ---- output and runtime
    out: str = option("runs/run", "run directory", scope="run", on_resume="any")
    name: str | None = option(
        None, "label of the run in study tables (default: the arm)", scope="run", on_resume="any"
    )
    resume: bool = option(False, "continue from OUT/last.pt", scope="run", on_resume="any")
    keep_last_checkpoint: bool = option(
        True,
        "keep last.pt once the run is complete (optimizer + RNG state: only needed to extend a "
        "finished run; 640 MB per MECAD run with the hash encoder). best.pt is always kept",
        on_resume="any",
    )
    device: str = option("auto", "auto | cpu | cuda[:N]", on_resume="any")
    threads: int | None = option(
        None,
        "torch CPU threads (default: torch's choice); use 1 when the cores are shared. "
        "Bit-identical resume needs the same thread count.",
        check=AT_LEAST_1,
        on_resume="any",
    )
    quiet: bool = option(False, "no progress bar or per-epoch lines", on_resume="any")

    def __post_init__(self) -> None:
        check_options(self)
        spec = datasets.get(self.dataset)
        if self.protocol is None:
            self.protocol = spec.protocol
        if self.text_encoder is None:
            self.text_encoder = spec.text_encoder
        if self.lr_schedule is None:
            self.lr_schedule = "linear" if self.text_encoder == TRANSFORMER else "constant"
        if self.pooling == "cls" and self.encoder_input != "utterance":
            raise ValueError(
                "--pooling cls needs --encoder-input utterance (one [CLS] per utterance)"
            )
        if self.view != "repr" and self.text_encoder == TRANSFORMER:
            raise ValueError(
                f"--view {self.view} splices per-utterance features; --text-encoder transformer "
                "encodes token sequences: use --view repr (RPCLoss's representation view)"
            )
        if self.protocol == "cv" and (self.fold is None or not 0 <= self.fold < self.n_folds):
            raise ValueError(f"protocol cv needs --fold in 0..{self.n_folds - 1}")
        if self.protocol == "split" and self.fold is not None:
            raise ValueError("--fold is a setting of --protocol cv")
        modality_flags(self.modalities)
        if self.show_test and self.dev_only:
            raise ValueError("--show-test asks for test metrics, --dev-only forbids them")
        if self.rpcl_args and self.arm != "rpcl":
            raise ValueError(f"--rpcl-arg is a setting of the rpcl arm, not of {self.arm!r}")
        _check_rpcl_args(self.rpcl_args)
        self._check_view()

    def _check_view(self) -> None:
        """An input-level view is an rpcl-arm setting with a rate; repr takes no rate."""
        if self.view == "repr":
            if self.view_rate is not None:
                raise ValueError("--view-rate is a setting of an input-level --view, not of repr")
            return
        if self.arm != "rpcl":
            raise ValueError(
                f"--view {self.view} is a setting of the rpcl arm, not of {self.arm!r}"
            )
        for key in _REPR_VIEW_RPCL_ARGS:
            if key in self.rpcl_args:
                raise ValueError(
                    f"--rpcl-arg {key}: a setting of RPCLoss's own representation view "
                    f"(--view repr); --view {self.view} builds its input-level view itself "
                    "(its rate: --view-rate)"
                )
        if self.view_rate is None:
            self.view_rate = DEFAULT_VIEW_RATE

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
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Rebuild from :meth:`to_dict` output; missing or unknown keys raise naming ``source``
        (a missing key of a setting that declares ``absent=`` reads as that value)."""
        names = {f.name for f in fields(cls)}
        missing, unknown = sorted(names - set(d)), sorted(set(d) - names)
        filled = {
            f.name: info(f).absent for f in fields(cls) if f.name in missing and info(f).has_absent
        }
        missing = [name for name in missing if name not in filled]
        if missing or unknown:
            raise ValueError(
                f"{source}: the settings do not match this trainer's (missing: "
                f"{', '.join(missing) or '-'}; unknown: {', '.join(unknown) or '-'})"
            )
        return cls(**filled, **d)

    def diff(self, saved: dict[str, Any], may_differ: set[str]) -> str:
        """``"key: saved → self, ..."`` for the settings outside ``may_differ`` ("" if none)."""
        had = TrainConfig.from_dict(saved).to_dict()
        return ", ".join(
            f"{k}: {had[k]!r} → {v!r}"
            for k, v in self.to_dict().items()
            if k not in may_differ and had[k] != v
        )


def _check_rpcl_args(args: dict[str, Any]) -> None:
    """Unknown or reserved RPCLoss keywords raise (before any data is loaded)."""
    params = RPCLoss.keywords()
    for key in args:
        if key in _RESERVED_RPCL_ARGS or key not in params:
            known = ", ".join(p for p in params if p not in _RESERVED_RPCL_ARGS)
            raise ValueError(f"--rpcl-arg {key}: not an RPCLoss setting (known: {known})")


def data_key(cfg: TrainConfig) -> tuple[Any, ...]:
    """The values of the settings that change the loaded examples (``data=True``)."""
    return tuple(getattr(cfg, f.name) for f in fields(TrainConfig) if info(f).data)


def run_fields(*scopes: str) -> set[str]:
    """Names of the :class:`TrainConfig` fields of the given scopes (``shared``/``arm``/``run``)."""
    return {f.name for f in fields(TrainConfig) if info(f).scope in scopes}


def resumable_fields(*, finished: bool) -> set[str]:
    """Settings that may differ when resuming an interrupted run (or reusing a finished one)."""
    kinds = {"any"} if finished else {"any", "interrupted"}
    return {f.name for f in fields(TrainConfig) if info(f).on_resume in kinds}


def add_train_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    scopes: tuple[str, ...] = ("shared", "arm", "run"),
    defaults: dict[str, Any] | None = None,
) -> None:
    """Add the options of the :class:`TrainConfig` fields of ``scopes`` to ``parser``."""

    def include(f: Field[Any]) -> bool:
        return info(f).scope in scopes

    add_options(parser, TrainConfig, include=include, defaults=defaults)


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from options added by :func:`add_train_options` (+ ``overrides``)."""
    return TrainConfig(**{**values_from(args, TrainConfig), **overrides})
