"""Fixtures of the reference-trainer tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import make_tiny_bert, make_tiny_ecf


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ECF-format dataset of :func:`make_tiny_ecf` (shared: do not modify)."""
    return make_tiny_ecf(tmp_path_factory.mktemp("tiny_ecf"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT model folder (:func:`make_tiny_bert`; shared: do not modify)."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))
