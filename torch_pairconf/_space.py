"""The space a pair margin is measured in: probabilities or (tempered) logits."""

from __future__ import annotations

from typing import Final

import torch
from torch import Tensor

__all__ = ["SPACES", "confidence"]

SPACES: Final = ("prob", "logit")


def confidence(scores: Tensor, space: str, temperature: float = 1.0) -> Tensor:
    """Map pair logits to the space the margin is measured in.

    ``"prob"``: ``sigmoid(scores / temperature)``; ``"logit"``: ``scores / temperature``.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    scaled = scores if temperature == 1.0 else scores / temperature
    return torch.sigmoid(scaled) if space == "prob" else scaled
