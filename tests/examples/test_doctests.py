"""The docstring examples of the trainer modules run and hold."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = (
    "options",
    "config",
    "datasets",
    "folds",
    "metrics",
    "checkpoint",
    "views",
    "robustness",
    "calibration",
    "batching",
    "segments",
    "text_chunks",
    "transformer",
    "optim",
    "runtime",
    "distributed",
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"examples.mecpe.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
