"""The token sequences of a batch, sorted by length and padded in chunks, with utterance spans.

:func:`chunk_segments` gathers every sequence of a batch's conversations
(:class:`~examples.mecpe.segments.Segments`), sorts them by token count (longest first; ties
keep batch order) and cuts the sorted list into chunks whose padded size ``count × longest``
stays within ``chunk_tokens`` (a chunk holds at least one sequence). Each :class:`TextChunk` is
one transformer call; padding is then only what a chunk's sequences lack against its longest
one. Rule and order depend on the sequences only (no random numbers).

Every utterance slot ``(b, i)`` of the ``(B, N)`` batch has a *row*: chunk ``k``'s pooled output
``(C_k, U_k, H)`` is flattened to ``C_k * U_k`` rows, the chunks' rows are concatenated in chunk
order and one zero row is appended for padding slots; :attr:`TextBatch.slots` ``(B * N,)`` holds
each slot's row, so that ``rows[slots].view(B, N, H)`` is the utterance representation.

Example::

    >>> from examples.mecpe.segments import pack_utterances
    >>> a = pack_utterances([[5, 6, 7], [8]], cls=1, sep=2, max_tokens=8)
    >>> b = pack_utterances([[9]], cls=1, sep=2, max_tokens=8)
    >>> text = chunk_segments([a, b], n=2, chunk_tokens=6)
    >>> [tuple(c.mask.shape) for c in text.chunks]      # lengths 5 | 3, 3
    [(1, 5), (2, 3)]
    >>> text.slots.tolist()                             # b=1, i=1 is padding: the zero row
    [0, 1, 2, 3]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .segments import Segments

__all__ = ["TextBatch", "TextChunk", "chunk_segments", "plan_chunks"]


@dataclass
class TextChunk:
    """``C`` sequences padded to ``T`` tokens (one transformer call).

    Attributes:
        ids: ``(C, T)`` int64 token ids (0 on padding), or ``None`` when ``states`` are given.
        states: ``(C, T, H)`` float16 cached hidden states of the frozen lower layers, or ``None``.
        mask: ``(C, T)`` bool, real tokens.
        start: ``(C, U)`` int64 span start of the ``u``-th utterance of each sequence.
        end: ``(C, U)`` int64 span end (exclusive); ``start == end == 0`` for missing utterances
            (a sequence with fewer than ``U`` utterances).
    """

    ids: Tensor | None
    states: Tensor | None
    mask: Tensor
    start: Tensor
    end: Tensor

    def to(self, device: torch.device | str) -> TextChunk:
        """A copy with every tensor on ``device``."""
        move = {
            k: v.to(device, non_blocking=True)
            for k, v in vars(self).items()
            if isinstance(v, Tensor)
        }
        return replace(self, **move)


@dataclass
class TextBatch:
    """The chunks of a batch and the row of every utterance slot (see the module docstring).

    Attributes:
        chunks: the chunks, in row order.
        slots: ``(B * N,)`` int64 row of each slot; padding slots hold ``rows`` (the zero row).
        rows: number of pooled rows of all chunks (the zero row excluded).
    """

    chunks: list[TextChunk]
    slots: Tensor
    rows: int

    def to(self, device: torch.device | str) -> TextBatch:
        """A copy with every tensor on ``device``."""
        return TextBatch(
            [c.to(device) for c in self.chunks], self.slots.to(device, non_blocking=True), self.rows
        )


def plan_chunks(lengths: Sequence[int], chunk_tokens: int) -> list[list[int]]:
    """Sequence indices of each chunk: sorted by length (longest first, stable), cut greedily
    while ``count × longest <= chunk_tokens``.

    >>> plan_chunks([3, 5, 3, 1], 6)
    [[1], [0, 2], [3]]
    """
    order = sorted(range(len(lengths)), key=lambda g: -lengths[g])
    chunks: list[list[int]] = []
    for g in order:
        if chunks and (len(chunks[-1]) + 1) * lengths[chunks[-1][0]] <= chunk_tokens:
            chunks[-1].append(g)
        else:
            chunks.append([g])
    return chunks


def chunk_segments(segments: Sequence[Segments], *, n: int, chunk_tokens: int) -> TextBatch:
    """Chunks of the sequences of ``segments`` (one per conversation of a batch padded to ``n``
    utterances), with cached states when every conversation has them, else token ids."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    with_states = [s.states is not None for s in segments]
    if any(with_states) and not all(with_states):
        raise ValueError("collate: some conversations have cached transformer states, some not")
    use_states = all(with_states)
    # every sequence of the batch: (conversation, sequence within it)
    owners = [(b, s) for b, seg in enumerate(segments) for s in range(len(seg.ids))]
    lengths = [len(segments[b].ids[s]) for b, s in owners]
    # the utterances of each sequence, in span order
    utts: dict[tuple[int, int], list[int]] = {}
    for b, seg in enumerate(segments):
        for i, s in enumerate(seg.seq.tolist()):
            utts.setdefault((b, s), []).append(i)
    slots = torch.full((len(segments), n), -1, dtype=torch.long)
    chunks: list[TextChunk] = []
    row = 0
    for members in plan_chunks(lengths, chunk_tokens):
        c, t = len(members), lengths[members[0]]
        u = max((len(utts.get(owners[g], ())) for g in members), default=1) or 1
        mask = torch.zeros(c, t, dtype=torch.bool)
        start = torch.zeros(c, u, dtype=torch.long)
        end = torch.zeros(c, u, dtype=torch.long)
        ids = None if use_states else torch.zeros(c, t, dtype=torch.long)
        states = None
        if use_states:
            first = segments[owners[members[0]][0]].states
            assert first is not None
            states = torch.zeros(c, t, first[0].shape[-1], dtype=torch.float16)
        for k, g in enumerate(members):
            b, s = owners[g]
            seg = segments[b]
            length = lengths[g]
            mask[k, :length] = True
            if states is not None:
                assert seg.states is not None
                states[k, :length] = seg.states[s]
            elif ids is not None:
                ids[k, :length] = torch.tensor(seg.ids[s], dtype=torch.long)
            for j, i in enumerate(utts.get((b, s), ())):
                start[k, j], end[k, j] = seg.start[i], seg.end[i]
                slots[b, i] = row + k * u + j
        chunks.append(TextChunk(ids, states, mask, start, end))
        row += c * u
    slots = slots.masked_fill(slots < 0, row).view(-1)
    return TextBatch(chunks, slots, row)
