"""The metric registry: every reported metric is one :class:`Metric` entry.

An entry says how the metric is computed (from a split's :class:`Evaluation`, or from the
run's :class:`RunFacts`), whether higher is better, whether it is a row of the summary tables,
of the paired-differences table and of the per-epoch dev history, which splits show it as a
column of the per-run / per-setting tables, and how its value is formatted. Every consumer —
``run.json`` (:func:`compute_metrics`, :func:`run_metrics`), the per-epoch history
(:func:`epoch_metrics`), ``summary.json`` / ``summary.md`` and the study tables
(:mod:`examples.mecpe.summary`), and the tests' metric list — reads the registry, so adding a
metric is one :func:`register` call (or one entry below).

All pair metrics come from :mod:`torch_pairconf` (scores are pair logits, thresholds are in
probability space); only the utterance-level emotion / cause F1 and the post-hoc recalibration
(:mod:`examples.mecpe.calibration`: NLL and Brier score; ``*_tempscaled`` with a temperature,
``*_platt`` with an affine map, both fitted on dev and reused on test) are computed here. A metric
that is undefined on a split (e.g. emotion F1 without any emotion label) raises
:class:`Undefined`; it is then left out of the split's values and its reason is kept, so no
report ever holds ``NaN``.

Example::

    >>> [m.name for m in registered()][:4]
    ['pair_f1', 'pair_p', 'pair_r', 'pair_auprc']
    >>> get("ece").higher_is_better
    False
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import NamedTuple

import numpy as np
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

from .calibration import Platt, brier_score, fit_platt, fit_temperature, mean_nll
from .predict import Predictions

__all__ = [
    "VIOLATION_MARGIN",
    "Evaluation",
    "Metric",
    "Recalibration",
    "RunFacts",
    "SplitMetrics",
    "Undefined",
    "compute_metrics",
    "emotion_scores",
    "epoch_metrics",
    "get",
    "register",
    "registered",
    "run_metrics",
    "unregister",
]

#: Margin (probability space) used by the violation metrics.
VIOLATION_MARGIN = 0.2


class Undefined(Exception):
    """A metric has no value on this split; the message says why."""


class Recalibration(NamedTuple):
    """The post-hoc recalibrations of the ``*_tempscaled`` / ``*_platt`` metrics, fitted on dev.

    A value that was undefined on dev is NaN: the metrics that need it are then undefined too
    (they are never refitted on the split they are reported for).
    """

    temperature: float
    platt: Platt

    @classmethod
    def from_values(cls, values: dict[str, float]) -> Recalibration:
        """The fitted values in a split's metric values (``temperature``, ``platt_scale``,
        ``platt_bias``), NaN where missing."""
        return cls(
            values.get("temperature", math.nan),
            Platt(values.get("platt_scale", math.nan), values.get("platt_bias", math.nan)),
        )

    def to_record(self) -> dict[str, float | None]:
        """The checkpoint / JSON form (``None`` for an undefined value; no NaN)."""
        values = {
            "temperature": self.temperature,
            "platt_scale": self.platt.scale,
            "platt_bias": self.platt.bias,
        }
        return {k: (float(v) if math.isfinite(v) else None) for k, v in values.items()}

    @classmethod
    def from_record(cls, record: object, source: str = "checkpoint") -> Recalibration:
        """Inverse of :meth:`to_record`; a malformed record raises naming ``source``."""
        keys = ("temperature", "platt_scale", "platt_bias")
        if not isinstance(record, dict) or set(record) != set(keys):
            raise ValueError(f"{source}: dev_recalibration must hold exactly {', '.join(keys)}")
        values = {k: math.nan if record[k] is None else float(record[k]) for k in keys}
        return cls.from_values(values)


def _calibration_value(compute: Callable[[], float]) -> float:
    """A :mod:`~examples.mecpe.calibration` result; its ``ValueError`` (nothing to fit or score,
    a non-finite logit) makes the metric :class:`Undefined`."""
    try:
        return compute()
    except ValueError as exc:
        raise Undefined(str(exc)) from exc


@dataclass
class Evaluation:
    """One split's predictions and thresholds, with the shared intermediate results cached.

    Attributes:
        pred: the split's predictions.
        threshold: the fixed decision threshold (probability space).
        tuned: the threshold of the ``*_devthr`` metrics; ``None`` (on dev): the split's own
            F1-optimal threshold (:func:`torch_pairconf.best_threshold`).
        recalibration: the temperature and Platt map of the ``*_tempscaled`` / ``*_platt``
            metrics; ``None`` (on dev): fitted on this split.
    """

    pred: Predictions
    threshold: float = 0.5
    tuned: float | None = None
    recalibration: Recalibration | None = None

    @property
    def sgv(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(pair_logits, gold, valid)``, each ``(C, N, N)``."""
        return self.pred.pair_logits, self.pred.gold, self.pred.valid

    @cached_property
    def prf(self) -> tuple[Tensor, ...]:
        """:func:`torch_pairconf.pair_prf` at :attr:`threshold`."""
        return tuple(pair_prf(*self.sgv, threshold=self.threshold))

    @cached_property
    def tuned_threshold(self) -> float:
        """:attr:`tuned`, or the split's own F1-optimal threshold."""
        if self.tuned is not None:
            return float(self.tuned)
        return float(best_threshold(*self.sgv)[0])

    @cached_property
    def prf_tuned(self) -> tuple[Tensor, ...]:
        """:func:`torch_pairconf.pair_prf` at :attr:`tuned_threshold`."""
        return tuple(pair_prf(*self.sgv, threshold=self.tuned_threshold))

    @cached_property
    def ranking(self) -> tuple[Tensor, ...]:
        """:func:`torch_pairconf.row_ranking`: ``(top1, mrr, ...)``."""
        return tuple(row_ranking(*self.sgv))

    @cached_property
    def violations(self) -> tuple[Tensor, ...]:
        """:func:`torch_pairconf.margin_violations` (margin :data:`VIOLATION_MARGIN`, probs)."""
        return tuple(margin_violations(*self.sgv, margin=VIOLATION_MARGIN, space="prob"))

    @cached_property
    def temperature(self) -> float:
        """The temperature of the ``*_tempscaled`` metrics (fitted here, or dev's)."""
        if self.recalibration is None:
            return _calibration_value(lambda: fit_temperature(*self.sgv))
        if not math.isfinite(self.recalibration.temperature):
            raise Undefined("no dev-fitted temperature (it was undefined on dev)")
        return float(self.recalibration.temperature)

    @cached_property
    def platt(self) -> Platt:
        """The affine map of the ``*_platt`` metrics (fitted here, or dev's)."""
        if self.recalibration is None:
            try:
                return fit_platt(*self.sgv)
            except ValueError as exc:
                raise Undefined(str(exc)) from exc
        platt = self.recalibration.platt
        if not (math.isfinite(platt.scale) and math.isfinite(platt.bias)):
            raise Undefined("no dev-fitted Platt scaling (it was undefined on dev)")
        return platt

    def recalibrated(self, kind: str) -> tuple[Tensor, Tensor, Tensor]:
        """``(logits, gold, valid)`` with the logits mapped by ``kind``: ``"temperature"`` or
        ``"platt"``."""
        logits, gold, valid = self.sgv
        logits = logits.double()  # the fits are float64: map in float64 too
        if kind == "temperature":
            return logits / self.temperature, gold, valid
        return logits * self.platt.scale + self.platt.bias, gold, valid

    @cached_property
    def emotion(self) -> tuple[float, float]:
        """:func:`emotion_scores` of the split."""
        return emotion_scores(self.pred)


class RunFacts(NamedTuple):
    """What a finished run knows beyond its predictions."""

    dev_threshold: float
    best_epoch: int
    train_seconds: float


@dataclass(frozen=True)
class Metric:
    """One reported metric (see the module docstring).

    Attributes:
        name: key in ``run.json`` / ``summary.json``.
        label: short column header of the per-run / per-setting tables.
        of_split: value from a split's :class:`Evaluation` (split metrics), or
        of_run: value from the run's :class:`RunFacts` (run metrics, added to every split).
        higher_is_better: ``True`` / ``False``, or ``None`` for what is not a quality (counts,
            thresholds, times).
        summary: a row of the summary tables (mean ± std per arm).
        paired: a row of the paired-differences table (rpcl − base, same seed/fold).
        epoch: logged for dev after every epoch (``history``); these must be cheap.
        columns: the splits (``"dev"``, ``"test"``; ``"run"`` for run metrics) where it is a
            column of the per-run and per-setting tables.
        fmt: format spec of a value in those tables.
    """

    name: str
    label: str
    of_split: Callable[[Evaluation], float] | None = None
    of_run: Callable[[RunFacts], float] | None = None
    higher_is_better: bool | None = True
    summary: bool = True
    paired: bool = False
    epoch: bool = False
    columns: tuple[str, ...] = field(default=())
    fmt: str = ".4f"

    def __post_init__(self) -> None:
        if (self.of_split is None) == (self.of_run is None):
            raise ValueError(f"metric {self.name!r}: give exactly one of of_split, of_run")


_REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add ``metric`` (at the end of the table order); a name can be registered once."""
    if metric.name in _REGISTRY:
        raise ValueError(f"metric {metric.name!r} is already registered")
    _REGISTRY[metric.name] = metric
    return metric


def unregister(name: str) -> None:
    """Remove a metric (tests that register a dummy one)."""
    get(name)
    del _REGISTRY[name]


def get(name: str) -> Metric:
    """The metric called ``name``."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown metric {name!r}")
    return _REGISTRY[name]


def registered() -> tuple[Metric, ...]:
    """All metrics, in table order."""
    return tuple(_REGISTRY.values())


# ------------------------------------------------------------------------------ computation


class SplitMetrics(NamedTuple):
    """A split's metric values (finite floats) and the reason for each metric left out."""

    values: dict[str, float]
    undefined: dict[str, str]

    def to_json(self) -> dict[str, object]:
        """The ``run.json`` / report form: the values, plus ``"undefined"`` when any."""
        out: dict[str, object] = dict(self.values)
        if self.undefined:
            out["undefined"] = dict(self.undefined)
        return out


def _collect(metrics: list[tuple[str, Callable[[], float]]]) -> SplitMetrics:
    values: dict[str, float] = {}
    undefined: dict[str, str] = {}
    for name, compute in metrics:
        try:
            value = float(compute())
        except Undefined as exc:
            undefined[name] = str(exc)
            continue
        if math.isfinite(value):
            values[name] = value
        else:
            undefined[name] = f"not finite ({value})"
    return SplitMetrics(values, undefined)


def compute_metrics(
    pred: Predictions,
    *,
    threshold: float = 0.5,
    tuned_threshold: float | None = None,
    recalibration: Recalibration | None = None,
) -> SplitMetrics:
    """Every split metric of the registry on one split.

    Args:
        pred: the split's predictions.
        threshold: the fixed decision threshold (probability space) of ``pair_p/r/f1``.
        tuned_threshold: the threshold of the ``*_devthr`` metrics. ``None`` (use on dev): the
            split's own F1-optimal threshold, reported as ``threshold_devthr``; on test pass
            the dev-chosen threshold.
        recalibration: the temperature and Platt map of the ``*_tempscaled`` / ``*_platt``
            metrics. ``None`` (use on dev): fitted on this split, reported as ``temperature``,
            ``platt_scale`` and ``platt_bias``; on test pass dev's
            (:meth:`Recalibration.from_values` of dev's values).
    """
    ev = Evaluation(pred, threshold, tuned_threshold, recalibration)
    return _collect(
        [(m.name, partial(m.of_split, ev)) for m in _REGISTRY.values() if m.of_split is not None]
    )


def epoch_metrics(pred: Predictions, threshold: float = 0.5) -> dict[str, float]:
    """The cheap per-epoch metrics (``epoch=True``) of a split, e.g. dev after every epoch."""
    ev = Evaluation(pred, threshold)
    return _collect(
        [
            (m.name, partial(m.of_split, ev))
            for m in _REGISTRY.values()
            if m.epoch and m.of_split is not None
        ]
    ).values


def run_metrics(facts: RunFacts) -> dict[str, float]:
    """The run metrics (``of_run``) of a finished run."""
    return _collect(
        [(m.name, partial(m.of_run, facts)) for m in _REGISTRY.values() if m.of_run is not None]
    ).values


# ---------------------------------------------------------------------- utterance-level F1


def emotion_scores(pred: Predictions) -> tuple[float, float]:
    """Utterance-level emotion F1 from argmax predictions over utterances with a known label.

    Returns:
        ``(macro_f1_non_neutral, weighted_f1_all)``: the macro-F1 over the six non-neutral
        classes (class 0 = neutral excluded; classes with neither gold nor predicted support are
        skipped) and the support-weighted F1 over all seven classes; ``NaN`` where undefined
        (no known label; no non-neutral class with support).
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


def _emotion(ev: Evaluation, which: int) -> float:
    if not bool((ev.pred.emotions >= 0).any()):
        raise Undefined("no utterance with a known emotion label")
    value = ev.emotion[which]
    if math.isnan(value):
        raise Undefined("no non-neutral emotion in the gold labels or the predictions")
    return value


def _cause_f1(ev: Evaluation) -> float:
    pred = ev.pred
    y = pred.causes[pred.mask] > 0.5
    yhat = pred.cause_logits[pred.mask] > 0.0
    tp = int((y & yhat).sum())
    denom = 2 * tp + int((~y & yhat).sum()) + int((y & ~yhat).sum())
    return 2 * tp / denom if denom else 0.0


# ------------------------------------------------------------------------------- the entries

_DEV_TEST = ("dev", "test")

for _metric in (
    Metric("pair_f1", "F1", lambda e: float(e.prf[2]), paired=True, epoch=True, columns=_DEV_TEST),
    Metric("pair_p", "P", lambda e: float(e.prf[0]), epoch=True, columns=("test",)),
    Metric("pair_r", "R", lambda e: float(e.prf[1]), epoch=True, columns=("test",)),
    Metric(
        "pair_auprc",
        "AUPRC",
        lambda e: float(pair_auprc(*e.sgv)),
        paired=True,
        epoch=True,
        columns=_DEV_TEST,
    ),
    Metric(
        "pair_f1_devthr",
        "F1@dev-thr",
        lambda e: float(e.prf_tuned[2]),
        paired=True,
        columns=_DEV_TEST,
    ),
    Metric("pair_p_devthr", "P@dev-thr", lambda e: float(e.prf_tuned[0])),
    Metric("pair_r_devthr", "R@dev-thr", lambda e: float(e.prf_tuned[1])),
    Metric(
        "ece",
        "ECE",
        lambda e: float(expected_calibration_error(*e.sgv, n_bins=15, binning="width")),
        higher_is_better=False,
        paired=True,
        columns=_DEV_TEST,
    ),
    Metric(
        "ece_mass",
        "ECE-mass",
        lambda e: float(expected_calibration_error(*e.sgv, n_bins=15, binning="mass")),
        higher_is_better=False,
    ),
    Metric(
        "nll",
        "NLL",
        lambda e: _calibration_value(lambda: mean_nll(*e.sgv)),
        higher_is_better=False,
    ),
    Metric(
        "brier",
        "Brier",
        lambda e: _calibration_value(lambda: brier_score(*e.sgv)),
        higher_is_better=False,
    ),
    # Temperature scaling fitted on dev (reused on test): it never moves the 0.5 decision, so
    # pair_f1_tempscaled equals pair_f1 at threshold 0.5 (it differs only at another threshold).
    Metric("temperature", "T", lambda e: e.temperature, higher_is_better=None, fmt=".3f"),
    Metric(
        "ece_tempscaled",
        "ECE-ts",
        lambda e: float(
            expected_calibration_error(*e.recalibrated("temperature"), n_bins=15, binning="width")
        ),
        higher_is_better=False,
    ),
    Metric(
        "pair_f1_tempscaled",
        "F1-ts",
        lambda e: float(pair_prf(*e.recalibrated("temperature"), threshold=e.threshold).f1),
    ),
    Metric(
        "nll_tempscaled",
        "NLL-ts",
        lambda e: _calibration_value(lambda: mean_nll(*e.sgv, temperature=e.temperature)),
        higher_is_better=False,
    ),
    # Platt scaling sigmoid(a z + b) fitted on dev: the free post-hoc recalibration that does
    # move the 0.5 decision (what a training term that raises gold confidences also does).
    Metric(
        "platt_scale", "Platt a", lambda e: e.platt.scale, higher_is_better=None, summary=False
    ),
    Metric("platt_bias", "Platt b", lambda e: e.platt.bias, higher_is_better=None, summary=False),
    Metric(
        "ece_platt",
        "ECE-platt",
        lambda e: float(
            expected_calibration_error(*e.recalibrated("platt"), n_bins=15, binning="width")
        ),
        higher_is_better=False,
    ),
    Metric(
        "pair_f1_platt",
        "F1-platt",
        lambda e: float(pair_prf(*e.recalibrated("platt"), threshold=e.threshold).f1),
        columns=_DEV_TEST,
    ),
    Metric(
        "nll_platt",
        "NLL-platt",
        lambda e: _calibration_value(lambda: mean_nll(*e.recalibrated("platt"))),
        higher_is_better=False,
    ),
    Metric("row_top1", "top1", lambda e: float(e.ranking[0]), columns=("dev",)),
    Metric("row_mrr", "MRR", lambda e: float(e.ranking[1]), paired=True, columns=("dev",)),
    Metric(
        "gap_mean",
        "gap",
        lambda e: float(confidence_gap(*e.sgv, space="prob")[2]),
        columns=("dev",),
    ),
    Metric(
        "violation_rate",
        "viol.rate",
        lambda e: float(e.violations[0]),
        higher_is_better=False,
        paired=True,
        columns=("dev",),
    ),
    Metric(
        "violation_severity",
        "viol.sev",
        lambda e: float(e.violations[1]),
        higher_is_better=False,
    ),
    Metric("emotion_f1", "emo F1", lambda e: _emotion(e, 0)),
    Metric("emotion_wf1", "emo wF1", lambda e: _emotion(e, 1)),
    Metric("cause_f1", "cause F1", _cause_f1),
    Metric(
        "dev_threshold",
        "dev thr",
        of_run=lambda r: r.dev_threshold,
        higher_is_better=None,
        columns=("run",),
        fmt=".3f",
    ),
    Metric(
        "best_epoch",
        "best epoch",
        of_run=lambda r: float(r.best_epoch),
        higher_is_better=None,
        columns=("run",),
        fmt=".0f",
    ),
    Metric(
        "train_seconds",
        "train s",
        of_run=lambda r: r.train_seconds,
        higher_is_better=None,
        fmt=".1f",
    ),
    Metric(
        "threshold_devthr",
        "thr",
        lambda e: e.tuned_threshold,
        higher_is_better=None,
        summary=False,
        fmt=".3f",
    ),
    Metric(
        "n_conversations",
        "convs",
        lambda e: float(len(e.pred.conv_ids)),
        higher_is_better=None,
        summary=False,
        fmt=".0f",
    ),
    Metric(
        "n_gold_pairs",
        "gold",
        lambda e: float(e.pred.gold.sum()),
        higher_is_better=None,
        summary=False,
        fmt=".0f",
    ),
    Metric(
        "n_gold_outside_valid",
        "gold outside",
        lambda e: float((e.pred.gold & ~e.pred.valid).sum()),
        higher_is_better=None,
        summary=False,
        fmt=".0f",
    ),
    Metric(
        "n_candidates",
        "candidates",
        lambda e: float(e.pred.valid.sum()),
        higher_is_better=None,
        summary=False,
        fmt=".0f",
    ),
):
    register(_metric)
