"""Tests for ``torch_pairconf.masks`` against explicit loop references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.testing import assert_close

from torch_pairconf import (
    dense_from_candidates,
    pair_masks,
    two_class_to_logit,
    valid_from_labels,
    valid_from_lengths,
)

# --------------------------------------------------------------------------------------------
# References and strategies
# --------------------------------------------------------------------------------------------


def ref_valid(
    lengths: list[int], n: int | None, window: int | None, cause_not_after_emotion: bool
) -> list[list[list[bool]]]:
    size = max(lengths, default=0) if n is None else n
    out = []
    for length in lengths:
        conv = []
        for i in range(size):
            row = []
            for j in range(size):
                ok = i < length and j < length
                if window is not None and abs(i - j) > window:
                    ok = False
                if cause_not_after_emotion and j > i:
                    ok = False
                row.append(ok)
            conv.append(row)
        out.append(conv)
    return out


def ref_gold(
    lengths: list[int], pairs: list[list[tuple[int, int]]], size: int, index_base: int
) -> list[list[list[bool]]]:
    gold = [[[False] * size for _ in range(size)] for _ in lengths]
    for b, conv_pairs in enumerate(pairs):
        for emo, cause in conv_pairs:
            gold[b][emo - index_base][cause - index_base] = True
    return gold


@st.composite
def conversations(draw: st.DrawFn) -> dict:
    lengths = draw(st.lists(st.integers(0, 6), max_size=4))
    base = draw(st.sampled_from([0, 1]))
    pairs = []
    for length in lengths:
        if length == 0:
            pairs.append([])
            continue
        idx = st.integers(base, length - 1 + base)
        pairs.append(draw(st.lists(st.tuples(idx, idx), max_size=5)))
    extra = draw(st.none() | st.integers(0, 2))
    return {
        "lengths": lengths,
        "pairs": pairs,
        "n": None if extra is None else max(lengths, default=0) + extra,
        "index_base": base,
        "window": draw(st.none() | st.integers(0, 3)),
        "cause_not_after_emotion": draw(st.booleans()),
    }


# --------------------------------------------------------------------------------------------
# valid_from_lengths / pair_masks
# --------------------------------------------------------------------------------------------


@given(conversations(), st.booleans())
def test_valid_from_lengths_matches_loop(conv: dict, as_tensor: bool) -> None:
    lengths = torch.tensor(conv["lengths"], dtype=torch.long) if as_tensor else conv["lengths"]
    got = valid_from_lengths(
        lengths,
        conv["n"],
        window=conv["window"],
        cause_not_after_emotion=conv["cause_not_after_emotion"],
    )
    want = ref_valid(conv["lengths"], conv["n"], conv["window"], conv["cause_not_after_emotion"])
    size = max(conv["lengths"], default=0) if conv["n"] is None else conv["n"]
    assert got.dtype == torch.bool
    assert got.shape == (len(conv["lengths"]), size, size)
    assert got.tolist() == want


@given(conversations(), st.booleans())
def test_pair_masks_matches_loop(conv: dict, as_tensor: bool) -> None:
    lengths = torch.tensor(conv["lengths"]) if as_tensor else conv["lengths"]
    got = pair_masks(
        lengths,
        conv["pairs"],
        n=conv["n"],
        index_base=conv["index_base"],
        window=conv["window"],
        cause_not_after_emotion=conv["cause_not_after_emotion"],
    )
    valid = ref_valid(conv["lengths"], conv["n"], conv["window"], conv["cause_not_after_emotion"])
    size = len(valid[0]) if valid else (conv["n"] or 0)
    gold = ref_gold(conv["lengths"], conv["pairs"], size, conv["index_base"])
    assert got.valid.dtype == torch.bool and got.gold.dtype == torch.bool
    assert got.gold.shape == got.valid.shape == (len(conv["lengths"]), size, size)
    assert got.valid.tolist() == valid
    # Gold pairs outside the window / causal restriction stay in gold.
    assert got.gold.tolist() == gold


def test_pair_masks_docstring_example() -> None:
    masks = pair_masks([3, 2], [[(3, 1), (3, 3)], [(2, 2)]])
    assert masks.gold.shape == (2, 3, 3)
    assert masks.gold.nonzero().tolist() == [[0, 2, 0], [0, 2, 2], [1, 1, 1]]
    assert int(masks.valid.sum()) == 9 + 4


def test_pair_masks_keeps_gold_outside_the_window() -> None:
    # (1, 4) is 3 apart (outside window=1) and (1, 4) has the cause after the emotion.
    masks = pair_masks(
        [4], [[(1, 4), (2, 2)]], index_base=1, window=1, cause_not_after_emotion=True
    )
    assert bool(masks.gold[0, 0, 3]) and not bool(masks.valid[0, 0, 3])
    assert bool(masks.gold[0, 1, 1]) and bool(masks.valid[0, 1, 1])
    assert masks.valid[0].tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [False, True, True, False],
        [False, False, True, True],
    ]


def test_pair_masks_zero_based_and_padding() -> None:
    masks = pair_masks([2, 1], [[(0, 1)], [(0, 0)]], n=4, index_base=0)
    assert masks.gold.shape == (2, 4, 4)
    assert masks.gold.nonzero().tolist() == [[0, 0, 1], [1, 0, 0]]
    assert int(masks.valid[0].sum()) == 4 and int(masks.valid[1].sum()) == 1
    assert not masks.valid[:, 2:].any() and not masks.valid[..., 2:].any()


def test_empty_batches() -> None:
    assert valid_from_lengths([]).shape == (0, 0, 0)
    assert valid_from_lengths([], 3).shape == (0, 3, 3)
    assert valid_from_lengths([0, 0]).shape == (2, 0, 0)
    masks = pair_masks([], [])
    assert masks.gold.shape == masks.valid.shape == (0, 0, 0)
    masks = pair_masks([0, 2], [[], []])
    assert masks.gold.shape == (2, 2, 2) and not masks.gold.any()


@pytest.mark.parametrize(
    ("lengths", "pairs", "base", "match"),
    [
        ([3, 2, 4], [[(1, 1)], [(1, 2)], [(5, 1)]], 1, r"pairs\[2\] has \(5, 1\), outside 1\.\.4"),
        ([3, 2], [[(1, 1)], [(0, 1)]], 1, r"pairs\[1\] has \(0, 1\), outside 1\.\.2"),
        ([3, 2], [[(1, 4)], [(0, 1)]], 1, r"pairs\[0\] has \(1, 4\)"),  # first bad pair wins
        (
            [3, 2],
            [[(0, 0)], [(1, 2)]],
            0,
            r"pairs\[1\] has \(1, 2\), outside 0\.\.1 \(index_base=0\)",
        ),
        ([3], [[(-1, 0)]], 0, r"pairs\[0\] has \(-1, 0\)"),
    ],
)
def test_pair_masks_out_of_range_names_the_conversation(lengths, pairs, base, match) -> None:
    with pytest.raises(ValueError, match=match):
        pair_masks(lengths, pairs, index_base=base)


def test_pair_masks_and_lengths_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"index_base must be 0 or 1, got 2"):
        pair_masks([2], [[]], index_base=2)
    with pytest.raises(ValueError, match=r"pairs has 1 conversations but lengths has 2"):
        pair_masks([2, 3], [[]])
    with pytest.raises(ValueError, match=r"n=2 is smaller than the longest conversation \(3"):
        pair_masks([3], [[]], n=2)
    with pytest.raises(ValueError, match=r"lengths must be 1-D"):
        valid_from_lengths([[2, 3]])
    with pytest.raises(ValueError, match=r"window must be >= 0 or None, got -1"):
        valid_from_lengths([2], window=-1)
    with pytest.raises(ValueError, match=r"window must be >= 0"):
        pair_masks([2], [[]], window=-1)


# --------------------------------------------------------------------------------------------
# valid_from_labels
# --------------------------------------------------------------------------------------------


@given(
    st.integers(0, 2**31 - 1),
    st.sampled_from([-1, -100, 9]),
    st.sampled_from([torch.int64, torch.int32, torch.int8, torch.uint8]),
)
def test_valid_from_labels_matches_loop(seed: int, ignore: int, dtype: torch.dtype) -> None:
    if dtype == torch.uint8 and ignore < 0:
        ignore = 9
    g = torch.Generator().manual_seed(seed)
    choices = torch.tensor([0, 1, ignore])
    labels = choices[torch.randint(0, 3, (2, 3, 4), generator=g)].to(dtype)
    got = valid_from_labels(labels, ignore_index=ignore)
    flat = labels.reshape(-1).tolist()
    assert got.valid.reshape(-1).tolist() == [x != ignore for x in flat]
    assert got.gold.reshape(-1).tolist() == [x == 1 for x in flat]
    assert got.gold.dtype == got.valid.dtype == torch.bool
    assert not (got.gold & ~got.valid).any()


def test_valid_from_labels_known_and_errors() -> None:
    labels = torch.tensor([[[1, 0, -1], [-1, 1, 0]]])
    got = valid_from_labels(labels)
    assert got.gold.tolist() == [[[True, False, False], [False, True, False]]]
    assert got.valid.tolist() == [[[True, True, False], [False, True, True]]]
    with pytest.raises(
        TypeError, match=r"labels must be an integer tensor, got dtype torch\.float32"
    ):
        valid_from_labels(labels.float())
    with pytest.raises(TypeError, match=r"labels must be an integer tensor, got dtype torch\.bool"):
        valid_from_labels(labels > 0)


# --------------------------------------------------------------------------------------------
# two_class_to_logit
# --------------------------------------------------------------------------------------------


@given(
    st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)), min_size=1, max_size=12),
    st.sampled_from([(-1, 2), (-1, 1, 2), (1, -1, 2)]),
)
def test_two_class_to_logit_matches_softmax(
    values: list[tuple[float, float]], shape: tuple[int, ...]
) -> None:
    x = torch.tensor(values, dtype=torch.float64).reshape(shape)
    z = two_class_to_logit(x)
    assert z.shape == x.shape[:-1]
    # softmax(x)[..., 1] by hand (torch.softmax is fine too, but slow on tiny inputs when the
    # CPU is shared: its thread pool spins).
    p1 = []
    for a, b in values:
        top = max(a, b)
        p1.append(math.exp(b - top) / (math.exp(a - top) + math.exp(b - top)))
    want = torch.tensor(p1, dtype=torch.float64).reshape(z.shape)
    assert_close(torch.sigmoid(z), want, rtol=0.0, atol=1e-12)
    assert_close(torch.sigmoid(-z), 1 - want, rtol=0.0, atol=1e-12)


def test_two_class_to_logit_known_gradient_and_errors() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 3.0], [2.0, -1.0]], requires_grad=True)
    z = two_class_to_logit(x)
    assert_close(z, torch.tensor([0.0, 2.0, -3.0]))
    assert_close(torch.sigmoid(z), torch.softmax(x.detach().double(), -1)[:, 1].float())
    z.sum().backward()
    assert_close(x.grad, torch.tensor([[-1.0, 1.0]] * 3))
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        assert two_class_to_logit(x.detach().to(dtype)).dtype == dtype
    with pytest.raises(
        ValueError, match=r"logits must have a last dimension of size 2, got \(2, 3\)"
    ):
        two_class_to_logit(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"logits must have a last dimension of size 2, got \(\)"):
        two_class_to_logit(torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"logits must be a floating-point tensor"):
        two_class_to_logit(torch.zeros(2, 2, dtype=torch.long))


# --------------------------------------------------------------------------------------------
# dense_from_candidates
# --------------------------------------------------------------------------------------------


@st.composite
def candidates(draw: st.DrawFn) -> dict:
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    b, n, m = shape
    cells = draw(st.lists(st.integers(0, b * n * m - 1), unique=True, max_size=b * n * m))
    positions = [(c // (n * m), (c // m) % n, c % m) for c in cells]
    logits = draw(st.lists(st.floats(-50, 50), min_size=len(cells), max_size=len(cells)))
    labels = draw(st.lists(st.booleans(), min_size=len(cells), max_size=len(cells)))
    return {"shape": shape, "positions": positions, "logits": logits, "labels": labels}


def index_tensors(positions: list[tuple[int, int, int]]) -> tuple[torch.Tensor, ...]:
    cols = list(zip(*positions, strict=True)) if positions else [(), (), ()]
    return tuple(torch.tensor(list(c), dtype=torch.long) for c in cols)


@given(candidates(), st.booleans())
def test_dense_from_candidates_matches_loop(cand: dict, with_labels: bool) -> None:
    b, n, m = cand["shape"]
    logits = torch.tensor(cand["logits"], dtype=torch.float64)
    bi, ri, ci = index_tensors(cand["positions"])
    labels = torch.tensor(cand["labels"], dtype=torch.bool) if with_labels else None
    scores, gold, valid = dense_from_candidates(logits, bi, ri, ci, cand["shape"], labels)

    want_s = [[[0.0] * m for _ in range(n)] for _ in range(b)]
    want_g = [[[False] * m for _ in range(n)] for _ in range(b)]
    want_v = [[[False] * m for _ in range(n)] for _ in range(b)]
    for (pb, pi, pj), x, y in zip(cand["positions"], cand["logits"], cand["labels"], strict=True):
        want_s[pb][pi][pj] = x
        want_g[pb][pi][pj] = y and with_labels
        want_v[pb][pi][pj] = True
    assert scores.tolist() == want_s and scores.dtype == torch.float64
    assert gold.tolist() == want_g and valid.tolist() == want_v
    # Round trip: reading the dense tensors back at the candidates gives the inputs.
    assert scores[bi, ri, ci].tolist() == cand["logits"]
    assert valid.sum() == len(cand["positions"])


@given(candidates(), st.integers(0, 2**31 - 1))
def test_dense_from_candidates_gradient_reaches_logits(cand: dict, seed: int) -> None:
    logits = torch.tensor(cand["logits"], dtype=torch.float64, requires_grad=True)
    bi, ri, ci = index_tensors(cand["positions"])
    scores, _, _ = dense_from_candidates(logits, bi, ri, ci, cand["shape"])
    weight = torch.randn(
        cand["shape"], generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    (scores * weight).sum().backward()
    assert logits.grad is not None
    want = [float(weight[pb, pi, pj]) for pb, pi, pj in cand["positions"]]
    assert logits.grad.tolist() == want


def test_dense_from_candidates_known() -> None:
    logits = torch.tensor([1.5, -2.0, 0.25], dtype=torch.float32)
    bi, ri, ci = torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), torch.tensor([2, 0, 1])
    labels = torch.tensor([True, False, True])
    scores, gold, valid = dense_from_candidates(logits, bi, ri, ci, (2, 2, 3), labels)
    assert scores.dtype == torch.float32
    assert scores.tolist() == [[[0, 0, 1.5], [0, 0, 0]], [[0, 0.25, 0], [-2.0, 0, 0]]]
    assert gold.nonzero().tolist() == [[0, 0, 2], [1, 0, 1]]
    assert valid.nonzero().tolist() == [[0, 0, 2], [1, 0, 1], [1, 1, 0]]


def test_dense_from_candidates_argument_errors() -> None:
    logits = torch.zeros(3)
    idx = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"logits must be a flat \(P,\) tensor"):
        dense_from_candidates(logits[None], idx, idx, idx, (1, 1, 1))
    with pytest.raises(TypeError, match=r"logits must be a floating-point tensor"):
        dense_from_candidates(idx, idx, idx, idx, (1, 1, 1))
    with pytest.raises(ValueError, match=r"batch_index must be an int64 tensor of shape \(3,\)"):
        dense_from_candidates(logits, idx.int(), idx, idx, (1, 1, 1))
    with pytest.raises(ValueError, match=r"row_index must be an int64 tensor"):
        dense_from_candidates(logits, idx, idx[:2], idx, (1, 1, 1))
    with pytest.raises(ValueError, match=r"col_index must be an int64 tensor"):
        dense_from_candidates(logits, idx, idx, idx.float(), (1, 1, 1))
    with pytest.raises(TypeError, match=r"labels must be a torch\.bool tensor"):
        dense_from_candidates(logits, idx, idx, idx, (1, 1, 1), labels=idx)


def test_dense_from_candidates_labels_must_match_logits() -> None:
    """Regression: a (1,) labels tensor used to broadcast and mark every candidate gold."""
    logits = torch.tensor([1.0, 2.0, 3.0])
    bi = torch.zeros(3, dtype=torch.long)
    ri, ci = torch.tensor([0, 1, 1]), torch.tensor([0, 0, 2])
    with pytest.raises(ValueError, match=r"labels must be a bool tensor of shape \(3,\)"):
        dense_from_candidates(logits, bi, ri, ci, (1, 2, 3), labels=torch.tensor([True]))
    with pytest.raises(ValueError, match=r"labels must be a bool tensor of shape \(3,\)"):
        dense_from_candidates(
            logits, bi, ri, ci, (1, 2, 3), labels=torch.ones(3, 1, dtype=torch.bool)
        )


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("bad", [-1, 5])
def test_dense_from_candidates_rejects_out_of_range_indices(which: int, bad: int) -> None:
    """Without the check a column index == M would silently land in the next row."""
    logits = torch.tensor([1.0, 2.0])
    idx = [torch.zeros(2, dtype=torch.long) for _ in range(3)]
    idx[which] = torch.tensor([0, bad])
    name = ("batch_index", "row_index", "col_index")[which]
    with pytest.raises(ValueError, match=f"{name} has entries outside"):
        dense_from_candidates(logits, *idx, (1, 2, 3))
    # trusted indices on a hot path: no check, no sync
    if bad == 5 and which == 2:
        _, _, valid = dense_from_candidates(logits, idx[0], idx[1], torch.tensor([0, 3]), (1, 2, 3), check_bounds=False)
        assert valid[0, 1, 0]  # documents what the check prevents


def test_empty_candidates_and_two_class_inputs() -> None:
    empty = torch.zeros(0, dtype=torch.long)
    logits = torch.zeros(0, requires_grad=True)
    for shape in [(2, 3, 4), (0, 3, 3), (2, 0, 0)]:
        scores, gold, valid = dense_from_candidates(
            logits, empty, empty, empty, shape, torch.zeros(0, dtype=torch.bool)
        )
        assert scores.shape == gold.shape == valid.shape == shape
        assert not valid.any() and not gold.any() and not scores.any()
        scores.sum().backward()  # the graph is intact even with no candidate
    assert two_class_to_logit(torch.zeros(0, 2)).shape == (0,)
    assert two_class_to_logit(torch.zeros(3, 0, 2)).shape == (3, 0)
