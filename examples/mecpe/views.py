"""Input-level corrupted views of training batches, for RPCL's consistency term.

RPCLoss's own corrupted view (``--view repr``) zeroes the context encoder's output at non-gold
utterances. An input-level view (``--view insert|delete|insert+delete``) instead changes the
conversation itself: a second version of every conversation of the batch is built with context
inserted or removed, its positions re-indexed, run through the model, and its pair logits are
gathered into the clean batch's index space (:func:`~examples.mecpe.perturb.align_to_clean`)
for ``RPCLoss(corrupted_scores=aligned.scores, corrupted_valid=aligned.shared)``: the
consistency term then compares the two views on the pairs of the original utterances.

Kinds (``rate`` in [0, 1]; rate 0 leaves a conversation as it is):

* ``delete``: each non-gold utterance (neither the emotion nor the cause of a gold pair) is
  removed with probability ``rate``; when every utterance is drawn (a conversation without gold
  pairs) the one with the largest draw stays.
* ``insert``: each utterance spawns, with probability ``rate``, one *distractor*: an utterance of
  another training conversation, uniform over the pool's utterances, inserted at a uniformly
  random gap (before the first utterance, between two, or after the last; distractors sharing a
  gap keep the order of the utterances that spawned them).
* ``insert+delete``: ``delete``, then ``insert`` into what is left (each kept utterance spawns).

These are the test-time families ``insert`` / ``delete`` of :mod:`examples.mecpe.perturb`, on
:class:`~examples.mecpe.batching.Example` objects rather than conversations: a distractor brings
its source's rows of every per-utterance field (frozen text embedding, hashed n-grams, audio,
video, or whatever the featurizer put there), so nothing is re-encoded per step. Its speaker is
a new speaker of the conversation, its emotion unknown (-1) and it is no cause; none of that
reaches a loss, since the consistency term reads only the pairs of original utterances. Gold
utterances are never removed, so every gold pair survives, remapped to its new indices.

Draws come from one dedicated ``torch.Generator`` (the trainer's ``gens["view"]``, seeded with
``seed + 2`` and saved in ``last.pt``, so a run is reproducible and resumes exactly): per
example, in batch order, ``4 n`` float64 uniforms (delete, spawn, gap, source), whatever the
kind and the rate. So the stream does not depend on what was drawn, and for one generator state
a higher rate perturbs a superset of what a lower one does.

Example::

    >>> import torch
    >>> from examples.mecpe.data import Conversation
    >>> from examples.mecpe.batching import build_examples
    >>> convs = [Conversation(str(k), ("A", "B", "A"), ("hi", "oh no", "why"), (0, 5, 0),
    ...                       ((2, 2),), ("a", "b", "c")) for k in range(3)]
    >>> pool = build_examples(convs, hash_buckets=64)
    >>> view = InputView("delete", 1.0, torch.Generator().manual_seed(0))
    >>> (ex,), (origin,) = view.perturb(pool, [1])
    >>> ex.length, ex.pairs, origin       # the non-gold utterances 1 and 3 are gone
    (1, ((1, 1),), (2,))
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from .batching import Batch, Example, collate
from .perturb import Aligned, align_to_clean, origin_index

__all__ = ["INPUT_VIEWS", "InputView", "ViewBatch", "view_operations"]

#: The input-level views (``--view``); ``repr`` is RPCLoss's own.
INPUT_VIEWS: tuple[str, ...] = ("insert", "delete", "insert+delete")

#: Example fields that are not per-utterance rows (rebuilt explicitly).
_STRUCTURE = ("conv_id", "length", "pairs")

#: Per-utterance labels: what a distractor gets (speakers: a new speaker id, see _splice).
_FOREIGN_LABELS: dict[str, float] = {"emotions": -1, "causes": 0.0}


def view_operations(kind: str) -> tuple[bool, bool]:
    """``(delete, insert)`` of a view kind, e.g. ``"insert+delete"`` → ``(True, True)``.

    >>> view_operations("insert")
    (False, True)
    """
    if kind not in INPUT_VIEWS:
        raise ValueError(f"view must be one of {', '.join(INPUT_VIEWS)}, got {kind!r}")
    parts = set(kind.split("+"))
    return "delete" in parts, "insert" in parts


def _gold_rows(ex: Example) -> set[int]:
    """0-based rows that are the emotion or the cause of a gold pair."""
    return {u - 1 for pair in ex.pairs for u in pair}


# A slot of a view: (source example, its row, origin in the clean conversation or None).
_Slot = tuple[Example, int, int | None]


def _splice(ex: Example, slots: Sequence[_Slot]) -> Example:
    """The example whose utterances are ``slots``: rows of every per-utterance field taken from
    each slot's source; gold pairs remapped; distractors get the labels of ``_FOREIGN_LABELS``
    and one new speaker id."""
    own = [k for k, (_, _, o) in enumerate(slots) if o is not None]
    foreign = [k for k, (_, _, o) in enumerate(slots) if o is None]
    new_index = {slots[k][2]: k + 1 for k in own}
    changes: dict[str, Any] = {
        "length": len(slots),
        "pairs": tuple(sorted((new_index[e - 1], new_index[c - 1]) for e, c in ex.pairs)),
    }
    # Own rows first, then the distractors' rows, then one gather into the slot order.
    order = torch.tensor(own + foreign, dtype=torch.long).argsort()
    for f in fields(Example):
        value = getattr(ex, f.name)
        if f.name in _STRUCTURE or value is None:
            continue
        if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == ex.length:
            mine = value[[slots[k][1] for k in own]]
            if f.name == "speakers":
                theirs = value.new_full((len(foreign),), int(value.max()) + 1)
            elif f.name in _FOREIGN_LABELS:
                theirs = value.new_full((len(foreign),), _FOREIGN_LABELS[f.name])
            else:
                theirs = _foreign_rows(f.name, value, [slots[k] for k in foreign])
            changes[f.name] = torch.cat([mine, theirs])[order]
        elif isinstance(value, list) and len(value) == ex.length:
            rows: list[Any] = []
            for src, row, _ in slots:
                rows.append(_field(src, f.name, list)[row])
            changes[f.name] = rows
        else:
            raise TypeError(
                f"Example.{f.name} of conversation {ex.conv_id!r} is not one entry per utterance "
                f"(a tensor or list of length {ex.length}): an input view cannot splice it"
            )
    return Example(**{f.name: changes.get(f.name, getattr(ex, f.name)) for f in fields(Example)})


def _field(src: Example, name: str, kind: type) -> Any:
    value = getattr(src, name)
    if not isinstance(value, kind):
        raise ValueError(
            f"Example.{name} of pool conversation {src.conv_id!r} is "
            f"{type(value).__name__}, expected {kind.__name__} like the other examples"
        )
    return value


def _foreign_rows(name: str, like: Tensor, slots: Sequence[_Slot]) -> Tensor:
    """The distractors' rows of feature field ``name`` (``(k, ...)``, ``like``'s dtype)."""
    if not slots:
        return like[:0]
    return torch.stack([_field(src, name, Tensor)[row] for src, row, _ in slots]).to(like.dtype)


@dataclass
class ViewBatch:
    """The input-level view of a training batch.

    Attributes:
        batch: the view's padded :class:`~examples.mecpe.batching.Batch` ``(B, N')``.
        origin: ``(B, N')`` int64, each view utterance's 0-based row in the clean batch, -1 for
            distractors and padding (:func:`~examples.mecpe.perturb.origin_index`).
    """

    batch: Batch
    origin: Tensor

    def aligned_logits(self, model: nn.Module, clean: Batch) -> Aligned:
        """Run ``model`` on the view and gather its pair logits into ``clean``'s ``(B, N, N)``
        index space; ``shared`` holds the pairs valid in both views."""
        out = model(self.batch)
        return align_to_clean(out.pair_logits, self.origin, clean.valid, self.batch.valid)


class InputView:
    """Builds the input-level view of training batches (see the module docstring).

    Args:
        kind: ``"insert"``, ``"delete"`` or ``"insert+delete"``.
        rate: per-utterance probability in [0, 1].
        generator: the dedicated CPU generator every draw comes from.
    """

    def __init__(self, kind: str, rate: float, generator: torch.Generator) -> None:
        self.delete, self.insert = view_operations(kind)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ValueError(f"view rate must be a number in [0, 1], got {rate!r}")
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise TypeError("generator must be a CPU torch.Generator (the draws are data prep)")
        self.kind, self.rate, self.generator = kind, float(rate), generator
        self._pool: Sequence[Example] | None = None
        self._starts: list[int] = []  # flat index of each pool example's first utterance
        self._total = 0

    def _index(self, pool: Sequence[Example]) -> None:
        """Flat utterance offsets of ``pool`` (recomputed only for another pool object)."""
        if self._pool is pool:
            return
        starts, total = [], 0
        for ex in pool:
            starts.append(total)
            total += ex.length
        self._pool, self._starts, self._total = pool, starts, total

    def _source(self, pool: Sequence[Example], own: int, u: float) -> tuple[Example, int]:
        """The pool utterance at uniform ``u`` among those outside example ``own``."""
        start = self._starts[own]
        n_own = pool[own].length
        available = self._total - n_own
        flat = min(math.floor(u * available), available - 1)
        flat += n_own if flat >= start else 0  # skip the own block
        k = bisect.bisect_right(self._starts, flat) - 1
        return pool[k], flat - self._starts[k]

    def _one(self, pool: Sequence[Example], k: int) -> tuple[Example, tuple[int | None, ...]]:
        ex = pool[k]
        n = ex.length
        drop_u, spawn_u, gap_u, src_u = torch.rand(
            4, n, generator=self.generator, dtype=torch.float64
        ).tolist()
        keep = list(range(n))
        if self.delete:
            gold = _gold_rows(ex)
            keep = [i for i in range(n) if i in gold or drop_u[i] >= self.rate]
            if not keep:  # never empty a conversation: the last one to go stays
                keep = [max(range(n), key=lambda i: drop_u[i])]
        slots: list[_Slot] = [(ex, i, i) for i in keep]
        if self.insert:
            m = len(keep)
            spawned = [
                (min(math.floor(gap_u[i] * (m + 1)), m), *self._source(pool, k, src_u[i]))
                for i in keep
                if spawn_u[i] < self.rate
            ]
            if spawned:
                ordered: list[_Slot] = []
                for gap in range(m + 1):
                    ordered += [(src, row, None) for g, src, row in spawned if g == gap]
                    if gap < m:
                        ordered.append(slots[gap])
                slots = ordered
        if len(slots) == n and all(o == i for i, (_, _, o) in enumerate(slots)):
            return ex, tuple(range(1, n + 1))
        return _splice(ex, slots), tuple(None if o is None else o + 1 for _, _, o in slots)

    def perturb(
        self, pool: Sequence[Example], indices: Sequence[int]
    ) -> tuple[list[Example], list[tuple[int | None, ...]]]:
        """The views of ``pool[i]`` for ``i`` in ``indices`` (in order), with their index maps
        (1-based clean index of each view utterance, ``None`` for a distractor).

        ``pool`` is the training split: distractors come from its other conversations.
        """
        self._index(pool)
        if self.insert and self.rate > 0 and any(
            self._total - pool[k].length == 0 for k in indices
        ):
            raise ValueError("--view insert needs a second training conversation to draw from")
        views, origins = [], []
        for k in indices:
            ex, origin = self._one(pool, k)
            views.append(ex)
            origins.append(origin)
        return views, origins

    def batch(
        self,
        pool: Sequence[Example],
        indices: Sequence[int],
        *,
        window: int | None,
        cause_not_after_emotion: bool,
        device: torch.device | str = "cpu",
    ) -> ViewBatch:
        """The :class:`ViewBatch` of the training batch ``[pool[i] for i in indices]``, collated
        with the run's candidate rules and moved to ``device``."""
        views, origins = self.perturb(pool, indices)
        batch = collate(views, window=window, cause_not_after_emotion=cause_not_after_emotion)
        origin = origin_index(origins, batch.mask.shape[1])
        return ViewBatch(batch.to(device), origin.to(device))
