"""The dev table of a settings-file search: ``python -m examples.mecpe.search_table STUDY``.

One row per setting of a finished (``--dev-only``) study: the mean over its seeds of the dev
metrics that the search files' selection rules read, each setting's difference to the base
setting, the base's seed spread, and on how many seeds (paired by seed) the setting beats the
base. Only dev metrics are read; a run folder holding test metrics is an error, so the table
cannot show what a dev search must not see.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "load_search", "search_rows", "write_markdown"]

#: (dev metric key, column label, higher is better; None: no better or worse).
COLUMNS: tuple[tuple[str, str, bool | None], ...] = (
    ("pair_f1", "F1 @ 0.5", True),
    ("pair_f1_devthr", "F1 @ dev thr", True),
    ("pair_auprc", "AUPRC", True),
    ("ece", "ECE", False),
    ("nll", "NLL", False),
    ("temperature", "T (dev fit)", None),
    ("row_mrr", "row MRR", True),
)

_RUN = re.compile(r"^(?P<name>.+)-seed(?P<seed>\d+)$")


def load_search(folder: Path) -> dict[str, dict[int, dict[str, float]]]:
    """``{setting: {seed: dev metrics}}`` from the complete runs of a study folder.

    Raises:
        ValueError: a run holds test metrics (not a ``--dev-only`` run), or none is complete.
    """
    out: dict[str, dict[int, dict[str, float]]] = {}
    for path in sorted(folder.glob("*/run.json")):
        match = _RUN.match(path.parent.name)
        if match is None:
            continue
        run = json.loads(path.read_text())
        if not run.get("complete"):
            continue
        if run.get("test"):
            raise ValueError(f"{path}: holds test metrics; a search table reads dev-only runs")
        out.setdefault(match["name"], {})[int(match["seed"])] = run["dev"]
    if not out:
        raise ValueError(f"{folder}: no complete run (NAME-seedN/run.json)")
    return out


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def search_rows(
    runs: dict[str, dict[int, dict[str, float]]], base: str
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per setting: the mean of each column, its difference to ``base`` and the paired wins.

    Returns ``(rows, spread)``: ``spread[key]`` is the base's max − min over its seeds.
    """
    if base not in runs:
        raise ValueError(f"--base: no setting named {base!r}; settings: {', '.join(runs)}")
    ref = runs[base]
    spread = {
        k: max(m[k] for m in ref.values()) - min(m[k] for m in ref.values())
        for k, _, _ in COLUMNS
        if all(k in m for m in ref.values())
    }
    rows = []
    for name, by_seed in runs.items():
        row: dict[str, Any] = {"setting": name, "seeds": sorted(by_seed)}
        for key, _, higher in COLUMNS:
            mean = _mean([m[key] for m in by_seed.values() if key in m])
            row[key] = mean
            row[f"{key}_delta"] = mean - _mean([m[key] for m in ref.values() if key in m])
            paired = [s for s in by_seed if s in ref and key in by_seed[s] and key in ref[s]]
            if higher is None:
                row[f"{key}_wins"] = None
                continue
            wins = sum(
                (by_seed[s][key] > ref[s][key]) if higher else (by_seed[s][key] < ref[s][key])
                for s in paired
            )
            row[f"{key}_wins"] = (wins, len(paired))
        rows.append(row)
    return rows, spread


def write_markdown(
    rows: list[dict[str, Any]], spread: dict[str, float], base: str, title: str
) -> str:
    """The table, one line per setting, in the study's order; ``base`` first."""
    rows = sorted(rows, key=lambda r: r["setting"] != base)
    head = ["setting", "seeds"] + [label for _, label, _ in COLUMNS]
    lines = [f"# {title}", "", f"Dev metrics only; mean over seeds. Δ = minus `{base}`'s mean; "
             "(k/n) = better than the base on k of n seeds (same seed). Base seed spread "
             "(max − min): " + ", ".join(f"{label} {spread[k]:.4f}" for k, label, _ in COLUMNS
                                         if k in spread) + ".", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for row in rows:
        cells = [f"`{row['setting']}`", ",".join(map(str, row["seeds"]))]
        for key, _, _ in COLUMNS:
            value = row[key]
            if math.isnan(value):
                cells.append("–")
            elif row["setting"] == base:
                cells.append(f"{value:.4f}")
            elif row[f"{key}_wins"] is None:
                cells.append(f"{value:.4f} ({row[f'{key}_delta']:+.4f})")
            else:
                wins, n = row[f"{key}_wins"]
                cells.append(f"{value:.4f} ({row[f'{key}_delta']:+.4f}, {wins}/{n})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m examples.mecpe.search_table", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("study", type=Path, help="a finished --dev-only study folder")
    ap.add_argument("--base", default="base", help="the setting the others are compared with")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here (.md)")
    args = ap.parse_args(argv)
    try:
        rows, spread = search_rows(load_search(args.study), args.base)
    except ValueError as exc:
        ap.exit(2, f"search_table: {exc}\n")
    text = write_markdown(rows, spread, args.base, f"Dev search: `{args.study}`")
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
