"""Study summaries: ``summary.json``, ``summary.md`` and the plots, from finished runs.

Every table is derived from the metric registry (:mod:`examples.mecpe.metrics`): the rows of
the mean ± std tables are the ``summary`` metrics, the paired-differences table holds the
``paired`` ones (better = their ``higher_is_better``), and the per-run / per-setting tables have
one column per metric and split listed in its ``columns``. Test sections appear only when every
run evaluated the test split (never for ``--dev-only`` runs).

``summary.json``::

    {"dataset": "ecf", "modalities": "T", "config": {...},
     "runs": [{"arm": "base", "seed": 42, ["fold": 0,] "dev": {...}, ["test": {...},]
               "dev_threshold": 0.41, ["numerics": {...}]}, ...],
     "aggregate": {arm: {metric: {"mean": ..., "std": ...}}},
     "delta": {metric: mean_rpcl - mean_base}}

(``"settings": {arm: "train arguments"}`` is added for a study read from a settings file.)
``aggregate`` holds the test metrics under their plain names and the dev metrics prefixed
``dev_``; ``std`` is the sample standard deviation over the arm's runs (0 for a single run).
An arm is a run's ``name`` (a settings-file line) or, without one, its ``arm``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .checkpoint import read_run_file, write_json
from .config import run_fields

__all__ = ["aggregate", "collect_runs", "run_label", "summarize", "write_markdown"]

#: Config keys that are not study-level settings (set per run or per arm, or runtime only).
_PER_RUN = run_fields("run", "arm") | {
    "rpcl_args", "view", "view_rate", "quiet", "threads", "device"
}  # fmt: skip


def run_label(config: dict[str, Any]) -> str:
    """The arm a run belongs to in a study: its ``name``, else its ``arm``."""
    return str(config.get("name") or config["arm"])


def collect_runs(
    out: str | Path,
    *,
    arms: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    folds: Sequence[int] | None = None,
) -> list[tuple[Path, dict[str, Any]]]:
    """Complete runs under ``out`` (optionally only these arms / seeds / folds), sorted by arm
    (in the order of ``arms``), seed and fold. A ``run.json`` of another format raises."""
    found: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted(Path(out).iterdir()) if Path(out).is_dir() else []:
        if not (path / "run.json").is_file():
            continue
        result = read_run_file(path / "run.json")
        if not result.get("complete"):
            continue
        cfg = result["config"]
        if arms is not None and run_label(cfg) not in arms:
            continue
        if seeds is not None and cfg["seed"] not in seeds:
            continue
        if folds is not None and cfg.get("fold") not in folds:
            continue
        found.append((path, result))
    rank = {a: i for i, a in enumerate(arms or ("base", "rpcl"))}

    def key(item: tuple[Path, dict[str, Any]]) -> tuple[int, str, int, int]:
        c = item[1]["config"]
        fold = -1 if c.get("fold") is None else int(c["fold"])
        return (rank.get(run_label(c), len(rank)), run_label(c), int(c["seed"]), fold)

    return sorted(found, key=key)


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    vals = [float(v) for v in values]
    mean = float(np.mean(vals)) if vals else math.nan
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std}


def _splits(runs: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """``("test", "dev")`` when every run has a test section, else ``("dev",)``."""
    return ("test", "dev") if runs and all("test" in r for r in runs) else ("dev",)


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and sample std of every numeric test metric (and ``dev_``-prefixed dev metric) per arm."""
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_arm.setdefault(r["arm"], []).append(r)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for arm, rs in by_arm.items():
        agg: dict[str, dict[str, float]] = {}
        for split in _splits(runs):
            prefix = "" if split == "test" else "dev_"
            names = dict.fromkeys(k for r in rs for k, v in r[split].items() if _is_number(v))
            for name in names:
                agg[prefix + name] = _mean_std([r[split][name] for r in rs if name in r[split]])
        out[arm] = agg
    return out


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _study_config(configs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    first = configs[0]
    config: dict[str, Any] = {
        k: v for k, v in first.items() if k not in _PER_RUN and all(c.get(k) == v for c in configs)
    }
    rpcl_cfgs = [c["rpcl_args"] for c in configs if c["arm"] == "rpcl"]
    config["rpcl_args"] = rpcl_cfgs[0] if rpcl_cfgs else {}
    if any(c != config["rpcl_args"] for c in rpcl_cfgs):
        config["rpcl_args_differ"] = True
    # RPCL's corrupted view, when an arm uses an input-level one (files without it used repr)
    views = sorted(
        {(c.get("view", "repr"), c.get("view_rate")) for c in configs if c["arm"] == "rpcl"},
        key=str,
    )
    if any(v != "repr" for v, _ in views):
        config["rpcl_view"] = [{"view": v, "view_rate": r} for v, r in views]
    config["arms"] = list(dict.fromkeys(run_label(c) for c in configs))
    config["seeds"] = sorted({int(c["seed"]) for c in configs})
    folds_seen = sorted({c["fold"] for c in configs if c.get("fold") is not None})
    if folds_seen:
        config["folds"] = folds_seen
    config["n_runs"] = {a: sum(run_label(c) == a for c in configs) for a in config["arms"]}
    return config


def _run_entry(result: dict[str, Any]) -> dict[str, Any]:
    c = result["config"]
    entry: dict[str, Any] = {"arm": run_label(c), "seed": int(c["seed"])}
    if c.get("fold") is not None:
        entry["fold"] = int(c["fold"])
    entry["dev"] = result["dev"]
    if "test" in result:
        entry["test"] = result["test"]
    entry["dev_threshold"] = result["dev_threshold"]
    if "numerics" in result:  # the code path and the machine (numbers depend on both)
        entry["numerics"] = result["numerics"]
    return entry


def summarize(
    out: str | Path,
    *,
    arms: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    folds: Sequence[int] | None = None,
    plots: bool = True,
    settings: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write ``summary.json``, ``summary.md`` and the plots for the complete runs under ``out``.

    ``settings`` (arm → train arguments, a settings-file study) switches the tables to one row
    per setting and adds the arguments.
    """
    out = Path(out)
    found = collect_runs(out, arms=arms, seeds=seeds, folds=folds)
    if not found:
        raise FileNotFoundError(f"no complete run (run.json) under {out}")
    configs = [r["config"] for _, r in found]
    runs = [_run_entry(r) for _, r in found]
    agg = aggregate(runs)
    delta: dict[str, float] = {}
    if "base" in agg and "rpcl" in agg:
        delta = {
            m: agg["rpcl"][m]["mean"] - agg["base"][m]["mean"]
            for m in agg["base"]
            if m in agg["rpcl"]
        }
    summary: dict[str, Any] = {
        "dataset": configs[0]["dataset"],
        "modalities": configs[0]["modalities"],
        "config": _study_config(configs),
        "runs": runs,
        "aggregate": agg,
        "delta": delta,
    }
    if settings is not None:
        summary["settings"] = {a: settings[a] for a in agg if a in settings}
    write_json(summary, out / "summary.json")
    plot_files: list[Path] = []
    if plots:
        from .plots import make_plots

        by_arm: dict[str, list[Path]] = {}
        for path, r in found:
            by_arm.setdefault(run_label(r["config"]), []).append(path)
        plot_files = make_plots(by_arm, out, split=_splits(runs)[0])
    (out / "summary.md").write_text(write_markdown(summary, [p.name for p in plot_files]))
    return summary


# ---------------------------------------------------------------------------------- markdown


def _fmt(x: object, spec: str = ".4f") -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "–"
    return "nan" if math.isnan(x) else format(float(x), spec)


def _columns(splits: Sequence[str]) -> list[tuple[str, metrics.Metric]]:
    """``(split, metric)`` columns of the per-run / per-setting tables (``run`` first)."""
    reg = metrics.registered()
    return [("run", m) for m in reg if "run" in m.columns] + [
        (s, m) for s in ("dev", "test") if s in splits for m in reg if s in m.columns
    ]


def _cell(run: dict[str, Any], split: str, m: metrics.Metric) -> float | None:
    """A run's value of ``m`` on ``split`` (``run``: a run metric, kept in every split)."""
    value = (run["dev"] if split == "run" else run.get(split, {})).get(m.name)
    return float(value) if _is_number(value) else None


def _header(cols: Sequence[tuple[str, metrics.Metric]]) -> str:
    return " | ".join(m.label if s == "run" else f"{s} {m.label}" for s, m in cols)


def _mean_tables(summary: dict[str, Any], splits: Sequence[str]) -> list[str]:
    """Metric rows × arm columns (mean ± std), one table per split."""
    agg, delta = summary["aggregate"], summary["delta"]
    arms = list(agg)
    lines: list[str] = []
    for split in splits:
        prefix = "" if split == "test" else "dev_"
        names = [prefix + m.name for m in metrics.registered() if m.summary]
        names = [n for n in names if any(n in agg[a] for a in arms)]
        lines += [f"## {split.capitalize()} metrics (mean ± sample std over runs)", ""]
        lines.append("| metric | " + " | ".join(arms) + (" | Δ rpcl − base |" if delta else " |"))
        lines.append("|---" * (len(arms) + 1 + bool(delta)) + "|")
        for n in names:
            cells = [
                f"{_fmt(agg[a][n]['mean'])} ± {_fmt(agg[a][n]['std'])}" if n in agg[a] else "–"
                for a in arms
            ]
            row = f"| {n} | " + " | ".join(cells)
            row += f" | {delta[n]:+.4f} |" if delta and n in delta else " |"
            lines.append(row)
        lines.append("")
    return lines


def _setting_table(summary: dict[str, Any], splits: Sequence[str]) -> list[str]:
    """Arm rows × metric columns (mean over the arm's runs), with each setting's arguments."""
    cols = _columns(splits)
    settings = summary.get("settings", {})
    lines = [f"## {' and '.join(splits).capitalize()} metrics per setting (mean over its runs)", ""]
    lines.append(f"| setting | runs | {_header(cols)} | arguments |")
    lines.append("|---" * (len(cols) + 3) + "|")
    for arm in summary["aggregate"]:
        rs = [r for r in summary["runs"] if r["arm"] == arm]
        cells = []
        for s, m in cols:
            vals = [v for r in rs if (v := _cell(r, s, m)) is not None]
            cells.append(_fmt(float(np.mean(vals)), m.fmt) if vals else "–")
        lines.append(
            f"| {arm} | {len(rs)} | " + " | ".join(cells) + f" | `{settings.get(arm, '')}` |"
        )
    return [*lines, ""]


def _per_run_table(summary: dict[str, Any], splits: Sequence[str]) -> list[str]:
    cols = _columns(splits)
    has_fold = any("fold" in r for r in summary["runs"])
    lines = ["## Per run", ""]
    lines.append("| arm | seed |" + (" fold |" if has_fold else "") + f" {_header(cols)} |")
    lines.append("|---" * (len(cols) + 2 + has_fold) + "|")
    for r in summary["runs"]:
        cells = [_fmt(_cell(r, s, m), m.fmt) for s, m in cols]
        fold = f" {r.get('fold', '')} |" if has_fold else ""
        lines.append(f"| {r['arm']} | {r['seed']} |{fold} " + " | ".join(cells) + " |")
    return [*lines, ""]


def _paired(runs: Sequence[dict[str, Any]], split: str) -> dict[str, list[float]]:
    """Per paired metric: rpcl − base of each (seed, fold) both arms ran."""
    index = {(r["arm"], r["seed"], r.get("fold")): r for r in runs}
    keys = sorted({(r["seed"], -1 if r.get("fold") is None else r["fold"]) for r in runs})
    out: dict[str, list[float]] = {}
    for seed, fold in keys:
        f = None if fold == -1 else fold
        b, p = index.get(("base", seed, f)), index.get(("rpcl", seed, f))
        if b is None or p is None:
            continue
        for m in metrics.registered():
            if m.paired and m.name in p[split] and m.name in b[split]:
                out.setdefault(m.name, []).append(p[split][m.name] - b[split][m.name])
    return out


def _paired_table(summary: dict[str, Any], split: str) -> list[str]:
    paired = _paired(summary["runs"], split)
    if not paired:
        return []
    lines = [f"## Paired differences ({split}, rpcl − base, same seed/fold)", ""]
    lines += ["| metric | mean | std | rpcl better in |", "|---|---|---|---|"]
    for name, diffs in paired.items():
        ms = _mean_std(diffs)
        lower = metrics.get(name).higher_is_better is False
        better = sum(d < 0 for d in diffs) if lower else sum(d > 0 for d in diffs)
        lines.append(f"| {name} | {ms['mean']:+.4f} | {ms['std']:.4f} | {better}/{len(diffs)} |")
    return [*lines, ""]


def write_markdown(summary: dict[str, Any], plot_names: Sequence[str] = ()) -> str:
    """The ``summary.md`` text of a summary dict."""
    cfg, splits = summary["config"], _splits(summary["runs"])
    lines = [f"# MECPE study: {summary['dataset']} ({summary['modalities']})", ""]
    lines.append(
        f"{sum(cfg['n_runs'].values())} runs; arms {', '.join(summary['aggregate'])}; seeds "
        f"{', '.join(map(str, cfg['seeds']))}"
        + (f"; folds {', '.join(map(str, cfg['folds']))}" if "folds" in cfg else "")
        + f"; protocol {cfg.get('protocol', '?')}; text encoder {cfg.get('text_encoder', '?')}; "
        f"epochs {cfg.get('epochs', '?')}; threshold {cfg.get('threshold', '?')}; "
        f"model selection: dev Pair F1"
        + ("; dev only (the test split was not evaluated)." if splits == ("dev",) else ".")
    )
    views = ", ".join(
        v["view"] + ("" if v["view_rate"] is None else f" (rate {v['view_rate']:g})")
        for v in cfg.get("rpcl_view", [])
    )
    lines += [
        f"RPCL arguments: `{json.dumps(cfg.get('rpcl_args', {}))}`"
        + (f"; corrupted view: {views}" if views else ""),
        "",
    ]
    if "settings" in summary:
        lines += _setting_table(summary, splits)
    else:
        lines += _mean_tables(summary, splits)
    lines += _per_run_table(summary, splits)
    lines += _paired_table(summary, splits[0])
    if plot_names:
        lines += [f"## Plots ({splits[0]} split)", ""]
        lines += [f"![{name}]({name})" for name in plot_names]
        lines.append("")
    return "\n".join(lines)
