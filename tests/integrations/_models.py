"""A small MECPE-style model and batches shared by the integration tests (and their scripts)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

N, D, B = 6, 6, 4


class WordModel(nn.Module):
    """A per-utterance encoder (upstream), a BiLSTM context encoder and a bilinear pair scorer."""

    def __init__(self, h: int = 8) -> None:
        super().__init__()
        self.words = nn.Sequential(nn.Linear(D, h), nn.Tanh())
        self.context = nn.LSTM(h, h // 2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(h, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.context(self.words(x))
        return self.head(h) @ h.transpose(-1, -2)


def structure(b: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    """``gold, valid`` ``(b, N, N)``: every conversation of a batch has the same lengths and gold
    pairs, so per-half means equal the concatenated batch's mean (what DDP averages)."""
    lengths = torch.tensor([N, N - 1, N - 2, N - 3]).repeat(-(-b // 4))[:b]
    real = torch.arange(N) < lengths.unsqueeze(-1)
    valid = real.unsqueeze(-1) & real.unsqueeze(-2)
    gold = torch.zeros(b, N, N, dtype=torch.bool)
    gold[:, 2, 0] = gold[:, 2, 2] = gold[:, 1, 1] = True
    return gold & valid, valid


def inputs(b: int = B, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, N, D, generator=torch.Generator().manual_seed(seed))


def base_loss(scores: torch.Tensor, gold: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(scores[valid], gold[valid].float())
