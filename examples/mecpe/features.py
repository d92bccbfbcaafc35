"""Per-utterance audio/video feature tables and the modality switch.

Note: ``.npy`` mapping/dict files are pickled object arrays; load only files you trust.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["FeatureTable", "modality_flags"]

PathLike = str | os.PathLike[str]


class FeatureTable:
    """A 2-D feature matrix plus a mapping from utterance key to matrix row."""

    def __init__(self, matrix: np.ndarray, index: Mapping[str, int], name: str) -> None:
        matrix = np.asarray(matrix)
        if matrix.ndim != 2:
            raise ValueError(f"{name}: feature matrix must be 2-D, got shape {matrix.shape}")
        if not np.issubdtype(matrix.dtype, np.number):
            raise ValueError(f"{name}: feature matrix must be numeric, got dtype {matrix.dtype}")
        rows = matrix.shape[0]
        for key, row in index.items():
            if isinstance(row, bool) or not isinstance(row, (int, np.integer)):
                raise ValueError(f"{name}: row for key {key!r} is not an integer: {row!r}")
            if not 0 <= row < rows:
                raise ValueError(
                    f"{name}: row {row} for key {key!r} is outside the table ({rows} rows)"
                )
        self.matrix = matrix
        self.index: dict[str, int] = {str(k): int(v) for k, v in index.items()}
        self.name = name

    @property
    def dim(self) -> int:
        """Feature dimension."""
        return int(self.matrix.shape[1])

    def __len__(self) -> int:
        """Number of keys."""
        return len(self.index)

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def __repr__(self) -> str:
        return f"FeatureTable(name={self.name!r}, keys={len(self)}, dim={self.dim})"

    def lookup(self, keys: Sequence[str]) -> np.ndarray:
        """Rows for ``keys`` as a ``(len(keys), dim)`` float32 array."""
        rows = []
        for key in keys:
            row = self.index.get(key)
            if row is None:
                raise KeyError(f"utterance key {key!r} not found in feature table {self.name}")
            rows.append(row)
        return np.asarray(self.matrix[np.asarray(rows, dtype=np.int64)], dtype=np.float32)

    @classmethod
    def from_ecf(cls, table_path: PathLike, mapping_path: PathLike) -> FeatureTable:
        """Official ECF features (``audio_embedding_6373.npy`` / ``video_embedding_4096.npy``)
        with ``video_id_mapping.npy`` (0-d object array: ``'dia{c}utt{u}'`` -> row)."""
        matrix = np.load(table_path, allow_pickle=False)
        mapping = _load_object(mapping_path)
        if not isinstance(mapping, Mapping):
            raise ValueError(
                f"{mapping_path}: expected a 0-d object array holding a dict key -> row, "
                f"got {type(mapping).__name__}"
            )
        try:
            return cls(matrix, mapping, name=str(table_path))
        except ValueError as exc:
            raise ValueError(f"{exc} (mapping file: {mapping_path})") from None

    @classmethod
    def from_file(cls, path: PathLike) -> FeatureTable:
        """Generic table: ``.npz`` with ``keys`` (str) and ``features`` (2-D), or ``.npy``
        holding a dict key -> vector (0-d object array)."""
        path = Path(path)
        if path.suffix == ".npz":
            return _from_npz(path)
        if path.suffix == ".npy":
            return _from_npy_dict(path)
        raise ValueError(f"{path}: unsupported feature file (expected .npz or .npy)")


def _load_object(path: PathLike) -> object:
    """The object inside a 0-d object ``.npy`` array."""
    array = np.load(path, allow_pickle=True)
    if not isinstance(array, np.ndarray) or array.shape != () or array.dtype != object:
        raise ValueError(f"{path}: expected a 0-d object array")
    return array.item()


def _index_from_keys(keys: Sequence[str], path: PathLike) -> dict[str, int]:
    """key -> position, rejecting duplicates."""
    index: dict[str, int] = {}
    for row, key in enumerate(keys):
        if key in index:
            raise ValueError(f"{path}: duplicate key {key!r}")
        index[key] = row
    return index


def _from_npz(path: Path) -> FeatureTable:
    """``.npz`` with ``keys`` and ``features``."""
    with np.load(path, allow_pickle=False) as archive:
        missing = {"keys", "features"} - set(archive.files)
        if missing:
            raise ValueError(f"{path}: missing arrays {sorted(missing)} (found {archive.files})")
        keys = [str(k) for k in archive["keys"].reshape(-1)]
        features = archive["features"]
    if features.ndim != 2 or features.shape[0] != len(keys):
        raise ValueError(
            f"{path}: 'features' must be 2-D with one row per key "
            f"({len(keys)} keys, shape {features.shape})"
        )
    return FeatureTable(features, _index_from_keys(keys, path), name=str(path))


def _from_npy_dict(path: Path) -> FeatureTable:
    """``.npy`` holding a dict key -> 1-D vector."""
    mapping = _load_object(path)
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError(f"{path}: expected a non-empty dict key -> vector")
    keys = [str(k) for k in mapping]
    vectors = [np.asarray(v) for v in mapping.values()]
    dims = {v.shape for v in vectors}
    if len(dims) != 1 or vectors[0].ndim != 1:
        raise ValueError(
            f"{path}: vectors must all be 1-D of one length, got shapes {sorted(dims)}"
        )
    return FeatureTable(np.stack(vectors), _index_from_keys(keys, path), name=str(path))


def modality_flags(spec: str) -> tuple[bool, bool, bool]:
    """``"T"``, ``"TA"``, ``"TV"``, ``"TAV"`` (any case/order, ``+`` allowed) -> (text, audio, video).

    Text is mandatory; anything else raises ``ValueError``.
    """
    letters = spec.upper().replace("+", "").replace(" ", "")
    if not letters or set(letters) - set("TAV") or len(set(letters)) != len(letters):
        raise ValueError(f"bad modality spec {spec!r}; use T, TA, TV or TAV")
    if "T" not in letters:
        raise ValueError(f"bad modality spec {spec!r}: text (T) is mandatory")
    return True, "A" in letters, "V" in letters
