"""Cross-validation folds by TV series (the ``cv`` protocol, used for MECAD).

Dialogues of one series always share a fold, so a series never appears in both training and
evaluation. Fold ``f`` is the test fold, fold ``f + 1 (mod n)`` the dev fold (model selection),
the others are trained on.

Example::

    >>> ids = ["a_1", "a_2", "b_1", "c_1", "c_2", "c_3"]
    >>> series_folds(ids, 3)
    [1, 1, 2, 0, 0, 0]
    >>> cv_parts(series_folds(ids, 3), fold=0, n_folds=3)
    {'train': [2], 'dev': [0, 1], 'test': [3, 4, 5]}
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["cv_parts", "dev_fold", "series_folds", "series_of"]


def series_of(conv_id: str) -> str:
    """TV series of a MECAD dialogue id: the prefix before the last ``_<number>``."""
    m = re.match(r"^(.*)_\d+$", conv_id)
    return m.group(1) if m else conv_id


def series_folds(conv_ids: Sequence[str], n_folds: int = 5) -> list[int]:
    """Deterministic fold of each dialogue, grouping dialogues of one series in one fold.

    Series are taken largest first (ties by name) and each goes to the fold with the fewest
    dialogues so far (ties: lowest fold index).
    """
    counts = Counter(series_of(c) for c in conv_ids)
    if len(counts) < n_folds:
        raise ValueError(f"{len(counts)} series cannot fill {n_folds} folds")
    load = [0] * n_folds
    fold_of: dict[str, int] = {}
    for s in sorted(counts, key=lambda s: (-counts[s], s)):
        f = min(range(n_folds), key=lambda k: (load[k], k))
        fold_of[s] = f
        load[f] += counts[s]
    return [fold_of[series_of(c)] for c in conv_ids]


def dev_fold(fold: int, n_folds: int) -> int:
    """The dev fold that goes with test fold ``fold``."""
    return (fold + 1) % n_folds


def cv_parts(folds: Sequence[int], *, fold: int, n_folds: int) -> dict[str, list[int]]:
    """Positions of the ``train`` / ``dev`` / ``test`` dialogues for test fold ``fold``."""
    dev = dev_fold(fold, n_folds)
    parts: dict[str, list[int]] = {"train": [], "dev": [], "test": []}
    for k, f in enumerate(folds):
        parts["test" if f == fold else "dev" if f == dev else "train"].append(k)
    return parts
