"""Run a study — arms × seeds (× folds) — and summarise it: ``python -m examples.mecpe.study``.

The arms are ``--arms base,rpcl`` (the base-vs-RPCL comparison), or the lines of a settings file
(``--settings``: one arm per line, ``name | train arguments``, e.g. the dev ablations in
``ablations.txt``; a line's arguments apply on top of the study's own training options). Every
run goes to ``OUT/<arm>-seed<seed>[-fold<f>]`` and the runs are trained in this process one
after the other: a run whose ``run.json`` is complete is skipped (after checking it was trained
with the settings asked for), an interrupted one resumes from its ``last.pt``, which is deleted
once the run is complete unless ``--keep-last-checkpoint`` (``best.pt`` is always kept). Runs
that agree on every data setting share their loaded examples. Then ``summary.json``,
``summary.md`` and the plots (``gap_hist.png``, ``pr_curve.png``, ``reliability.png``) are
written to ``OUT`` (:mod:`examples.mecpe.summary`); with ``--dev-only`` no run evaluates the
test split and every table and plot is of dev. Study-level ``--rpcl-arg``, ``--view`` and
``--view-rate`` (RPCL's corrupted view) apply to the rpcl arms only.

Examples::

    python -m examples.mecpe.study --dataset ecf --data-dir ../shared/data/ecf \\
        --arms base,rpcl --seeds 42,123,456 --out runs/ecf
    python -m examples.mecpe.study --dataset mecad --data-dir ../shared/data/mecad \\
        --out runs/mecad          # protocol cv: 5 folds by TV series, hash text encoder
    python -m examples.mecpe.study --settings examples/mecpe/ablations_calibrated.txt \\
        --data-dir ../shared/data/ecf --out runs/ablations2 --seeds 42,123 --dev-only
    python -m examples.mecpe.study --out runs/ecf --summarize-only
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from . import datasets
from .checkpoint import read_run_file
from .cli import add_debug_option, guarded
from .config import ARMS, TrainConfig, add_train_options, data_key, resumable_fields
from .featurize import DataBundle, load_data
from .options import HelpFormatter, add_options, info, option, values_from
from .summary import summarize
from .train import run

__all__ = ["Arm", "StudyConfig", "build_parser", "main", "read_settings", "run_dir"]

DEFAULT_SEEDS = (42, 123, 456)


@dataclass
class StudyConfig:
    """The options of a study (its training options are :class:`TrainConfig`'s shared ones)."""

    out: str = option(None, "study directory", required=True)
    arms: tuple[str, ...] | None = option(
        None, f"comma-separated arms, each of {', '.join(ARMS)} (default: base,rpcl)"
    )
    settings: str | None = option(
        None,
        "settings file: one arm per line, 'name | train arguments' (e.g. "
        "examples/mecpe/ablations.txt); instead of --arms",
    )
    only: tuple[str, ...] | None = option(None, "run / summarise only these arms (names)")
    seeds: tuple[int, ...] | None = option(
        None, "comma-separated seeds (default 42,123,456; --summarize-only: every seed found)"
    )
    folds: tuple[int, ...] | None = option(None, "cv folds to run (default: all)")
    summarize_only: bool = option(
        False, "only rebuild summary.json/.md and plots from existing runs"
    )
    plots: bool = option(True, "write the plots")


@dataclass(frozen=True)
class Arm:
    """One arm of a study: its name and the train arguments that define it."""

    name: str
    args: tuple[str, ...]
    source: str  # where it was defined, for error messages

    @property
    def text(self) -> str:
        """The arguments as written."""
        return shlex.join(self.args)


def run_dir(out: str | Path, arm: str, seed: int, fold: int | None = None) -> Path:
    """Directory of one run of a study."""
    return Path(out) / (f"{arm}-seed{seed}" + ("" if fold is None else f"-fold{fold}"))


def read_settings(path: Path) -> list[Arm]:
    """``name | arguments`` per non-comment line; malformed lines raise naming the line."""
    out: list[Arm] = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "|" not in line:
            raise ValueError(f"{path}:{lineno}: expected 'name | arguments', got {raw!r}")
        name, args = (part.strip() for part in line.split("|", 1))
        if not name or any(a.name == name for a in out) or "/" in name:
            raise ValueError(f"{path}:{lineno}: empty, duplicate or invalid name {name!r}")
        out.append(Arm(name, tuple(shlex.split(args)), f"{path}:{lineno}"))
    if not out:
        raise ValueError(f"{path}: no setting (expected lines 'name | arguments')")
    return out


class _ArmParser(argparse.ArgumentParser):
    """Parses one arm's train arguments; errors raise ``ValueError`` naming the arm's line."""

    def __init__(self) -> None:
        super().__init__(prog="settings line", add_help=False)
        add_train_options(self, scopes=("shared", "arm"))
        self.source = ""

    def error(self, message: str) -> NoReturn:
        raise ValueError(f"{self.source}: {message}")

    def arm_values(self, arm: Arm, study: argparse.Namespace) -> dict[str, Any]:
        """The TrainConfig keywords of ``arm``: the study's options, then the arm's arguments."""
        self.source = arm.source
        ns = self.parse_args(list(arm.args), namespace=argparse.Namespace(**vars(study)))
        values = values_from(ns, TrainConfig, include=lambda f: info(f).scope in ("shared", "arm"))
        if values["arm"] != "rpcl":
            # the study's --rpcl-arg, --view and --view-rate are the rpcl arms'
            for name, unset in (("rpcl_args", {}), ("view", "repr"), ("view_rate", None)):
                if getattr(ns, name) == getattr(study, name):
                    values[name] = unset
        return values


def _arms(study: StudyConfig) -> list[Arm]:
    if study.settings is not None:
        if study.arms is not None:
            raise ValueError("give --arms or --settings, not both")
        arms = read_settings(Path(study.settings))
    else:
        names = study.arms or ARMS
        for a in names:
            if a not in ARMS:
                raise ValueError(f"unknown arm {a!r} in --arms; expected {', '.join(ARMS)}")
        arms = [Arm(a, ("--arm", a), "--arms") for a in dict.fromkeys(names)]
    if study.only is not None:
        unknown = set(study.only) - {a.name for a in arms}
        if unknown:
            raise ValueError(f"--only names unknown arms: {', '.join(sorted(unknown))}")
        arms = [a for a in arms if a.name in study.only]
    return arms


def _plan(study: StudyConfig, arms: Sequence[Arm], ns: argparse.Namespace) -> list[TrainConfig]:
    """The config of every run, in running order (fold, seed, arm); all validated up front."""
    parser = _ArmParser()
    per_arm = {a.name: parser.arm_values(a, ns) for a in arms}
    folds_of: dict[str, list[int | None]] = {}
    for a in arms:
        v = per_arm[a.name]
        cv = (v["protocol"] or datasets.get(v["dataset"]).protocol) == "cv"
        folds_of[a.name] = list(study.folds or range(v["n_folds"])) if cv else [None]
    all_folds = sorted(
        {f for fs in folds_of.values() for f in fs}, key=lambda f: -1 if f is None else f
    )
    plan = []
    for fold in all_folds:
        for seed in study.seeds or DEFAULT_SEEDS:
            for a in arms:
                if fold not in folds_of[a.name]:
                    continue
                plan.append(
                    TrainConfig(
                        **per_arm[a.name],
                        seed=seed,
                        fold=fold,
                        out=str(run_dir(study.out, a.name, seed, fold)),
                        resume=True,
                        name=a.name if study.settings is not None else None,
                    )
                )
    return plan


def _finished(cfg: TrainConfig) -> bool:
    """True for a complete run trained with ``cfg``'s settings; other settings raise."""
    path = Path(cfg.out) / "run.json"
    if not path.is_file():
        return False
    done = read_run_file(path)
    if not done.get("complete"):
        return False
    details = cfg.diff(done["config"], resumable_fields(finished=True))
    if details:
        raise ValueError(
            f"{cfg.out} holds a finished run with other settings ({details}); "
            "use another --out or delete that run"
        )
    return True


def _run_all(plan: Sequence[TrainConfig]) -> None:
    """Train every unfinished run of ``plan`` (finished ones are checked first, all of them)."""
    finished = [_finished(cfg) for cfg in plan]
    data: DataBundle | None = None
    key: tuple[Any, ...] | None = None
    for cfg, done in zip(plan, finished, strict=True):
        if done:
            print(f"skip {cfg.out} (complete)", flush=True)
            continue
        print(f"=== {cfg.out}", flush=True)
        if data is None or data_key(cfg) != key:
            data, key = load_data(cfg), data_key(cfg)
        run(cfg, data)


def _study(args: argparse.Namespace) -> int:
    study = StudyConfig(**values_from(args, StudyConfig))
    arms = _arms(study)
    names = [a.name for a in arms]
    settings = {a.name: a.text for a in arms} if study.settings is not None else None
    if not study.summarize_only:
        _run_all(_plan(study, arms, args))
    summarize(
        study.out,
        arms=names,
        seeds=study.seeds if study.summarize_only else study.seeds or DEFAULT_SEEDS,
        folds=study.folds,
        plots=study.plots,
        settings=settings,
    )
    print(f"wrote {Path(study.out) / 'summary.json'} and summary.md", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of ``python -m examples.mecpe.study`` (generated from the configs)."""
    ap = argparse.ArgumentParser(
        prog="python -m examples.mecpe.study",
        description="Run the arms of a study over seeds (and folds), then write "
        "summary.json/.md and plots.",
        formatter_class=HelpFormatter,
    )
    add_options(ap.add_argument_group("study"), StudyConfig)
    # finished study runs keep best.pt only by default (last.pt: 640 MB per MECAD run)
    add_train_options(
        ap.add_argument_group("training (every run)"),
        scopes=("shared",),
        defaults={"keep_last_checkpoint": False},
    )
    add_debug_option(ap)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m examples.mecpe.study``; bad input: one stderr line, exit 2."""
    args = build_parser().parse_args(argv)
    return guarded(lambda: _study(args), debug=args.debug, prog="study")


if __name__ == "__main__":
    sys.exit(main())
