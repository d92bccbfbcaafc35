"""Tests for per-utterance feature tables and modality flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from examples.mecpe.features import FeatureTable, modality_flags


def save_object(path: Path, obj: Any) -> Path:
    """Save ``obj`` as a 0-d object array (the ECF mapping format)."""
    array = np.empty((), dtype=object)
    array[()] = obj
    np.save(path, array, allow_pickle=True)
    return path


def ecf_files(tmp_path: Path, rows: int = 5, dim: int = 3) -> tuple[Path, Path, np.ndarray]:
    """A table with a padding row 0 and a mapping 'dia{c}utt{u}' -> row."""
    matrix = np.arange(rows * dim, dtype=np.float64).reshape(rows, dim)
    table = tmp_path / "audio_embedding_6373.npy"
    np.save(table, matrix)
    mapping = {"dia1utt1": 1, "dia1utt2": 2, "dia2utt1": 3, "dia2utt2": 4}
    return table, save_object(tmp_path / "video_id_mapping.npy", mapping), matrix


def test_from_ecf_lookup(tmp_path: Path) -> None:
    table_path, mapping_path, matrix = ecf_files(tmp_path)
    table = FeatureTable.from_ecf(table_path, mapping_path)
    assert table.dim == 3
    out = table.lookup(["dia2utt1", "dia1utt1", "dia2utt1"])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, matrix[[3, 1, 3]].astype(np.float32))
    assert table.lookup([]).shape == (0, 3)


def test_missing_key_names_key_and_table(tmp_path: Path) -> None:
    table_path, mapping_path, _ = ecf_files(tmp_path)
    table = FeatureTable.from_ecf(table_path, mapping_path)
    with pytest.raises(KeyError, match=r"dia9utt9.*audio_embedding_6373\.npy"):
        table.lookup(["dia1utt1", "dia9utt9"])


def test_mapping_row_outside_table(tmp_path: Path) -> None:
    table_path, mapping_path, _ = ecf_files(tmp_path, rows=4)  # row 4 is missing
    with pytest.raises(ValueError, match=r"row 4 .*dia2utt2.*video_id_mapping\.npy"):
        FeatureTable.from_ecf(table_path, mapping_path)


def test_mapping_must_be_a_dict(tmp_path: Path) -> None:
    table_path, _, _ = ecf_files(tmp_path)
    bad = save_object(tmp_path / "bad_mapping.npy", ["dia1utt1"])
    with pytest.raises(ValueError, match=r"bad_mapping\.npy"):
        FeatureTable.from_ecf(table_path, bad)
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros(3))
    with pytest.raises(ValueError, match="0-d object array"):
        FeatureTable.from_ecf(table_path, plain)


def test_from_file_npz(tmp_path: Path) -> None:
    path = tmp_path / "feats.npz"
    features = np.random.default_rng(0).normal(size=(3, 4))
    np.savez(path, keys=np.array(["a_1", "a_2", "b_1"]), features=features)
    table = FeatureTable.from_file(path)
    assert table.dim == 4 and len(table) == 3
    np.testing.assert_allclose(table.lookup(["b_1", "a_1"]), features[[2, 0]], rtol=1e-6)


def test_from_file_npz_errors(tmp_path: Path) -> None:
    mismatch = tmp_path / "mismatch.npz"
    np.savez(mismatch, keys=np.array(["a", "b"]), features=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="one row per key"):
        FeatureTable.from_file(mismatch)
    dup = tmp_path / "dup.npz"
    np.savez(dup, keys=np.array(["a", "a"]), features=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="duplicate key 'a'"):
        FeatureTable.from_file(dup)
    missing = tmp_path / "missing.npz"
    np.savez(missing, features=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="missing arrays"):
        FeatureTable.from_file(missing)


def test_from_file_npy_dict(tmp_path: Path) -> None:
    vectors = {"x_1": np.array([1.0, 2.0]), "x_2": np.array([3.0, 4.0])}
    table = FeatureTable.from_file(save_object(tmp_path / "v.npy", vectors))
    np.testing.assert_array_equal(table.lookup(["x_2"]), [[3.0, 4.0]])
    ragged = save_object(tmp_path / "r.npy", {"a": np.zeros(2), "b": np.zeros(3)})
    with pytest.raises(ValueError, match="one length"):
        FeatureTable.from_file(ragged)
    with pytest.raises(ValueError, match="unsupported"):
        FeatureTable.from_file(tmp_path / "feats.pt")


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="2-D"):
        FeatureTable(np.zeros(3), {}, "t")
    with pytest.raises(ValueError, match="outside the table"):
        FeatureTable(np.zeros((2, 2)), {"a": -1}, "t")


@pytest.mark.parametrize(
    ("spec", "flags"),
    [
        ("T", (True, False, False)),
        ("ta", (True, True, False)),
        ("TV", (True, False, True)),
        ("TAV", (True, True, True)),
        ("T+A+V", (True, True, True)),
        ("t+v", (True, False, True)),
    ],
)
def test_modality_flags(spec: str, flags: tuple[bool, bool, bool]) -> None:
    assert modality_flags(spec) == flags


@pytest.mark.parametrize("spec", ["", "A", "AV", "TT", "TX", "text"])
def test_modality_flags_rejects(spec: str) -> None:
    with pytest.raises(ValueError, match="modality spec"):
        modality_flags(spec)
