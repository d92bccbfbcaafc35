"""Robustness of a trained model's pair confidences under context perturbations.

RPCL's premise is that a BCE-trained pair scorer lets gold pairs lean on incidental non-gold
context, and that its consistency term makes confidence stable. This module measures it: a
split's conversations are perturbed (:mod:`examples.mecpe.perturb`), featurized with the run's
own settings, scored by the trained model next to the clean conversations, and compared.

**The reusable core** (one checkpoint, one perturbation):

* :func:`perturbed_split` — ``perturb_split`` with the split itself as the distractor pool, then
  the trainer's :func:`~examples.mecpe.featurize.featurize` with the run's settings (whatever
  text encoder it used); the text-embedding cache entry is the clean one's split name plus the
  :func:`~examples.mecpe.perturb.perturbation_tag`, so a clean cache is never overwritten.
* :func:`view_metrics` — clean and perturbed :class:`~examples.mecpe.predict.Predictions` →
  every number below, the perturbed pair logits gathered into the clean index space with
  :func:`~examples.mecpe.perturb.align_to_clean`.
* :func:`evaluate_views` — a model, the clean examples and perturbed splits → one report each.

Every report says whether its family is an **oracle** diagnostic (``delete``, ``replace`` and
``speaker`` use the gold labels to choose what they perturb; ``insert`` does not). Rate 0 is the
clean view: it goes through the same path, and its stability is perfect (no flip, agreement 1,
no confidence change), which :func:`clean_view_problems` checks.

The metrics (:data:`METRICS`; thresholds in probability space, the run's ``--threshold``):

* ``clean_*`` — the clean split, all its candidate pairs;
* ``all_*`` — the perturbed split on **all** its pairs, with its own gold / valid masks
  (distractors' pairs included);
* ``shared_*`` — the perturbed scores on the pairs of **original utterances only** (``shared``:
  both utterances survive and the pair is a candidate in both views), with the clean gold
  pairs (a gold pair outside ``shared``, e.g. moved out of a ``--window``, is a miss);
  ``shared_clean_*`` is the clean scores on the same pairs, the like-for-like reference;
* stability over ``shared`` (:func:`torch_pairconf.pair_stability`): ``flip_rate`` at the
  threshold, ``conf_change_gold`` / ``conf_change_negative`` (mean absolute confidence change)
  and their signed ``conf_shift_*``, ``top1_agreement`` and ``kendall_tau`` (rows with at least
  two shared candidates), ``gap_change_abs`` / ``gap_change_mean`` (gold − hardest-negative gap),
  ``max_logit_change``; ``n_*`` are counts. A stability number over an empty set is left out
  and its reason kept under ``undefined`` (never a NaN, never a misleading 0).

**The robustness study** (``python -m examples.mecpe.robustness``) runs this over every run of a
finished study (both arms, all seeds, all folds), every family and the rates 0, 0.1, 0.3, 0.5
with the perturbation seed fixed (:data:`DEFAULT_PERTURB_SEED`: every run sees the same
perturbed conversations), and writes ``robustness.json`` (every number), ``robustness.md`` (a
table per family: arms' mean ± std over runs, paired differences against ``--baseline`` and
"better in k/n") and ``robustness_<family>.png`` (metrics against rate)::

    python -m examples.mecpe.robustness --study runs/ecf --split test \\
        --out examples/mecpe/results/ecf/robustness
    python -m examples.mecpe.robustness --study runs/ecf --split dev   # for choosing on dev

Each run's results are kept in ``OUT/runs/<run>.json`` as soon as they are computed and reused
by a later call with the same settings and checkpoint, so an interrupted study resumes (delete
``OUT/runs`` to recompute after changing the evaluation code).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

import torch

from torch_pairconf import pair_auprc, pair_prf, pair_stability

from . import checkpoint
from .batching import Example
from .cli import add_debug_option, guarded
from .config import TrainConfig, data_key
from .data import Conversation
from .engine import evaluate_split
from .features import FeatureTable
from .featurize import featurize, load_feature_tables, load_split_examples
from .model import MECPEModel
from .options import AT_LEAST_1, HelpFormatter, add_options, check_options, option, values_from
from .perturb import (
    FAMILIES,
    Family,
    align_to_clean,
    gold_utterance_indices,
    origin_index,
    perturb_split,
    perturbation_tag,
)
from .predict import Predictions
from .runtime import configure, resolve_device
from .summary import collect_runs, run_label

__all__ = [
    "DEFAULT_PERTURB_SEED",
    "DEFAULT_RATES",
    "METRICS",
    "PerturbedSplit",
    "RobustnessConfig",
    "RobustnessMetric",
    "ViewMetrics",
    "build_parser",
    "check_rate",
    "clean_view_problems",
    "evaluate_views",
    "main",
    "perturbation_counts",
    "perturbed_split",
    "run_study",
    "view_metrics",
]

#: The perturbation seed of the robustness study and of ``evaluate --perturb`` (fixed, so that
#: every run of a study is evaluated on the same perturbed conversations).
DEFAULT_PERTURB_SEED: Final = 7

#: The rates of the robustness study.
DEFAULT_RATES: Final = (0.0, 0.1, 0.3, 0.5)


# ------------------------------------------------------------------------------ the metrics


@dataclass(frozen=True)
class RobustnessMetric:
    """One reported number of a perturbed view.

    Attributes:
        name: key in the reports' ``metrics``.
        label: its name in tables and plots.
        higher_is_better: ``True`` / ``False``, ``None`` for signed shifts and counts.
        table: a row of the markdown tables and a panel of the plots.
    """

    name: str
    label: str
    higher_is_better: bool | None
    table: bool = False


_PRF = (("pair_f1", "F1"), ("pair_p", "P"), ("pair_r", "R"), ("pair_auprc", "AUPRC"))

METRICS: tuple[RobustnessMetric, ...] = (
    *(RobustnessMetric(f"clean_{k}", f"{lab} (clean)", True) for k, lab in _PRF),
    *(
        RobustnessMetric(f"all_{k}", f"{lab}, all pairs", True, k in ("pair_f1", "pair_auprc"))
        for k, lab in _PRF
    ),
    *(
        RobustnessMetric(f"shared_{k}", f"{lab}, original utt.", True, k in ("pair_f1", "pair_auprc"))
        for k, lab in _PRF
    ),
    *(RobustnessMetric(f"shared_clean_{k}", f"{lab}, original utt. (clean)", True) for k, lab in _PRF),
    RobustnessMetric("flip_rate", "flip rate", False, True),
    RobustnessMetric("conf_change_gold", "|Δconf| gold", False, True),
    RobustnessMetric("conf_change_negative", "|Δconf| non-gold", False, True),
    RobustnessMetric("conf_shift_gold", "Δconf gold (signed)", None),
    RobustnessMetric("conf_shift_negative", "Δconf non-gold (signed)", None),
    RobustnessMetric("top1_agreement", "row top-1 agreement", True, True),
    RobustnessMetric("kendall_tau", "row Kendall tau-b", True, True),
    RobustnessMetric("gap_change_abs", "|Δgap|", False, True),
    RobustnessMetric("gap_change_mean", "Δgap (signed)", None),
    RobustnessMetric("max_logit_change", "max |Δlogit|", None),
    *(
        RobustnessMetric(name, name, None)
        for name in (
            "n_clean_pairs",
            "n_clean_gold",
            "n_perturbed_pairs",
            "n_perturbed_gold",
            "n_shared_pairs",
            "n_shared_gold",
            "flips",
            "flips_lost",
            "flips_gained",
            "n_rank_rows",
            "n_tau_undefined",
            "n_gap_pairs",
        )
    ),
)


class ViewMetrics(NamedTuple):
    """The numbers of one perturbed view (finite floats) and why any were left out."""

    values: dict[str, float]
    undefined: dict[str, str]


def _check_same_conversations(clean: Predictions, perturbed: Predictions, n_origins: int) -> None:
    if clean.conv_ids != perturbed.conv_ids:
        raise ValueError(
            "perturbed predictions must be of the clean conversations, in their order "
            f"(conversation ids differ: {len(clean.conv_ids)} clean, {len(perturbed.conv_ids)} "
            "perturbed)"
        )
    if n_origins != len(clean.conv_ids):
        raise ValueError(
            f"origins has {n_origins} index maps for {len(clean.conv_ids)} conversations"
        )


def view_metrics(
    clean: Predictions,
    perturbed: Predictions,
    origins: Sequence[Sequence[int | None]],
    *,
    threshold: float = 0.5,
) -> ViewMetrics:
    """Every number of one perturbed view (see the module docstring and :data:`METRICS`).

    Args:
        clean: predictions on the clean conversations ``(C, N, N)``.
        perturbed: predictions on their perturbed versions, same order ``(C, N', N')``.
        origins: per conversation the index map of :func:`~examples.mecpe.perturb.perturb_split`.
        threshold: the decision threshold (probability space).

    Example:
        >>> from examples.mecpe.predict import Predictions
        >>> logits = torch.tensor([[[2.0, -1.0], [0.5, 3.0]]])
        >>> gold = torch.tensor([[[True, False], [False, True]]])
        >>> pred = Predictions(["c"], torch.tensor([2]), logits, gold, torch.ones_like(gold),
        ...                    torch.zeros(1, 2, 7), torch.zeros(1, 2), torch.zeros(1, 2),
        ...                    torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool))
        >>> m = view_metrics(pred, pred, [(1, 2)])   # the clean view against itself
        >>> m.values["flip_rate"], m.values["top1_agreement"], m.values["shared_pair_f1"]
        (0.0, 1.0, 0.8)
    """
    _check_same_conversations(clean, perturbed, len(origins))
    width = perturbed.pair_logits.shape[1]
    aligned = align_to_clean(
        perturbed.pair_logits, origin_index(origins, width), clean.valid, perturbed.valid
    )
    shared = aligned.shared
    values: dict[str, float] = {}
    undefined: dict[str, str] = {}

    def prf(prefix: str, scores: torch.Tensor, gold: torch.Tensor, valid: torch.Tensor) -> None:
        p = pair_prf(scores, gold, valid, threshold=threshold)
        values[f"{prefix}pair_f1"] = float(p.f1)
        values[f"{prefix}pair_p"] = float(p.precision)
        values[f"{prefix}pair_r"] = float(p.recall)
        values[f"{prefix}pair_auprc"] = float(pair_auprc(scores, gold, valid))

    prf("clean_", clean.pair_logits, clean.gold, clean.valid)
    prf("all_", perturbed.pair_logits, perturbed.gold, perturbed.valid)
    prf("shared_", aligned.scores, clean.gold, shared)
    prf("shared_clean_", clean.pair_logits, clean.gold, shared)

    s = pair_stability(clean.pair_logits, aligned.scores, clean.gold, shared, threshold)

    def put(name: str, value: torch.Tensor, count: torch.Tensor, why: str) -> None:
        if float(count) > 0:
            values[name] = float(value)
        else:
            undefined[name] = why

    put("flip_rate", s.flips.rate, s.flips.pairs, "no shared pair")
    for name, value in (
        ("conf_change_gold", s.confidence.gold),
        ("conf_shift_gold", s.confidence.gold_shift),
    ):
        put(name, value, s.confidence.gold_pairs, "no shared gold pair")
    for name, value in (
        ("conf_change_negative", s.confidence.negative),
        ("conf_shift_negative", s.confidence.negative_shift),
    ):
        put(name, value, s.confidence.negative_pairs, "no shared non-gold pair")
    put("top1_agreement", s.ranking.top1, s.ranking.rows, "no row with two shared candidates")
    put("kendall_tau", s.ranking.tau, s.ranking.tau_rows, "no row where tau-b is defined")
    why_gap = "no shared gold pair whose row has a shared non-gold candidate"
    put("gap_change_abs", s.gap.mean_abs, s.gap.pairs, why_gap)
    put("gap_change_mean", s.gap.mean, s.gap.pairs, why_gap)
    change = torch.where(shared, (aligned.scores.double() - clean.pair_logits.double()).abs(), 0)
    put("max_logit_change", change.amax(), s.flips.pairs, "no shared pair")
    values.update(
        n_clean_pairs=float(clean.valid.sum()),
        n_clean_gold=float(clean.gold.sum()),
        n_perturbed_pairs=float(perturbed.valid.sum()),
        n_perturbed_gold=float(perturbed.gold.sum()),
        n_shared_pairs=float(shared.sum()),
        n_shared_gold=float((clean.gold & shared).sum()),
        flips=float(s.flips.flips),
        flips_lost=float(s.flips.lost),
        flips_gained=float(s.flips.gained),
        n_rank_rows=float(s.ranking.rows),
        n_tau_undefined=float(s.ranking.undefined),
        n_gap_pairs=float(s.gap.pairs),
    )
    return ViewMetrics(values, undefined)


def clean_view_problems(values: dict[str, float]) -> list[str]:
    """What makes a rate-0 view's numbers differ from the clean view's (empty: none).

    At rate 0 every conversation is unchanged, so the perturbed scores must equal the clean
    ones on every candidate pair: no flip, no confidence change, top-1 agreement and tau-b 1.
    """
    problems = []
    if values.get("n_shared_pairs") != values.get("n_clean_pairs"):
        problems.append(
            f"{values.get('n_shared_pairs')} shared pairs of {values.get('n_clean_pairs')}"
        )
    for name, expected in (
        ("flips", 0.0),
        ("max_logit_change", 0.0),
        ("top1_agreement", 1.0),
        ("all_pair_f1", values.get("clean_pair_f1")),
        ("all_pair_auprc", values.get("clean_pair_auprc")),
    ):
        if name in values and values[name] != expected:
            problems.append(f"{name} {values[name]!r} (expected {expected!r})")
    return problems


# ---------------------------------------------------------------------------- the views


def check_rate(rate: object, what: str = "rate") -> float:
    """``rate`` as a float in [0, 1] (``ValueError`` naming ``what`` otherwise)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise ValueError(f"{what} must be a number in [0, 1], got {rate!r}")
    return float(rate)


def perturbation_counts(
    family: str,
    clean: Sequence[Conversation],
    perturbed: Sequence[Conversation],
    origins: Sequence[Sequence[int | None]],
) -> dict[str, float]:
    """What a perturbation of a split changed.

    ``utterances`` / ``perturbed_utterances``: before / after; ``foreign``: utterances from
    other conversations (inserted or replacing); ``removed``: original utterances gone (deleted
    or replaced); ``relabelled``: originals whose speaker label changed; ``eligible``: what the
    rate applies to (every utterance for ``insert``, the non-gold ones otherwise);
    ``affected``: ``foreign`` (insert), ``removed`` (delete, replace) or ``relabelled``
    (speaker); ``realised_rate = affected / eligible``; ``changed_conversations``.
    """
    fam = Family(family)
    n = sum(len(c) for c in clean)
    foreign = sum(o is None for origin in origins for o in origin)
    kept = sum(o is not None for origin in origins for o in origin)
    relabelled = sum(
        p.speakers[k] != c.speakers[o - 1]
        for c, p, origin in zip(clean, perturbed, origins, strict=True)
        for k, o in enumerate(origin)
        if o is not None
    )
    eligible = n if fam is Family.INSERT else sum(
        len(c) - len(gold_utterance_indices(c)) for c in clean
    )
    affected = {
        Family.INSERT: foreign,
        Family.DELETE: n - kept,
        Family.REPLACE: n - kept,
        Family.SPEAKER: relabelled,
    }[fam]
    return {
        "conversations": float(len(clean)),
        "changed_conversations": float(sum(c != p for c, p in zip(clean, perturbed, strict=True))),
        "utterances": float(n),
        "perturbed_utterances": float(sum(len(p) for p in perturbed)),
        "foreign": float(foreign),
        "removed": float(n - kept),
        "relabelled": float(relabelled),
        "eligible": float(eligible),
        "affected": float(affected),
        "realised_rate": affected / eligible if eligible else 0.0,
    }


@dataclass(frozen=True)
class PerturbedSplit:
    """A split's conversations perturbed once and featurized with a run's settings.

    Attributes:
        family, rate, seed: the perturbation.
        conversations: the perturbed conversations (in the split's order).
        origins: their index maps (1-based original index, ``None`` for a foreign utterance).
        examples: their examples, featurized as the run featurizes.
        counts: :func:`perturbation_counts`.
    """

    family: str
    rate: float
    seed: int
    conversations: list[Conversation]
    origins: list[tuple[int | None, ...]]
    examples: list[Example]
    counts: dict[str, float]

    @property
    def tag(self) -> str:
        """:func:`~examples.mecpe.perturb.perturbation_tag` of the perturbation."""
        return perturbation_tag(self.family, self.rate, self.seed)

    @property
    def oracle(self) -> bool:
        """Whether the family uses gold labels to choose what it perturbs."""
        return Family(self.family).oracle

    def report(self, metrics: ViewMetrics, threshold: float) -> dict[str, Any]:
        """The JSON report of this view under one model's ``metrics``."""
        out: dict[str, Any] = {
            "family": self.family,
            "oracle": self.oracle,
            "rate": self.rate,
            "perturb_seed": self.seed,
            "tag": self.tag,
            "threshold": threshold,
            "perturbation": self.counts,
            "metrics": metrics.values,
        }
        if metrics.undefined:
            out["undefined"] = metrics.undefined
        return out


def perturbed_split(
    convs: Sequence[Conversation],
    cfg: TrainConfig,
    *,
    family: str,
    rate: float,
    seed: int,
    cache_dataset: str,
    cache_split: str,
    tables: dict[str, FeatureTable] | None = None,
) -> PerturbedSplit:
    """Perturb ``convs`` (the distractor pool is ``convs`` itself) and featurize the result.

    Args:
        convs: the clean split's conversations.
        cfg: the run's settings (text encoder, feature tables, cache folder, ...).
        family, rate, seed: the perturbation (:func:`~examples.mecpe.perturb.perturb_split`).
        cache_dataset, cache_split: the clean split's text-cache key; the perturbed split's is
            ``(cache_dataset, f"{cache_split}-{tag}")``.
        tables: the run's feature tables (loaded from ``cfg`` when ``None``).
    """
    tag = perturbation_tag(family, check_rate(rate), seed)  # checks family and seed too
    fam, rate = Family(family).value, float(rate)
    perturbed, origins = perturb_split(convs, fam, rate, seed)
    examples = featurize(
        perturbed, cfg, cache_dataset=cache_dataset, cache_split=f"{cache_split}-{tag}",
        tables=tables,
    )  # fmt: skip
    counts = perturbation_counts(fam, convs, perturbed, origins)
    return PerturbedSplit(fam, rate, seed, perturbed, origins, examples, counts)


def evaluate_views(
    model: MECPEModel,
    clean_examples: Sequence[Example],
    views: Sequence[PerturbedSplit],
    cfg: TrainConfig,
    device: torch.device,
    *,
    threshold: float | None = None,
) -> tuple[Predictions, list[dict[str, Any]]]:
    """Score the clean examples and every perturbed split with ``model``; one report per view.

    ``threshold`` defaults to the run's ``cfg.threshold``. Returns the clean predictions and
    the reports (:meth:`PerturbedSplit.report`), in the order of ``views``.
    """
    thr = cfg.threshold if threshold is None else threshold
    clean = evaluate_split(model, clean_examples, cfg, device)
    reports = []
    for view in views:
        pred = evaluate_split(model, view.examples, cfg, device)
        reports.append(view.report(view_metrics(clean, pred, view.origins, threshold=thr), thr))
    return clean, reports


# ----------------------------------------------------------------------------- the study


@dataclass
class RobustnessConfig:
    """The options of the robustness study (``python -m examples.mecpe.robustness``)."""

    study: str = option(None, "a finished study's folder (its runs' run.json and best.pt)", required=True)
    split: str = option(
        "test", "split to perturb: test, or dev (to choose settings on dev)", choices=("test", "dev")
    )
    out: str | None = option(None, "output folder (default: STUDY/robustness-SPLIT)")
    families: tuple[str, ...] = option(
        FAMILIES, f"comma-separated perturbation families (default: all, {','.join(FAMILIES)})"
    )
    rates: tuple[float, ...] = option(
        DEFAULT_RATES,
        f"comma-separated rates in [0, 1] (default: {','.join(f'{r:g}' for r in DEFAULT_RATES)})",
    )
    perturb_seed: int = option(
        DEFAULT_PERTURB_SEED, "seed of every perturbation (every run sees the same conversations)"
    )
    arms: tuple[str, ...] | None = option(None, "only these arms (default: every arm found)")
    seeds: tuple[int, ...] | None = option(None, "only these seeds (default: every seed found)")
    baseline: str = option("base", "the arm paired differences are taken against")
    data_dir: str | None = option(None, "dataset folder (default: each run's own)")
    cache_dir: str | None = option(None, "text embedding cache (default: each run's own)")
    device: str = option("auto", "auto | cpu | cuda[:N]")
    threads: int | None = option(
        None, "torch CPU threads (default: torch's choice)", check=AT_LEAST_1
    )
    plots: bool = option(True, "write the PNGs")
    report_only: bool = option(
        False, "only rebuild robustness.md and the PNGs from OUT/robustness.json"
    )
    quiet: bool = option(False, "no progress lines")

    def __post_init__(self) -> None:
        check_options(self)
        if not self.families:
            raise ValueError("--families names no family")
        for family in self.families:
            if family not in FAMILIES:
                raise ValueError(
                    f"--families: unknown family {family!r}; expected {', '.join(FAMILIES)}"
                )
        if not self.rates:
            raise ValueError("--rates names no rate")
        for rate in self.rates:
            check_rate(rate, "every --rates value")
        if len(set(self.rates)) != len(self.rates) or len(set(self.families)) != len(self.families):
            raise ValueError("--rates and --families must not repeat a value")

    @property
    def out_dir(self) -> Path:
        """Where the results go."""
        return Path(self.out) if self.out else Path(self.study) / f"robustness-{self.split}"

    def settings(self) -> dict[str, Any]:
        """What a run's stored results depend on (besides its checkpoint)."""
        return {
            "split": self.split,
            "families": list(self.families),
            "rates": list(self.rates),
            "perturb_seed": self.perturb_seed,
        }


#: Settings of a run that may be pointed elsewhere for the evaluation (paths).
_OVERRIDABLE = ("data_dir", "cache_dir")


def _log(rc: RobustnessConfig, msg: str) -> None:
    if not rc.quiet:
        print(msg, flush=True)


def _warn(msg: str) -> None:
    print(f"robustness: warning: {msg}", file=sys.stderr, flush=True)


class _SplitViews(NamedTuple):
    """A split's clean examples and its perturbed splits (shared by runs with one data key)."""

    clean: list[Example]
    views: list[PerturbedSplit]


def _split_views(cfg: TrainConfig, rc: RobustnessConfig) -> _SplitViews:
    """Load the split as the run does and build every (family, rate) perturbation of it."""
    with contextlib.redirect_stdout(sys.stderr):  # featurize progress never mixes with results
        convs, clean = load_split_examples(cfg, rc.split)
        tables = load_feature_tables(cfg)
        fold = "" if cfg.fold is None else f"fold{cfg.fold}-"
        views = []
        for family in rc.families:
            for rate in rc.rates:
                views.append(
                    perturbed_split(
                        convs,
                        cfg,
                        family=family,
                        rate=rate,
                        seed=rc.perturb_seed,
                        cache_dataset=cfg.dataset,
                        cache_split=f"{fold}{rc.split}",
                        tables=tables,
                    )
                )
    return _SplitViews(clean, views)


def _stamp(path: Path) -> dict[str, int]:
    """Identity of a checkpoint file for the results cache (size and modification time)."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _run_entry(
    path: Path,
    result: dict[str, Any],
    rc: RobustnessConfig,
    device: torch.device,
    data: dict[tuple[Any, ...], _SplitViews],
) -> dict[str, Any]:
    """Evaluate one run of the study (or reuse its stored results)."""
    from .evaluate import load_model  # evaluate's CLI imports this module

    best = path / "best.pt"
    cached = rc.out_dir / "runs" / f"{path.name}.json"
    settings = {**rc.settings(), "checkpoint": _stamp(best)} if best.is_file() else None
    if settings is not None and cached.is_file():
        stored = json.loads(cached.read_text(encoding="utf-8"))
        if stored.get("settings") == settings:
            _log(rc, f"reuse {cached}")
            return dict(stored["entry"])
    model, ckpt = load_model(best, device)
    cfg = TrainConfig.from_dict(ckpt["config"], source=str(best))
    for name in _OVERRIDABLE:
        if getattr(rc, name) is not None:
            setattr(cfg, name, getattr(rc, name))
    cfg.quiet = cfg.quiet or rc.quiet
    if rc.split == "test" and cfg.dev_only:
        raise ValueError(
            f"{path / 'run.json'}: the run was trained with --dev-only, its test split is never "
            "read; use --split dev"
        )
    key = data_key(cfg)
    if key not in data:
        data[key] = _split_views(cfg, rc)
    clean_examples, views = data[key]
    _log(rc, f"evaluate {path} on {len(views)} perturbed {rc.split} splits")
    _, reports = evaluate_views(model, clean_examples, views, cfg, device)
    entry: dict[str, Any] = {"arm": run_label(cfg.to_dict()), "seed": cfg.seed, "run": str(path)}
    if cfg.fold is not None:
        entry["fold"] = cfg.fold
    entry["threshold"] = cfg.threshold
    entry["checks"] = _checks(result.get(rc.split, {}), reports, path)
    entry["views"] = reports
    assert settings is not None  # load_model found best.pt
    cached.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_json({"settings": settings, "entry": entry}, cached)
    return entry


def _checks(
    stored: dict[str, Any], reports: Sequence[dict[str, Any]], path: Path
) -> dict[str, Any]:
    """Consistency checks of a run's evaluation: the clean numbers equal the run's own
    ``run.json`` ones, and every rate-0 view equals the clean view."""
    clean = reports[0]["metrics"] if reports else {}
    checks: dict[str, Any] = {}
    if "pair_f1" in stored and "clean_pair_f1" in clean:
        same = all(
            abs(float(stored[k]) - clean[f"clean_{k}"]) <= 1e-6 for k in ("pair_f1", "pair_auprc")
        )
        checks["clean_matches_run"] = same
        if not same:
            _warn(
                f"{path}: the clean {'/'.join(('pair_f1', 'pair_auprc'))} "
                f"({clean['clean_pair_f1']:.6f}/{clean['clean_pair_auprc']:.6f}) differ from its "
                f"run.json ({float(stored['pair_f1']):.6f}/{float(stored['pair_auprc']):.6f}): "
                "other data or features than the run was evaluated on?"
            )
    zero = [r for r in reports if r["rate"] == 0]
    if zero:
        problems = [f"{r['family']}: {p}" for r in zero for p in clean_view_problems(r["metrics"])]
        checks["rate0_identical"] = not problems
        if problems:
            _warn(f"{path}: a rate-0 view differs from the clean view ({'; '.join(problems)})")
    return checks


def run_study(rc: RobustnessConfig) -> dict[str, Any]:
    """Evaluate every run of ``rc.study`` and write ``robustness.json``, ``.md`` and the PNGs."""
    from .robustness_report import aggregate_study, write_report

    out = rc.out_dir
    if rc.report_only:
        path = out / "robustness.json"
        if not path.is_file():
            raise FileNotFoundError(f"--report-only: no {path} to rebuild the report from")
        report: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        write_report(report, out, plots=rc.plots)
        return report
    found = collect_runs(rc.study, arms=rc.arms, seeds=rc.seeds)
    if not found:
        raise FileNotFoundError(f"no complete run (run.json) under {rc.study}")
    device = resolve_device(rc.device)
    configure(device, rc.threads)
    out.mkdir(parents=True, exist_ok=True)
    data: dict[tuple[Any, ...], _SplitViews] = {}
    runs = [_run_entry(path, result, rc, device, data) for path, result in found]
    report = {
        "study": str(rc.study),
        "dataset": found[0][1]["config"]["dataset"],
        **rc.settings(),
        "oracle": {f: Family(f).oracle for f in rc.families},
        "baseline": rc.baseline,
        "metrics": {
            m.name: {"label": m.label, "higher_is_better": m.higher_is_better, "table": m.table}
            for m in METRICS
        },
        "runs": runs,
    }
    report.update(aggregate_study(report))
    checkpoint.write_json(report, out / "robustness.json")
    write_report(report, out, plots=rc.plots)
    return report


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of ``python -m examples.mecpe.robustness``."""
    ap = argparse.ArgumentParser(
        prog="python -m examples.mecpe.robustness",
        description="Evaluate every run of a finished study on perturbed conversations (every "
        "family and rate) and write robustness.json, robustness.md and a PNG per family.",
        formatter_class=HelpFormatter,
    )
    add_options(ap, RobustnessConfig)
    add_debug_option(ap)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m examples.mecpe.robustness``; bad input: one stderr line, exit 2."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        rc = RobustnessConfig(**values_from(args, RobustnessConfig))
        run_study(rc)
        out = rc.out_dir
        what = "" if rc.report_only else f"{out / 'robustness.json'} and "
        print(f"wrote {what}{out / 'robustness.md'}", flush=True)
        return 0

    return guarded(body, debug=args.debug, prog="robustness")


if __name__ == "__main__":
    sys.exit(main())
