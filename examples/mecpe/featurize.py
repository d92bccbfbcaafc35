"""Conversations → examples: the features a config asks for, and the splits of a run.

:func:`featurize` turns conversations into :class:`~examples.mecpe.batching.Example` objects
(text: hashed n-grams, cached frozen sentence embeddings, or the token sequences of a
transformer trained end to end — with the cached states of its frozen lower layers; audio /
video: rows of feature tables). :func:`load_data` reads the splits of a run — the dataset's own train/dev/test, or a
``cv`` fold over every dialogue (:mod:`examples.mecpe.folds`) — through the dataset registry
(:mod:`examples.mecpe.datasets`) and returns them with data statistics as a
:class:`DataBundle`. With ``dev_only`` the test split is neither loaded nor featurized (``cv``:
its fold is set aside unread). :func:`load_split_examples` returns one split's conversations
with their examples, read the same way (for evaluations that rewrite the conversations).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import data as mecpe_data
from . import datasets, download
from .batching import Example, build_examples
from .config import TRANSFORMER, TrainConfig
from .data import Conversation
from .features import FeatureTable, modality_flags
from .folds import cv_parts, dev_fold, series_folds, series_of
from .runtime import resolve_device
from .segments import Segments
from .sources import SOURCES
from .transformer import EncoderInfo

__all__ = [
    "DataBundle",
    "featurize",
    "load_data",
    "load_feature_tables",
    "load_split_examples",
]


def load_feature_tables(cfg: TrainConfig) -> dict[str, FeatureTable]:
    """The audio / video tables ``cfg.modalities`` asks for (a missing path raises)."""
    _, use_audio, use_video = modality_flags(cfg.modalities)
    tables: dict[str, FeatureTable] = {}
    for name, used, path in (
        ("audio", use_audio, cfg.audio_table),
        ("video", use_video, cfg.video_table),
    ):
        if not used:
            continue
        if not path:
            raise ValueError(f"modalities {cfg.modalities} need --{name}-table")
        tables[name] = (
            FeatureTable.from_ecf(path, cfg.mapping)
            if cfg.mapping
            else FeatureTable.from_file(path)
        )
    return tables


def featurize(
    convs: Sequence[Conversation],
    cfg: TrainConfig,
    *,
    cache_dataset: str,
    cache_split: str,
    tables: dict[str, FeatureTable] | None = None,
) -> list[Example]:
    """Examples of ``convs`` with the features ``cfg`` asks for.

    Text: hashed n-grams (``hash``) or frozen sentence embeddings from
    :func:`examples.mecpe.text.encode_conversations`, cached under ``cfg.cache_dir`` as
    ``(cache_dataset, cache_split, encoder)``. Audio / video: rows of the feature tables
    (``FeatureTable.from_ecf`` when ``cfg.mapping`` is set, else ``from_file``).
    """
    _, use_audio, use_video = modality_flags(cfg.modalities)
    if tables is None:
        tables = load_feature_tables(cfg)
    text = None
    segments = None
    if cfg.text_encoder == TRANSFORMER:
        segments = transformer_segments(
            convs, cfg, cache_dataset=cache_dataset, cache_split=cache_split
        )
    elif cfg.text_encoder != "hash":
        from .text import encode_conversations

        text = encode_conversations(
            convs,
            encoder=cfg.text_encoder or "minilm",
            cache_dir=cfg.cache_dir,
            dataset=cache_dataset,
            split=cache_split,
            show_progress=not cfg.quiet and sys.stderr.isatty(),
        )
    audio = [tables["audio"].lookup(c.feature_keys) for c in convs] if use_audio else None
    video = [tables["video"].lookup(c.feature_keys) for c in convs] if use_video else None
    return build_examples(
        convs,
        text=text,
        hash_buckets=cfg.hash_buckets if cfg.text_encoder == "hash" else None,
        audio=audio,
        video=video,
        segments=segments,
    )


def transformer_segments(
    convs: Sequence[Conversation], cfg: TrainConfig, *, cache_dataset: str, cache_split: str
) -> list[Segments]:
    """The token sequences of ``convs`` for ``--text-encoder transformer``; with frozen lower
    layers (``train_layers < L``) their cached states too (:mod:`examples.mecpe.state_cache`)."""
    from .state_cache import attach_states, states_path
    from .transformer import describe, max_tokens_of, tokenize

    info = describe(cfg.encoder_model)
    if cfg.train_layers > info.n_layers:
        raise ValueError(
            f"--train-layers {cfg.train_layers}: {info.folder} has {info.n_layers} layers"
        )
    max_tokens = max_tokens_of(cfg.encoder_input, cfg.max_tokens, info)
    segments = tokenize(
        [c.texts for c in convs], info, layout=cfg.encoder_input, max_tokens=max_tokens
    )
    frozen = info.n_layers - cfg.train_layers
    if cfg.train_layers < info.n_layers:  # the embeddings and `frozen` layers are not trained
        path = states_path(
            cfg.cache_dir, cache_dataset, cache_split, cfg.encoder_model, info,
            frozen_layers=frozen, layout=cfg.encoder_input, max_tokens=max_tokens,
        )  # fmt: skip
        attach_states(
            segments,
            info,
            frozen_layers=frozen,
            cache_file=path,
            device=resolve_device(cfg.device),
            chunk_tokens=cfg.chunk_tokens,
        )
    return segments


@dataclass
class DataBundle:
    """Train / dev / test examples (``test`` is ``None`` with ``dev_only``), feature
    dimensions, the transformer's folder description (``--text-encoder transformer``) and data
    statistics."""

    train: list[Example]
    dev: list[Example]
    test: list[Example] | None
    text_dim: int | None
    audio_dim: int | None
    video_dim: int | None
    stats: dict[str, Any]
    transformer: EncoderInfo | None = None


def _token_stats(examples: Sequence[Example]) -> dict[str, Any]:
    """Sequences, tokens and truncated utterances of the transformer's inputs."""
    segs = [ex.segments for ex in examples if ex.segments is not None]
    lengths = [n for seg in segs for n in seg.lengths]
    return {
        "sequences": len(lengths),
        "tokens": sum(lengths),
        "max_sequence_tokens": max(lengths, default=0),
        "truncated_utterances": sum(seg.truncated for seg in segs),
    }


def _pair_stats(convs: Sequence[Conversation], window: int | None) -> dict[str, Any]:
    pairs = [p for c in convs for p in c.pairs]
    after = sum(1 for e, c in pairs if c > e)
    stats: dict[str, Any] = {
        **mecpe_data.summarize(convs),
        "cause_after_emotion": after,
        "cause_after_emotion_frac": after / len(pairs) if pairs else 0.0,
    }
    if window is not None:
        outside = sum(1 for e, c in pairs if abs(e - c) > window)
        stats["outside_window"] = outside
        stats["outside_window_frac"] = outside / len(pairs) if pairs else 0.0
    return stats


_Splits = dict[str, tuple[list[Conversation], list[Example]]]


def _load_splits(cfg: TrainConfig, data_dir: str) -> tuple[_Splits, dict[str, Any]]:
    """``split → (conversations, examples)`` of the dataset's own splits (``split`` protocol)."""
    tables = load_feature_tables(cfg)
    out: _Splits = {}
    for split in datasets.SPLITS:
        if split == "test" and cfg.dev_only:
            continue  # never read: no test number can leak into a dev-only run
        convs = datasets.load_split(cfg.dataset, data_dir, split)
        out[split] = (
            convs,
            featurize(convs, cfg, cache_dataset=cfg.dataset, cache_split=split, tables=tables),
        )
    return out, {}


def _load_cv_fold(cfg: TrainConfig, data_dir: str) -> tuple[_Splits, dict[str, Any]]:
    """Pool every available split, fold the dialogues by series, return the fold's splits."""
    tables = load_feature_tables(cfg)
    pooled_convs: list[Conversation] = []
    pooled: list[Example] = []
    for split in datasets.SPLITS:
        path = datasets.split_path(cfg.dataset, data_dir, split)
        if not path.is_file():
            continue
        convs = datasets.load_file(cfg.dataset, path)
        pooled_convs += convs
        pooled += featurize(convs, cfg, cache_dataset=cfg.dataset, cache_split=split, tables=tables)
    if not pooled_convs:
        files = [str(datasets.split_path(cfg.dataset, data_dir, s)) for s in datasets.SPLITS]
        raise FileNotFoundError(f"{cfg.dataset}: none of {', '.join(files)} exists")
    assert cfg.fold is not None  # TrainConfig: protocol cv has a fold
    folds = series_folds([c.conv_id for c in pooled_convs], cfg.n_folds)
    parts = cv_parts(folds, fold=cfg.fold, n_folds=cfg.n_folds)
    if cfg.dev_only:
        del parts["test"]
    fold_sizes = Counter(folds)
    cv_info: dict[str, Any] = {
        "fold": cfg.fold,
        "dev_fold": dev_fold(cfg.fold, cfg.n_folds),
        "fold_sizes": [fold_sizes[f] for f in range(cfg.n_folds)],
        "series": {series_of(c.conv_id): f for c, f in zip(pooled_convs, folds, strict=True)},
    }
    splits = {
        s: ([pooled_convs[k] for k in idx], [pooled[k] for k in idx]) for s, idx in parts.items()
    }
    return splits, cv_info


def data_folder(cfg: TrainConfig) -> str:
    """Where ``cfg.dataset`` is read from: ``--data-dir``, else ``$MECPE_DATA_DIR`` (nothing is
    downloaded then), else the user cache, filled from the official source on first use
    (:func:`examples.mecpe.download.resolve_data_dir`; files fetched by hand are named there)."""
    if cfg.data_dir:
        return cfg.data_dir
    if os.environ.get(download.ENV_DATA_DIR):
        return os.environ[download.ENV_DATA_DIR]
    if cfg.dataset not in SOURCES:
        raise ValueError(
            f"{cfg.dataset} is not downloaded automatically: give --data-dir or set "
            f"{download.ENV_DATA_DIR}"
        )
    return str(download.resolve_data_dir(cfg.dataset))


def load_data(cfg: TrainConfig) -> DataBundle:
    """Load the splits of ``cfg.dataset`` (or the ``cv`` fold) and build their examples."""
    data_dir = data_folder(cfg)
    load = _load_cv_fold if cfg.protocol == "cv" else _load_splits
    splits, cv_info = load(cfg, data_dir)
    for split, (_, exs) in splits.items():
        if not exs:
            raise ValueError(f"the {split} split is empty")
    first = splits["train"][1][0]
    stats: dict[str, Any] = {s: _pair_stats(c, cfg.window) for s, (c, _) in splits.items()}
    info = None
    text_dim = None if first.text is None else int(first.text.shape[1])
    if cfg.text_encoder == TRANSFORMER:
        from .transformer import describe, max_tokens_of

        info = describe(cfg.encoder_model)
        text_dim = info.hidden
        for split, (_, exs) in splits.items():
            stats[split]["transformer_inputs"] = _token_stats(exs)
        stats["transformer"] = {
            "model": cfg.encoder_model,
            "fingerprint": info.fingerprint,
            "layers": info.n_layers,
            "trained_layers": cfg.train_layers,
            "hidden": info.hidden,
            "max_tokens": max_tokens_of(cfg.encoder_input, cfg.max_tokens, info),
        }
    if cv_info:
        stats["cv"] = cv_info
    return DataBundle(
        train=splits["train"][1],
        dev=splits["dev"][1],
        test=splits["test"][1] if "test" in splits else None,
        text_dim=text_dim,
        audio_dim=None if first.audio is None else int(first.audio.shape[1]),
        video_dim=None if first.video is None else int(first.video.shape[1]),
        stats=stats,
        transformer=info,
    )


def load_split_examples(cfg: TrainConfig, split: str) -> tuple[list[Conversation], list[Example]]:
    """One split of a run, ``(conversations, examples)``, read and featurized as
    :func:`load_data` reads it (the dataset's own file, or the ``cv`` fold's dialogues)."""
    if split not in datasets.SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(datasets.SPLITS)}")
    if split == "test" and cfg.dev_only:
        raise ValueError("the run was trained with --dev-only: its test split is never read")
    load = _load_cv_fold if cfg.protocol == "cv" else _load_splits
    splits, _ = load(cfg, data_folder(cfg))
    convs, examples = splits[split]
    if not examples:
        raise ValueError(f"the {split} split is empty")
    return convs, examples
