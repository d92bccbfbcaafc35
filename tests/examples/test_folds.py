"""Tests for the cross-validation folds by TV series."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from examples.mecpe.folds import cv_parts, dev_fold, series_folds, series_of


def test_series_folds_group_series_and_are_deterministic() -> None:
    ids = [f"show{s}_{k}" for s in range(9) for k in range(1, 2 + s % 4)]
    folds = series_folds(ids, 5)
    assert folds == series_folds(list(ids), 5)
    assert set(folds) == set(range(5))
    by_series: dict[str, set[int]] = {}
    for cid, f in zip(ids, folds, strict=True):
        by_series.setdefault(series_of(cid), set()).add(f)
    assert all(len(v) == 1 for v in by_series.values())
    assert series_of("bianchengnidenayitian_12") == "bianchengnidenayitian"
    assert series_of("no-number") == "no-number"


def test_cv_protocol_on_mecad_like_ids() -> None:
    """The fold split keeps series together and uses fold f+1 as dev."""
    ids = [f"series{s}_{k}" for s in range(7) for k in range(1, 4)]
    folds = series_folds(ids, 5)
    f = 2
    test = {i for i, x in zip(ids, folds, strict=True) if x == f}
    dev = {i for i, x in zip(ids, folds, strict=True) if x == (f + 1) % 5}
    assert test and dev and not test & dev
    assert torch.tensor(folds).bincount().tolist() == [6, 6, 3, 3, 3]
    parts = cv_parts(folds, fold=f, n_folds=5)
    assert {ids[k] for k in parts["test"]} == test and {ids[k] for k in parts["dev"]} == dev
    assert dev_fold(4, 5) == 0


@given(st.lists(st.integers(0, 4), min_size=1, max_size=40), st.integers(0, 4))
def test_cv_parts_matches_a_loop(folds: list[int], fold: int) -> None:
    parts = cv_parts(folds, fold=fold, n_folds=5)
    expected: dict[str, list[int]] = {"train": [], "dev": [], "test": []}
    for k, f in enumerate(folds):
        if f == fold:
            expected["test"].append(k)
        elif f == (fold + 1) % 5:
            expected["dev"].append(k)
        else:
            expected["train"].append(k)
    assert parts == expected
