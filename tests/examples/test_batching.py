"""Tests for examples → padded batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from examples.mecpe.batching import build_examples, collate, hash_ngrams
from examples.mecpe.data import load_ecf


def test_hash_ngrams_stable_and_bounded() -> None:
    ids = hash_ngrams("Oh my God !", buckets=64)
    assert ids == hash_ngrams("oh  my god !", buckets=64)
    assert ids and all(0 <= i < 64 for i in ids)
    assert hash_ngrams("你好吗", buckets=1 << 18)
    assert hash_ngrams("", buckets=64) == []


def test_build_examples_from_conversations(tiny: Path) -> None:
    convs = load_ecf(tiny / "train.txt")[:3]
    exs = build_examples(convs, hash_buckets=128)
    for conv, ex in zip(convs, exs, strict=True):
        assert ex.conv_id == conv.conv_id and ex.length == len(conv) and ex.pairs == conv.pairs
        causes = {c for _, c in conv.pairs}
        assert ex.causes.tolist() == [float(u in causes) for u in range(1, len(conv) + 1)]
        assert ex.tokens is not None and len(ex.tokens) == len(conv)
    with pytest.raises(ValueError, match="text features of conversation"):
        build_examples(convs[:1], text=[np.zeros((len(convs[0]) + 1, 4))])


def test_collate_refuses_mixed_features(tiny: Path) -> None:
    convs = load_ecf(tiny / "train.txt")[:2]
    with_text = build_examples(convs[:1], text=[np.zeros((len(convs[0]), 4))])
    without = build_examples(convs[1:])
    with pytest.raises(ValueError, match="some examples have text features and some do not"):
        collate([*with_text, *without])
    batch = collate(with_text + build_examples(convs[1:], text=[np.ones((len(convs[1]), 4))]))
    assert batch.text is not None and batch.text.shape == (2, max(len(c) for c in convs), 4)
