"""Helpers shared by the benchmark scripts: timing, peak-memory tracking, machine summary, output."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.benchmark import Timer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    return dev


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary(device: torch.device, threads: int) -> dict[str, Any]:
    """Platform, CPU count / model, torch threads used for timing, accelerator name if any."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "processor": _cpu_model(),
        "timing_threads": threads,
    }
    if device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
        info["cuda_version"] = torch.version.cuda
    return info


def header(
    name: str, device: torch.device, threads: int, settings: dict[str, Any]
) -> dict[str, Any]:
    """Top-level metadata of a results file."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    prog = f"python -m {spec.name}" if spec is not None else f"python {sys.argv[0]}"
    return {
        "benchmark": name,
        "torch": torch.__version__,
        "machine": machine_summary(device, threads),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([prog, *(shlex.quote(a) for a in sys.argv[1:])]),
        "settings": settings,
    }


def time_fn(fn: Callable[[], object], min_run_time: float, threads: int) -> dict[str, float]:
    """Median / IQR seconds per call of ``fn`` with ``Timer.blocked_autorange``.

    The block size is chosen by ``blocked_autorange`` (its calibration doubles as warm-up); for
    calls longer than ``min_run_time`` this degenerates to one or two single-call blocks.
    """
    m = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(
        min_run_time=min_run_time
    )
    return {"median": m.median, "iqr": m.iqr, "runs": len(m.raw_times)}


def time_interleaved(
    fns: Mapping[str, Callable[[], object]], min_run_time: float, threads: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Time several callables in ``rounds`` interleaved rounds; per callable the median of the
    round medians (``iqr``: the spread of the round medians, or the Timer IQR with one round)."""
    per: dict[str, list[dict[str, float]]] = {k: [] for k in fns}
    for _ in range(max(1, rounds)):
        for name, fn in fns.items():
            per[name].append(time_fn(fn, min_run_time, threads))
    out = {}
    for name, ms in per.items():
        meds = sorted(m["median"] for m in ms)
        spread = meds[-1] - meds[0] if len(meds) > 1 else ms[0]["iqr"]
        out[name] = {"median": median(meds), "iqr": spread, "runs": sum(m["runs"] for m in ms)}
    return out


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated by one call of ``fn`` on top of what was live before it.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the bytes
    allocated before the call. CPU: ``torch.profiler`` with ``profile_memory=True`` records every
    allocation and free of the CPU allocator as a ``[memory]`` event with a signed byte count;
    the running sum of those events in time order is the live extra memory and its maximum the
    peak. Anything still alive after the call (e.g. ``.grad``) counts, whatever is freed counts
    only while it was alive. ``fn`` should be warmed up by the caller.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")
    ]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return int(peak)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def fmt_s(x: float | None) -> str:
    """Seconds in a compact human unit."""
    if x is None:
        return "–"
    if x < 1e-3:
        return f"{x * 1e6:.1f} µs"
    if x < 1:
        return f"{x * 1e3:.2f} ms"
    return f"{x:.2f} s"


def fmt_x(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}g}"


def md_table(header_row: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header_row) + " |", "|" + "|".join("---" for _ in header_row) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))
