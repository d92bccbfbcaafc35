"""The robustness study's aggregates, markdown tables and plots, from its ``robustness.json``.

:func:`aggregate_study` adds to the report (see :mod:`examples.mecpe.robustness`)

* ``aggregate[family][rate][arm][metric]``: ``{"mean", "std", "n"}`` over the arm's runs
  (sample std, 0 for one run);
* ``paired[arm][family][rate][metric]``: ``{"mean", "std", "n", "better", "tied"}`` of the
  per-run differences ``arm − baseline`` over the (seed, fold) both ran, ``better`` counting
  those where the arm is strictly better (by the metric's ``higher_is_better``) and ``tied``
  those with no difference (both absent for signed shifts and counts).

Rates are keyed by ``repr(float(rate))`` (``"0.0"``, ``"0.1"``, ...). :func:`write_report` writes
``robustness.md`` (a table per family: one row per metric and rate) and ``robustness_<family>.png``
(the table metrics against the rate, mean ± std per arm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FAMILY_TEXT", "aggregate_study", "plot_family", "rate_key", "write_markdown", "write_report"]

#: What each family does, for the tables (exact definitions: :mod:`examples.mecpe.perturb`).
FAMILY_TEXT: dict[str, str] = {
    "insert": "each utterance spawns, with probability *rate*, a distractor utterance of another "
    "conversation of the split, inserted at a random position",
    "delete": "each non-gold utterance is deleted with probability *rate*",
    "replace": "each non-gold utterance is replaced, with probability *rate*, by an utterance of "
    "another conversation of the split",
    "speaker": "the speaker labels of a *rate* fraction of the non-gold utterances are permuted "
    "among them",
}


def rate_key(rate: float) -> str:
    """The JSON key of a rate: ``repr(float(rate))``."""
    return repr(float(rate))


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    vals = np.asarray(values, dtype=np.float64)
    std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    return {"mean": float(vals.mean()), "std": std, "n": float(len(vals))}


def _arms(report: dict[str, Any]) -> list[str]:
    """The arms in the runs' order, the baseline first."""
    arms = list(dict.fromkeys(r["arm"] for r in report["runs"]))
    base = report.get("baseline")
    return ([base] if base in arms else []) + [a for a in arms if a != base]


def _view_values(run: dict[str, Any]) -> dict[tuple[str, str], dict[str, float]]:
    return {(v["family"], rate_key(v["rate"])): v["metrics"] for v in run["views"]}


def aggregate_study(report: dict[str, Any]) -> dict[str, Any]:
    """``{"aggregate": ..., "paired": ...}`` of a report's runs (see the module docstring)."""
    families, rates = report["families"], [rate_key(r) for r in report["rates"]]
    better_sign = {n: m["higher_is_better"] for n, m in report["metrics"].items()}
    arms = _arms(report)
    values = [(r, _view_values(r)) for r in report["runs"]]
    aggregate: dict[str, Any] = {}
    for family in families:
        aggregate[family] = {}
        for rate in rates:
            per_arm: dict[str, Any] = {}
            for arm in arms:
                rows = [v[(family, rate)] for r, v in values if r["arm"] == arm]
                names = dict.fromkeys(k for row in rows for k in row)
                per_arm[arm] = {
                    k: _mean_std([row[k] for row in rows if k in row]) for k in names
                }
            aggregate[family][rate] = per_arm
    paired: dict[str, Any] = {}
    base = report.get("baseline")
    index = {(r["arm"], r["seed"], r.get("fold")): v for r, v in values}
    for arm in arms:
        if arm == base or base not in arms:
            continue
        keys = [(s, f) for a, s, f in index if a == arm and (base, s, f) in index]
        paired[arm] = {}
        for family in families:
            paired[arm][family] = {}
            for rate in rates:
                cells: dict[str, Any] = {}
                ours = [index[(arm, s, f)][(family, rate)] for s, f in keys]
                theirs = [index[(base, s, f)][(family, rate)] for s, f in keys]
                names = dict.fromkeys(k for row in ours for k in row)
                for name in names:
                    diffs = [a[name] - b[name] for a, b in zip(ours, theirs, strict=True)
                             if name in a and name in b]  # fmt: skip
                    if not diffs:
                        continue
                    cell = _mean_std(diffs)
                    sign = better_sign.get(name)
                    if sign is not None:
                        cell["better"] = float(sum((d > 0) if sign else (d < 0) for d in diffs))
                        cell["tied"] = float(sum(d == 0 for d in diffs))
                    cells[name] = cell
                paired[arm][family][rate] = cells
    return {"aggregate": aggregate, "paired": paired}


# --------------------------------------------------------------------------------- markdown


#: Metrics whose values are often tiny (confidence and gap changes): shown with 3 significant
#: digits below 0.01, where 4 decimals would read 0.0000.
_SMALL = ("conf_", "gap_", "max_logit")


def _fmt(cell: dict[str, float] | None, name: str, signed: bool = False) -> str:
    """``mean ± std`` with 4 decimals (3 significant digits for small :data:`_SMALL` ones)."""
    if cell is None:
        return "–"
    size = max(abs(cell["mean"]), cell["std"])
    spec = ".2e" if name.startswith(_SMALL) and 0 < size < 0.01 else ".4f"
    mean = format(cell["mean"], ("+" if signed else "") + spec)
    return f"{mean} ± {format(cell['std'], spec)}"


def _better(cell: dict[str, float] | None) -> str:
    """``k/n`` (strictly better in k of n pairs), with the ties when there are any."""
    if cell is None or "better" not in cell:
        return "–"
    text = f"{int(cell['better'])}/{int(cell['n'])}"
    tied = int(cell.get("tied", 0))
    return text + (f" ({tied} tied)" if tied else "")


def _cell_text(text: str) -> str:
    """A markdown table cell: a literal ``|`` is escaped."""
    return text.replace("|", "\\|")


def _table_metrics(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(n, m) for n, m in report["metrics"].items() if m["table"]]


def _checks_line(report: dict[str, Any]) -> str:
    runs = report["runs"]
    parts = []
    for key, what in (
        ("clean_matches_run", "the clean numbers equal each run's run.json"),
        ("rate0_identical", "every rate-0 view equals the clean view"),
    ):
        seen = [r["checks"][key] for r in runs if key in r.get("checks", {})]
        if seen:
            parts.append(f"{what}: {sum(seen)}/{len(seen)} runs")
    return ("Checks — " + "; ".join(parts) + ".") if parts else ""


def _family_table(report: dict[str, Any], family: str) -> list[str]:
    arms = _arms(report)
    others = [a for a in arms if a in report["paired"]]
    base = report.get("baseline")
    head = "| metric | rate | " + " | ".join(arms)
    for arm in others:
        head += f" | Δ {arm} − {base} (paired) | {arm} better in"
    lines = [head + " |", "|---" * (2 + len(arms) + 2 * len(others)) + "|"]
    for name, meta in _table_metrics(report):
        for rate in report["rates"]:
            key = rate_key(rate)
            per_arm = report["aggregate"][family][key]
            cells = [_fmt(per_arm.get(arm, {}).get(name), name) for arm in arms]
            for arm in others:
                cell = report["paired"][arm][family][key].get(name)
                cells += [_fmt(cell, name, signed=True), _better(cell)]
            label = _cell_text(meta["label"])
            lines.append(f"| {label} | {float(rate):g} | " + " | ".join(cells) + " |")
    return lines


def write_markdown(report: dict[str, Any], plot_names: dict[str, str] | None = None) -> str:
    """The ``robustness.md`` text of a report (with :func:`aggregate_study`'s keys)."""
    arms = _arms(report)
    n_runs = {a: sum(r["arm"] == a for r in report["runs"]) for a in arms}
    seeds = sorted({r["seed"] for r in report["runs"]})
    thresholds = sorted({r["threshold"] for r in report["runs"]})
    lines = [
        f"# Robustness to context perturbations: {report['dataset']}, {report['split']} split",
        "",
        f"Study `{report['study']}`: {', '.join(f'{a} {n} runs' for a, n in n_runs.items())} "
        f"(seeds {', '.join(map(str, seeds))}). Every run scores the same perturbed "
        f"conversations (perturbation seed {report['perturb_seed']}); rates "
        f"{', '.join(f'{float(r):g}' for r in report['rates'])}; decision threshold "
        f"{', '.join(f'{t:g}' for t in thresholds)}. Mean ± sample std over each arm's runs; "
        f"paired differences over the (seed, fold) runs both arms have; *better in k/n*: "
        f"strictly better in k of those n pairs (ties shown).",
        "",
        "**Oracle** families use the gold labels to choose what they perturb (non-gold "
        "utterances only): diagnostics of what the model relies on, not a test-time condition.",
        "",
        "Metrics: *all pairs* — the perturbed conversations' own candidate pairs (distractors "
        "included); *original utt.* — only the pairs of original utterances that stay candidates "
        "(the clean gold pairs; rate 0 is the clean split); flip rate — decisions at the "
        "threshold that change on those pairs; |Δconf| — mean absolute confidence change of "
        "gold / non-gold pairs; row top-1 agreement and Kendall tau-b — per emotion row, "
        "between the clean and perturbed rankings; |Δgap| — change of each gold pair's "
        "gap to its row's hardest negative. `robustness.json` holds every number (P, R, signed "
        "shifts, counts, the perturbations' realised rates).",
        "",
    ]
    checks = _checks_line(report)
    if checks:
        lines += [checks, ""]
    for family in report["families"]:
        oracle = report["oracle"][family]
        lines += [
            f"## {family} ({'oracle' if oracle else 'not oracle'})",
            "",
            f"{FAMILY_TEXT.get(family, family)}.",
            "",
            *_family_table(report, family),
            "",
        ]
        if plot_names and family in plot_names:
            lines += [f"![{family}]({plot_names[family]})", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_family(report: dict[str, Any], family: str, path: Path) -> Path:
    """``path``: one panel per table metric against the rate, mean ± std per arm."""
    from .plots import ARM_COLORS

    plt = _pyplot()
    metrics = _table_metrics(report)
    cols = min(5, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.6 * rows), squeeze=False)
    rates = [float(r) for r in report["rates"]]
    arms = _arms(report)
    dodge = 0.012 * (max(rates) - min(rates) or 1.0)  # arms side by side: error bars overlap
    for ax, (name, meta) in zip(axes.flat, metrics, strict=False):
        for k, arm in enumerate(arms):
            cells = [report["aggregate"][family][rate_key(r)].get(arm, {}).get(name) for r in rates]
            shift = (k - (len(arms) - 1) / 2) * dodge
            xs = [r + shift for r, c in zip(rates, cells, strict=True) if c is not None]
            ys = [c["mean"] for c in cells if c is not None]
            err = [c["std"] for c in cells if c is not None]
            if xs:
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, linewidth=1.5,
                            color=ARM_COLORS.get(arm, f"C{k + 2}"), label=arm)  # fmt: skip
        ax.set_title(meta["label"], fontsize=9)
        ax.set_xlabel("rate", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    oracle = "oracle" if report["oracle"][family] else "not oracle"
    fig.suptitle(
        f"{family} ({oracle}): {report['dataset']} {report['split']}, mean ± std over runs",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out: Path, *, plots: bool = True) -> dict[str, str]:
    """Write ``robustness.md`` (and ``robustness_<family>.png`` with ``plots``) into ``out``;
    returns the PNG names per family."""
    out.mkdir(parents=True, exist_ok=True)
    names: dict[str, str] = {}
    if plots:
        for family in report["families"]:
            names[family] = plot_family(report, family, out / f"robustness_{family}.png").name
    (out / "robustness.md").write_text(write_markdown(report, names), encoding="utf-8")
    return names
