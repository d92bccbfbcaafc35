"""Time and memory of the miner and the losses against a Python-loop baseline and a one-pass floor.

For every size ``(B, N = M)`` and op (``miner`` = :func:`torch_pairconf.mine_hard_negatives`
with k=1, ``margin_k1`` / ``margin_k4`` = :class:`torch_pairconf.PairMarginLoss`, ``consistency``
= :class:`torch_pairconf.ConsistencyLoss`; the rank-only candidates ``ap_batch`` / ``ap_row`` =
:class:`torch_pairconf.PairAPLoss`, ``auc_batch`` / ``auc_row`` =
:class:`torch_pairconf.PairAUCLoss` (squared hinge, every negative), ``listwise_all`` =
:class:`torch_pairconf.PairListwiseLoss` with ``k=None``, ``relative_mean`` =
:class:`torch_pairconf.PairRelativeMarginLoss` with ``anchor="mean"``), in ``fwd`` and
``fwdbwd`` mode:

* ``ours``: the library call (``fwdbwd``: forward, then ``backward`` of the scalar loss, or of
  ``values.sum()`` for the miner; ``.grad`` is dropped at the end of each call, so no
  accumulation is timed and the peak memory counts the gradient on CPU and CUDA alike).
  ``fwd`` runs on inputs that do not require grad.
* ``loop``: the per-row Python implementation of ``benchmarks/loop_reference.py``. When
  ``B * N`` exceeds ``--loop-max-rows`` an evenly strided subset of the rows is timed and the
  time is scaled by ``B * N / rows_timed`` (``loop_extrapolated: true`` in the row).
* ``floor``: one fused pass over the same tensor, ``scores.masked_fill(~valid, -inf).amax(-1)``
  (``fwdbwd``: the same with ``scores.requires_grad_()``, then ``.sum().backward()``).

Times are medians of ``torch.utils.benchmark.Timer.blocked_autorange`` blocks, all in one process
and one thread count (``--threads``, default 1: the benchmark machine is shared). Peak extra
memory of ``ours`` (and of the floor) is one call's peak allocation above what was live before
it, as a multiple of the ``(B, N, M)`` input's bytes; see :func:`benchmarks._common.peak_extra_bytes`
for the method (CPU: ``torch.profiler`` memory events; CUDA: ``max_memory_allocated``).

Run from the repository root::

    python -m benchmarks.bench_losses --quick
    python -m benchmarks.bench_losses                 # full grid, a few minutes on 2 cores
    python -m benchmarks.bench_losses --device cuda --dtype float32 bfloat16
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torch_pairconf import (
    ConsistencyLoss,
    PairAPLoss,
    PairAUCLoss,
    PairListwiseLoss,
    PairMarginLoss,
    PairRelativeMarginLoss,
    mine_hard_negatives,
    valid_from_lengths,
)

from ._common import (
    DTYPES,
    fmt_s,
    fmt_x,
    header,
    md_table,
    peak_extra_bytes,
    resolve_device,
    time_fn,
    time_interleaved,
    write_json,
)
from .loop_reference import (
    Row,
    all_rows,
    loop_consistency_loss,
    loop_mine_hard_negatives,
    loop_pair_ap_loss,
    loop_pair_auc_loss,
    loop_pair_listwise_loss,
    loop_pair_margin_loss,
    loop_pair_relative_margin_loss,
)

#: The ops the speed and memory targets were set for (the RPCL terms) ...
TARGET_OPS = ("miner", "margin_k1", "margin_k4", "consistency")
#: ... and the rank-only ranking candidates, reported next to them (and checked for O(N^3) memory).
RANKING_OPS = ("ap_batch", "ap_row", "auc_batch", "auc_row", "listwise_all", "relative_mean")
OPS = TARGET_OPS + RANKING_OPS
MODES = ("fwd", "fwdbwd")
FULL_B = (1, 8, 32, 128)
FULL_N = (8, 33, 64, 128, 256)
QUICK_SIZES = ((1, 64), (32, 33), (32, 64), (8, 128), (32, 256))

#: Row keys every result row has (checked by the smoke test).
ROW_KEYS = (
    "op",
    "mode",
    "B",
    "N",
    "M",
    "dtype",
    "device",
    "ours_s",
    "ours_spread_s",
    "loop_s",
    "floor_s",
    "ours_over_loop",
    "ours_over_floor",
    "loop_extrapolated",
    "loop_rows_timed",
    "loop_rows_total",
    "extra_mem_x",
    "floor_extra_mem_x",
)


@dataclass
class Config:
    """Measurement settings."""

    min_run_time: float = 0.1
    rounds: int = 3
    loop_min_run_time: float = 0.3
    loop_max_rows: int = 1056
    threads: int = 1
    memory: bool = True
    seed: int = 0


@dataclass
class Inputs:
    scores: torch.Tensor
    corrupted: torch.Tensor
    gold: torch.Tensor
    valid: torch.Tensor


def make_inputs(b: int, n: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> Inputs:
    """ECF-like padded pair matrices ``(b, n, n)``.

    Conversation lengths are uniform in ``[ceil(n / 4), n]`` (the first one is ``n``), ``valid``
    is every pair of real utterances, about 30% of real rows are emotions with one gold cause at
    most 3 utterances back, scores are ``N(0, 2²)`` logits and the corrupted view adds ``N(0, 0.5²)``.
    Padding scores are NaN, which the library must ignore.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + b * 1_009 + n)
    lo = max(1, math.ceil(n / 4))
    lengths = torch.randint(lo, n + 1, (b,), generator=g)
    lengths[0] = n
    valid = valid_from_lengths(lengths, n)
    real = torch.arange(n)[None, :] < lengths[:, None]
    emotion = (torch.rand(b, n, generator=g) < 0.3) & real
    back = torch.randint(0, 4, (b, n), generator=g)
    cause = (torch.arange(n)[None, :] - back).clamp_min(0)
    gold = torch.zeros(b, n, n, dtype=torch.bool)
    gold.scatter_(-1, cause.unsqueeze(-1), emotion.unsqueeze(-1))
    scores = torch.randn(b, n, n, generator=g) * 2
    corrupted = scores + 0.5 * torch.randn(b, n, n, generator=g)
    scores = scores.masked_fill(~valid, float("nan"))
    corrupted = corrupted.masked_fill(~valid, float("nan"))
    return Inputs(
        scores.to(device, dtype),
        corrupted.to(device, dtype),
        gold.to(device),
        valid.to(device),
    )


def loop_rows(b: int, n: int, max_rows: int) -> tuple[list[Row] | None, int]:
    """Rows the loop baseline runs on (``None``: all) and how many that is."""
    total = b * n
    if total <= max_rows:
        return None, total
    stride = math.ceil(total / max_rows)
    rows = all_rows(b, n)[::stride]
    return rows, len(rows)


def _ranking_pair(
    op: str,
) -> tuple[torch.nn.Module, Callable[[torch.Tensor, torch.Tensor, torch.Tensor, list[Row] | None], torch.Tensor]]:
    """The library module of a ranking op and its loop baseline ``(scores, gold, valid, rows)``."""
    if op.startswith("ap_"):
        scope = op.removeprefix("ap_")
        return PairAPLoss(scope, temperature=1.0), lambda s, g, v, r: loop_pair_ap_loss(
            s, g, v, scope=scope, temperature=1.0, rows=r
        )
    if op.startswith("auc_"):
        scope = op.removeprefix("auc_")
        return PairAUCLoss(scope, margin=1.0), lambda s, g, v, r: loop_pair_auc_loss(
            s, g, v, scope=scope, margin=1.0, rows=r
        )
    if op == "listwise_all":
        return PairListwiseLoss(None), lambda s, g, v, r: loop_pair_listwise_loss(s, g, v, rows=r)
    if op == "relative_mean":
        return PairRelativeMarginLoss(1.0, anchor="mean"), lambda s, g, v, r: (
            loop_pair_relative_margin_loss(s, g, v, margin=1.0, anchor="mean", rows=r)
        )
    raise ValueError(f"unknown ranking op {op!r}; choose from {RANKING_OPS}")


def _closures(
    op: str, mode: str, inp: Inputs, rows: list[Row] | None
) -> tuple[Callable[[], None], Callable[[], None]]:
    """``(ours, loop)`` zero-argument callables for one op and mode."""
    gold, valid = inp.gold, inp.valid
    bwd = mode == "fwdbwd"
    # The tensor that receives gradient: the corrupted view for the consistency loss.
    x = (inp.corrupted if op == "consistency" else inp.scores).detach().clone()
    x.requires_grad_(bwd)
    clean = inp.scores

    if op == "miner":

        def ours_out() -> torch.Tensor:
            return mine_hard_negatives(x, gold, valid, k=1).values.sum()

        def loop_out() -> torch.Tensor:
            return loop_mine_hard_negatives(x, gold, valid, 1, rows=rows)[0].sum()

    elif op in ("margin_k1", "margin_k4"):
        k = 1 if op == "margin_k1" else 4
        crit = PairMarginLoss(margin=0.2, k=k, space="prob")

        def ours_out() -> torch.Tensor:
            loss: torch.Tensor = crit(x, gold, valid)
            return loss

        def loop_out() -> torch.Tensor:
            return loop_pair_margin_loss(x, gold, valid, margin=0.2, k=k, space="prob", rows=rows)

    elif op in RANKING_OPS:
        ranking, loop_fn = _ranking_pair(op)

        def ours_out() -> torch.Tensor:
            loss: torch.Tensor = ranking(x, gold, valid)
            return loss

        def loop_out() -> torch.Tensor:
            return loop_fn(x, gold, valid, rows)

    elif op == "consistency":
        cons = ConsistencyLoss(divergence="kl", detach_clean=True)

        def ours_out() -> torch.Tensor:
            loss: torch.Tensor = cons(clean, x, valid)
            return loss

        def loop_out() -> torch.Tensor:
            return loop_consistency_loss(clean, x, valid, detach_clean=True, rows=rows)

    else:
        raise ValueError(f"unknown op {op!r}; choose from {OPS}")

    def run(out_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        if not bwd:

            def fwd() -> None:
                out_fn()

            return fwd

        def step() -> None:
            out_fn().backward()
            x.grad = (
                None  # freed inside the call: the peak counts it, the next call's base does not
            )

        return step

    return run(ours_out), run(loop_out)


def _floor(mode: str, inp: Inputs) -> Callable[[], None]:
    valid = inp.valid
    x = inp.scores.detach().clone()
    if mode == "fwd":

        def fwd() -> None:
            x.masked_fill(~valid, -math.inf).amax(-1)

        return fwd
    x.requires_grad_()

    def step() -> None:
        x.masked_fill(~valid, -math.inf).amax(-1).sum().backward()
        x.grad = None

    return step


def bench_size(
    b: int,
    n: int,
    dtype: torch.dtype,
    device: torch.device,
    ops: Sequence[str] = OPS,
    modes: Sequence[str] = MODES,
    cfg: Config | None = None,
) -> list[dict[str, Any]]:
    """All result rows of one ``(B, N)`` size and dtype."""
    cfg = cfg or Config()
    inp = make_inputs(b, n, dtype, device, cfg.seed)
    input_bytes = inp.scores.numel() * inp.scores.element_size()
    rows, rows_timed = loop_rows(b, n, cfg.loop_max_rows)
    scale = (b * n) / rows_timed
    out: list[dict[str, Any]] = []
    for mode in modes:
        fns: dict[str, Callable[[], None]] = {"floor": _floor(mode, inp)}
        loops: dict[str, Callable[[], None]] = {}
        for op in ops:
            fns[op], loops[op] = _closures(op, mode, inp, rows)
        # ours and the floor are timed in interleaved rounds (median over rounds) so that load
        # from other processes hits both alike; the much slower loop gets one measurement.
        times = time_interleaved(fns, cfg.min_run_time, cfg.threads, cfg.rounds)
        floor_t = times["floor"]
        floor_mem = peak_extra_bytes(fns["floor"], device) / input_bytes if cfg.memory else None
        for op in ops:
            ours_t = times[op]
            loop_t = time_fn(loops[op], cfg.loop_min_run_time, cfg.threads)
            loop_s = loop_t["median"] * scale
            mem = peak_extra_bytes(fns[op], device) / input_bytes if cfg.memory else None
            out.append(
                {
                    "op": op,
                    "mode": mode,
                    "B": b,
                    "N": n,
                    "M": n,
                    "dtype": str(dtype).removeprefix("torch."),
                    "device": device.type,
                    "ours_s": ours_t["median"],
                    "ours_spread_s": ours_t["iqr"],
                    "loop_s": loop_s,
                    "floor_s": floor_t["median"],
                    "ours_over_loop": ours_t["median"] / loop_s,
                    "ours_over_floor": ours_t["median"] / floor_t["median"],
                    "loop_extrapolated": rows is not None,
                    "loop_rows_timed": rows_timed,
                    "loop_rows_total": b * n,
                    "extra_mem_x": mem,
                    "floor_extra_mem_x": floor_mem,
                }
            )
    return out


# ----------------------------------------------------------------------------- targets


def evaluate_targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, measured on the float32 rows of this run (missing data → ``None``)."""
    f32 = [r for r in rows if r["dtype"] == "float32"]
    out: list[dict[str, Any]] = []

    hit = [
        r
        for r in f32
        if r["op"] == "margin_k1" and r["mode"] == "fwdbwd" and (r["B"], r["N"]) == (32, 33)
    ]
    value = hit[0]["ours_over_loop"] if hit else None
    out.append(
        {
            "target": "ours/loop <= 0.02, margin_k1 fwd+bwd, B=32 N=33",
            "value": value,
            "threshold": 0.02,
            "pass": None if value is None else value <= 0.02,
        }
    )
    for op in ("miner", "margin_k1"):
        for mode in MODES:
            sel = [r for r in f32 if r["op"] == op and r["mode"] == mode and r["N"] >= 64]
            worst = max(sel, key=lambda r: r["ours_over_floor"]) if sel else None
            fails = [f"B={r['B']} N={r['N']}" for r in sel if r["ours_over_floor"] > 3]
            out.append(
                {
                    "target": f"ours/floor <= 3, {op} {mode}, every size with N >= 64",
                    "value": None if worst is None else worst["ours_over_floor"],
                    "worst_at": None if worst is None else f"B={worst['B']} N={worst['N']}",
                    "failing": fails,
                    "threshold": 3.0,
                    "pass": None if worst is None else not fails,
                }
            )
    mem = [r for r in f32 if r["mode"] == "fwdbwd" and r["extra_mem_x"] is not None]
    for op in TARGET_OPS:
        sel = [r for r in mem if r["op"] == op]
        worst = max(sel, key=lambda r: r["extra_mem_x"]) if sel else None
        out.append(
            {
                "target": f"peak extra memory <= 4x input, {op}, fwd+bwd",
                "value": None if worst is None else worst["extra_mem_x"],
                "worst_at": None if worst is None else f"B={worst['B']} N={worst['N']}",
                "threshold": 4.0,
                "pass": None if worst is None else worst["extra_mem_x"] <= 4.0,
            }
        )
    # O(N^3) check, every op: the multiple of the input (itself O(N^2)) must not grow with N.
    growth: list[str] = []
    for op in OPS:
        for b in sorted({r["B"] for r in mem}):
            sel = sorted((r for r in mem if r["op"] == op and r["B"] == b), key=lambda r: r["N"])
            big = [r for r in sel if r["N"] >= 64]
            if len(big) >= 2 and big[-1]["extra_mem_x"] > 1.5 * big[0]["extra_mem_x"]:
                growth.append(
                    f"{op} B={b}: {big[0]['extra_mem_x']:.2f}x -> {big[-1]['extra_mem_x']:.2f}x"
                )
    out.append(
        {
            "target": "no O(N^3) memory: extra-memory multiple flat in N (N >= 64, x1.5 tolerance)",
            "value": growth,
            "pass": not growth if mem else None,
        }
    )
    return out


# ----------------------------------------------------------------------------- output


def to_markdown(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    lines = [
        "# bench_losses",
        "",
        f"torch {payload['torch']} · {m['processor']} · {m['cpu_count']} CPUs · "
        f"{m['timing_threads']} timing thread(s) · {payload['timestamp']}",
        "",
        f"`{payload['command']}`",
        "",
        "Medians of `Timer.blocked_autorange`. loop times marked `*` are extrapolated from a "
        "strided subset of rows (`loop_extrapolated`). mem = peak extra memory of ours, "
        "fwd+bwd rows include the input's `.grad`, as a multiple of the (B, N, M) input.",
        "",
        "## Targets",
        "",
    ]
    for t in payload["targets"]:
        mark = {True: "PASS", False: "**MISS**", None: "n/a"}[t["pass"]]
        v = t["value"]
        vs = ", ".join(v) if isinstance(v, list) else fmt_x(v)
        extra = f" (worst at {t['worst_at']})" if t.get("worst_at") else ""
        fails = t.get("failing")
        if fails:
            extra += f"; over at: {', '.join(fails)}"
        lines.append(f"- {mark} — {t['target']}: {vs or 'none'}{extra}")
    for dtype in dict.fromkeys(r["dtype"] for r in payload["rows"]):  # run order: float32 first
        for mode in MODES:
            sel = [r for r in payload["rows"] if r["dtype"] == dtype and r["mode"] == mode]
            if not sel:
                continue
            lines += ["", f"## {mode} · {dtype} · {sel[0]['device']}", ""]
            table = [
                [
                    str(r["B"]),
                    str(r["N"]),
                    r["op"],
                    fmt_s(r["ours_s"]),
                    fmt_s(r["loop_s"]) + ("*" if r["loop_extrapolated"] else ""),
                    fmt_s(r["floor_s"]),
                    fmt_x(r["ours_over_loop"]),
                    fmt_x(r["ours_over_floor"]),
                    fmt_x(r["extra_mem_x"]),
                ]
                for r in sel
            ]
            lines.append(
                md_table(
                    ["B", "N", "op", "ours", "loop", "floor", "ours/loop", "ours/floor", "mem ×"],
                    table,
                )
            )
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: Path, b: int = 32, dtype: str = "float32") -> bool:
    """Time vs N for ours / loop / floor, one panel per op, fwd+bwd at batch ``b``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sel = [r for r in rows if r["B"] == b and r["mode"] == "fwdbwd" and r["dtype"] == dtype]
    if not sel:
        return False
    ncols = 5
    nrows = math.ceil(len(OPS) / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.6 * nrows), sharey=True, squeeze=False)
    axes = list(grid.flat)
    for ax in axes[len(OPS) :]:
        ax.set_visible(False)
    for ax, op in zip(axes, OPS, strict=False):
        pts = sorted((r for r in sel if r["op"] == op), key=lambda r: r["N"])
        ns = [r["N"] for r in pts]
        ax.plot(ns, [r["ours_s"] for r in pts], "o-", label="ours")
        ax.plot(ns, [r["loop_s"] for r in pts], "s-", label="loop")
        ext = [r for r in pts if r["loop_extrapolated"]]
        if ext:
            ax.plot(
                [r["N"] for r in ext],
                [r["loop_s"] for r in ext],
                "s",
                mfc="white",
                color="C1",
                label="loop (extrapolated)",
            )
        ax.plot(ns, [r["floor_s"] for r in pts], "^--", label="floor")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_title(f"{op}")
        ax.set_xlabel("N = M")
        ax.grid(True, which="both", alpha=0.3)
    for row in grid:
        row[0].set_ylabel("seconds (median)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"fwd+bwd, B={b}, {dtype}, {sel[0]['device']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- CLI


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"32x33,8x128"`` → ``[(32, 33), (8, 128)]``."""
    out = []
    for part in text.split(","):
        b, n = part.lower().split("x")
        out.append((int(b), int(n)))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="representative subset, < 60 s on 2 cores")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (CUDA when available)")
    p.add_argument(
        "--dtype",
        nargs="+",
        default=None,
        choices=sorted(DTYPES),
        help="dtypes, each on every size (default: float32; the full grid adds bfloat16 at B=32)",
    )
    p.add_argument("--sizes", type=parse_sizes, default=None, help="e.g. 32x33,8x128 (B x N)")
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing")
    p.add_argument("--min-run-time", type=float, default=None, help="seconds per Timer measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds of ours/floor")
    p.add_argument(
        "--loop-min-run-time", type=float, default=None, help="seconds per loop measurement"
    )
    p.add_argument(
        "--loop-max-rows", type=int, default=1056, help="rows the loop runs before extrapolating"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    # Warm-up and memory passes run outside Timer: use the timing thread count there too (with
    # more threads than free cores, OpenMP spin-waits can slow eager steps by orders of magnitude).
    torch.set_num_threads(args.threads)
    sizes = args.sizes or (
        list(QUICK_SIZES) if args.quick else [(b, n) for b in FULL_B for n in FULL_N]
    )
    min_rt = args.min_run_time if args.min_run_time is not None else (0.03 if args.quick else 0.1)
    cfg = Config(
        min_run_time=min_rt,
        rounds=args.rounds,
        loop_min_run_time=(
            args.loop_min_run_time
            if args.loop_min_run_time is not None
            else (0.05 if args.quick else 0.3)
        ),
        loop_max_rows=args.loop_max_rows,
        threads=args.threads,
        memory=not args.no_memory,
        seed=args.seed,
    )
    if args.dtype is not None:
        plan = [(d, sizes) for d in args.dtype]
    elif args.quick or args.sizes:
        plan = [("float32", sizes)]
    else:  # full grid: float32 everywhere, bfloat16 on the B=32 row
        plan = [("float32", sizes), ("bfloat16", [(b, n) for b, n in sizes if b == 32])]
    settings = {
        "mode": "quick" if args.quick else "full",
        "plan": [{"dtype": d, "sizes": sz} for d, sz in plan],
        "ops": args.ops,
        "modes": args.modes,
        "min_run_time_s": cfg.min_run_time,
        "rounds": cfg.rounds,
        "loop_min_run_time_s": cfg.loop_min_run_time,
        "loop_max_rows": cfg.loop_max_rows,
        "memory_method": (
            "cuda.max_memory_allocated - memory_allocated before the call"
            if device.type == "cuda"
            else "torch.profiler(profile_memory=True): max running sum of [memory] alloc/free events"
        ),
    }
    payload = header("losses", device, cfg.threads, settings)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for dtype_name, dtype_sizes in plan:
        for b, n in dtype_sizes:
            new = bench_size(b, n, DTYPES[dtype_name], device, args.ops, args.modes, cfg)
            rows += new
            for r in new:
                print(
                    f"{r['dtype']:>8} B={b:<3} N={n:<3} {r['mode']:<6} {r['op']:<11} "
                    f"ours {fmt_s(r['ours_s']):>10}  loop {fmt_s(r['loop_s']):>10}"
                    f"{'*' if r['loop_extrapolated'] else ' '} floor {fmt_s(r['floor_s']):>10}  "
                    f"o/l {fmt_x(r['ours_over_loop']):>7}  o/f {fmt_x(r['ours_over_floor']):>6}  "
                    f"mem {fmt_x(r['extra_mem_x'])}",
                    flush=True,
                )
    payload["elapsed_s"] = round(time.perf_counter() - t0, 1)
    payload["targets"] = evaluate_targets(rows)
    payload["rows"] = rows
    return payload


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    payload = run(args)
    out: Path = args.out
    write_json(out / "losses.json", payload)
    (out / "losses.md").write_text(to_markdown(payload))
    plot(payload["rows"], out / "losses.png")
    for t in payload["targets"]:
        print(
            f"[{ {True: 'PASS', False: 'MISS', None: 'n/a'}[t['pass']] }] {t['target']}: {t['value']}"
        )
    print(f"wrote {out / 'losses.json'}, losses.md, losses.png in {payload['elapsed_s']} s")
    return payload


if __name__ == "__main__":
    main()
