"""Where the time of the ``k = 1`` margin loss' forward goes at small sizes.

``bench_losses`` finds ``PairMarginLoss(k=1)``'s forward (inputs without grad) furthest from its
ours/floor <= 3 target at the smallest inputs (``B = 1``, ``N = 64``), where fixed per-kernel
costs dominate. This probe splits that forward into its parts and times each against the same
floor, in interleaved rounds at every size:

* ``floor``: ``scores.masked_fill(~valid, -inf).amax(-1)``, as in ``bench_losses``.
* ``op:<name>``: each kernel of the fused no-grad path (``_fused._margin._hinge_k1`` followed by the mean)
  alone, on the intermediate it reads in the library. Their sum is what the kernels cost with
  nothing between them.
* ``kernels``: the same kernels back to back in one Python function, without input checks,
  helper calls or cached-constant lookups: the shortest eager formulation of this forward we
  have (it must return exactly the library's value, which the probe checks).
* ``function``: ``pair_margin_loss(scores, gold, valid)``; ``module``: ``PairMarginLoss()``.

``kernels / floor`` is therefore a lower bound for any eager implementation built from these
kernels: if it is near or above 3, no amount of Python trimming meets the target, and only
fewer kernels (a fused, compiled kernel) would.

Run from the repository root::

    python -m benchmarks.probe_margin_k1                 # B=1 N in {64,128}, B=8 N=64, ~30 s
    python -m benchmarks.probe_margin_k1 --sizes 1x64
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from torch_pairconf import PairMarginLoss, pair_margin_loss

from ._common import fmt_s, fmt_x, header, md_table, time_interleaved, write_json
from .bench_losses import make_inputs, parse_sizes

DEFAULT_SIZES = ((1, 64), (1, 128), (8, 64))
MARGIN = 0.2
_U8 = torch.uint8


def kernel_ops(scores: Tensor, gold: Tensor, valid: Tensor) -> list[tuple[str, Callable[[], object]]]:
    """Each kernel of the no-grad ``k = 1`` forward (``space="prob"``, temperature 1, mean), as a
    zero-argument callable on the intermediate it reads in the library, in library order."""
    ninf = torch.full((), -math.inf, dtype=scores.dtype)
    zero = torch.zeros((), dtype=scores.dtype)
    m = torch.full((), MARGIN, dtype=torch.float32)
    neg_mask = valid > gold
    key = torch.where(neg_mask, scores, ninf)
    neg = key.amax(-1, keepdim=True)
    has = neg != ninf
    c_neg = torch.sigmoid(neg)
    t = c_neg + m
    gv = gold & valid
    contributes = gv.clone()
    contributes.view(_U8).mul_(has.view(_U8))
    scratch_t, scratch_gv = t.clone(), gv.clone()  # in-place kernels run on copies
    buf = torch.empty_like(scores)
    hinge = torch.sub(t, torch.sigmoid(scores), out=buf).clamp_min_(0)
    total = torch.where(contributes, hinge, zero).sum()
    count = torch.count_nonzero(contributes)
    return [
        ("valid > gold", lambda: valid > gold),
        ("where (negatives)", lambda: torch.where(neg_mask, scores, ninf)),
        ("amax", lambda: key.amax(-1, keepdim=True)),
        ("!= -inf (B,N,1)", lambda: neg != ninf),
        ("sigmoid (B,N,1)", lambda: torch.sigmoid(neg)),
        ("add_ margin (B,N,1)", lambda: scratch_t.add_(m)),  # values do not matter here
        ("gold & valid", lambda: gold & valid),
        ("mul_ has", lambda: scratch_gv.view(_U8).mul_(has.view(_U8))),  # idempotent
        ("sigmoid", lambda: torch.sigmoid(scores, out=buf)),
        ("sub", lambda: torch.sub(t, buf, out=buf)),
        ("clamp_min_", lambda: buf.clamp_min_(0)),
        ("where (gold)", lambda: torch.where(contributes, buf, zero, out=buf)),
        ("sum", lambda: hinge.sum()),
        ("count_nonzero", lambda: torch.count_nonzero(contributes)),
        ("mean", lambda: torch.div(total, count.clamp_min(1))),
    ]


def kernels(scores: Tensor, gold: Tensor, valid: Tensor, ninf: Tensor, zero: Tensor, m: Tensor) -> Tensor:
    """The no-grad ``k = 1`` forward as bare kernels (same order and buffers as the library)."""
    key = torch.where(valid > gold, scores, ninf)
    neg = key.amax(-1, keepdim=True)
    has = neg != ninf
    t = torch.sigmoid(neg).add_(m)
    contributes = gold & valid
    contributes.view(_U8).mul_(has.view(_U8))
    c = torch.sigmoid(scores, out=key)
    hinge = torch.sub(t, c, out=key).clamp_min_(0)
    total = torch.where(contributes, hinge, zero, out=hinge).sum()
    return total.div_(torch.count_nonzero(contributes).clamp_min(1))


def probe_size(b: int, n: int, min_run_time: float, rounds: int, threads: int) -> dict[str, Any]:
    """Times (seconds) and ratios to the floor of one ``(B, N)`` size, float32 on CPU."""
    inp = make_inputs(b, n, torch.float32, torch.device("cpu"))
    scores, gold, valid = inp.scores, inp.gold, inp.valid
    crit = PairMarginLoss(margin=MARGIN)
    consts = (
        torch.full((), -math.inf),
        torch.zeros(()),
        torch.full((), MARGIN, dtype=torch.float32),
    )
    bare = kernels(scores, gold, valid, *consts)
    library = pair_margin_loss(scores, gold, valid, margin=MARGIN)
    if not torch.equal(bare, library):
        raise AssertionError(
            f"B={b} N={n}: the bare kernels give {bare} but pair_margin_loss gives {library}; "
            "kernel_ops/kernels no longer mirror _fused._margin._hinge_k1"
        )
    fns: dict[str, Callable[[], object]] = {
        "floor": lambda: scores.masked_fill(~valid, -math.inf).amax(-1),
        "kernels": lambda: kernels(scores, gold, valid, *consts),
        "function": lambda: pair_margin_loss(scores, gold, valid, margin=MARGIN),
        "module": lambda: crit(scores, gold, valid),
    }
    ops = kernel_ops(scores, gold, valid)
    fns.update({f"op:{name}": fn for name, fn in ops})
    times = time_interleaved(fns, min_run_time, threads, rounds)
    floor = times["floor"]["median"]
    op_times = {name: times[f"op:{name}"]["median"] for name, _ in ops}
    op_sum = sum(op_times.values())
    return {
        "B": b,
        "N": n,
        "M": n,
        "dtype": "float32",
        "device": "cpu",
        "floor_s": floor,
        "kernels_s": times["kernels"]["median"],
        "function_s": times["function"]["median"],
        "module_s": times["module"]["median"],
        "op_sum_s": op_sum,
        "ops_s": op_times,
        "kernels_over_floor": times["kernels"]["median"] / floor,
        "op_sum_over_floor": op_sum / floor,
        "function_over_floor": times["function"]["median"] / floor,
        "module_over_floor": times["module"]["median"] / floor,
    }


def to_markdown(payload: dict[str, Any]) -> str:
    rows = payload["rows"]
    lines = [
        "# k = 1 margin loss, forward without grad: where the time goes",
        "",
        f"`{payload['command']}` — torch {payload['torch']}, "
        f"{payload['machine']['processor']}, {payload['machine']['timing_threads']} thread(s), "
        f"{payload['timestamp']}",
        "",
        md_table(
            ["B", "N", "floor", "op sum", "kernels", "function", "module", "op sum/floor",
             "kernels/floor", "module/floor"],
            [
                [
                    str(r["B"]),
                    str(r["N"]),
                    fmt_s(r["floor_s"]),
                    fmt_s(r["op_sum_s"]),
                    fmt_s(r["kernels_s"]),
                    fmt_s(r["function_s"]),
                    fmt_s(r["module_s"]),
                    fmt_x(r["op_sum_over_floor"]),
                    fmt_x(r["kernels_over_floor"]),
                    fmt_x(r["module_over_floor"]),
                ]
                for r in rows
            ],
        ),
        "",
        "Each kernel alone (median):",
        "",
        md_table(
            ["kernel", *(f"B={r['B']} N={r['N']}" for r in rows)],
            [[name, *(fmt_s(r["ops_s"][name]) for r in rows)] for name in rows[0]["ops_s"]],
        ),
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=parse_sizes, default=None, help="e.g. 1x64,8x64 (B x N)")
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing")
    p.add_argument("--min-run-time", type=float, default=0.1, help="seconds per Timer measurement")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    sizes = args.sizes or list(DEFAULT_SIZES)
    settings = {"sizes": sizes, "min_run_time": args.min_run_time, "rounds": args.rounds}
    payload = header("probe_margin_k1", torch.device("cpu"), args.threads, settings)
    payload["rows"] = [
        probe_size(b, n, args.min_run_time, args.rounds, args.threads) for b, n in sizes
    ]
    payload["elapsed_s"] = round(time.perf_counter() - start, 1)
    write_json(args.out / "margin_k1_probe.json", payload)
    (args.out / "margin_k1_probe.md").write_text(to_markdown(payload))
    for r in payload["rows"]:
        print(
            f"B={r['B']:<3} N={r['N']:<4} floor {fmt_s(r['floor_s']):>9}  "
            f"op sum {fmt_x(r['op_sum_over_floor'])}x  kernels {fmt_x(r['kernels_over_floor'])}x  "
            f"function {fmt_x(r['function_over_floor'])}x  module {fmt_x(r['module_over_floor'])}x"
        )
    print(f"wrote {args.out / 'margin_k1_probe.json'}, margin_k1_probe.md in {payload['elapsed_s']} s")
    return payload


if __name__ == "__main__":
    main()
