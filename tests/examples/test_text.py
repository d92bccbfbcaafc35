"""Tests for cached sentence embeddings (a fake encoder; no model is loaded)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from examples.mecpe import text as text_mod
from examples.mecpe.data import Conversation
from examples.mecpe.text import cache_path, encode_conversations

DIM = 5


class FakeEncoder:
    """Deterministic text -> vector encoder that counts its calls."""

    def __init__(self, name: str = "fake/enc v1") -> None:
        self.name = name
        self.calls: list[list[str]] = []

    def encode(self, sentences: list[str], batch_size: int = 32, **kwargs: Any) -> np.ndarray:
        self.calls.append(list(sentences))
        return np.stack([self.vector(s) for s in sentences]) if sentences else np.zeros((0, DIM))

    @staticmethod
    def vector(sentence: str) -> np.ndarray:
        """A vector that depends on the sentence only."""
        seed = sum(ord(ch) * (i + 1) for i, ch in enumerate(sentence))
        return np.random.default_rng(seed).normal(size=DIM)


def conv(conv_id: str, *texts: str) -> Conversation:
    """A conversation with the given texts."""
    n = len(texts)
    return Conversation(
        conv_id,
        ("A",) * n,
        tuple(texts),
        (0,) * n,
        (),
        tuple(f"{conv_id}_{u}" for u in range(1, n + 1)),
    )


CONVS = [conv("1", "hello", "hi there", "bye"), conv("2", "only one"), conv("3", "a", "b")]


def encode(
    convs: list[Conversation], encoder: Any, cache_dir: Path | None, **kw: Any
) -> list[np.ndarray]:
    """encode_conversations with the test defaults."""
    return encode_conversations(
        convs,
        encoder=encoder,
        cache_dir=cache_dir,
        dataset="ecf",
        split="dev",
        show_progress=False,
        **kw,
    )


def test_shapes_and_values(tmp_path: Path) -> None:
    fake = FakeEncoder()
    out = encode(CONVS, fake, tmp_path)
    assert [a.shape for a in out] == [(3, DIM), (1, DIM), (2, DIM)]
    assert all(a.dtype == np.float32 for a in out)
    np.testing.assert_allclose(out[1][0], FakeEncoder.vector("only one"), rtol=1e-6)
    assert len(fake.calls) == 1  # one batched call for all utterances


def test_cache_hit_skips_encoder(tmp_path: Path) -> None:
    first = encode(CONVS, FakeEncoder(), tmp_path)
    again = FakeEncoder()
    second = encode(CONVS, again, tmp_path)
    assert again.calls == []
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    path = cache_path(tmp_path, "ecf", "dev", again.name)
    assert path.is_file() and path.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left over


def test_changed_texts_recompute(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    encode(CONVS, FakeEncoder(), tmp_path)
    changed = [conv("1", "hello", "hi there!", "bye"), *CONVS[1:]]
    fake = FakeEncoder()
    with caplog.at_level(logging.WARNING, logger=text_mod.__name__):
        out = encode(changed, fake, tmp_path)
    assert len(fake.calls) == 1
    assert "fingerprint differs" in caplog.text
    np.testing.assert_allclose(out[0][1], FakeEncoder.vector("hi there!"), rtol=1e-6)
    assert encode(changed, FakeEncoder(), tmp_path)[0].shape == (3, DIM)  # new cache is a hit


def test_regrouped_conversations_recompute(tmp_path: Path) -> None:
    encode([conv("1", "a", "b")], FakeEncoder(), tmp_path)
    fake = FakeEncoder()
    out = encode([conv("1", "a"), conv("2", "b")], fake, tmp_path)
    assert len(fake.calls) == 1 and [a.shape[0] for a in out] == [1, 1]


def test_corrupt_cache_recomputed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeEncoder()
    cache_path(tmp_path, "ecf", "dev", fake.name).write_bytes(b"not a zip file")
    with caplog.at_level(logging.WARNING, logger=text_mod.__name__):
        encode(CONVS, fake, tmp_path)
    assert len(fake.calls) == 1 and "unreadable" in caplog.text
    again = FakeEncoder()
    encode(CONVS, again, tmp_path)
    assert again.calls == []


def test_cache_keys_separate_encoders_and_splits(tmp_path: Path) -> None:
    encode(CONVS, FakeEncoder("enc-a"), tmp_path)
    other = FakeEncoder("enc-b")
    encode(CONVS, other, tmp_path)
    assert len(other.calls) == 1
    names = {cache_path(tmp_path, "ecf", "dev", n).name for n in ("enc-a", "enc-b", "a/b", "a_b")}
    assert len(names) == 4  # sanitised names do not collide
    assert all("/" not in n for n in names)


def test_no_cache_dir(tmp_path: Path) -> None:
    fake = FakeEncoder()
    encode(CONVS, fake, None)
    encode(CONVS, fake, None)
    assert len(fake.calls) == 2


def test_string_encoder_goes_through_load_seam(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[tuple[str, str]] = []

    def fake_load(name: str, device: str) -> FakeEncoder:
        loaded.append((name, device))
        return FakeEncoder(name)

    monkeypatch.setattr(text_mod, "_load_encoder", fake_load)
    encode(CONVS, "minilm", tmp_path, device="cpu")
    encode(CONVS, "minilm", tmp_path, device="cpu")  # cache hit: the model is not loaded
    assert loaded == [("minilm", "cpu")]
    assert cache_path(tmp_path, "ecf", "dev", "minilm").is_file()


def test_bad_encoder_output_and_name(tmp_path: Path) -> None:
    class Wrong(FakeEncoder):
        def encode(self, sentences: list[str], batch_size: int = 32, **kwargs: Any) -> np.ndarray:
            return np.zeros((len(sentences) + 1, DIM))

    with pytest.raises(ValueError, match="encoder returned shape"):
        encode(CONVS, Wrong(), tmp_path)

    class Nameless:
        def encode(self, sentences: list[str], **kwargs: Any) -> np.ndarray:
            return np.zeros((len(sentences), DIM))

    with pytest.raises(TypeError, match="name"):
        encode(CONVS, Nameless(), tmp_path)


def test_empty_input() -> None:
    assert encode([], FakeEncoder(), None) == []
