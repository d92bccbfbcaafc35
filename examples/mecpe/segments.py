"""Conversations → token sequences with utterance spans, for the trainable transformer encoder.

A :class:`Segments` holds what the transformer reads of one conversation: its token sequences
(special tokens included) and, for every utterance, the sequence it lies in and its token span
``[start, end)`` there. Two layouts (``--encoder-input``):

* ``utterance``: one sequence per utterance, ``[CLS] tokens [SEP]`` truncated to ``max_tokens``;
  the utterance's span is the whole sequence, special tokens included (what sentence-transformers'
  mean pooling averages).
* ``conversation``: consecutive utterances packed into sequences ``[CLS] u1 [SEP] u2 [SEP] ...``
  of at most ``max_tokens`` tokens (a conversation that does not fit spans several sequences,
  cut between utterances); an utterance's span is its own tokens, without the ``[SEP]`` after it.
  An utterance longer than ``max_tokens - 2`` tokens is truncated; one without any token spans
  its ``[SEP]`` (so that no span is empty).

Truncated utterances are counted (:attr:`Segments.truncated`, reported in ``run.json``).

Example::

    >>> segs = pack_conversation([[7, 8], [9], []], cls=1, sep=2, max_tokens=6)
    >>> segs.ids
    [[1, 7, 8, 2, 9, 2], [1, 2]]
    >>> [(int(s), int(a), int(b)) for s, a, b in zip(segs.seq, segs.start, segs.end)]
    [(0, 1, 3), (0, 4, 5), (1, 1, 2)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["INPUTS", "Segments", "pack_conversation", "pack_utterances"]

#: The layouts of ``--encoder-input``.
INPUTS: tuple[str, ...] = ("utterance", "conversation")


@dataclass
class Segments:
    """The token sequences of one conversation and the span of each of its ``n`` utterances.

    Attributes:
        ids: token ids of each sequence (special tokens included).
        seq: ``(n,)`` int64 sequence index of each utterance.
        start: ``(n,)`` int64 first token of each utterance's span in its sequence.
        end: ``(n,)`` int64 end (exclusive) of each span; ``end > start``.
        truncated: utterances whose tokens were cut to fit ``max_tokens``.
        states: per sequence ``(T_s, H)`` float16 hidden states of the frozen lower layers
            (filled from the cache when only the top layers are trained), else ``None``.
    """

    ids: list[list[int]]
    seq: Tensor
    start: Tensor
    end: Tensor
    truncated: int = 0
    states: list[Tensor] | None = None

    @property
    def lengths(self) -> list[int]:
        """Token count of each sequence."""
        return [len(s) for s in self.ids]


def _spans(spans: Sequence[tuple[int, int, int]]) -> tuple[Tensor, Tensor, Tensor]:
    t = torch.tensor(list(spans), dtype=torch.long).view(-1, 3)
    return t[:, 0].contiguous(), t[:, 1].contiguous(), t[:, 2].contiguous()


def pack_utterances(
    pieces: Sequence[Sequence[int]], *, cls: int, sep: int, max_tokens: int
) -> Segments:
    """The ``utterance`` layout: ``[CLS] piece [SEP]`` per utterance (pieces: token ids without
    special tokens), truncated to ``max_tokens`` tokens; spans cover whole sequences."""
    if max_tokens < 3:
        raise ValueError(f"max_tokens must be >= 3 (CLS, one token, SEP), got {max_tokens}")
    keep = max_tokens - 2
    ids = [[cls, *p[:keep], sep] for p in pieces]
    truncated = sum(1 for p in pieces if len(p) > keep)
    seq, start, end = _spans([(k, 0, len(s)) for k, s in enumerate(ids)])
    return Segments(ids, seq, start, end, truncated)


def pack_conversation(
    pieces: Sequence[Sequence[int]], *, cls: int, sep: int, max_tokens: int
) -> Segments:
    """The ``conversation`` layout (see the module docstring): utterances packed in order into
    sequences of at most ``max_tokens`` tokens."""
    if max_tokens < 3:
        raise ValueError(f"max_tokens must be >= 3 (CLS, one token, SEP), got {max_tokens}")
    keep = max_tokens - 2
    ids: list[list[int]] = []
    current: list[int] = [cls]
    spans: list[tuple[int, int, int]] = []
    truncated = 0
    for piece in pieces:
        tokens = list(piece[:keep])
        truncated += len(piece) > keep
        if len(current) + len(tokens) + 1 > max_tokens:  # does not fit: start a new sequence
            ids.append(current)
            current = [cls]
        begin = len(current)
        current += [*tokens, sep]
        # an utterance without tokens spans its SEP: no empty span, no division by zero
        spans.append((len(ids), begin, begin + max(len(tokens), 1)))
    ids.append(current)
    seq, start, end = _spans(spans)
    return Segments(ids, seq, start, end, truncated)
