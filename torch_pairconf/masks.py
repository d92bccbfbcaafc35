"""Building the ``(B, N, M)`` contract from the forms real trainers keep their data in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import check_bool, check_float

__all__ = [
    "PairMasks",
    "dense_from_candidates",
    "pair_masks",
    "two_class_to_logit",
    "valid_from_labels",
    "valid_from_lengths",
]


class PairMasks(NamedTuple):
    """``gold`` and ``valid`` bool ``(B, N, N)`` masks (rows emotion, columns cause)."""

    gold: Tensor
    valid: Tensor


def valid_from_lengths(
    lengths: Sequence[int] | Tensor,
    n: int | None = None,
    *,
    window: int | None = None,
    cause_not_after_emotion: bool = False,
    device: torch.device | str | None = None,
) -> Tensor:
    """Candidate pairs of padded conversations, ``(B, n, n)`` bool.

    Pair ``(i, j)`` of conversation ``b`` is valid when both utterances are real
    (``i, j < lengths[b]``), ``|i - j| <= window`` if a window is given, and ``j <= i`` if
    ``cause_not_after_emotion``.
    """
    lens = torch.as_tensor(lengths, dtype=torch.long, device=device)
    if lens.dim() != 1:
        raise ValueError(
            f"lengths must be 1-D (one length per conversation), got shape {tuple(lens.shape)}"
        )
    if window is not None and window < 0:
        raise ValueError(f"window must be >= 0 or None, got {window}")
    n_max = int(lens.max()) if lens.numel() else 0
    n = n_max if n is None else n
    if n < n_max:
        raise ValueError(f"n={n} is smaller than the longest conversation ({n_max} utterances)")
    pos = torch.arange(n, device=lens.device)
    real = pos < lens.unsqueeze(-1)  # (B, n)
    valid = real.unsqueeze(-1) & real.unsqueeze(-2)
    offset = pos.unsqueeze(-1) - pos.unsqueeze(0)  # i - j
    if window is not None:
        valid = valid & (offset.abs() <= window)
    if cause_not_after_emotion:
        valid = valid & (offset >= 0)
    return valid


def pair_masks(
    lengths: Sequence[int] | Tensor,
    pairs: Sequence[Sequence[tuple[int, int]]],
    *,
    n: int | None = None,
    index_base: int = 1,
    window: int | None = None,
    cause_not_after_emotion: bool = False,
    device: torch.device | str | None = None,
) -> PairMasks:
    """``gold`` and ``valid`` from per-conversation lengths and pair lists.

    Args:
        lengths: number of utterances of each of the ``B`` conversations.
        pairs: per conversation, ``(emotion, cause)`` utterance indices, ``index_base``-based
            (1 by default, as in ECF files; pass ``index_base=0`` for 0-based lists).
        n: padded size (default: the longest conversation).
        window, cause_not_after_emotion: restrict ``valid`` (see :func:`valid_from_lengths`).
            Gold pairs falling outside ``valid`` stay in ``gold``: losses ignore them and metrics
            count them as misses.

    Raises:
        ValueError: naming the conversation and pair when an index is out of range.

    Example:
        >>> masks = pair_masks([3, 2], [[(3, 1), (3, 3)], [(2, 2)]])
        >>> masks.gold.shape, int(masks.gold.sum()), int(masks.valid.sum())
        (torch.Size([2, 3, 3]), 3, 13)
    """
    if index_base not in (0, 1):
        raise ValueError(f"index_base must be 0 or 1, got {index_base}")
    lens = [int(x) for x in (lengths.tolist() if isinstance(lengths, Tensor) else lengths)]
    if len(pairs) != len(lens):
        raise ValueError(f"pairs has {len(pairs)} conversations but lengths has {len(lens)}")
    valid = valid_from_lengths(
        lens, n, window=window, cause_not_after_emotion=cause_not_after_emotion, device=device
    )
    size = valid.shape[-1]
    flat: list[int] = []
    for b, (conv_pairs, length) in enumerate(zip(pairs, lens, strict=True)):
        for emo, cause in conv_pairs:
            i, j = emo - index_base, cause - index_base
            if not (0 <= i < length and 0 <= j < length):
                raise ValueError(
                    f"pairs[{b}] has ({emo}, {cause}), outside 1..{length} utterances "
                    f"(index_base={index_base})"
                    if index_base == 1
                    else f"pairs[{b}] has ({emo}, {cause}), outside 0..{length - 1} (index_base=0)"
                )
            flat.append((b * size + i) * size + j)
    gold = torch.zeros(valid.numel(), dtype=torch.bool, device=valid.device)
    if flat:
        gold[torch.tensor(flat, device=valid.device)] = True
    return PairMasks(gold.view_as(valid), valid)


def valid_from_labels(labels: Tensor, ignore_index: int = -1) -> PairMasks:
    """``gold`` and ``valid`` from a 0/1 label matrix that marks ignored pairs with ``ignore_index``."""
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    valid = labels != ignore_index
    return PairMasks(valid & (labels == 1), valid)


def two_class_to_logit(logits: Tensor) -> Tensor:
    """Map two-class logits ``(..., 2)`` to the binary logit of class 1, ``(...)``.

    ``softmax(x)[..., 1] == sigmoid(x[..., 1] - x[..., 0])`` exactly, so the result plugs into
    every loss here as a pair logit.
    """
    check_float("logits", logits)
    if logits.dim() == 0 or logits.shape[-1] != 2:
        raise ValueError(f"logits must have a last dimension of size 2, got {tuple(logits.shape)}")
    return logits[..., 1] - logits[..., 0]


def dense_from_candidates(
    logits: Tensor,
    batch_index: Tensor,
    row_index: Tensor,
    col_index: Tensor,
    shape: tuple[int, int, int],
    labels: Tensor | None = None,
    check_bounds: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Scatter a flat list of candidate-pair logits into the dense ``(B, N, M)`` contract.

    Args:
        logits: ``(P,)`` float logits of the candidate pairs.
        batch_index, row_index, col_index: ``(P,)`` int64 positions (row = emotion utterance).
        shape: ``(B, N, M)``.
        labels: optional ``(P,)`` bool gold flags.
        check_bounds: raise ``ValueError`` for an index outside ``shape`` (reads the indices, so
            it synchronises with a GPU once; pass ``False`` on a hot path with trusted indices).

    Returns:
        ``(scores, gold, valid)``: scores (zero where no candidate, gradient flows back to
        ``logits``), gold (false where no candidate or no labels) and valid (true at candidates).
    """
    check_float("logits", logits)
    if logits.dim() != 1:
        raise ValueError(f"logits must be a flat (P,) tensor, got {tuple(logits.shape)}")
    for name, idx in (
        ("batch_index", batch_index),
        ("row_index", row_index),
        ("col_index", col_index),
    ):
        if idx.shape != logits.shape or idx.dtype != torch.long:
            raise ValueError(f"{name} must be an int64 tensor of shape {tuple(logits.shape)}")
    b, n, m = shape
    if check_bounds:
        for name, idx, size in (
            ("batch_index", batch_index, b),
            ("row_index", row_index, n),
            ("col_index", col_index, m),
        ):
            if idx.numel() and bool(((idx < 0) | (idx >= size)).any()):
                raise ValueError(f"{name} has entries outside [0, {size}) for shape {tuple(shape)}")
    flat = (batch_index * n + row_index) * m + col_index
    scores = logits.new_zeros(b * n * m).index_put((flat,), logits)
    valid = torch.zeros(b * n * m, dtype=torch.bool, device=logits.device).index_put(
        (flat,), torch.ones_like(flat, dtype=torch.bool)
    )
    gold = torch.zeros_like(valid)
    if labels is not None:
        check_bool("labels", labels)
        if labels.shape != logits.shape:  # index_put would broadcast a (1,) tensor silently
            raise ValueError(
                f"labels must be a bool tensor of shape {tuple(logits.shape)}, "
                f"got {tuple(labels.shape)}"
            )
        gold = gold.index_put((flat,), labels)
    return scores.view(b, n, m), gold.view(b, n, m), valid.view(b, n, m)
