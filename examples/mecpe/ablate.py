"""Run the RPCL formulation study (ablations) on dev and tabulate dev metrics only.

Each line of ``ablations.txt`` (``name | train.py arguments``) becomes one training run per seed;
runs go to ``OUT/<name>-seed<seed>`` and are skipped when already complete, so an interrupted
study resumes. The table ``OUT/ablations.md`` (and ``ablations.json``) lists dev metrics only —
test metrics stay unread until the chosen setting runs in the three-seed study.

Usage::

    python -m examples.mecpe.ablate --data-dir ../shared/data/ecf --out runs/ablations \\
        [--parallel 1] [--seeds 42] [--only base,soft-k4-w.3] [-- common train.py args]

Common arguments after ``--`` come first, so a line's own arguments override them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LIST = Path(__file__).with_name("ablations.txt")
COLUMNS = (
    ("pair_f1", "F1@0.5"),
    ("pair_f1_devthr", "F1@best-thr"),
    ("dev_threshold", "best thr"),
    ("pair_auprc", "AUPRC"),
    ("ece", "ECE"),
    ("row_top1", "top1"),
    ("row_mrr", "MRR"),
    ("gap_mean", "gap"),
    ("violation_rate", "viol.rate"),
)


def read_list(path: Path) -> list[tuple[str, str]]:
    """``(name, arguments)`` per non-comment line; malformed lines raise naming the line."""
    out: list[tuple[str, str]] = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "|" not in line:
            raise ValueError(f"{path}:{lineno}: expected 'name | arguments', got {raw!r}")
        name, args = (part.strip() for part in line.split("|", 1))
        if not name or any(n == name for n, _ in out):
            raise ValueError(f"{path}:{lineno}: empty or duplicate name {name!r}")
        out.append((name, args))
    return out


def command(name: str, args: str, seed: int, ns: argparse.Namespace, extra: list[str]) -> list[str]:
    out = Path(ns.out) / f"{name}-seed{seed}"
    return [
        sys.executable, "-m", "examples.mecpe.train", "--dataset", "ecf", "--data-dir", ns.data_dir,
        "--seed", str(seed), "--out", str(out), "--quiet", *extra, *shlex.split(args),
    ]


def run_one(cmd: list[str], out: Path) -> int:
    if (out / "run.json").exists() and json.loads((out / "run.json").read_text()).get("complete"):
        return 0
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "w") as log:
        return subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)


def tabulate(entries: list[tuple[str, str]], seeds: list[int], ns: argparse.Namespace) -> str:
    rows, records = [], []
    head = "| setting | seed | " + " | ".join(c for _, c in COLUMNS) + " | arguments |"
    rows.append(head)
    rows.append("|" + "---|" * (len(COLUMNS) + 3))
    for name, args in entries:
        for seed in seeds:
            path = Path(ns.out) / f"{name}-seed{seed}" / "run.json"
            if not path.exists():
                continue
            run = json.loads(path.read_text())
            dev = run["dev"]
            records.append({"name": name, "seed": seed, "args": args, "dev": dev, "best_epoch": run.get("best_epoch")})
            vals = " | ".join(f"{dev.get(k, float('nan')):.4f}" for k, _ in COLUMNS)
            rows.append(f"| {name} | {seed} | {vals} | `{args}` |")
    Path(ns.out, "ablations.json").write_text(json.dumps(records, indent=1))
    if len(seeds) > 1:
        rows += ["", f"Mean over the seeds each setting has ({', '.join(map(str, seeds))}):", ""]
        rows.append("| setting | runs | " + " | ".join(c for _, c in COLUMNS) + " |")
        rows.append("|" + "---|" * (len(COLUMNS) + 2))
        for name, _args in entries:
            devs = [r["dev"] for r in records if r["name"] == name]
            if devs:
                means = (sum(d.get(k, float("nan")) for d in devs) / len(devs) for k, _ in COLUMNS)
                rows.append(f"| {name} | {len(devs)} | " + " | ".join(f"{m:.4f}" for m in means) + " |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--list", default=str(LIST), help="ablation list (name | arguments)")
    ap.add_argument("--seeds", default="42")
    ap.add_argument("--only", default=None, help="comma-separated setting names")
    ap.add_argument("--parallel", type=int, default=1, help="runs at once (1 on a 2-core machine)")
    ap.add_argument("--table-only", action="store_true", help="only tabulate existing runs")
    ns = ap.parse_args(argv)
    entries = read_list(Path(ns.list))
    if ns.only:
        keep = set(ns.only.split(","))
        unknown = keep - {n for n, _ in entries}
        if unknown:
            raise SystemExit(f"--only names unknown settings: {sorted(unknown)}")
        entries = [e for e in entries if e[0] in keep]
    seeds = [int(s) for s in ns.seeds.split(",")]
    jobs = [(command(n, a, s, ns, extra), Path(ns.out) / f"{n}-seed{s}") for n, a in entries for s in seeds]
    if ns.table_only:
        jobs = []
    with ThreadPoolExecutor(max(1, ns.parallel)) as pool:
        codes = list(pool.map(lambda job: run_one(*job), jobs))
    for (_cmd, out), code in zip(jobs, codes, strict=True):
        if code:
            print(f"FAILED ({code}): {out} — see {out / 'train.log'}", file=sys.stderr)
    table = tabulate(entries, seeds, ns)
    Path(ns.out, "ablations.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
