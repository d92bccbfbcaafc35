"""Turning conversations into padded mini-batches for the reference MECPE model.

One :class:`Example` holds everything the model and the losses need about one conversation
(utterance features, hashed character n-grams for the trainable ``hash`` text encoder, token
sequences for the ``transformer`` one, speaker ids, emotion labels, cause labels, gold pairs).
:func:`collate` pads a list of examples to the longest conversation of the batch and builds the
``(B, N, N)`` ``gold`` / ``valid`` pair masks with :func:`torch_pairconf.pair_masks` (rows =
emotion utterance, columns = candidate cause).

Batch plans (lists of example indices, one per optimizer step), drawn from the run's dedicated
data-order generator: :func:`batch_indices` (a shuffled order cut into batches) and
:func:`bucketed_batch_indices` (batches of similar-length conversations);
:func:`split_batch` cuts one batch into the micro-batches of gradient accumulation and
data-parallel ranks.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from torch_pairconf import pair_masks

from .data import Conversation
from .segments import Segments
from .text_chunks import TextBatch, chunk_segments

__all__ = [
    "DEFAULT_CHUNK_TOKENS",
    "DEFAULT_HASH_BUCKETS",
    "Batch",
    "Example",
    "batch_indices",
    "bucketed_batch_indices",
    "build_examples",
    "collate",
    "count_batches",
    "hash_ngrams",
    "split_batch",
]

#: Number of hash buckets of the trainable ``hash`` text encoder.
DEFAULT_HASH_BUCKETS: int = 2**18

#: Padded tokens per transformer call (see :mod:`examples.mecpe.text_chunks`).
DEFAULT_CHUNK_TOKENS: int = 4096

_MAX_WORD_CHARS = 20


def hash_ngrams(text: str, buckets: int = DEFAULT_HASH_BUCKETS) -> list[int]:
    """Hash an utterance into bucket ids of its character uni-/bi-grams and whitespace words.

    The text is lower-cased and its whitespace collapsed. Features: every non-space character,
    every pair of adjacent characters (spaces included, so word boundaries are visible), and every
    whitespace-separated word of at most 20 characters (useful for English; Chinese text has no
    spaces, so there it only adds the occasional short chunk). Hashing uses CRC-32, which is stable
    across processes and platforms (Python's ``hash`` is salted per process).

    Args:
        text: the utterance.
        buckets: number of hash buckets (ids are in ``[0, buckets)``).

    Returns:
        The list of bucket ids (may be empty for an empty utterance).
    """
    t = " ".join(text.lower().split())
    grams = [f"1{c}" for c in t if not c.isspace()]
    grams += [f"2{t[i : i + 2]}" for i in range(len(t) - 1)]
    grams += [f"w{w}" for w in t.split(" ") if w and len(w) <= _MAX_WORD_CHARS]
    return [zlib.crc32(g.encode("utf-8")) % buckets for g in grams]


@dataclass
class Example:
    """One conversation, ready for :func:`collate`.

    Attributes:
        conv_id: conversation id.
        length: number of utterances ``n``.
        pairs: gold ``(emotion, cause)`` pairs, 1-based utterance indices.
        speakers: ``(n,)`` int64 speaker index within the conversation (first speaker is 0).
        emotions: ``(n,)`` int64 emotion class, ``-1`` when unknown.
        causes: ``(n,)`` float32, 1.0 when the utterance is the cause of at least one gold pair.
        text: ``(n, d)`` float32 frozen text embeddings, or ``None`` with the ``hash`` encoder.
        tokens: per utterance hashed n-gram ids (``hash`` encoder), else ``None``.
        audio: ``(n, d_a)`` float32 audio features or ``None``.
        video: ``(n, d_v)`` float32 video features or ``None``.
        segments: token sequences and utterance spans (``transformer`` encoder), else ``None``.
    """

    conv_id: str
    length: int
    pairs: tuple[tuple[int, int], ...]
    speakers: Tensor
    emotions: Tensor
    causes: Tensor
    text: Tensor | None = None
    tokens: list[list[int]] | None = None
    audio: Tensor | None = None
    video: Tensor | None = None
    segments: Segments | None = None


@dataclass
class Batch:
    """A padded mini-batch of ``B`` conversations of at most ``N`` utterances.

    Attributes:
        conv_ids: the ``B`` conversation ids.
        lengths: ``(B,)`` int64 number of utterances, always on the CPU (``pack_padded_sequence``).
        mask: ``(B, N)`` bool, True for real utterances.
        speakers: ``(B, N)`` int64 speaker index, ``-1`` on padding.
        emotions: ``(B, N)`` int64 emotion class, ``-1`` on padding and unknown labels.
        causes: ``(B, N)`` float32 utterance-level cause labels (0 on padding).
        gold: ``(B, N, N)`` bool gold pairs, row = emotion utterance, column = cause.
        valid: ``(B, N, N)`` bool candidate pairs (all pairs of real utterances, optionally
            restricted by a window / cause-not-after-emotion).
        pairs: the gold pairs per conversation (1-based), for decoding and reporting.
        text: ``(B, N, d)`` float32 text embeddings or ``None``.
        token_ids: flat int64 hashed n-gram ids of all ``B * N`` utterance slots or ``None``.
        token_offsets: ``(B * N,)`` int64 start of each slot's bag in ``token_ids`` or ``None``.
        audio: ``(B, N, d_a)`` float32 or ``None``.
        video: ``(B, N, d_v)`` float32 or ``None``.
        text_tokens: the chunked token sequences of the ``transformer`` encoder, or ``None``.
    """

    conv_ids: list[str]
    lengths: Tensor
    mask: Tensor
    speakers: Tensor
    emotions: Tensor
    causes: Tensor
    gold: Tensor
    valid: Tensor
    pairs: list[tuple[tuple[int, int], ...]]
    text: Tensor | None = None
    token_ids: Tensor | None = None
    token_offsets: Tensor | None = None
    audio: Tensor | None = None
    video: Tensor | None = None
    text_tokens: TextBatch | None = None

    @property
    def size(self) -> int:
        """Number of conversations ``B``."""
        return len(self.conv_ids)

    def to(self, device: torch.device | str) -> Batch:
        """Copy every tensor except ``lengths`` to ``device`` (``lengths`` stays on the CPU)."""
        changes: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "lengths" and isinstance(value, (Tensor, TextBatch)):
                changes[f.name] = (
                    value.to(device, non_blocking=True)
                    if isinstance(value, Tensor)
                    else value.to(device)
                )
        return replace(self, **changes)


def build_examples(
    convs: Sequence[Conversation],
    *,
    text: Sequence[np.ndarray] | None = None,
    hash_buckets: int | None = None,
    audio: Sequence[np.ndarray] | None = None,
    video: Sequence[np.ndarray] | None = None,
    segments: Sequence[Segments] | None = None,
) -> list[Example]:
    """Build one :class:`Example` per conversation.

    Args:
        convs: the conversations.
        text: per conversation ``(n, d)`` frozen text embeddings (``None`` with ``hash``).
        hash_buckets: when given, utterance texts are hashed into n-gram ids (``hash`` encoder).
        audio: per conversation ``(n, d_a)`` audio features or ``None``.
        video: per conversation ``(n, d_v)`` video features or ``None``.
        segments: per conversation its token sequences (``transformer`` encoder) or ``None``.

    Returns:
        One example per conversation, in the same order.
    """
    out: list[Example] = []
    for k, conv in enumerate(convs):
        n = len(conv.texts)
        names: dict[str, int] = {}
        spk = [names.setdefault(s, len(names)) for s in conv.speakers]
        causes = torch.zeros(n, dtype=torch.float32)
        for _, c in conv.pairs:
            if 1 <= c <= n:
                causes[c - 1] = 1.0
        ex = Example(
            conv_id=conv.conv_id,
            length=n,
            pairs=conv.pairs,
            speakers=torch.tensor(spk, dtype=torch.long),
            emotions=torch.tensor(conv.emotions, dtype=torch.long),
            causes=causes,
        )
        if text is not None:
            ex.text = _feature(text[k], n, "text", ex.conv_id)
        if hash_buckets is not None:
            ex.tokens = [hash_ngrams(t, hash_buckets) for t in conv.texts]
        if audio is not None:
            ex.audio = _feature(audio[k], n, "audio", ex.conv_id)
        if video is not None:
            ex.video = _feature(video[k], n, "video", ex.conv_id)
        if segments is not None:
            if segments[k].seq.numel() != n:
                raise ValueError(
                    f"token sequences of conversation {ex.conv_id!r} have "
                    f"{segments[k].seq.numel()} utterance spans, expected {n}"
                )
            ex.segments = segments[k]
        out.append(ex)
    return out


def _feature(array: np.ndarray, n: int, name: str, conv_id: str) -> Tensor:
    t = torch.as_tensor(np.asarray(array, dtype=np.float32))
    if t.ndim != 2 or t.shape[0] != n:
        raise ValueError(
            f"{name} features of conversation {conv_id!r} have shape {tuple(t.shape)}, "
            f"expected ({n}, dim)"
        )
    return t


def _pad_features(items: Sequence[Tensor | None], n: int, name: str) -> Tensor:
    """Stack per-conversation ``(n_b, d)`` features into ``(B, n, d)`` zero-padded."""
    present = [x for x in items if x is not None]
    if len(present) != len(items):
        raise ValueError(f"collate: some examples have {name} features and some do not")
    dim = present[0].shape[1]
    out = torch.zeros(len(items), n, dim, dtype=torch.float32)
    for b, x in enumerate(present):
        out[b, : x.shape[0]] = x
    return out


def collate(
    examples: Sequence[Example],
    *,
    window: int | None = None,
    cause_not_after_emotion: bool = False,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> Batch:
    """Pad ``examples`` into a :class:`Batch` and build the pair masks.

    Args:
        examples: the conversations of the batch (at least one).
        window: when given, only pairs with ``|emotion - cause| <= window`` are candidates.
        cause_not_after_emotion: when True, only pairs with ``cause <= emotion`` are candidates.
        chunk_tokens: padded tokens per transformer call (``transformer`` encoder; see
            :func:`examples.mecpe.text_chunks.chunk_segments`).

    Returns:
        The padded batch (on the CPU).
    """
    if not examples:
        raise ValueError("collate() needs at least one example")
    bsz = len(examples)
    n = max(ex.length for ex in examples)
    lengths = torch.tensor([ex.length for ex in examples], dtype=torch.long)
    mask = torch.arange(n)[None, :] < lengths[:, None]
    speakers = torch.full((bsz, n), -1, dtype=torch.long)
    emotions = torch.full((bsz, n), -1, dtype=torch.long)
    causes = torch.zeros(bsz, n, dtype=torch.float32)
    for b, ex in enumerate(examples):
        speakers[b, : ex.length] = ex.speakers
        emotions[b, : ex.length] = ex.emotions
        causes[b, : ex.length] = ex.causes
    pairs = [ex.pairs for ex in examples]
    masks = pair_masks(
        lengths,
        [list(p) for p in pairs],
        n=n,
        index_base=1,
        window=window,
        cause_not_after_emotion=cause_not_after_emotion,
    )
    batch = Batch(
        conv_ids=[ex.conv_id for ex in examples],
        lengths=lengths,
        mask=mask,
        speakers=speakers,
        emotions=emotions,
        causes=causes,
        gold=masks.gold,
        valid=masks.valid,
        pairs=pairs,
    )
    first = examples[0]
    if first.text is not None:
        batch.text = _pad_features([ex.text for ex in examples], n, "text")
    if first.audio is not None:
        batch.audio = _pad_features([ex.audio for ex in examples], n, "audio")
    if first.video is not None:
        batch.video = _pad_features([ex.video for ex in examples], n, "video")
    if first.tokens is not None:
        batch.token_ids, batch.token_offsets = _token_bags(examples, n)
    if first.segments is not None:
        segs = [ex.segments for ex in examples]
        if any(seg is None for seg in segs):
            raise ValueError("collate: some examples have token sequences and some do not")
        batch.text_tokens = chunk_segments(
            [seg for seg in segs if seg is not None], n=n, chunk_tokens=chunk_tokens
        )
    return batch


def _token_bags(examples: Sequence[Example], n: int) -> tuple[Tensor, Tensor]:
    """``EmbeddingBag`` input of the hashed n-grams: flat ids and the ``(B * N,)`` bag offsets
    (padding slots are empty bags)."""
    ids: list[int] = []
    offsets: list[int] = []
    for ex in examples:
        toks = ex.tokens or []
        for i in range(n):
            offsets.append(len(ids))
            if i < ex.length:
                ids.extend(toks[i])
    return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


def batch_indices(
    n_items: int,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
) -> Iterator[list[int]]:
    """Yield lists of example indices, one per mini-batch.

    With ``shuffle`` the order is ``torch.randperm(n_items, generator=generator)``, so a seeded
    generator dedicated to data order gives the same order to every arm of a comparison, whatever
    else draws random numbers during training.
    """
    if shuffle:
        order = torch.randperm(n_items, generator=generator).tolist()
    else:
        order = list(range(n_items))
    for start in range(0, n_items, batch_size):
        yield order[start : start + batch_size]


def _pools(order: list[int], batch_size: int, pool: int) -> list[list[int]]:
    step = batch_size * pool
    return [order[i : i + step] for i in range(0, len(order), step)]


def count_batches(n_items: int, batch_size: int, length_buckets: int = 0) -> int:
    """Batches per epoch of :func:`batch_indices` (``length_buckets=0``) or
    :func:`bucketed_batch_indices` (each pool ends with its own partial batch)."""
    if length_buckets == 0:
        return -(-n_items // batch_size)
    pool = batch_size * length_buckets
    full, rest = divmod(n_items, pool)
    return full * length_buckets + -(-rest // batch_size)


def bucketed_batch_indices(
    lengths: Sequence[int],
    batch_size: int,
    *,
    pool: int,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Batches of similar-length items, in a random order driven by ``generator``.

    The rule: ``torch.randperm(n)`` orders the items; that order is cut into pools of
    ``pool * batch_size`` items; each pool is sorted by length (longest first; ties keep the
    random order) and cut into batches of ``batch_size`` (a pool's last batch may be smaller);
    the batches of all pools are put in the order of ``torch.randperm(n_batches)``. Two draws
    from ``generator`` per epoch, whatever the lengths.

    >>> lengths = [1, 5, 2, 5, 1, 2]
    >>> plan = bucketed_batch_indices(lengths, 2, pool=3, generator=torch.Generator().manual_seed(0))
    >>> sorted([lengths[i] for i in batch] for batch in plan)
    [[1, 1], [2, 2], [5, 5]]
    """
    if pool < 1:
        raise ValueError(f"pool must be >= 1, got {pool}")
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches: list[list[int]] = []
    for items in _pools(order, batch_size, pool):
        ranked = sorted(items, key=lambda i: -lengths[i])  # stable: ties keep the random order
        batches += [ranked[i : i + batch_size] for i in range(0, len(ranked), batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[k] for k in shuffle]


def split_batch(indices: Sequence[int], parts: int) -> list[list[int]]:
    """Cut one batch into ``parts`` contiguous micro-batches of sizes as equal as possible
    (the first ``len % parts`` one larger; empty ones when the batch has fewer items).

    Micro-batch ``k`` of a batch split for ``W`` ranks × ``A`` accumulation steps runs on rank
    ``k // A`` (see :mod:`examples.mecpe.engine`).

    >>> split_batch([7, 8, 9, 10, 11], 2)
    [[7, 8, 9], [10, 11]]
    >>> split_batch([7], 3)
    [[7], [], []]
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    size, extra = divmod(len(indices), parts)
    out: list[list[int]] = []
    at = 0
    for k in range(parts):
        take = size + (k < extra)
        out.append(list(indices[at : at + take]))
        at += take
    return out
