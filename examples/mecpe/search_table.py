"""The dev table of a settings-file search: ``python -m examples.mecpe.search_table STUDY``.

One row per setting of a finished (``--dev-only``) study: the mean over its seeds of the dev
metrics that the search files' selection rules read, each setting's difference to the base
setting, the base's seed spread, and on how many seeds (paired by seed) the setting beats the
base. Only dev metrics are read; a run folder holding test metrics is an error, so the table
cannot show what a dev search must not see.

``--reuse SUMMARY:ARM=SETTING[,...]`` adds settings that already ran, with the same training
configuration, in a committed study (its ``summary.json``): only their ``dev`` sections are read,
for the seeds the search ran, after checking that the study's configuration equals every search
run's on each training option and that its arm was trained with the setting's arguments
(``--settings``). A run's dev metrics do not depend on ``--dev-only``, so this spares rerunning
what a full study already trained; the table marks such rows. Numbers differ across machines
even on the pinned CPU code path, so a reused run must also match the search runs' ``numerics``
(code path, threads and processor) where both record it; a study older than that record is
marked "machine not recorded" and is only valid if it ran on the search's machine.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "COLUMNS", "Reuse", "load_search", "parse_reuse", "reuse_runs", "search_rows", "write_markdown"
]  # fmt: skip

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

#: Summary-config keys that are study bookkeeping (which arms, seeds and folds ran; the arms'
#: RPCL options, which the setting's arguments are checked for instead), never compared.
_STUDY_KEYS = frozenset({
    "arms", "seeds", "folds", "n_runs", "rpcl_args", "rpcl_args_differ", "rpcl_view",
    "view", "view_rate", "dev_only",
})  # fmt: skip


def _not_compared() -> set[str]:
    """Config keys a reused study may differ in: what a study reusing a finished run ignores
    (a run's identity, runtime-only settings) and the study bookkeeping."""
    from .config import resumable_fields, run_fields  # torch-heavy; only for --reuse

    return run_fields("run", "arm") | resumable_fields(finished=True) | _STUDY_KEYS


@dataclass(frozen=True)
class Reuse:
    """``--reuse``: the dev metrics of ``arms`` (study arm → search setting) in ``summary``."""

    summary: Path
    arms: dict[str, str]


def parse_reuse(text: str) -> Reuse:
    """``SUMMARY.json:ARM=SETTING[,ARM=SETTING...]`` → :class:`Reuse` (``ValueError`` if not)."""
    path, _, pairs = text.rpartition(":")
    arms: dict[str, str] = {}
    for pair in pairs.split(","):
        arm, eq, setting = (part.strip() for part in pair.partition("="))
        if not (arm and eq and setting) or arm in arms or setting in arms.values():
            arms = {}
            break
        arms[arm] = setting
    if not (path and arms):
        raise ValueError(f"--reuse {text!r}: expected SUMMARY.json:ARM=SETTING[,ARM=SETTING...]")
    return Reuse(Path(path), arms)


def load_search(
    folder: Path, records: list[dict[str, Any]] | None = None
) -> dict[str, dict[int, dict[str, float]]]:
    """``{setting: {seed: dev metrics}}`` from the complete runs of a study folder (their
    ``run.json`` records are appended to ``records`` when given).

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
        if records is not None:
            if not isinstance(run.get("config"), dict):
                raise ValueError(f"{path}: no config section to check a reused study against")
            records.append(run)
    if not out:
        raise ValueError(f"{folder}: no complete run (NAME-seedN/run.json)")
    return out


def _arm_arguments(summary: Mapping[str, Any], arm: str, where: str) -> list[str]:
    """The train arguments ``arm`` of a study summary ran with (a settings line, or --arms)."""
    if "settings" in summary:
        if arm not in summary["settings"]:
            raise ValueError(f"{where}: no settings line for arm {arm!r}")
        return shlex.split(summary["settings"][arm])
    config = summary["config"]
    if arm == "rpcl" and (config.get("rpcl_args") or "rpcl_view" in config):
        # an --arms study's RPCL options are study-wide; only the plain arm is checked here
        raise ValueError(f"{where}: arm 'rpcl' ran with study-wide RPCL options; not reusable")
    return ["--arm", arm]


def reuse_runs(
    reuse: Reuse,
    runs: dict[str, dict[int, dict[str, float]]],
    records: Sequence[dict[str, Any]],
    settings: Mapping[str, str],
) -> tuple[dict[str, dict[int, dict[str, float]]], bool]:
    """``{setting: {seed: dev metrics}}`` of ``reuse``'s arms for the seeds of ``runs``, and
    whether every reused run and search run recorded its ``numerics`` (so the machine and code
    path were compared).

    ``records`` are the search runs' ``run.json`` records and ``settings`` the settings file's
    lines (name → train arguments). Raises ``ValueError`` naming the summary and what differs: a
    training option, the numerics, a setting's arguments, a missing arm or seed, or a setting
    both here and reused.
    """
    where = str(reuse.summary)
    try:
        summary = json.loads(reuse.summary.read_text(encoding="utf-8"))
        study_config, entries = summary["config"], summary["runs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{where}: not a study summary.json ({exc})") from None
    ignored = _not_compared()
    for config in (r["config"] for r in records):
        for key in sorted(study_config.keys() & config.keys() - ignored):
            if study_config[key] != config[key]:
                raise ValueError(
                    f"{where}: trained with {key}={study_config[key]!r}, the search's runs with "
                    f"{key}={config[key]!r}"
                )
    seeds = sorted({seed for by_seed in runs.values() for seed in by_seed})
    out: dict[str, dict[int, dict[str, float]]] = {}
    reused_numerics: list[dict[str, Any] | None] = []
    for arm, setting in reuse.arms.items():
        if setting in runs:
            raise ValueError(f"--reuse {where}: setting {setting!r} also ran here")
        if setting not in settings:
            raise ValueError(f"--reuse {where}: no setting {setting!r} in --settings")
        if _arm_arguments(summary, arm, where) != shlex.split(settings[setting]):
            raise ValueError(
                f"{where}: arm {arm!r} ran with other arguments than setting {setting!r} "
                f"({settings[setting]!r})"
            )
        chosen = {
            int(e["seed"]): e
            for e in entries
            if e["arm"] == arm and "fold" not in e and int(e["seed"]) in seeds
        }
        missing = [s for s in seeds if s not in chosen]
        if missing:
            raise ValueError(f"{where}: arm {arm!r} has no run with seed {missing[0]}")
        out[setting] = {s: chosen[s]["dev"] for s in seeds}
        reused_numerics += [chosen[s].get("numerics") for s in seeds]
    here = [r.get("numerics") for r in records]
    for theirs in reused_numerics:
        for ours in here:
            if theirs is None or ours is None:
                continue
            # an older run records fewer keys (no processor): compare what both record
            if any(theirs[k] != ours[k] for k in theirs.keys() & ours.keys()):
                raise ValueError(
                    f"{where}: ran with numerics {json.dumps(theirs, sort_keys=True)}, the "
                    f"search's runs with {json.dumps(ours, sort_keys=True)} (another machine or "
                    "code path: their numbers are not comparable)"
                )
    recorded = all(n is not None and "cpu" in n for n in [*reused_numerics, *here])
    return out, recorded


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
    rows: list[dict[str, Any]],
    spread: dict[str, float],
    base: str,
    title: str,
    reused: Mapping[str, str] | None = None,
) -> str:
    """The table, one line per setting, in the order of ``rows``; ``base`` first. ``reused``
    (setting → where its dev metrics come from) marks those rows ``†`` and lists them."""
    reused = reused or {}
    rows = sorted(rows, key=lambda r: r["setting"] != base)
    head = ["setting", "seeds"] + [label for _, label, _ in COLUMNS]
    lines = [f"# {title}", "", f"Dev metrics only; mean over seeds. Δ = minus `{base}`'s mean; "
             "(k/n) = better than the base on k of n seeds (same seed). Base seed spread "
             "(max − min): " + ", ".join(f"{label} {spread[k]:.4f}" for k, label, _ in COLUMNS
                                         if k in spread) + ".", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for row in rows:
        mark = " †" if row["setting"] in reused else ""
        cells = [f"`{row['setting']}`{mark}", ",".join(map(str, row["seeds"]))]
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
    if reused:
        lines += ["", "† Not rerun: the dev metrics of a full study that trained this setting "
                  "with the same configuration (checked by `search_table --reuse`):"]
        lines += [f"- `{name}`: {source}" for name, source in reused.items()]
    return "\n".join(lines) + "\n"


def _rank(order: Sequence[str]) -> Callable[[str], tuple[int, str]]:
    """Sort key: settings-file order, then (not in it) by name."""
    index = {name: i for i, name in enumerate(order)}
    return lambda name: (index.get(name, len(index)), name)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m examples.mecpe.search_table", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("study", type=Path, help="a finished --dev-only study folder")
    ap.add_argument("--base", default="base", help="the setting the others are compared with")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here (.md)")
    ap.add_argument(
        "--settings", type=Path, default=None,
        help="the search's settings file: rows in its order; needed by --reuse",
    )  # fmt: skip
    ap.add_argument(
        "--reuse", action="append", default=[], metavar="SUMMARY:ARM=SETTING[,...]",
        help="also read these arms' dev metrics from a finished study's summary.json as "
        "settings of the search (repeatable; checked: same training options, arguments and, "
        "where recorded, numerics: code path and machine)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    try:
        records: list[dict[str, Any]] = []
        runs = load_search(args.study, records)
        reused: dict[str, str] = {}
        lines: dict[str, str] = {}
        if args.settings is not None:
            from .study import read_settings  # torch-heavy; only for --settings

            lines = {arm.name: arm.text for arm in read_settings(args.settings)}
            unknown = sorted(set(runs) - set(lines))
            if unknown:
                raise ValueError(f"{args.study}: setting {unknown[0]!r} is not in {args.settings}")
        elif args.reuse:
            raise ValueError("--reuse needs --settings (to check the reused arguments)")
        for text in args.reuse:
            reuse = parse_reuse(text)
            found, recorded = reuse_runs(reuse, runs, records, lines)
            for setting, by_seed in found.items():
                runs[setting] = by_seed
                arm = next(a for a, s in reuse.arms.items() if s == setting)
                note = "" if recorded else " (machine not recorded: valid only if the same)"
                reused[setting] = f"`{reuse.summary}`, arm `{arm}`{note}"
        runs = {name: runs[name] for name in sorted(runs, key=_rank(list(lines)))}
        rows, spread = search_rows(runs, args.base)
    except ValueError as exc:
        ap.exit(2, f"search_table: {exc}\n")
    text = write_markdown(rows, spread, args.base, f"Dev search: `{args.study}`", reused)
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
