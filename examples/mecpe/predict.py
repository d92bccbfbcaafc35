"""Model outputs over a whole split: :class:`Predictions`, :func:`predict`, saving and decoding.

Scores are pair *logits* ``(C, N, N)``: row = emotion utterance, column = candidate cause;
thresholds are in probability space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .batching import DEFAULT_CHUNK_TOKENS, Example, collate
from .model import MECPEModel, PairScorer
from .runtime import autocast

__all__ = ["Predictions", "decode_pairs", "predict", "save_scores"]


@dataclass
class Predictions:
    """Model outputs on a whole split, padded to the longest conversation ``N`` (on the CPU).

    Attributes:
        conv_ids: the ``C`` conversation ids.
        lengths: ``(C,)`` number of utterances.
        pair_logits: ``(C, N, N)`` float32 pair logits (row = emotion, column = cause).
        gold: ``(C, N, N)`` bool gold pairs (including any outside ``valid``).
        valid: ``(C, N, N)`` bool candidate pairs.
        emotion_logits: ``(C, N, 7)``.
        emotions: ``(C, N)`` gold emotion, ``-1`` unknown / padding.
        cause_logits: ``(C, N)``.
        causes: ``(C, N)`` gold utterance-level cause labels.
        mask: ``(C, N)`` real utterances.
    """

    conv_ids: list[str]
    lengths: Tensor
    pair_logits: Tensor
    gold: Tensor
    valid: Tensor
    emotion_logits: Tensor
    emotions: Tensor
    cause_logits: Tensor
    causes: Tensor
    mask: Tensor


@torch.no_grad()
def predict(
    model: MECPEModel,
    examples: Sequence[Example],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    window: int | None = None,
    cause_not_after_emotion: bool = False,
    precision: str = "fp32",
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> Predictions:
    """Run ``model`` in eval mode over ``examples`` (in order) and gather padded outputs
    (``precision``: ``fp32`` or an autocast dtype, as in training; outputs are float32)."""
    was_training = model.training
    model.eval()
    c = len(examples)
    n = max((ex.length for ex in examples), default=1)
    n_emo = model.cfg.n_emotions
    pair_logits = torch.full((c, n, n), PairScorer.pad_logit)
    gold = torch.zeros(c, n, n, dtype=torch.bool)
    valid = torch.zeros(c, n, n, dtype=torch.bool)
    emotion_logits = torch.zeros(c, n, n_emo)
    emotions = torch.full((c, n), -1, dtype=torch.long)
    cause_logits = torch.zeros(c, n)
    causes = torch.zeros(c, n)
    mask = torch.zeros(c, n, dtype=torch.bool)
    for start in range(0, c, batch_size):
        chunk = examples[start : start + batch_size]
        batch = collate(
            chunk,
            window=window,
            cause_not_after_emotion=cause_not_after_emotion,
            chunk_tokens=chunk_tokens,
        )
        with autocast(torch.device(device), precision):
            out = model(batch.to(device))
        sl = slice(start, start + len(chunk))
        m = batch.mask.shape[1]
        pair_logits[sl, :m, :m] = out.pair_logits.float().cpu()
        gold[sl, :m, :m] = batch.gold
        valid[sl, :m, :m] = batch.valid
        emotion_logits[sl, :m] = out.emotion_logits.float().cpu()
        emotions[sl, :m] = batch.emotions
        cause_logits[sl, :m] = out.cause_logits.float().cpu()
        causes[sl, :m] = batch.causes
        mask[sl, :m] = batch.mask
    model.train(was_training)
    return Predictions(
        conv_ids=[ex.conv_id for ex in examples],
        lengths=torch.tensor([ex.length for ex in examples], dtype=torch.long),
        pair_logits=pair_logits,
        gold=gold,
        valid=valid,
        emotion_logits=emotion_logits,
        emotions=emotions,
        cause_logits=cause_logits,
        causes=causes,
        mask=mask,
    )


def decode_pairs(pred: Predictions, threshold: float = 0.5) -> list[list[tuple[int, int]]]:
    """Predicted ``(emotion, cause)`` pairs (1-based) per conversation: valid pairs whose
    ``sigmoid(logit) > threshold``."""
    hits = (torch.sigmoid(pred.pair_logits) > threshold) & pred.valid
    result: list[list[tuple[int, int]]] = []
    for c in range(hits.shape[0]):
        idx = hits[c].nonzero().tolist()
        result.append([(int(i) + 1, int(j) + 1) for i, j in idx])
    return result


def save_scores(pred: Predictions, path: str | Path) -> None:
    """Save pair logits / gold / valid ``(C, N, N)``, lengths and ids to a compressed ``.npz``."""
    np.savez_compressed(
        path,
        logits=pred.pair_logits.numpy().astype(np.float32),
        gold=pred.gold.numpy(),
        valid=pred.valid.numpy(),
        lengths=pred.lengths.numpy(),
        conv_ids=np.asarray(pred.conv_ids),
    )
