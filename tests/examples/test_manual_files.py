"""Tests for the checks of hand-fetched files, on small generated tables and JSON files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from examples.mecpe.data import DataFormatError
from examples.mecpe.manual_files import (
    ECF_FEATURE_DIMS,
    ManualDataError,
    check_ecf_features,
    check_mec4,
)

AUDIO, VIDEO = "audio_embedding_6373.npy", "video_embedding_4096.npy"
SPLITS = {
    "train.txt": "1 2\n(2,1)\n1 | A | neutral | Hello . | t\n2 | B | joy | Hi ! | t\n",
    "dev.txt": "2 1\n\n1 | A | neutral | Oh . | t\n",
}
# Row 0 is padding, as in the official tables (13,620 rows for 13,619 utterances).
MAPPING = {"dia1utt1": 1, "dia1utt2": 2, "dia2utt1": 3}


def save_object(path: Path, obj: Any) -> None:
    array = np.empty((), dtype=object)
    array[()] = obj
    np.save(path, array, allow_pickle=True)


def ecf_dir(
    tmp_path: Path, mapping: Any = None, tables: dict[str, np.ndarray] | None = None
) -> Path:
    """An ECF folder with the splits, a mapping and small random tables."""
    rng = np.random.default_rng(0)
    for name, text in SPLITS.items():
        (tmp_path / name).write_text(text)
    save_object(tmp_path / "video_id_mapping.npy", MAPPING if mapping is None else mapping)
    if tables is None:
        tables = {
            AUDIO: rng.standard_normal((4, 6373)).astype(np.float32),
            VIDEO: rng.standard_normal((4, 4096)),
        }
    for name, table in tables.items():
        np.save(tmp_path / name, table)
    return tmp_path


def test_valid_tables(tmp_path: Path) -> None:
    assert check_ecf_features(ecf_dir(tmp_path)) == {AUDIO: (4, 6373), VIDEO: (4, 4096)}


def test_no_table_is_nothing_to_check(tmp_path: Path) -> None:
    assert check_ecf_features(ecf_dir(tmp_path, tables={})) == {}
    assert check_ecf_features(tmp_path / "empty") == {}


def test_only_one_table(tmp_path: Path) -> None:
    folder = ecf_dir(tmp_path, tables={VIDEO: np.zeros((4, 4096), np.float16)})
    assert check_ecf_features(folder) == {VIDEO: (4, 4096)}


def test_custom_dimensions(tmp_path: Path) -> None:
    folder = ecf_dir(tmp_path, tables={"a.npy": np.zeros((4, 3))})
    assert check_ecf_features(folder, dims={"a.npy": 3}) == {"a.npy": (4, 3)}
    assert ECF_FEATURE_DIMS == {AUDIO: 6373, VIDEO: 4096}


@pytest.mark.parametrize(
    ("table", "match"),
    [
        (np.zeros((4, 100), np.float32), r"audio_embedding_6373\.npy: expected 6373 features"),
        (np.zeros(6373, np.float32), r"expected a 2-D table, got shape \(6373,\)"),
        (np.zeros((3, 6373), np.float32), r"3 rows, but video_id_mapping\.npy points to row 3"),
        (np.full((4, 6373), "x"), r"expected numbers, got dtype <U1"),
    ],
)
def test_bad_table(tmp_path: Path, table: np.ndarray, match: str) -> None:
    with pytest.raises(ManualDataError, match=match):
        check_ecf_features(ecf_dir(tmp_path, tables={AUDIO: table}))


def test_pickled_table_is_rejected(tmp_path: Path) -> None:
    folder = ecf_dir(tmp_path, tables={})
    save_object(folder / AUDIO, {"dia1utt1": np.zeros(6373)})
    with pytest.raises(ManualDataError, match=r"cannot read as a plain \.npy array"):
        check_ecf_features(folder)


def test_truncated_table_is_rejected(tmp_path: Path) -> None:
    folder = ecf_dir(tmp_path)
    data = (folder / AUDIO).read_bytes()
    (folder / AUDIO).write_bytes(data[: len(data) // 2])  # an interrupted hand download
    with pytest.raises(ManualDataError, match=r"audio_embedding_6373\.npy: cannot read"):
        check_ecf_features(folder)


def test_table_without_mapping(tmp_path: Path) -> None:
    folder = ecf_dir(tmp_path)
    (folder / "video_id_mapping.npy").unlink()
    with pytest.raises(ManualDataError, match=r"video_id_mapping\.npy: missing"):
        check_ecf_features(folder)


@pytest.mark.parametrize(
    ("mapping", "match"),
    [
        (["dia1utt1"], r"non-empty dict key -> row"),
        ({}, r"non-empty dict key -> row"),
        ({"dia1utt1": 1, "dia1utt2": -2, "dia2utt1": 3}, r"'dia1utt2' is not an integer >= 0"),
        ({"dia1utt1": 1, "dia1utt2": "2", "dia2utt1": 3}, r"'dia1utt2' is not an integer"),
        ({"dia1utt1": 1, "dia2utt1": 3}, r"no row for 1 utterance.*train\.txt \(dia1utt2\)"),
    ],
)
def test_bad_mapping(tmp_path: Path, mapping: Any, match: str) -> None:
    with pytest.raises(ManualDataError, match=match):
        check_ecf_features(ecf_dir(tmp_path, mapping=mapping))


def test_mapping_must_be_an_object_array(tmp_path: Path) -> None:
    folder = ecf_dir(tmp_path)
    np.save(folder / "video_id_mapping.npy", np.arange(3))
    with pytest.raises(ManualDataError, match=r"0-d object array"):
        check_ecf_features(folder)


# -------------------------------------------------------------------------------------- MEC4


def mec4_row(dia_id: int) -> dict[str, Any]:
    return {"dia_id": dia_id, "dia_len": 2, "text": "1.甲：你好 2.乙：再见", "pairs": "（2，1）"}


def mec4_dir(tmp_path: Path, rows: int = 2) -> Path:
    text = tmp_path / "MEC4_text"
    text.mkdir()
    for split in ("train", "valid", "test"):
        data = [mec4_row(i) for i in range(rows)]
        (text / f"{split}.json").write_text(json.dumps(data, ensure_ascii=False), "utf-8")
    return tmp_path


def test_mec4_complete(tmp_path: Path) -> None:
    assert check_mec4(mec4_dir(tmp_path)) == {
        "MEC4_text/train.json": 2,
        "MEC4_text/valid.json": 2,
        "MEC4_text/test.json": 2,
    }


def test_mec4_missing_split_says_where_from(tmp_path: Path) -> None:
    folder = mec4_dir(tmp_path)
    (folder / "MEC4_text" / "valid.json").unlink()
    with pytest.raises(ManualDataError, match=r"valid\.json: missing; download .*drive\.google"):
        check_mec4(folder)


def test_mec4_malformed_split(tmp_path: Path) -> None:
    folder = mec4_dir(tmp_path)
    (folder / "MEC4_text" / "test.json").write_text(json.dumps([{"dia_id": 1}]))
    with pytest.raises(DataFormatError, match=r"test\.json: record 0"):
        check_mec4(folder)
