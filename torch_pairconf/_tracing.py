"""Whether ``torch.compile`` is tracing the caller, resolved once for every torch version."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import torch

__all__ = ["compiling"]


def _is_compiling_fn() -> Callable[[], bool]:
    """``torch.compiler.is_compiling`` (torch >= 2.3) or ``torch._dynamo.is_compiling`` (older)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    if is_compiling is None:  # pragma: no cover - torch < 2.3
        from torch import _dynamo

        is_compiling = _dynamo.is_compiling
    return is_compiling


# Resolved once: the lookup costs as much as the call, and the losses ask on every call.
_IS_COMPILING: Final = _is_compiling_fn()


def compiling() -> bool:
    """Whether ``torch.compile`` is tracing the caller."""
    return bool(_IS_COMPILING())
