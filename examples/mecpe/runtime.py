"""Device, determinism and seeding of a run.

A run is bit-identical for a given seed, device, thread count and CPU code path: cuDNN and
torch run their deterministic algorithms (CUDA gets the cuBLAS workspace setting that needs),
every global RNG (Python, NumPy, torch) is seeded right before the model is built, and the data
order and the RPCL corruption draw from their own seeded generators
(:mod:`examples.mecpe.engine`).

The CPU code path matters: torch's vectorised kernels (``ATEN_CPU_CAPABILITY``), MKL
(``MKL_CBWR``) and oneDNN (``ONEDNN_MAX_CPU_ISA``) pick their instructions per processor, and
each choice rounds differently (measured on ECF: per-seed test Pair F1 moves by 0.1-0.2 points
between code paths on one machine). ``run_ecf.sh`` pins all three to AVX2 on x86 processors
that have it; :func:`numerics` records what a run used in ``run.json``.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["NUMERICS_ENV", "configure", "numerics", "resolve_device", "seed_everything"]

#: Environment variables that choose the CPU code path of torch, MKL and oneDNN.
NUMERICS_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


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
    """What decides a CPU run's rounding: torch's kernel capability, the pins, the threads."""
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        **{name: os.environ.get(name) for name in NUMERICS_ENV},
    }
