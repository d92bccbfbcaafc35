"""Tests for ``examples.mecpe.perturb`` (generated conversations only, no data files)."""

from __future__ import annotations

import doctest
import math
import random
import re
import zlib
from collections.abc import Sequence

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import examples.mecpe.perturb as perturb_module
from examples.mecpe.batching import build_examples, collate
from examples.mecpe.data import Conversation
from examples.mecpe.perturb import (
    FAMILIES,
    Aligned,
    DistractorPool,
    Family,
    Perturbation,
    align_to_clean,
    gold_utterance_indices,
    origin_index,
    perturb_conversation,
    perturb_split,
    perturbation_tag,
)
from torch_pairconf import pair_prf, pair_stability, valid_from_lengths

SPEAKERS = ("Ross", "Rachel", "Monica", "Joey", "Phoebe")
POOL_FAMILIES = [f for f in FAMILIES if Family(f).uses_pool]


# ------------------------------------------------------------------------------------ fixtures


def make_conv(conv_id: str, rng: random.Random, min_n: int = 1, max_n: int = 12) -> Conversation:
    """A random conversation whose texts and keys name their own conversation and index."""
    n = rng.randint(min_n, max_n)
    n_pairs = rng.choice([0, 0, 1, 1, 2, 3])
    pairs = sorted({(rng.randint(1, n), rng.randint(1, n)) for _ in range(n_pairs)})
    return Conversation(
        conv_id=conv_id,
        speakers=tuple(rng.choice(SPEAKERS) for _ in range(n)),
        texts=tuple(f"conversation {conv_id} utterance {i}" for i in range(1, n + 1)),
        emotions=tuple(rng.randrange(7) for _ in range(n)),
        pairs=tuple(pairs),
        feature_keys=tuple(f"dia{conv_id}utt{i}" for i in range(1, n + 1)),
    )


def make_split(n_convs: int, seed: int, **kwargs: int) -> list[Conversation]:
    rng = random.Random(seed)
    return [make_conv(f"c{k}", rng, **kwargs) for k in range(n_convs)]


@st.composite
def splits(draw: st.DrawFn, min_convs: int = 2, max_convs: int = 7) -> list[Conversation]:
    return make_split(draw(st.integers(min_convs, max_convs)), draw(st.integers(0, 2**31 - 1)))


families = st.sampled_from(FAMILIES)
rates = st.sampled_from([0.0, 0.1, 0.5, 1.0]) | st.floats(0.0, 1.0)
seeds = st.integers(-(2**40), 2**40)


def by_key(convs: Sequence[Conversation]) -> dict[str, tuple[Conversation, int]]:
    """Feature key -> (conversation, 0-based index)."""
    return {key: (c, i) for c in convs for i, key in enumerate(c.feature_keys)}


def record(conv: Conversation, i: int) -> tuple[str, str, int, str]:
    return conv.speakers[i], conv.texts[i], conv.emotions[i], conv.feature_keys[i]


# --------------------------------------------------------------------------------- families


def test_families_and_their_properties() -> None:
    assert FAMILIES == ("insert", "delete", "replace", "speaker")
    assert [Family(f).oracle for f in FAMILIES] == [False, True, True, True]
    assert [Family(f).uses_pool for f in FAMILIES] == [True, False, True, False]
    conv = make_split(1, 0, min_n=5)[0]
    assert perturb_conversation(conv, Family.DELETE, 0.5, 1) == perturb_conversation(
        conv, "delete", 0.5, 1
    )


# ------------------------------------------------------------------------------ determinism


@given(splits(), families, rates, seeds, st.randoms(use_true_random=False))
def test_deterministic_and_independent_of_order_and_company(
    convs: list[Conversation], family: str, rate: float, seed: int, shuffler: random.Random
) -> None:
    out, origins = perturb_split(convs, family, rate, seed)
    assert (out, origins) == perturb_split(convs, family, rate, seed)  # same seed, same output
    # Processing order (the pool defaults to the split: its order must not matter either).
    order = list(range(len(convs)))
    shuffler.shuffle(order)
    shuffled, shuffled_origins = perturb_split([convs[k] for k in order], family, rate, seed)
    for pos, k in enumerate(order):
        assert shuffled[pos] == out[k] and shuffled_origins[pos] == origins[k]
    # Alone, with the same pool: the same result; without pool the oracle families agree too.
    for k, conv in enumerate(convs):
        alone = perturb_conversation(conv, family, rate, seed, pool=list(reversed(convs)))
        assert (alone.conversation, alone.origin) == (out[k], origins[k])
        if not Family(family).uses_pool:
            assert perturb_split([conv], family, rate, seed) == ([out[k]], [origins[k]])


def test_different_seeds_give_different_perturbations() -> None:
    convs = make_split(30, 1, min_n=6)
    for family in FAMILIES:
        a = perturb_split(convs, family, 0.5, 0)
        b = perturb_split(convs, family, 0.5, 1)
        assert a != b, family
        c = perturb_split(convs, family, 0.5, 0)
        assert a == c, family


def test_generator_is_a_stable_hash_not_the_salted_builtin() -> None:
    """Pinned draws: a change of the hash (e.g. to the per-process salted ``hash``) or of the
    draw order would silently change every published perturbation."""
    conv = Conversation(
        "dia42",
        tuple("ABABABAB"),
        tuple(f"t{i}" for i in range(8)),
        (0,) * 8,
        ((2, 1),),
        tuple(f"k{i}" for i in range(8)),
    )
    got = perturb_conversation(conv, "delete", 0.5, seed=123)
    assert got.origin == (1, 2, 3, 5, 6, 7), got.origin


# -------------------------------------------------------------------------------- identity


@given(splits(), families, seeds)
def test_rate_zero_is_the_identity(convs: list[Conversation], family: str, seed: int) -> None:
    out, origins = perturb_split(convs, family, 0.0, seed)
    assert out == convs
    assert origins == [tuple(range(1, len(c) + 1)) for c in convs]
    for conv in convs:
        p = perturb_conversation(conv, family, 0, seed, pool=convs)
        assert p.conversation is conv and p.affected == 0 and p.realised_rate == 0.0


# ------------------------------------------------------------------ gold, records, index maps


@given(splits(), families, rates, seeds)
def test_gold_pairs_are_preserved_and_remapped(
    convs: list[Conversation], family: str, rate: float, seed: int
) -> None:
    out, origins = perturb_split(convs, family, rate, seed)
    for conv, new, origin in zip(convs, out, origins, strict=True):
        position = {o: k + 1 for k, o in enumerate(origin) if o is not None}
        assert new.pairs == tuple(sorted((position[e], position[c]) for e, c in conv.pairs))
        assert len(new.pairs) == len(conv.pairs)
        old_texts = sorted((conv.texts[e - 1], conv.texts[c - 1]) for e, c in conv.pairs)
        new_texts = sorted((new.texts[e - 1], new.texts[c - 1]) for e, c in new.pairs)
        assert new_texts == old_texts  # every remapped pair points at the same utterances
        assert new.conv_id == conv.conv_id


@given(splits(), families, rates, seeds)
def test_originals_keep_their_records_and_gold_utterances_are_never_touched(
    convs: list[Conversation], family: str, rate: float, seed: int
) -> None:
    out, origins = perturb_split(convs, family, rate, seed)
    for conv, new, origin in zip(convs, out, origins, strict=True):
        gold = gold_utterance_indices(conv)
        kept = [o for o in origin if o is not None]
        assert gold <= set(kept)  # every gold utterance survives ...
        for k, o in enumerate(origin):
            if o is None:
                continue
            old, now = record(conv, o - 1), record(new, k)
            if family == "speaker" and o not in gold:
                assert now[1:] == old[1:]  # ... only a non-gold speaker label may change
            else:
                assert now == old
        if family != "insert":  # oracle families touch non-gold utterances only
            assert Family(family).oracle
            touched = set(range(1, len(conv) + 1)) - set(kept)
            touched |= {
                o
                for k, o in enumerate(origin)
                if o is not None and new.speakers[k] != conv.speakers[o - 1]
            }
            assert not touched & gold


@given(splits(), families, rates, seeds)
def test_index_maps_are_consistent(
    convs: list[Conversation], family: str, rate: float, seed: int
) -> None:
    out, origins = perturb_split(convs, family, rate, seed)
    for conv, new, origin in zip(convs, out, origins, strict=True):
        n = len(conv)
        assert len(origin) == len(new) >= 1
        kept = [o for o in origin if o is not None]
        assert kept == sorted(set(kept)) and all(1 <= o <= n for o in kept)  # order kept
        assert all(1 <= e <= len(new) and 1 <= c <= len(new) for e, c in new.pairs)
        assert len(new.speakers) == len(new.emotions) == len(new.feature_keys) == len(new)
        if family == "insert":
            assert kept == list(range(1, n + 1))
        elif family == "delete":
            assert None not in origin
            assert not (set(range(1, n + 1)) - set(kept)) & gold_utterance_indices(conv)
        elif family == "replace":
            assert len(new) == n
            assert all(o is None or o == k + 1 for k, o in enumerate(origin))
        else:
            assert origin == tuple(range(1, n + 1))
            assert sorted(new.speakers) == sorted(conv.speakers)  # labels are permuted


@given(splits(), st.sampled_from(POOL_FAMILIES), rates, seeds)
def test_drawn_utterances_come_from_other_conversations_and_join_no_pair(
    convs: list[Conversation], family: str, rate: float, seed: int
) -> None:
    sources = by_key(convs)
    out, origins = perturb_split(convs, family, rate, seed)
    for conv, new, origin in zip(convs, out, origins, strict=True):
        drawn = [k for k, o in enumerate(origin) if o is None]
        for k in drawn:
            source, i = sources[new.feature_keys[k]]
            assert source.conv_id != conv.conv_id
            assert record(new, k) == record(source, i)  # the whole record, source's emotion
        in_pairs = {u - 1 for pair in new.pairs for u in pair}
        assert not in_pairs & set(drawn)
        if family == "replace":  # only non-gold positions are replaced
            assert not {k + 1 for k in drawn} & gold_utterance_indices(conv)


def test_an_explicit_pool_is_used_and_the_split_itself_never_drawn() -> None:
    convs = make_split(5, 2, min_n=4)
    pool = make_split(3, 3, min_n=4)
    pool = [
        Conversation(
            f"p{k}",
            *(getattr(c, f) for f in ("speakers", "texts", "emotions", "pairs")),
            tuple(f"P{key}" for key in c.feature_keys),
        )
        for k, c in enumerate(pool)
    ]
    pool_keys = {key for c in pool for key in c.feature_keys}
    for family in POOL_FAMILIES:
        out, origins = perturb_split(convs, family, 0.8, 5, pool=pool)
        drawn = [
            new.feature_keys[k]
            for new, o in zip(out, origins, strict=True)
            for k, x in enumerate(o)
            if x is None
        ]
        assert drawn and set(drawn) <= pool_keys


def test_delete_never_empties_a_conversation() -> None:
    lonely = Conversation("x", ("A", "B", "C"), ("a", "b", "c"), (0, 0, 0), (), ("1", "2", "3"))
    p = perturb_conversation(lonely, "delete", 1.0, 0)
    assert len(p.conversation) == 1 and p.affected == 2 and p.eligible == 3
    one = Conversation("y", ("A",), ("a",), (0,), (), ("1",))
    assert perturb_conversation(one, "delete", 1.0, 0).conversation is one


def test_speaker_shuffle_needs_two_selected_utterances() -> None:
    conv = Conversation(
        "z", ("A", "B", "C"), ("a", "b", "c"), (1, 0, 1), ((1, 1), (3, 3)), ("1", "2", "3")
    )
    p = perturb_conversation(conv, "speaker", 1.0, 0)  # one non-gold utterance: nothing to swap
    assert p.conversation is conv and p.affected == 0 and p.eligible == 1
    conv = Conversation("w", ("A", "B", "C"), ("a", "b", "c"), (0, 0, 0), (), ("1", "2", "3"))
    p = perturb_conversation(conv, "speaker", 1.0, 0)  # a derangement of three distinct labels
    assert all(a != b for a, b in zip(p.conversation.speakers, conv.speakers, strict=True))


# ------------------------------------------------------------------------------------ rates


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rate", [0.1, 0.3, 0.7, 1.0])
def test_realised_rate_is_close_to_the_asked_rate(family: str, rate: float) -> None:
    convs = make_split(400, 11, min_n=6, max_n=14)
    result = [perturb_conversation(c, family, rate, 3, pool=DistractorPool(convs)) for c in convs]
    affected = sum(p.affected for p in result)
    eligible = sum(p.eligible for p in result)
    # The counts behind the rate are what the outputs show.
    for conv, p in zip(convs, result, strict=True):
        if family == "insert":
            assert p.affected == p.origin.count(None) and p.eligible == len(conv)
        elif family == "delete":
            assert p.affected == len(conv) - len(p.conversation)
        elif family == "replace":
            assert p.affected == p.origin.count(None)
    if family == "delete" and rate == 1.0:
        # The documented exception: a conversation is never emptied, so each conversation
        # without gold keeps exactly one utterance (its eligible count minus one is deleted).
        emptied = [p for c, p in zip(convs, result, strict=True) if p.eligible == len(c)]
        assert emptied and all(len(p.conversation) == 1 for p in emptied)
        affected += len(emptied)
    sd = math.sqrt(rate * (1 - rate) / eligible)
    slack = 0.0
    if family == "speaker":  # a single selected utterance cannot be shuffled
        slack = 0.02
    assert abs(affected / eligible - rate) <= 4 * sd + slack + 1e-12, (affected, eligible)


@pytest.mark.parametrize("family", ["insert", "delete", "replace"])
def test_a_higher_rate_perturbs_a_superset(family: str) -> None:
    convs = make_split(60, 4, min_n=5)
    pool = DistractorPool(convs)
    for conv in convs:
        low, high = (perturb_conversation(conv, family, r, 9, pool) for r in (0.2, 0.6))
        if family == "insert":  # the low-rate distractors are a subsequence of the high-rate ones
            keys_low = [
                k
                for k, o in zip(low.conversation.feature_keys, low.origin, strict=True)
                if o is None
            ]
            keys_high = [
                k
                for k, o in zip(high.conversation.feature_keys, high.origin, strict=True)
                if o is None
            ]
            it = iter(keys_high)
            assert all(k in it for k in keys_low)
        elif family == "delete":
            assert set(high.origin) <= set(low.origin)
        else:
            for k, o in enumerate(low.origin):
                if o is None:
                    assert high.origin[k] is None
                    assert high.conversation.feature_keys[k] == low.conversation.feature_keys[k]


# ----------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("rate", "exc", "match"),
    [
        (-0.1, ValueError, r"rate must be in \[0, 1\], got -0.1"),
        (1.01, ValueError, r"rate must be in \[0, 1\]"),
        (float("nan"), ValueError, r"rate must be in \[0, 1\]"),
        ("0.5", TypeError, "rate must be a number, got str"),
        (True, TypeError, "rate must be a number, got bool"),
    ],
)
def test_bad_rate(rate: object, exc: type[Exception], match: str) -> None:
    convs = make_split(3, 0)
    with pytest.raises(exc, match=match):
        perturb_split(convs, "delete", rate, 0)  # type: ignore[arg-type]
    with pytest.raises(exc, match=match):
        perturb_conversation(convs[0], "insert", rate, 0, pool=convs)  # type: ignore[arg-type]
    with pytest.raises(exc, match=match):
        perturbation_tag("insert", rate, 0)  # type: ignore[arg-type]


def test_bad_family_seed_and_conversation() -> None:
    convs = make_split(3, 0)
    with pytest.raises(
        ValueError,
        match=r"family must be one of \('insert', 'delete', 'replace', 'speaker'\), got 'swap'",
    ):
        perturb_split(convs, "swap", 0.1, 0)
    with pytest.raises(ValueError, match="family must be one of"):
        perturb_conversation(convs[0], "Insert", 0.1, 0, pool=convs)
    with pytest.raises(TypeError, match="seed must be an int, got str"):
        perturb_split(convs, "delete", 0.1, "0")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed must be an int, got bool"):
        perturb_conversation(convs[0], "delete", 0.1, True)
    with pytest.raises(TypeError, match="conv must be a Conversation, got dict"):
        perturb_conversation({}, "delete", 0.1, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", POOL_FAMILIES)
def test_pool_errors(family: str) -> None:
    convs = make_split(3, 0)
    with pytest.raises(ValueError, match="pool is empty"):
        perturb_split(convs, family, 0.5, 0, pool=[])
    with pytest.raises(ValueError, match="pool is empty"):
        perturb_split([], family, 0.5, 0, pool=[])
    with pytest.raises(ValueError, match=r"pool has no conversation other than 'c0'"):
        perturb_split(convs[:1], family, 0.5, 0)  # the split alone is its own pool
    with pytest.raises(ValueError, match=r"pool has no conversation other than 'c1'"):
        perturb_conversation(convs[1], family, 0.0, 0, pool=[convs[1]])  # also at rate 0
    with pytest.raises(ValueError, match=f"family '{family}' draws utterances from a pool"):
        perturb_conversation(convs[0], family, 0.5, 0)
    with pytest.raises(ValueError, match="pool holds conversation id 'c0' twice"):
        perturb_split(convs, family, 0.5, 0, pool=[convs[0], convs[1], convs[0]])
    with pytest.raises(TypeError, match="pool must hold Conversation objects, got str"):
        perturb_split(convs, family, 0.5, 0, pool=["c0"])  # type: ignore[list-item]
    # Oracle families without a pool never need one.
    assert perturb_split(convs[:1], "delete", 0.5, 0)[0][0].conv_id == "c0"


def test_perturbation_tag() -> None:
    tags = {
        perturbation_tag(f, r, s) for f in FAMILIES for r in (0.1, 0.25, 1.0) for s in (0, 1, -3)
    }
    assert len(tags) == len(FAMILIES) * 3 * 3
    assert all(re.fullmatch(r"[a-z]+-r[0-9.]+-s-?[0-9]+", t) for t in tags)
    assert (
        perturbation_tag(Family.INSERT, 1, 7)
        == perturbation_tag("insert", 1.0, 7)
        == "insert-r1.0-s7"
    )


# -------------------------------------------------------------------------------- alignment


def test_origin_index() -> None:
    got = origin_index([(1, None, 3), (), (2,)], width=4)
    assert torch.equal(got, torch.tensor([[0, -1, 2, -1], [-1, -1, -1, -1], [1, -1, -1, -1]]))
    assert got.dtype == torch.long
    assert origin_index([]).shape == (0, 0)
    with pytest.raises(ValueError, match="an index map has 3 entries, more than width=2"):
        origin_index([(1, 2, 3)], width=2)
    for bad in (0, True, "1", 1.0):
        with pytest.raises(ValueError, match=r"origins\[0\]\[1\] must be a 1-based index or None"):
            origin_index([(1, bad)])  # type: ignore[list-item]


def ref_align(
    perturbed: torch.Tensor,
    origins: list[tuple[int | None, ...]],
    clean_valid: torch.Tensor,
    perturbed_valid: torch.Tensor,
) -> tuple[list, list]:
    """Python loops over every clean pair."""
    b_, n, _ = clean_valid.shape
    scores = [[[0.0] * n for _ in range(n)] for _ in range(b_)]
    shared = [[[False] * n for _ in range(n)] for _ in range(b_)]
    p, pv, cv = perturbed.tolist(), perturbed_valid.tolist(), clean_valid.tolist()
    for b in range(b_):
        where = {o - 1: k for k, o in enumerate(origins[b]) if o is not None}
        for u in range(n):
            for v in range(n):
                if u in where and v in where and cv[b][u][v] and pv[b][where[u]][where[v]]:
                    shared[b][u][v] = True
                    scores[b][u][v] = p[b][where[u]][where[v]]
    return scores, shared


@given(
    splits(min_convs=2, max_convs=5), families, rates, seeds, st.integers(0, 2**31 - 1), st.data()
)
def test_align_matches_reference(
    convs: list[Conversation], family: str, rate: float, seed: int, tseed: int, data: st.DataObject
) -> None:
    out, origins = perturb_split(convs, family, rate, seed)
    g = torch.Generator().manual_seed(tseed)
    n = max(len(c) for c in convs) + data.draw(st.integers(0, 2))  # extra padding
    n_new = max(len(c) for c in out) + data.draw(st.integers(0, 2))
    window = data.draw(st.sampled_from([None, 0, 2]))
    cna = data.draw(st.booleans())
    clean_valid = valid_from_lengths(
        [len(c) for c in convs], n, window=window, cause_not_after_emotion=cna
    )
    perturbed_valid = valid_from_lengths(
        [len(c) for c in out], n_new, window=window, cause_not_after_emotion=cna
    )
    perturbed_valid &= torch.rand(perturbed_valid.shape, generator=g) < 0.9
    dtype = data.draw(st.sampled_from([torch.float64, torch.float32, torch.bfloat16]))
    perturbed = torch.randn(len(convs), n_new, n_new, generator=g, dtype=torch.float64).to(dtype)
    perturbed = torch.where(perturbed_valid, perturbed, torch.nan)  # padding garbage
    got = align_to_clean(perturbed, origin_index(origins, n_new), clean_valid, perturbed_valid)
    assert isinstance(got, Aligned)
    scores, shared = ref_align(perturbed.double(), origins, clean_valid, perturbed_valid)
    assert got.shared.tolist() == shared
    assert got.scores.dtype == dtype and got.scores.shape == (len(convs), n, n)
    assert got.scores.double().tolist() == scores
    # One conversation, 2-D: the same as its row of the batch.
    single = align_to_clean(
        perturbed[0], origin_index(origins[:1], n_new)[0], clean_valid[0], perturbed_valid[0]
    )
    assert torch.equal(single.shared, got.shared[0]) and torch.equal(single.scores, got.scores[0])
    # Shared pairs are clean-valid pairs between surviving utterances, never a drawn one.
    assert not (got.shared & ~clean_valid).any()


def test_align_known_values() -> None:
    # Clean: 3 utterances; perturbed: [orig 3, inserted, orig 1] (utterance 2 deleted).
    perturbed = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]])
    ones = torch.ones(1, 3, 3, dtype=torch.bool)
    got = align_to_clean(perturbed, origin_index([(3, None, 1)]), ones, ones)
    assert got.scores.tolist() == [[[9.0, 0.0, 7.0], [0.0, 0.0, 0.0], [3.0, 0.0, 1.0]]]
    assert got.shared.tolist() == [
        [[True, False, True], [False, False, False], [True, False, True]]
    ]
    empty = align_to_clean(
        torch.zeros(1, 0, 0),
        torch.zeros(1, 0, dtype=torch.long),
        ones,
        torch.zeros(1, 0, 0, dtype=torch.bool),
    )
    assert empty.scores.shape == (1, 3, 3) and not empty.shared.any()


def test_align_errors() -> None:
    p = torch.zeros(2, 3, 3)
    pv = torch.ones(2, 3, 3, dtype=torch.bool)
    cv = torch.ones(2, 4, 4, dtype=torch.bool)
    o = torch.tensor([[0, 1, -1], [2, -1, 3]])
    align_to_clean(p, o, cv, pv)  # fine
    with pytest.raises(TypeError, match="perturbed must be a floating-point tensor"):
        align_to_clean(p.long(), o, cv, pv)
    with pytest.raises(ValueError, match=r"perturbed must have shape \(B, N, N\), got \(2, 3, 4\)"):
        align_to_clean(torch.zeros(2, 3, 4), o, cv, pv)
    with pytest.raises(TypeError, match=r"perturbed_valid must be a torch\.bool tensor"):
        align_to_clean(p, o, cv, pv.float())
    with pytest.raises(ValueError, match="perturbed_valid must have the shape of perturbed"):
        align_to_clean(p, o, cv, pv[:1])
    with pytest.raises(TypeError, match=r"clean_valid must be a torch\.Tensor, got list"):
        align_to_clean(p, o, [[True]], pv)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clean_valid has 1 conversations, perturbed 2"):
        align_to_clean(p, o, cv[:1], pv)
    with pytest.raises(
        TypeError, match=r"origin must be an int64 tensor \(see origin_index\), got torch.int32"
    ):
        align_to_clean(p, o.int(), cv, pv)
    with pytest.raises(TypeError, match=r"origin must be an int64 tensor.*got list"):
        align_to_clean(p, [[0, 1, 2]], cv, pv)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"origin must have shape \(B, N'\) = \(2, 3\), got \(2, 2\)"
    ):
        align_to_clean(p, o[:, :2], cv, pv)
    with pytest.raises(
        ValueError, match=r"origin holds 4, outside -1\.\.3 \(N = 4 clean utterances\)"
    ):
        align_to_clean(p, torch.tensor([[0, 1, 4], [0, 1, 2]]), cv, pv)
    with pytest.raises(ValueError, match=r"origin holds -2"):
        align_to_clean(p, torch.tensor([[0, 1, 2], [-2, 1, 2]]), cv, pv)
    with pytest.raises(
        ValueError, match="origin maps two perturbed utterances to the same clean utterance"
    ):
        align_to_clean(p, torch.tensor([[0, 1, 2], [1, -1, 1]]), cv, pv)
    with pytest.raises(ValueError, match="perturbed_valid is on meta but perturbed is on cpu"):
        align_to_clean(p, o, cv, pv.to("meta"))


# ------------------------------------------------------------------------------ end to end


def context_free_logits(convs: Sequence[Conversation], n: int) -> torch.Tensor:
    """A "model" whose pair score depends on the two utterances' texts only."""
    out = torch.full((len(convs), n, n), float("nan"), dtype=torch.float64)
    for b, conv in enumerate(convs):
        for i, ti in enumerate(conv.texts):
            for j, tj in enumerate(conv.texts):
                out[b, i, j] = zlib.crc32(f"{ti}\0{tj}".encode()) / 2**32 * 8 - 4
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_a_context_free_scorer_is_perfectly_stable_on_the_original_utterances(family: str) -> None:
    """End to end with the trainer's batching: a scorer that ignores context has zero flips and
    zero confidence change on the shared pairs, whatever the perturbation; its "all pairs"
    metrics are computed on the perturbed batch's own gold/valid."""
    convs = make_split(12, 8, min_n=4, max_n=10)
    out, origins = perturb_split(convs, family, 0.5, 2)
    clean = collate(build_examples(convs, hash_buckets=64), window=3)
    moved = collate(build_examples(out, hash_buckets=64), window=3)
    clean_logits = context_free_logits(convs, clean.mask.shape[1])
    moved_logits = context_free_logits(out, moved.mask.shape[1])
    aligned = align_to_clean(
        moved_logits, origin_index(origins, moved.mask.shape[1]), clean.valid, moved.valid
    )
    assert aligned.shared.any() and (aligned.shared <= clean.valid).all()
    s = pair_stability(clean_logits, aligned.scores, clean.gold, aligned.shared)
    assert float(s.flips.flips) == 0.0 and float(s.confidence.gold) == 0.0
    assert float(s.confidence.negative) == 0.0 and float(s.gap.mean_abs) == 0.0
    # Gold pairs all survive; with a window, a gold pair pushed apart by insertions may leave it.
    if family != "insert":
        assert bool((clean.gold & clean.valid <= aligned.shared).all())
    all_pairs = pair_prf(moved_logits, moved.gold, moved.valid)
    assert float(all_pairs.tp + all_pairs.fn) == float(moved.gold.sum())
    assert int(moved.gold.sum()) == sum(len(c.pairs) for c in convs)


def test_doctests() -> None:
    result = doctest.testmod(perturb_module, verbose=False)
    assert result.attempted >= 4 and result.failed == 0


def test_perturbation_record() -> None:
    conv = make_split(1, 5, min_n=8)[0]
    p = perturb_conversation(conv, "delete", 0.5, 1)
    assert isinstance(p, Perturbation)
    assert p.eligible == len(conv) - len(gold_utterance_indices(conv))
    assert p.realised_rate == p.affected / p.eligible
