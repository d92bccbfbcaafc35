"""Checks for the files a user fetches by hand (not plain HTTP downloads).

* ECF's feature tables ``audio_embedding_6373.npy`` / ``video_embedding_4096.npy``
  (Google Drive, linked from NUSTM/MECPE's ``data/README.md``): 2-D numeric arrays whose rows
  are indexed by ``video_id_mapping.npy`` (``'dia{c}utt{u}'`` -> row).
* MEC4's ``MEC4_text/{train,valid,test}.json`` (a Google Drive folder linked from
  DanWu2003/M3F-MECPE's README).

Each check raises :class:`ManualDataError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "ECF_FEATURE_DIMS",
    "MEC4_SPLIT_FILES",
    "ManualDataError",
    "check_ecf_features",
    "check_mec4",
]

# File name -> feature dimension of ECF's official tables (one row per utterance, plus padding).
ECF_FEATURE_DIMS: dict[str, int] = {
    "audio_embedding_6373.npy": 6373,
    "video_embedding_4096.npy": 4096,
}
ECF_MAPPING = "video_id_mapping.npy"
ECF_SPLIT_FILES = ("train.txt", "dev.txt", "test.txt")
MEC4_SPLIT_FILES = ("MEC4_text/train.json", "MEC4_text/valid.json", "MEC4_text/test.json")


class ManualDataError(ValueError):
    """A hand-fetched file is missing or malformed; the message names the file."""


def _load_mapping(path: Path) -> dict[str, int]:
    """``video_id_mapping.npy``: a 0-d object array holding ``{key: row}`` with rows >= 0."""
    import numpy as np

    try:
        array = np.load(path, allow_pickle=True)  # a pickled dict: load only trusted files
    except (OSError, ValueError) as exc:
        raise ManualDataError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(array, np.ndarray) or array.shape != () or array.dtype != object:
        raise ManualDataError(f"{path}: expected a 0-d object array holding a dict key -> row")
    mapping = array.item()
    if not isinstance(mapping, Mapping) or not mapping:
        raise ManualDataError(f"{path}: expected a non-empty dict key -> row")
    out: dict[str, int] = {}
    for key, row in mapping.items():
        if isinstance(row, bool) or not isinstance(row, (int, np.integer)) or row < 0:
            raise ManualDataError(f"{path}: row for key {key!r} is not an integer >= 0: {row!r}")
        out[str(key)] = int(row)
    return out


def _table_shape(path: Path, dim: int, rows_needed: int) -> tuple[int, int]:
    """Shape of a feature table (memory-mapped: the official tables are hundreds of MB)."""
    import numpy as np

    try:
        table = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ManualDataError(
            f"{path}: cannot read as a plain .npy array ({exc}); download it again"
        ) from exc
    if table.ndim != 2:
        raise ManualDataError(f"{path}: expected a 2-D table, got shape {table.shape}")
    if not np.issubdtype(table.dtype, np.number):
        raise ManualDataError(f"{path}: expected numbers, got dtype {table.dtype}")
    rows, cols = int(table.shape[0]), int(table.shape[1])
    if cols != dim:
        raise ManualDataError(f"{path}: expected {dim} features per row, got {cols}")
    if rows < rows_needed:
        raise ManualDataError(
            f"{path}: {rows} rows, but {ECF_MAPPING} points to row {rows_needed - 1}; "
            f"the table and the mapping do not belong together"
        )
    return rows, cols


def check_ecf_features(
    data_dir: str | os.PathLike[str],
    *,
    dims: Mapping[str, int] | None = None,
) -> dict[str, tuple[int, int]]:
    """Validate the ECF feature tables present in ``data_dir``.

    For each table of ``dims`` (default :data:`ECF_FEATURE_DIMS`) found in ``data_dir``: it
    is a 2-D numeric ``.npy`` with the expected number of columns, and every row named by
    ``video_id_mapping.npy`` exists. The mapping, in turn, must hold a key for every utterance
    of the ECF split files present (``dia{conv}utt{utt}``).

    Args:
        data_dir: the ECF folder (``train.txt``, ..., ``video_id_mapping.npy``, tables).
        dims: table file name -> feature dimension.

    Returns:
        ``{file name: (rows, dim)}`` of the tables found (empty when none is there).

    Raises:
        ManualDataError: naming the file and the problem.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> np.save(d / "video_id_mapping.npy", np.array({"dia1utt1": 1}, dtype=object))
        >>> np.save(d / "audio_embedding_6373.npy", np.zeros((2, 6373), np.float32))
        >>> check_ecf_features(d)
        {'audio_embedding_6373.npy': (2, 6373)}
    """
    folder = Path(data_dir)
    dims = dict(ECF_FEATURE_DIMS if dims is None else dims)
    present = [name for name in dims if (folder / name).exists()]
    if not present:
        return {}
    mapping_path = folder / ECF_MAPPING
    if not mapping_path.is_file():
        raise ManualDataError(
            f"{mapping_path}: missing; the feature tables need it (python -m "
            f"examples.mecpe.download ecf fetches it)"
        )
    mapping = _load_mapping(mapping_path)
    _check_mapping_covers_splits(folder, mapping, mapping_path)
    rows_needed = max(mapping.values()) + 1
    return {name: _table_shape(folder / name, dims[name], rows_needed) for name in present}


def _check_mapping_covers_splits(folder: Path, mapping: Mapping[str, int], path: Path) -> None:
    """Every utterance key of the ECF splits in ``folder`` has a row in ``mapping``."""
    from .data import load_ecf

    for split in ECF_SPLIT_FILES:
        if not (folder / split).is_file():
            continue
        missing = [
            key
            for conv in load_ecf(folder / split)
            for key in conv.feature_keys
            if key not in mapping
        ]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise ManualDataError(
                f"{path}: no row for {len(missing)} utterance(s) of {folder / split} ({shown})"
            )


def check_mec4(data_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Validate a MEC4 folder: ``MEC4_text/{train,valid,test}.json`` exist and load.

    Returns:
        ``{file: number of dialogues}``.

    Raises:
        ManualDataError: a split file is missing (the message says where it comes from).
        examples.mecpe.data.DataFormatError: a split file is malformed (file, record, field).
    """
    from .data import load_mec4
    from .sources import source

    folder = Path(data_dir)
    url = source("mec4").manual[0].url
    counts: dict[str, int] = {}
    for name in MEC4_SPLIT_FILES:
        path = folder / name
        if not path.is_file():
            raise ManualDataError(
                f"{path}: missing; download the folder MEC4_text/ from {url} into {folder}"
            )
        counts[name] = len(load_mec4(path))
    return counts
