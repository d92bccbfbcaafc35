"""Run a base-vs-RPCL study and summarise it: ``python -m examples.mecpe.study``.

Every (arm, seed[, fold]) run goes to ``OUT/<arm>-seed<seed>[-fold<f>]`` and is run one after
the other; a run whose ``run.json`` is complete is skipped (after checking that it was trained
with the same settings), an interrupted one resumes from its ``last.pt``, which is deleted once
the run is complete unless ``--keep-last-checkpoint`` (``best.pt`` is always kept). Then ``summary.json``, ``summary.md`` and the plots (``gap_hist.png``,
``pr_curve.png``, ``reliability.png``; test split) are written to ``OUT``.

``summary.json``::

    {"dataset": "ecf", "modalities": "T", "config": {...},
     "runs": [{"arm": "base", "seed": 42, ["fold": 0,] "dev": {...}, "test": {...},
               "dev_threshold": 0.41}, ...],
     "aggregate": {arm: {metric: {"mean": ..., "std": ...}}},
     "delta": {metric: mean_rpcl - mean_base}}

``aggregate`` holds the test metrics under their plain names and the dev metrics prefixed
``dev_``; ``std`` is the sample standard deviation over the arm's runs (0 for a single run).

Examples::

    python -m examples.mecpe.study --dataset ecf --data-dir ../shared/data/ecf \\
        --arms base,rpcl --seeds 42,123,456 --out runs/ecf
    python -m examples.mecpe.study --dataset mecad --data-dir ../shared/data/mecad \\
        --protocol cv --out runs/mecad          # 5 folds by TV series, hash text encoder
    python -m examples.mecpe.study --out runs/ecf --summarize-only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .train import (
    RESUMABLE_CHANGES,
    DataBundle,
    TrainConfig,
    add_training_args,
    config_diff,
    load_data,
    run,
    training_kwargs,
)

__all__ = [
    "aggregate",
    "build_parser",
    "collect_runs",
    "main",
    "run_dir",
    "summarize",
    "write_markdown",
]

#: Metrics shown first (in this order) in ``summary.md``.
KEY_METRICS = (
    "pair_f1",
    "pair_p",
    "pair_r",
    "pair_auprc",
    "pair_f1_devthr",
    "pair_p_devthr",
    "pair_r_devthr",
    "ece",
    "ece_mass",
    "row_top1",
    "row_mrr",
    "gap_mean",
    "violation_rate",
    "violation_severity",
    "emotion_f1",
    "emotion_wf1",
    "cause_f1",
    "dev_threshold",
    "best_epoch",
    "train_seconds",
)
#: Per-run config keys that are not study-level settings.
_PER_RUN = ("arm", "seed", "fold", "out", "resume", "rpcl_args", "quiet", "threads", "device")


def run_dir(out: str | Path, arm: str, seed: int, fold: int | None = None) -> Path:
    """Directory of one run of a study."""
    name = f"{arm}-seed{seed}" + ("" if fold is None else f"-fold{fold}")
    return Path(out) / name


def _int_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    return [int(x) for x in text.split(",") if x.strip()]


def _read_run(path: Path) -> dict[str, Any] | None:
    try:
        result = json.loads((path / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return result if result.get("complete") else None


def collect_runs(
    out: str | Path,
    *,
    arms: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    folds: Sequence[int] | None = None,
) -> list[tuple[Path, dict[str, Any]]]:
    """Complete runs under ``out`` (optionally only the given arms / seeds / folds), sorted."""
    found: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted(Path(out).iterdir()) if Path(out).is_dir() else []:
        result = _read_run(path) if path.is_dir() else None
        if result is None:
            continue
        cfg = result["config"]
        if arms is not None and cfg["arm"] not in arms:
            continue
        if seeds is not None and cfg["seed"] not in seeds:
            continue
        if folds is not None and cfg.get("fold") not in folds:
            continue
        found.append((path, result))
    arm_rank = {a: i for i, a in enumerate(arms or ("base", "rpcl"))}

    def key(item: tuple[Path, dict[str, Any]]) -> tuple[int, int, int]:
        c = item[1]["config"]
        return (
            arm_rank.get(c["arm"], 99),
            int(c["seed"]),
            -1 if c.get("fold") is None else c["fold"],
        )

    return sorted(found, key=key)


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    vals = [float(v) for v in values]
    mean = float(np.mean(vals)) if vals else math.nan
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std}


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and sample std of every numeric test metric (and ``dev_``-prefixed dev metric) per arm."""
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_arm.setdefault(r["arm"], []).append(r)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for arm, rs in by_arm.items():
        metrics: dict[str, dict[str, float]] = {}
        for split, prefix in (("test", ""), ("dev", "dev_")):
            names = [k for k, v in rs[0][split].items() if isinstance(v, (int, float))]
            for name in names:
                metrics[prefix + name] = _mean_std([r[split][name] for r in rs if name in r[split]])
        out[arm] = metrics
    return out


def summarize(
    out: str | Path,
    *,
    arms: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    folds: Sequence[int] | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Write ``summary.json``, ``summary.md`` and the plots for the complete runs under ``out``."""
    out = Path(out)
    found = collect_runs(out, arms=arms, seeds=seeds, folds=folds)
    if not found:
        raise FileNotFoundError(f"no complete run (run.json) under {out}")
    configs = [r["config"] for _, r in found]
    first = configs[0]
    config: dict[str, Any] = {
        k: v for k, v in first.items() if k not in _PER_RUN and all(c.get(k) == v for c in configs)
    }
    rpcl_cfgs = [c["rpcl_args"] for c in configs if c["arm"] == "rpcl"]
    config["rpcl_args"] = rpcl_cfgs[0] if rpcl_cfgs else {}
    if any(c != config["rpcl_args"] for c in rpcl_cfgs):
        config["rpcl_args_differ"] = True
    config["arms"] = list(dict.fromkeys(c["arm"] for c in configs))
    config["seeds"] = sorted({int(c["seed"]) for c in configs})
    folds_seen = sorted({c["fold"] for c in configs if c.get("fold") is not None})
    if folds_seen:
        config["folds"] = folds_seen
    config["n_runs"] = {a: sum(c["arm"] == a for c in configs) for a in config["arms"]}
    runs: list[dict[str, Any]] = []
    for _, r in found:
        c = r["config"]
        entry: dict[str, Any] = {"arm": c["arm"], "seed": int(c["seed"])}
        if c.get("fold") is not None:
            entry["fold"] = int(c["fold"])
        entry.update({"dev": r["dev"], "test": r["test"], "dev_threshold": r["dev_threshold"]})
        runs.append(entry)
    agg = aggregate(runs)
    delta: dict[str, float] = {}
    if "base" in agg and "rpcl" in agg:
        delta = {
            m: agg["rpcl"][m]["mean"] - agg["base"][m]["mean"]
            for m in agg["base"]
            if m in agg["rpcl"]
        }
    summary = {
        "dataset": first["dataset"],
        "modalities": first["modalities"],
        "config": config,
        "runs": runs,
        "aggregate": agg,
        "delta": delta,
    }
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "summary.json")
    plot_files: list[Path] = []
    if plots:
        from .plots import make_plots

        by_arm: dict[str, list[Path]] = {}
        for path, r in found:
            by_arm.setdefault(r["config"]["arm"], []).append(path)
        plot_files = make_plots(by_arm, out, split="test")
    (out / "summary.md").write_text(write_markdown(summary, [p.name for p in plot_files]))
    return summary


def _fmt(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def write_markdown(summary: dict[str, Any], plot_names: Sequence[str] = ()) -> str:
    """The ``summary.md`` text of a summary dict."""
    agg, delta, cfg = summary["aggregate"], summary["delta"], summary["config"]
    arms = list(agg)
    lines = [f"# MECPE study: {summary['dataset']} ({summary['modalities']})", ""]
    lines.append(
        f"{sum(cfg['n_runs'].values())} runs; arms {', '.join(arms)}; seeds "
        f"{', '.join(map(str, cfg['seeds']))}"
        + (f"; folds {', '.join(map(str, cfg['folds']))}" if "folds" in cfg else "")
        + f"; protocol {cfg.get('protocol', '?')}; text encoder {cfg.get('text_encoder', '?')}; "
        f"epochs {cfg.get('epochs', '?')}; threshold {cfg.get('threshold', '?')}; "
        f"model selection: dev Pair F1."
    )
    lines.append(f"RPCL arguments: `{json.dumps(cfg.get('rpcl_args', {}))}`")
    lines.append("")
    for title, prefix in (("Test", ""), ("Dev", "dev_")):
        names = [prefix + m for m in KEY_METRICS if prefix + m in agg[arms[0]]]
        lines.append(f"## {title} metrics (mean ± sample std over runs)")
        lines.append("")
        header = "| metric | " + " | ".join(arms) + (" | Δ rpcl − base |" if delta else " |")
        lines.append(header)
        lines.append("|---" * (len(arms) + 1 + bool(delta)) + "|")
        for m in names:
            cells = [
                f"{_fmt(agg[a][m]['mean'])} ± {_fmt(agg[a][m]['std'])}" if m in agg[a] else "–"
                for a in arms
            ]
            row = f"| {m} | " + " | ".join(cells)
            row += f" | {delta[m]:+.4f} |" if delta and m in delta else " |"
            lines.append(row)
        lines.append("")
    has_fold = any("fold" in r for r in summary["runs"])
    lines.append("## Per run")
    lines.append("")
    lines.append(
        "| arm | seed |"
        + (" fold |" if has_fold else "")
        + " best epoch | dev F1 | dev AUPRC | dev threshold | test P | test R | test F1 "
        "| test AUPRC | test F1 @ dev thr | test ECE |"
    )
    lines.append("|---" * (12 + has_fold) + "|")
    for r in summary["runs"]:
        d, t = r["dev"], r["test"]
        lines.append(
            f"| {r['arm']} | {r['seed']} |"
            + (f" {r.get('fold', '')} |" if has_fold else "")
            + f" {int(t['best_epoch'])} | {_fmt(d['pair_f1'])} | {_fmt(d['pair_auprc'])} "
            f"| {r['dev_threshold']:.3f} | {_fmt(t['pair_p'])} | {_fmt(t['pair_r'])} "
            f"| {_fmt(t['pair_f1'])} | {_fmt(t['pair_auprc'])} | {_fmt(t['pair_f1_devthr'])} "
            f"| {_fmt(t['ece'])} |"
        )
    lines.append("")
    paired = _paired(summary["runs"])
    if paired:
        lines.append("## Paired differences (rpcl − base, same seed/fold)")
        lines.append("")
        lines.append("| metric | mean | std | rpcl better in |")
        lines.append("|---|---|---|---|")
        for m, diffs in paired.items():
            ms = _mean_std(diffs)
            better = (
                sum(d < 0 for d in diffs) if m in _LOWER_IS_BETTER else sum(d > 0 for d in diffs)
            )
            lines.append(f"| {m} | {ms['mean']:+.4f} | {ms['std']:.4f} | {better}/{len(diffs)} |")
        lines.append("")
    if plot_names:
        lines.append("## Plots (test split)")
        lines.append("")
        lines.extend(f"![{name}]({name})" for name in plot_names)
        lines.append("")
    return "\n".join(lines)


_LOWER_IS_BETTER = {"ece", "ece_mass", "violation_rate", "violation_severity"}
_PAIRED = ("pair_f1", "pair_auprc", "pair_f1_devthr", "ece", "row_mrr", "violation_rate")


def _paired(runs: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    index = {(r["arm"], r["seed"], r.get("fold")): r for r in runs}
    keys = sorted({(r["seed"], r.get("fold") if r.get("fold") is not None else -1) for r in runs})
    out: dict[str, list[float]] = {}
    for seed, fold in keys:
        f = None if fold == -1 else fold
        b, p = index.get(("base", seed, f)), index.get(("rpcl", seed, f))
        if b is None or p is None:
            continue
        for m in _PAIRED:
            out.setdefault(m, []).append(p["test"][m] - b["test"][m])
    return out


#: Config keys that may differ between a finished run and a re-invocation of the study: what a
#: resume may change, except the number of epochs (a finished run is reused as it is).
_MAY_DIFFER = tuple(k for k in RESUMABLE_CHANGES if k != "epochs")


def _check_same_config(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """Refuse to reuse a finished run trained with other settings than the ones asked for."""
    details = config_diff(saved, cfg, _MAY_DIFFER)
    if details:
        raise SystemExit(
            f"{path} holds a finished run with other settings ({details}); "
            "use another --out or delete that run"
        )


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of ``python -m examples.mecpe.study``."""
    ap = argparse.ArgumentParser(
        prog="python -m examples.mecpe.study",
        description="Run base and RPCL arms over seeds (and folds), then write summary.json/.md and plots.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_training_args(ap)
    ap.add_argument("--arms", default="base,rpcl", help="comma-separated arms")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default 42,123,456)")
    ap.add_argument("--folds", default=None, help="cv folds to run (default: all)")
    ap.add_argument("--out", required=True, help="study directory")
    ap.add_argument(
        "--keep-last-checkpoint",
        action="store_true",
        help="keep each finished run's last.pt (optimizer + RNG state, only needed to extend a "
        "finished run; 640 MB per MECAD run with the hash encoder). best.pt is always kept",
    )
    ap.add_argument(
        "--summarize-only",
        action="store_true",
        help="only rebuild summary.json/.md and plots from existing runs",
    )
    ap.add_argument("--no-plots", action="store_true")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m examples.mecpe.study``."""
    args = build_parser().parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    seeds = _int_list(args.seeds)
    folds = _int_list(args.folds)
    if args.summarize_only:
        summarize(args.out, arms=arms, seeds=seeds, folds=folds, plots=not args.no_plots)
        print(f"wrote {Path(args.out) / 'summary.json'} and summary.md")
        return 0
    seeds = seeds or [42, 123, 456]
    common = training_kwargs(args)
    rpcl_args = common.pop("rpcl_args")
    protocol = common["protocol"]
    fold_list: list[int | None] = (
        list(folds if folds is not None else range(args.n_folds)) if protocol == "cv" else [None]
    )
    for fold in fold_list:
        data: DataBundle | None = None
        for seed in seeds:
            for arm in arms:
                path = run_dir(args.out, arm, seed, fold)
                kw = dict(common, rpcl_args=rpcl_args if arm == "rpcl" else {})
                cfg = TrainConfig(
                    **kw,
                    arm=arm,
                    seed=seed,
                    fold=fold,
                    out=str(path),
                    resume=True,
                    keep_last=args.keep_last_checkpoint,
                )
                done = _read_run(path)
                if done is not None:
                    _check_same_config(done["config"], cfg, path)
                    print(f"skip {path} (complete)", flush=True)
                    continue
                print(f"=== {path}", flush=True)
                if data is None:
                    data = load_data(cfg)
                run(cfg, data)
    summarize(
        args.out,
        arms=arms,
        seeds=seeds,
        folds=[f for f in fold_list if f is not None] or None,
        plots=not args.no_plots,
    )
    print(f"wrote {Path(args.out) / 'summary.json'} and summary.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
