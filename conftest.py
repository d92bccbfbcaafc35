"""Doctests of the library run with ``torch``, ``nn`` and the package's public names in scope."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import torch_pairconf


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace: dict[str, Any]) -> None:
    doctest_namespace.update(torch=torch, nn=nn)
    doctest_namespace.update({name: getattr(torch_pairconf, name) for name in torch_pairconf.__all__})
    torch.manual_seed(0)
