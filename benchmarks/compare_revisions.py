"""The library at another git revision against this checkout, timed side by side in one process.

A refactor must not make the losses or the RPCL training step slower. Timing two checkouts one
after the other on a shared machine mixes the change with the machine's drift (on the VMs these
results come from, the same code measured minutes apart differs by up to 2x), so this script
imports both versions of ``torch_pairconf`` into one process — the other revision's package is
extracted with ``git archive`` and imported under another name — and times them in interleaved
rounds on the same inputs:

* ``miner``, ``margin_k1``, ``margin_k4``, ``consistency`` (forward and forward+backward) at the
  ``bench_losses --quick`` sizes;
* one training step of the reference model (``bench_step``'s ``ecf_mix`` profile) with
  ``RPCLoss(model.context)`` of each revision (output replay), and this checkout's
  ``RPCLoss(model.context, model=model)`` (upstream replay) next to them.

A row counts as a slowdown when this checkout's median exceeds the other revision's by more than
the larger of the two spreads (max - min of the round medians). Run from the repository root::

    python -m benchmarks.compare_revisions --rev f338e50 --threads 1
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

import torch_pairconf as current

from . import bench_step
from ._common import fmt_s, fmt_x, header, md_table, time_interleaved, write_json
from .bench_losses import make_inputs

QUICK_SIZES = ((1, 64), (8, 128), (32, 33), (32, 64), (32, 256))
OPS = ("miner", "margin_k1", "margin_k4", "consistency")
MODES = ("fwd", "fwdbwd")


def import_revision(rev: str, into: Path) -> ModuleType:
    """``torch_pairconf`` as of ``rev`` (extracted into ``into``), imported as another module."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "torch_pairconf"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    name = f"torch_pairconf_{rev.replace('.', '_').replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(
        name, into / "torch_pairconf" / "__init__.py", submodule_search_locations=[str(into / "torch_pairconf")]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def loss_fn(lib: ModuleType, op: str, inp: Any, mode: str) -> Callable[[], object]:
    """One call of ``op`` from library ``lib`` (keyword options: both APIs accept them)."""
    scores = inp.scores.clone().requires_grad_(mode == "fwdbwd")
    corrupted = inp.corrupted.clone().requires_grad_(mode == "fwdbwd")
    calls: dict[str, Callable[[], torch.Tensor]] = {
        "miner": lambda: lib.mine_hard_negatives(scores, inp.gold, inp.valid, k=1).values.sum(),
        "margin_k1": lambda: lib.pair_margin_loss(scores, inp.gold, inp.valid, margin=0.2, k=1),
        "margin_k4": lambda: lib.pair_margin_loss(scores, inp.gold, inp.valid, margin=0.2, k=4),
        "consistency": lambda: lib.consistency_loss(scores.detach(), corrupted, inp.valid, divergence="kl"),
    }
    call = calls[op]
    if mode == "fwd":
        return call
    leaf = corrupted if op == "consistency" else scores

    def fwdbwd() -> None:
        leaf.grad = None
        call().backward()

    return fwdbwd


def step_fn(lib: ModuleType | None, upstream: bool = False) -> Callable[[], None]:
    """A training step of the reference model on the ``ecf_mix`` batches with ``lib``'s RPCLoss
    (``None``: the base step without RPCL)."""
    model, base_loss, _ = bench_step.build_model(0)
    lengths = bench_step.profiles(False, 0)["ecf_mix"]
    batches = [bench_step.make_batch(ls, k, torch.device("cpu"), torch.float32, True) for k, ls in enumerate(lengths)]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rpcl = None
    if lib is not None:
        extra = {"model": model} if upstream else {}
        rpcl = lib.RPCLoss(model.context, scores_fn=lambda out: out.pair_logits, **extra)
    return bench_step.training_step(model, base_loss, batches, opt, rpcl)


def compare(fns: dict[str, Callable[[], object]], min_run_time: float, threads: int, rounds: int) -> dict[str, Any]:
    for fn in fns.values():  # warm-up (and the fused kernels' constant caches)
        for _ in range(3):
            fn()
    return time_interleaved(fns, min_run_time, threads, rounds)


def rows_for_losses(old: ModuleType, cfg: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for b, n in QUICK_SIZES:
        inp = make_inputs(b, n, torch.float32, torch.device("cpu"))
        for op in OPS:
            for mode in MODES:
                t = compare(
                    {"rev": loss_fn(old, op, inp, mode), "here": loss_fn(current, op, inp, mode)},
                    cfg.min_run_time, cfg.threads, cfg.rounds,
                )  # fmt: skip
                rows.append(_row(op, mode, f"B={b} N={n}", t))
                print(_line(rows[-1]), flush=True)
    return rows


def rows_for_step(old: ModuleType, cfg: argparse.Namespace) -> list[dict[str, Any]]:
    fns: dict[str, Callable[[], object]] = {
        "rev": step_fn(old),
        "here": step_fn(current),
        "here_upstream": step_fn(current, upstream=True),
        "base": step_fn(None),
    }
    t = compare(fns, cfg.min_run_time, cfg.threads, cfg.rounds)
    row = _row("rpcl_step", "step", "ecf_mix", t)
    row["here_upstream_s"] = t["here_upstream"]["median"]
    row["base_s"] = t["base"]["median"]
    print(_line(row), flush=True)
    return [row]


def _row(op: str, mode: str, size: str, t: dict[str, dict[str, float]]) -> dict[str, Any]:
    rev, here = t["rev"], t["here"]
    slower = here["median"] - rev["median"] > max(rev["iqr"], here["iqr"])
    return {
        "op": op,
        "mode": mode,
        "size": size,
        "rev_s": rev["median"],
        "here_s": here["median"],
        "here_over_rev": here["median"] / rev["median"],
        "rev_spread_s": rev["iqr"],
        "here_spread_s": here["iqr"],
        "slowdown": slower,
    }


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['op']:<12} {r['mode']:<7} {r['size']:<12} rev {fmt_s(r['rev_s']):>10} here "
        f"{fmt_s(r['here_s']):>10} x{r['here_over_rev']:.2f}{'  SLOWER' if r['slowdown'] else ''}"
    )


def to_markdown(payload: dict[str, Any]) -> str:
    rev = payload["settings"]["rev"]
    lines = [
        "# compare_revisions",
        "",
        f"torch {payload['torch']} · {payload['machine']['processor']} · "
        f"{payload['machine']['timing_threads']} timing thread(s) · {payload['timestamp']}",
        "",
        f"`{payload['command']}`: `torch_pairconf` at `{rev}` (rev) and this checkout (here), "
        "imported into one process and timed in interleaved rounds on the same inputs. "
        "Slowdown = here's median above rev's by more than the larger spread (max − min of the "
        "round medians).",
        "",
        f"- slowdowns: {sum(r['slowdown'] for r in payload['rows'])} of {len(payload['rows'])} rows",
        f"- median here/rev over the loss rows: {fmt_x(payload['median_ratio_losses'])}",
        "",
    ]
    table = [
        [r["op"], r["mode"], r["size"], fmt_s(r["rev_s"]), fmt_s(r["here_s"]), fmt_x(r["here_over_rev"]),
         f"{fmt_s(r['rev_spread_s'])} / {fmt_s(r['here_spread_s'])}", "yes" if r["slowdown"] else "no"]
        for r in payload["rows"]
    ]  # fmt: skip
    lines.append(md_table(["op", "mode", "size", "rev", "here", "here/rev", "spreads", "slowdown"], table))
    step = [r for r in payload["rows"] if r["op"] == "rpcl_step"]
    if step:
        s = step[0]
        lines += [
            "",
            f"Training step (ecf_mix): base {fmt_s(s['base_s'])}; RPCL at rev {fmt_s(s['rev_s'])} "
            f"(x{s['rev_s'] / s['base_s']:.2f} base), here {fmt_s(s['here_s'])} "
            f"(x{s['here_s'] / s['base_s']:.2f}), here with upstream replay "
            f"{fmt_s(s['here_upstream_s'])} (x{s['here_upstream_s'] / s['base_s']:.2f}).",
        ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rev", default="f338e50", help="the git revision to compare with")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder")
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing")
    p.add_argument("--min-run-time", type=float, default=0.3, help="seconds per Timer measurement")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    p.add_argument("--no-step", action="store_true", help="skip the training-step comparison")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    cfg = build_parser().parse_args(argv)
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        old = import_revision(cfg.rev, Path(tmp))
        rows = rows_for_losses(old, cfg)
        if not cfg.no_step:
            rows += rows_for_step(old, cfg)
    payload = header("compare_revisions", torch.device("cpu"), cfg.threads, {"rev": cfg.rev, "rounds": cfg.rounds})
    payload["rows"] = rows
    ratios = sorted(r["here_over_rev"] for r in rows if r["op"] != "rpcl_step")
    payload["median_ratio_losses"] = ratios[len(ratios) // 2] if ratios else None
    payload["elapsed_s"] = round(time.perf_counter() - t0, 1)
    write_json(cfg.out / "revisions.json", payload)
    (cfg.out / "revisions.md").write_text(to_markdown(payload))
    print(f"wrote {cfg.out / 'revisions.json'}, revisions.md in {payload['elapsed_s']} s")
    return payload


if __name__ == "__main__":
    main()
