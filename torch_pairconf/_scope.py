"""The scope a ranking term compares a gold pair within: its emotion row or the whole batch.

The sorted ranking terms (:mod:`~torch_pairconf.ranking_ap`, :mod:`~torch_pairconf.ranking_auc`)
work on a ``(R, L)`` view of the ``(B, N, M)`` pair matrix whose rows are the scopes:
``scope="row"`` gives ``(B * N, M)`` (one emotion row each), ``scope="batch"`` gives
``(1, B * N * M)`` (every pair of the batch). Both are views (reshapes), so going back is one
``reshape`` of a per-pair result.
"""

from __future__ import annotations

from typing import Final

import torch
from torch import Tensor

__all__ = ["SCOPES", "reverse_cumsum", "scope_any", "to_scopes"]

SCOPES: Final = ("row", "batch")


def to_scopes(t: Tensor, scope: str) -> Tensor:
    """``(B, N, M)`` → ``(R, L)``: one row per scope (``(B*N, M)`` or ``(1, B*N*M)``)."""
    return t.reshape(-1, t.shape[-1]) if scope == "row" else t.reshape(1, -1)


def scope_any(mask: Tensor, scope: str) -> Tensor:
    """Whether each scope holds a true entry of ``mask`` ``(B, N, M)``, broadcastable to it."""
    if scope == "row":
        return mask.any(-1, keepdim=True)
    return mask.any().reshape(1, 1, 1)


def reverse_cumsum(t: Tensor) -> Tensor:
    """``out[..., p] = t[..., p:].sum(-1)`` (summed from the end, so no cancellation)."""
    return torch.flip(torch.cumsum(torch.flip(t, (-1,)), -1), (-1,))
