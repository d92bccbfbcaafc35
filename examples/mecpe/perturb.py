"""Seeded test-time perturbations of conversations, and the alignment of their pair scores.

A perturbation rewrites a :class:`~examples.mecpe.data.Conversation` and returns, with the new
conversation, an **index map** ``origin``: for each new utterance its 1-based index in the
original conversation, or ``None`` for an utterance that came from another conversation.

Families (:class:`Family`); ``rate`` is in [0, 1] and 0 leaves every conversation unchanged:

* ``insert`` (not oracle): each original utterance independently, with probability ``rate``,
  spawns one *distractor*, an utterance drawn uniformly from the pool's utterances of other
  conversations, inserted at a uniformly random gap of the original conversation (before
  utterance 1, between two utterances, or after the last; distractors sharing a gap keep the
  order of the utterances that spawned them). So the number of distractors is
  ``Binomial(n, rate)`` (mean ``rate * n``, also for short conversations, where
  ``round(rate * n)`` would insert nothing) and the realised rate is ``inserted / n``.
* ``delete`` (oracle): each non-gold utterance is deleted independently with probability
  ``rate``. A conversation is never emptied: when every utterance is drawn (only possible
  without gold pairs) the one with the largest draw stays.
* ``replace`` (oracle): each non-gold utterance is replaced independently with probability
  ``rate`` by an utterance drawn uniformly from the pool's utterances of other conversations.
* ``speaker`` (oracle): each non-gold utterance is selected independently with probability
  ``rate``, and the speaker labels of the selected utterances are permuted by a uniformly
  random derangement (every selected utterance takes another selected one's label; with fewer
  than two selected nothing changes). Labels move only among non-gold utterances, so the
  conversation's label multiset is kept; two utterances of the same speaker swap to no effect.

*Non-gold* utterances are neither the emotion nor the cause of any gold pair. The families that
need this are **oracle** diagnostics (``Family.oracle``): they use the test labels to decide what
to perturb, which a deployed model never could; ``insert`` does not. Gold utterances are never
touched, so every gold pair survives and is remapped to its new indices.

A drawn utterance brings its whole record: text, speaker, emotion label and feature key. The
emotion label is kept from its source (the text still expresses it; relabelling it neutral
would make the emotion targets wrong); it joins no pair of its new conversation. The feature
key is the source's, so audio/video lookups in a
:class:`~examples.mecpe.features.FeatureTable` keep working. Text embeddings, though, are
cached per (dataset, split, encoder) by :func:`~examples.mecpe.text.encode_conversations` with
a fingerprint of the texts: a perturbed split must get its own cache entry, e.g. pass
``split=f"test-{perturbation_tag(family, rate, seed)}"``, or it recomputes (and overwrites)
the clean split's cache.

Determinism: every conversation gets its own ``random.Random`` seeded from a SHA-256 hash of
``(family, seed, conv_id)`` (Python's ``hash`` is salted per process), and the pool is put in
``conv_id`` order. A conversation's perturbation therefore depends only on ``(family, rate,
seed)``, the conversation and (for ``insert``/``replace``) the pool's content, not on the order
in which conversations are processed or on which others are perturbed along with it. The draws
do not depend on ``rate``: one uniform per utterance, compared with ``rate``, decides, so for a
fixed seed a higher rate perturbs a superset of what a lower one does (with the same sources
and gaps), which keeps rate sweeps free of resampling noise (the ``speaker`` derangement is the
exception: it is drawn anew for each selected set).

Evaluation: collate the perturbed conversations into their own batch and score them. Metrics
"on all pairs" then use that batch's own ``gold``/``valid`` with the perturbed scores directly.
Metrics "on the original utterances only" gather the perturbed scores into the clean index
space with :func:`align_to_clean` (``origin_index`` builds its index tensor) and use its
``shared`` mask with the clean batch's ``gold``, e.g. ``torch_pairconf.pair_stability(clean,
aligned.scores, clean_gold, aligned.shared)``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import NamedTuple

import torch
from torch import Tensor

from .data import Conversation

__all__ = [
    "FAMILIES",
    "Aligned",
    "DistractorPool",
    "Family",
    "Perturbation",
    "align_to_clean",
    "gold_utterance_indices",
    "origin_index",
    "perturb_conversation",
    "perturb_split",
    "perturbation_tag",
]


class Family(str, Enum):
    """A perturbation family (see the module docstring for each one's exact definition)."""

    INSERT = "insert"
    DELETE = "delete"
    REPLACE = "replace"
    SPEAKER = "speaker"

    @property
    def oracle(self) -> bool:
        """Whether the family uses gold labels to choose what it perturbs (the non-gold
        utterances): an oracle diagnostic, not a realistic test-time condition."""
        return self is not Family.INSERT

    @property
    def uses_pool(self) -> bool:
        """Whether the family draws utterances from other conversations."""
        return self in (Family.INSERT, Family.REPLACE)


FAMILIES: tuple[str, ...] = tuple(f.value for f in Family)


@dataclass(frozen=True)
class Perturbation:
    """One perturbed conversation.

    Attributes:
        conversation: the perturbed conversation (same ``conv_id``; pairs remapped).
        origin: for each new utterance its 1-based index in the original conversation, or
            ``None`` for an inserted or replacing utterance.
        affected: distractors inserted (``insert``), or utterances deleted / replaced /
            relabelled (the other families).
        eligible: utterances the rate applies to: all ``n`` originals for ``insert`` (each may
            spawn a distractor), the non-gold ones otherwise.
    """

    conversation: Conversation
    origin: tuple[int | None, ...]
    affected: int
    eligible: int

    @property
    def realised_rate(self) -> float:
        """``affected / eligible`` (0 when nothing is eligible)."""
        return self.affected / self.eligible if self.eligible else 0.0


class DistractorPool:
    """The utterances distractors are drawn from: a split's conversations in ``conv_id`` order.

    A conversation never draws from itself (matched by ``conv_id``); drawing is uniform over the
    utterances of all other pool conversations.
    """

    def __init__(self, conversations: Sequence[Conversation]) -> None:
        if not conversations:
            raise ValueError("pool is empty: distractors need at least one other conversation")
        for conv in conversations:
            if not isinstance(conv, Conversation):
                raise TypeError(f"pool must hold Conversation objects, got {type(conv).__name__}")
        ordered = sorted(conversations, key=lambda c: c.conv_id)
        self._conversations = tuple(ordered)
        self._blocks: dict[str, tuple[int, int]] = {}
        self._where: list[tuple[int, int]] = []  # flat utterance -> (conversation, 0-based index)
        for k, conv in enumerate(ordered):
            if conv.conv_id in self._blocks:
                raise ValueError(f"pool holds conversation id {conv.conv_id!r} twice")
            self._blocks[conv.conv_id] = (len(self._where), len(self._where) + len(conv))
            self._where.extend((k, i) for i in range(len(conv)))

    def __len__(self) -> int:
        """Number of utterances in the pool."""
        return len(self._where)

    def available(self, conv_id: str) -> int:
        """Number of pool utterances a conversation ``conv_id`` may draw (those not its own)."""
        start, stop = self._blocks.get(conv_id, (0, 0))
        return len(self._where) - (stop - start)

    def utterance(self, conv_id: str, draw: int) -> tuple[Conversation, int]:
        """The ``draw``-th (0-based) utterance outside ``conv_id``: ``(source, 0-based index)``."""
        start, stop = self._blocks.get(conv_id, (0, 0))
        flat = draw + (stop - start) if draw >= start else draw  # skip the own block
        k, i = self._where[flat]
        return self._conversations[k], i


# ------------------------------------------------------------------------------- checks


def _check_family(family: str | Family) -> Family:
    try:
        return Family(family)
    except ValueError:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}") from None


def _check_rate(rate: float) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"rate must be a number, got {type(rate).__name__}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")


def _as_pool(pool: DistractorPool | Sequence[Conversation] | None) -> DistractorPool | None:
    if pool is None or isinstance(pool, DistractorPool):
        return pool
    return DistractorPool(pool)


def perturbation_tag(family: str | Family, rate: float, seed: int) -> str:
    """A file-name-safe tag of a perturbation, e.g. ``"insert-r0.3-s7"`` (for cache keys).

    Example:
        >>> perturbation_tag("delete", 0.25, 3)
        'delete-r0.25-s3'
    """
    fam = _check_family(family)
    _check_rate(rate)
    _check_seed(seed)
    return f"{fam.value}-r{float(rate)!r}-s{seed}"


def gold_utterance_indices(conv: Conversation) -> frozenset[int]:
    """1-based indices of the utterances that are the emotion or the cause of a gold pair."""
    return frozenset(u for pair in conv.pairs for u in pair)


def _rng(family: Family, seed: int, conv_id: str) -> random.Random:
    """The conversation's own generator: a stable hash, not the per-process salted ``hash``."""
    digest = hashlib.sha256(f"{family.value}\0{seed}\0{conv_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# ------------------------------------------------------------------------- perturbation


@dataclass
class _Utt:
    speaker: str
    text: str
    emotion: int
    key: str
    origin: int | None


def _own(conv: Conversation, i: int) -> _Utt:
    """Utterance ``i`` (0-based) of ``conv`` with its 1-based origin."""
    return _Utt(conv.speakers[i], conv.texts[i], conv.emotions[i], conv.feature_keys[i], i + 1)


def _foreign(source: Conversation, i: int) -> _Utt:
    """Utterance ``i`` of another conversation: its whole record, no origin."""
    return _Utt(
        source.speakers[i], source.texts[i], source.emotions[i], source.feature_keys[i], None
    )


def _rebuild(conv: Conversation, utts: list[_Utt]) -> tuple[Conversation, tuple[int | None, ...]]:
    """The conversation of ``utts`` with the gold pairs remapped, and its index map."""
    origin = tuple(u.origin for u in utts)
    new_index = {o: k + 1 for k, o in enumerate(origin) if o is not None}
    # Gold utterances are never removed, so every pair maps (a KeyError here would be a bug).
    pairs = tuple(sorted((new_index[e], new_index[c]) for e, c in conv.pairs))
    out = Conversation(
        conv_id=conv.conv_id,
        speakers=tuple(u.speaker for u in utts),
        texts=tuple(u.text for u in utts),
        emotions=tuple(u.emotion for u in utts),
        pairs=pairs,
        feature_keys=tuple(u.key for u in utts),
    )
    return out, origin


def _derangement(k: int, rng: random.Random) -> list[int]:
    """A uniformly random permutation of ``range(k)`` without fixed points (``k >= 2``)."""
    perm = list(range(k))
    while True:  # rejection sampling: a permutation is a derangement with probability ~1/e
        rng.shuffle(perm)
        if all(p != i for i, p in enumerate(perm)):
            return perm


#: What a family's draw returns: the new utterance list, the affected and the eligible counts.
_Drawn = tuple[list[_Utt], int, int]


def _insert(
    conv: Conversation,
    originals: list[_Utt],
    rate: float,
    rng: random.Random,
    pool: DistractorPool,
) -> _Drawn:
    """Distractors from ``pool`` inserted at random gaps (every original may spawn one)."""
    n = len(originals)
    # Per original utterance, in order: (uniform, gap, source): independent of rate.
    available = pool.available(conv.conv_id)
    draws = [(rng.random(), rng.randrange(n + 1), rng.randrange(available)) for _ in range(n)]
    spawned = [(gap, src) for u, gap, src in draws if u < rate]
    utts: list[_Utt] = []
    for gap in range(n + 1):
        utts.extend(_foreign(*pool.utterance(conv.conv_id, src)) for g, src in spawned if g == gap)
        if gap < n:
            utts.append(originals[gap])
    return utts, len(spawned), n


def _replace(
    conv: Conversation,
    originals: list[_Utt],
    non_gold: list[int],
    rate: float,
    rng: random.Random,
    pool: DistractorPool,
) -> _Drawn:
    """Non-gold utterances replaced by utterances of ``pool``."""
    available = pool.available(conv.conv_id)
    draws = [(rng.random(), rng.randrange(available)) for _ in originals]
    utts = list(originals)
    affected = 0
    for i in non_gold:
        u, src = draws[i]
        if u < rate:
            utts[i] = _foreign(*pool.utterance(conv.conv_id, src))
            affected += 1
    return utts, affected, len(non_gold)


def _delete(
    originals: list[_Utt], non_gold: list[int], rate: float, rng: random.Random
) -> _Drawn:
    """Non-gold utterances removed (never all of a conversation)."""
    n = len(originals)
    uniforms = [rng.random() for _ in range(n)]
    drop = {i for i in non_gold if uniforms[i] < rate}
    if len(drop) == n:  # never empty a conversation: keep the last one to go
        drop.discard(max(range(n), key=lambda i: uniforms[i]))
    return [u for i, u in enumerate(originals) if i not in drop], len(drop), len(non_gold)


def _shuffle_speakers(
    conv: Conversation,
    originals: list[_Utt],
    non_gold: list[int],
    rate: float,
    rng: random.Random,
) -> _Drawn:
    """The speaker labels of the chosen non-gold utterances deranged among them."""
    uniforms = [rng.random() for _ in originals]
    chosen = [i for i in non_gold if uniforms[i] < rate]
    utts = list(originals)
    if len(chosen) < 2:
        return utts, 0, len(non_gold)
    perm = _derangement(len(chosen), rng)
    for i, p in zip(chosen, perm, strict=True):
        utts[i] = replace(originals[i], speaker=conv.speakers[chosen[p]])
    return utts, len(chosen), len(non_gold)


def perturb_conversation(
    conv: Conversation,
    family: str | Family,
    rate: float,
    seed: int,
    pool: DistractorPool | Sequence[Conversation] | None = None,
) -> Perturbation:
    """Perturb one conversation (see the module docstring for the families and the rate).

    Args:
        conv: the conversation.
        family: ``"insert"``, ``"delete"``, ``"replace"`` or ``"speaker"`` (or a :class:`Family`).
        rate: in [0, 1]; 0 returns the conversation unchanged.
        seed: the perturbation seed; with ``(family, conv.conv_id)`` it fixes every draw.
        pool: where ``insert`` / ``replace`` draw utterances from (a :class:`DistractorPool`, or
            conversations to build one from; build the pool once when perturbing many
            conversations). Ignored by the other families.

    Returns:
        A :class:`Perturbation`: the new conversation, its index map, and the counts behind the
        realised rate.

    Raises:
        ValueError: unknown family, rate outside [0, 1], or a pool family without a pool or
            whose pool has no conversation other than ``conv``.

    Example:
        >>> conv = Conversation("7", ("A", "B", "A"), ("hi", "oh no", "why?"), (0, 5, 6),
        ...                     ((2, 2),), ("k1", "k2", "k3"))
        >>> p = perturb_conversation(conv, "delete", 1.0, seed=0)
        >>> p.conversation.texts, p.conversation.pairs, p.origin
        (('oh no',), ((1, 1),), (2,))
    """
    if not isinstance(conv, Conversation):
        raise TypeError(f"conv must be a Conversation, got {type(conv).__name__}")
    fam = _check_family(family)
    _check_rate(rate)
    _check_seed(seed)
    distractors = _as_pool(pool)
    if fam.uses_pool:
        if distractors is None:
            raise ValueError(f"family {fam.value!r} draws utterances from a pool: pass pool=...")
        if distractors.available(conv.conv_id) == 0:
            raise ValueError(
                f"pool has no conversation other than {conv.conv_id!r} to draw utterances from"
            )
    rng = _rng(fam, seed, conv.conv_id)
    n = len(conv)
    gold = gold_utterance_indices(conv)
    non_gold = [i for i in range(n) if i + 1 not in gold]
    originals = [_own(conv, i) for i in range(n)]
    if fam is Family.INSERT:
        assert distractors is not None  # checked above for the pool families
        utts, affected, eligible = _insert(conv, originals, rate, rng, distractors)
    elif fam is Family.REPLACE:
        assert distractors is not None
        utts, affected, eligible = _replace(conv, originals, non_gold, rate, rng, distractors)
    elif fam is Family.DELETE:
        utts, affected, eligible = _delete(originals, non_gold, rate, rng)
    else:
        utts, affected, eligible = _shuffle_speakers(conv, originals, non_gold, rate, rng)
    if affected == 0:
        return Perturbation(conv, tuple(range(1, n + 1)), 0, eligible)
    new_conv, origin = _rebuild(conv, utts)
    return Perturbation(new_conv, origin, affected, eligible)


def perturb_split(
    convs: Sequence[Conversation],
    family: str | Family,
    rate: float,
    seed: int,
    pool: Sequence[Conversation] | DistractorPool | None = None,
) -> tuple[list[Conversation], list[tuple[int | None, ...]]]:
    """Perturb every conversation of a split.

    Args:
        convs: the split's conversations.
        family, rate, seed: see :func:`perturb_conversation`.
        pool: where ``insert`` / ``replace`` draw from; defaults to ``convs`` itself (a
            conversation never draws from itself).

    Returns:
        ``(conversations, origins)``, one entry per input conversation, in input order.
    """
    fam = _check_family(family)
    _check_rate(rate)
    _check_seed(seed)
    distractors = _as_pool(convs if pool is None else pool) if fam.uses_pool else None
    out = [perturb_conversation(c, fam, rate, seed, distractors) for c in convs]
    return [p.conversation for p in out], [p.origin for p in out]


# ---------------------------------------------------------------------------- alignment


class Aligned(NamedTuple):
    """Perturbed pair logits in the clean view's index space.

    ``scores``: ``(B, N, N)`` the perturbed logit of each clean pair, 0 outside ``shared``;
    ``shared``: ``(B, N, N)`` bool, pairs whose two utterances both survive in the perturbed
    view and that are valid in both views.
    """

    scores: Tensor
    shared: Tensor


def origin_index(
    origins: Sequence[Sequence[int | None]],
    width: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Index maps as a padded ``(B, N')`` int64 tensor: 0-based original index, -1 for none.

    Args:
        origins: one index map per conversation (1-based, ``None`` for no origin), as returned
            by :func:`perturb_split`.
        width: ``N'``, the padded length of the perturbed batch (default: the longest map).
        device: where to put the tensor.

    Example:
        >>> origin_index([(1, None, 2), (2,)])
        tensor([[ 0, -1,  1],
                [ 1, -1, -1]])
    """
    longest = max((len(o) for o in origins), default=0)
    width = longest if width is None else width
    if longest > width:
        raise ValueError(f"an index map has {longest} entries, more than width={width}")
    rows = []
    for b, origin in enumerate(origins):
        for k, o in enumerate(origin):
            if o is not None and (isinstance(o, bool) or not isinstance(o, int) or o < 1):
                raise ValueError(f"origins[{b}][{k}] must be a 1-based index or None, got {o!r}")
        rows.append([-1 if o is None else o - 1 for o in origin] + [-1] * (width - len(origin)))
    return torch.tensor(rows, dtype=torch.long, device=device).reshape(len(origins), width)


def _check_square(name: str, t: object, dtype: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtype == "float" and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if dtype == "bool" and t.dtype != torch.bool:
        raise TypeError(f"{name} must be a torch.bool tensor, got dtype {t.dtype}")
    if t.dim() != 3 or t.shape[-1] != t.shape[-2]:
        raise ValueError(f"{name} must have shape (B, N, N), got {tuple(t.shape)}")
    return t


def _checked_batch(
    perturbed: Tensor, origin: Tensor, clean_valid: Tensor, perturbed_valid: Tensor, *, single: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`align_to_clean`'s inputs checked (types, shapes, devices), with the batch
    dimension added for one conversation (``single``)."""
    if single:  # one conversation: add the batch dimension (and drop it from the result)
        perturbed = perturbed.unsqueeze(0)
        origin = origin.unsqueeze(0) if isinstance(origin, Tensor) else origin
        if isinstance(clean_valid, Tensor):
            clean_valid = clean_valid.unsqueeze(0)
        if isinstance(perturbed_valid, Tensor):
            perturbed_valid = perturbed_valid.unsqueeze(0)
    _check_square("perturbed", perturbed, "float")
    _check_square("perturbed_valid", perturbed_valid, "bool")
    _check_square("clean_valid", clean_valid, "bool")
    if not isinstance(origin, Tensor) or origin.dtype != torch.long:
        got = origin.dtype if isinstance(origin, Tensor) else type(origin).__name__
        raise TypeError(f"origin must be an int64 tensor (see origin_index), got {got}")
    b, n_new = perturbed.shape[:2]
    if perturbed_valid.shape != perturbed.shape:
        raise ValueError(
            f"perturbed_valid must have the shape of perturbed {tuple(perturbed.shape)}, "
            f"got {tuple(perturbed_valid.shape)}"
        )
    if origin.shape != (b, n_new):
        raise ValueError(
            f"origin must have shape (B, N') = {(b, n_new)}, got {tuple(origin.shape)}"
        )
    if clean_valid.shape[0] != b:
        raise ValueError(f"clean_valid has {clean_valid.shape[0]} conversations, perturbed {b}")
    for name, t in (
        ("origin", origin),
        ("clean_valid", clean_valid),
        ("perturbed_valid", perturbed_valid),
    ):
        if t.device != perturbed.device:
            raise ValueError(f"{name} is on {t.device} but perturbed is on {perturbed.device}")
    return perturbed, origin, clean_valid, perturbed_valid


def align_to_clean(
    perturbed: Tensor, origin: Tensor, clean_valid: Tensor, perturbed_valid: Tensor
) -> Aligned:
    r"""Gather the perturbed view's pair logits into the clean view's index space.

    With :math:`\pi_b(u)` the perturbed index of clean utterance :math:`u` (the inverse of
    ``origin``; undefined for a deleted or replaced utterance),

    .. math:: \mathrm{scores}_{buv} = s'_{b\,\pi_b(u)\,\pi_b(v)}, \quad
              \mathrm{shared}_{buv} = [\pi_b(u), \pi_b(v) \text{ defined}] \wedge
              \mathrm{valid}_{buv} \wedge \mathrm{valid}'_{b\,\pi_b(u)\,\pi_b(v)}

    Pairs valid in only one view (a window or cause-not-after-emotion restriction can move when
    utterances are inserted or deleted) are not shared. One scatter and two gathers, no Python
    loop; one host sync checks ``origin``'s values.

    Args:
        perturbed: ``(B, N', N')`` float perturbed-view pair logits (or ``(N', N')``).
        origin: ``(B, N')`` int64, the 0-based clean index of each perturbed utterance, -1 for
            none (inserted / replacing utterances, padding); :func:`origin_index` builds it.
            ``(N',)`` with 2-D inputs.
        clean_valid: ``(B, N, N)`` bool candidate pairs of the clean view (or ``(N, N)``).
        perturbed_valid: ``(B, N', N')`` bool candidate pairs of the perturbed view.

    Returns:
        :class:`Aligned` ``(scores, shared)``, each ``(B, N, N)`` (``(N, N)`` with 2-D inputs),
        on the inputs' device; ``scores`` has ``perturbed``'s dtype.

    Example:
        >>> perturbed = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # utterances: original 2, new
        >>> a = align_to_clean(perturbed, torch.tensor([1, -1]), torch.ones(2, 2, dtype=torch.bool),
        ...                    torch.ones(2, 2, dtype=torch.bool))
        >>> a.scores, a.shared
        (tensor([[0., 0.],
                [0., 1.]]), tensor([[False, False],
                [False,  True]]))
    """
    single = isinstance(perturbed, Tensor) and perturbed.dim() == 2
    perturbed, origin, clean_valid, perturbed_valid = _checked_batch(
        perturbed, origin, clean_valid, perturbed_valid, single=single
    )
    b, n_new = perturbed.shape[:2]
    n = clean_valid.shape[1]

    # Clean utterance u <- perturbed slot k: scatter k into column origin[k] (column n collects
    # the slots without an origin and is dropped).
    slot = torch.where(origin >= 0, origin, n)
    hits = torch.zeros(b, n + 1, dtype=torch.long, device=origin.device)
    hits.scatter_add_(1, slot.clamp(0, n), torch.ones_like(slot))
    out_of_range = (origin < -1) | (origin >= n)
    if bool(out_of_range.any() | (hits[:, :n] > 1).any()):  # the one host sync
        if bool(out_of_range.any()):
            bad = origin[out_of_range][0]
            raise ValueError(
                f"origin holds {int(bad)}, outside -1..{n - 1} (N = {n} clean utterances)"
            )
        raise ValueError("origin maps two perturbed utterances to the same clean utterance")
    position = torch.full((b, n + 1), -1, dtype=torch.long, device=origin.device)
    position.scatter_(1, slot, torch.arange(n_new, device=origin.device).expand(b, n_new))
    position = position[:, :n]
    survives = position >= 0
    if n_new == 0:  # nothing to gather from (a shape fact)
        scores = perturbed.new_zeros(b, n, n)
        shared = torch.zeros(b, n, n, dtype=torch.bool, device=perturbed.device)
    else:
        idx = position.clamp_min(0)
        row_idx = idx[:, :, None].expand(b, n, n_new)
        col_idx = idx[:, None, :].expand(b, n, n)
        gathered = perturbed.gather(1, row_idx).gather(2, col_idx)
        valid_there = perturbed_valid.gather(1, row_idx).gather(2, col_idx)
        shared = clean_valid & valid_there & survives[:, :, None] & survives[:, None, :]
        scores = torch.where(shared, gathered, 0)  # padding garbage (NaN) never leaks
    if single:
        return Aligned(scores[0], shared[0])
    return Aligned(scores, shared)
