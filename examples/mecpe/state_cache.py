"""On-disk cache of the frozen lower layers' hidden states (``--text-encoder transformer``).

When only the top ``K`` of ``L`` layers are trained, the embeddings and layers ``1 .. L - K``
map each token sequence to the same states in every epoch: :func:`attach_states` computes them
once per split (:func:`examples.mecpe.transformer.frozen_states`, float16, token level) and
stores them under ``cache_dir`` in one ``.npz`` per (dataset, split, model, frozen layers,
layout). A file is reused only when everything it was computed from matches: the cache format,
the model folder's fingerprint (a sha256 over its files), the number of frozen layers and a
sha256 over every token id of the split (which covers the texts, the tokenizer, the layout and
``--max-tokens``); anything else — a missing, unreadable or mismatched file — is recomputed and
rewritten (atomically), with the reason logged. Nothing stale is ever reused silently.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write
from .segments import Segments
from .text import cache_path
from .transformer import EncoderInfo, frozen_states

__all__ = ["attach_states", "states_path", "tokens_digest"]

logger = logging.getLogger(__name__)

_VERSION = 1


def tokens_digest(segments: Sequence[Segments]) -> str:
    """sha256 over every token id of ``segments``, with sequence and conversation boundaries."""
    digest = hashlib.sha256()
    for seg in segments:
        for ids in seg.ids:
            digest.update(np.asarray(ids, dtype=np.int64).tobytes())
            digest.update(b"|")
        digest.update(b"#")
    return digest.hexdigest()


def states_path(
    cache_dir: str | os.PathLike[str], dataset: str, split: str, model: str, info: EncoderInfo,
    *, frozen_layers: int, layout: str, max_tokens: int,
) -> Path:  # fmt: skip
    """The cache file of one split's states."""
    key = f"{model}-{info.fingerprint[:12]}-frozen{frozen_layers}-{layout}{max_tokens}"
    return cache_path(cache_dir, dataset, split, key)


def _read(path: Path, expected: dict[str, object], lengths: np.ndarray) -> np.ndarray | None:
    if not path.is_file():
        logger.info("state cache %s: not found, computing", path)
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            found = {k: archive[k].item() for k in expected}
            cached_lengths = archive["lengths"]
            states = archive["states"]
    except Exception as exc:  # truncated file, not a zip, a missing array
        logger.warning("state cache %s: unreadable (%s), recomputing", path, exc)
        return None
    for key, want in expected.items():
        if found[key] != want:
            logger.warning("state cache %s: %s differs, recomputing", path, key)
            return None
    if not np.array_equal(cached_lengths, lengths) or states.shape[0] != int(lengths.sum()):
        logger.warning("state cache %s: sequence lengths differ, recomputing", path)
        return None
    logger.info("state cache %s: hit (%d tokens)", path, states.shape[0])
    return np.asarray(states, dtype=np.float16)


def _write(
    path: Path, expected: dict[str, object], lengths: np.ndarray, states: np.ndarray
) -> None:
    arrays: dict[str, Any] = {k: np.array(v) for k, v in expected.items()}
    atomic_write(path, lambda handle: np.savez(handle, lengths=lengths, states=states, **arrays))
    logger.info("state cache %s: written (%d tokens)", path, states.shape[0])


def attach_states(
    segments: Sequence[Segments],
    info: EncoderInfo,
    *,
    frozen_layers: int,
    cache_file: Path | None,
    device: torch.device,
    chunk_tokens: int,
) -> None:
    """Set ``states`` of every :class:`Segments` (read from ``cache_file`` if it matches, else
    computed and written there; ``cache_file=None``: computed, not stored)."""
    lengths = np.array([len(ids) for seg in segments for ids in seg.ids], dtype=np.int64)
    expected: dict[str, object] = {
        "version": _VERSION,
        "model": info.fingerprint,
        "frozen_layers": frozen_layers,
        "tokens": tokens_digest(segments),
    }
    flat = None if cache_file is None else _read(cache_file, expected, lengths)
    if flat is None:
        per_conv = frozen_states(
            info, segments, frozen_layers=frozen_layers, device=device, chunk_tokens=chunk_tokens
        )
        parts = [a for conv in per_conv for a in conv]
        flat = np.concatenate(parts) if parts else np.zeros((0, info.hidden), dtype=np.float16)
        if cache_file is not None:
            _write(cache_file, expected, lengths, flat)
    pieces = np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []
    at = 0
    for seg in segments:
        seg.states = [
            torch.from_numpy(np.ascontiguousarray(p)) for p in pieces[at : at + len(seg.ids)]
        ]
        at += len(seg.ids)
