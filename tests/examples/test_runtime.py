"""runtime.numerics: what a run's rounding depends on, the processor included."""

from __future__ import annotations

import builtins
import re
from typing import Any

import pytest

from examples.mecpe import runtime


def test_numerics_record_the_code_path_and_the_processor() -> None:
    n = runtime.numerics()
    assert {"cpu_capability", "threads", *runtime.NUMERICS_ENV, "cpu", "cpu_flags"} <= set(n)
    assert isinstance(n["cpu"], str) and n["cpu"]
    assert n["cpu_flags"] is None or re.fullmatch(r"[0-9a-f]{12}", str(n["cpu_flags"]))


def test_processor_without_proc_cpuinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = builtins.open

    def no_cpuinfo(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path) == "/proc/cpuinfo":
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_cpuinfo)
    monkeypatch.setattr(runtime.platform, "processor", lambda: "")
    monkeypatch.setattr(runtime.platform, "machine", lambda: "x86_64")
    assert runtime._processor() == ("x86_64", None)


def test_flags_hash_ignores_their_order(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = builtins.open
    texts = iter(["model name\t: CPU A\nflags\t\t: sse avx2 fma\n",
                  "model name\t: CPU A\nflags\t\t: fma sse avx2\n",
                  "model name\t: CPU A\nflags\t\t: fma sse avx512f\n"])  # fmt: skip

    def fake(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path) == "/proc/cpuinfo":
            file = tmp_path / "cpuinfo"
            file.write_text(next(texts))
            return real_open(file, *args, **kwargs)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake)
    first, second, third = (runtime._processor() for _ in range(3))
    assert first == second and first[0] == "CPU A" and first[1] != third[1]
