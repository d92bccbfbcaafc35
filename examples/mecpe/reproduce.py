"""Compare two runs or two studies number by number: ``python -m examples.mecpe.reproduce``.

Given two study folders (or two run folders), every run found in both (by folder name) is
compared on every dev/test metric of its ``run.json`` and on its per-epoch history (loss and dev
metrics); timings are ignored. The report says, per run, whether the two are bit-identical and
otherwise the largest differences, with the CPU code path each was computed on
(``run.json["numerics"]``, where recorded). Used for the README's reproducibility figures::

    python -m examples.mecpe.reproduce runs/ecf-before runs/ecf-after \\
        --out examples/mecpe/results/reproducibility/ecf_redesign.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["compare_runs", "main", "run_dirs"]

_IGNORED = ("train_seconds", "seconds", "epoch")
_SHOWN = ("pair_f1", "pair_auprc", "pair_f1_devthr")


def run_dirs(folder: Path) -> dict[str, Path]:
    """``{name: run folder}``: ``folder`` itself if it holds a ``run.json``, else its sub-folders."""
    if (folder / "run.json").is_file():
        return {folder.name: folder}
    return {p.name: p for p in sorted(folder.iterdir()) if (p / "run.json").is_file()}


def load_runs(folder: Path) -> dict[str, dict[str, Any]]:
    """``{name: run}`` from the runs' ``run.json`` files, or, for a folder that holds only a study's
    ``summary.json`` (a committed result), from its per-run entries (dev/test metrics, no history)."""
    runs = {name: json.loads((path / "run.json").read_text()) for name, path in run_dirs(folder).items()}
    if runs or not (folder / "summary.json").is_file():
        return runs
    summary = json.loads((folder / "summary.json").read_text())
    return {
        f"{r['arm']}-seed{r['seed']}" + (f"-fold{r['fold']}" if r.get("fold") is not None else ""): r
        for r in summary["runs"]
    }


def _numbers(run: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for split in ("dev", "test"):
        for key, value in run.get(split, {}).items():
            if isinstance(value, (int, float)) and key not in _IGNORED:
                out[f"{split}.{key}"] = float(value)
    for epoch in run.get("history", []):
        for key, value in epoch.items():
            if isinstance(value, (int, float)) and key not in _IGNORED:
                out[f"epoch{epoch['epoch']}.{key}"] = float(value)
    return out


def compare_runs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Identical or not, the number of values compared, and the largest absolute differences."""
    na, nb = _numbers(a), _numbers(b)
    keys = sorted(set(na) & set(nb))
    diffs = {k: abs(na[k] - nb[k]) for k in keys if not (na[k] == nb[k] or (math.isnan(na[k]) and math.isnan(nb[k])))}
    return {
        "identical": not diffs and set(na) == set(nb),
        "compared": len(keys),
        "only_in_one": sorted(set(na) ^ set(nb)),
        "largest": sorted(diffs.items(), key=lambda kv: -kv[1])[:3],
        "shown": {k: (a.get("test", {}).get(k), b.get("test", {}).get(k)) for k in _SHOWN},
        "numerics": (a.get("numerics"), b.get("numerics")),
    }


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.4f}"


def _pairs(first: Path, second: Path) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """The runs to compare: the same names in two studies, or two single runs."""
    ra, rb = load_runs(first), load_runs(second)
    if len(ra) == len(rb) == 1 and set(ra) != set(rb):
        (na, a), (nb, b) = next(iter(ra.items())), next(iter(rb.items()))
        return [(f"{na} / {nb}", a, b)]
    pairs = [(name, run, rb[name]) for name, run in ra.items() if name in rb]
    if not pairs:
        raise ValueError(f"no run found in both {first} and {second}")
    return pairs


def report(first: Path, second: Path) -> str:
    """The markdown report of the runs found in both folders."""
    lines = [
        f"# `{first}` vs `{second}`",
        "",
        f"`python -m examples.mecpe.reproduce {first} {second}`",
        "",
        "| run | bit-identical | values compared | test F1 (a / b) | test AUPRC (a / b) | largest differences |",
        "|---|---|---|---|---|---|",
    ]
    numerics: set[str] = set()
    for name, a, b in _pairs(first, second):
        c = compare_runs(a, b)
        numerics.update(json.dumps(n) for n in c["numerics"])
        f1, ap = c["shown"]["pair_f1"], c["shown"]["pair_auprc"]
        largest = ", ".join(f"{k} {v:.2g}" for k, v in c["largest"]) or "–"
        lines.append(
            f"| {name} | {'yes' if c['identical'] else 'no'} | {c['compared']} | "
            f"{_fmt(f1[0])} / {_fmt(f1[1])} | {_fmt(ap[0])} / {_fmt(ap[1])} | {largest} |"
        )
    lines += ["", f"CPU code paths recorded (`run.json` numerics; null: not recorded): {', '.join(sorted(numerics))}", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m examples.mecpe.reproduce", description=__doc__.split("\n\n")[0])
    ap.add_argument("first", type=Path, help="a study folder or a run folder")
    ap.add_argument("second", type=Path, help="the same for the other side")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = ap.parse_args(argv)
    text = report(args.first, args.second)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
