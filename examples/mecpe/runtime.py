"""Device, precision, determinism and seeding of a run.

A run is bit-identical for a given seed, device, thread count, CPU code path and number of
processes: cuDNN and torch run their deterministic algorithms (CUDA gets the cuBLAS workspace
setting that needs), every global RNG (Python, NumPy, torch) is seeded right before the model
is built, and the data order and the RPCL corruption draw from their own seeded generators
(:mod:`examples.mecpe.engine`). When a batch is split into micro-batches (data-parallel ranks,
gradient accumulation) the global torch RNG, which dropout draws from, is re-seeded before each
micro-batch from :func:`micro_batch_seed`, so that a micro-batch draws the same dropout masks
whichever process runs it.

The CPU code path matters: torch's vectorised kernels (``ATEN_CPU_CAPABILITY``), MKL
(``MKL_CBWR``) and oneDNN (``ONEDNN_MAX_CPU_ISA``) pick their instructions per processor, and
each choice rounds differently (measured on ECF: per-seed test Pair F1 moves by 0.1-0.2 points
between code paths on one machine). ``run_ecf.sh`` pins all three to AVX2 on x86 processors
that have it; :func:`numerics` records what a run used in ``run.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import random
from contextlib import AbstractContextManager

import numpy as np
import torch

__all__ = [
    "NUMERICS_ENV",
    "autocast",
    "configure",
    "micro_batch_seed",
    "numerics",
    "resolve_device",
    "seed_everything",
]

#: Environment variables that choose the CPU code path of torch, MKL and oneDNN.
NUMERICS_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` → ``cuda`` when available, else ``cpu``; ``cuda`` gets its explicit index."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda" and device.index is None:
        # an explicit index: torch.device("cuda") != torch.device("cuda:0") in device checks
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def configure(device: torch.device, threads: int | None) -> None:
    """Deterministic kernels (and cuBLAS workspace on CUDA); ``threads`` CPU threads if given."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds third-party code using the global RNG
    torch.manual_seed(seed)


def numerics() -> dict[str, object]:
    """What decides a CPU run's rounding: torch's kernel capability, the pins, the threads —
    and the processor (``cpu``, ``cpu_flags``): runs of two machines differ even on one pinned
    code path (``examples/mecpe/results/reproducibility/``)."""
    model, flags = _processor()
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        **{name: os.environ.get(name) for name in NUMERICS_ENV},
        "cpu": model,
        "cpu_flags": flags,
    }


def _processor() -> tuple[str, str | None]:
    """The processor's model name as the OS reports it and a short hash of its feature flags
    (``/proc/cpuinfo``; elsewhere ``platform``'s name and no flags)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            fields = dict(
                (key.strip(), value.strip())
                for key, _, value in (line.partition(":") for line in f)
                if key.strip() in ("model name", "flags")
            )
    except OSError:
        fields = {}
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = fields.get("flags")
    if not flags:
        return model, None
    return model, hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:12]


def autocast(device: torch.device, precision: str) -> AbstractContextManager[object]:
    """The autocast context of ``--precision`` (``fp32``: none; ``fp16`` needs CUDA)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in _AUTOCAST_DTYPES:
        raise ValueError(f"unknown precision {precision!r}; expected fp32, bf16 or fp16")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA device (on the CPU use bf16)")
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


def micro_batch_seed(seed: int, step: int, index: int) -> int:
    """The global-RNG seed of micro-batch ``index`` of optimizer step ``step`` (a 63-bit hash
    of the three, so that no two micro-batches of a run share a stream).

    >>> micro_batch_seed(42, 0, 1) == micro_batch_seed(42, 0, 1) != micro_batch_seed(42, 1, 0)
    True
    """
    digest = hashlib.sha256(f"micro-batch {seed} {step} {index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
