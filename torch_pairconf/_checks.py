"""Input checks shared by the losses, the miner and the diagnostics.

Every check runs on metadata only (shape, dtype, device): none reads tensor values, so none
synchronises a CUDA stream and all of them are traced away by ``torch.compile``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._reduce import REDUCTIONS
from ._space import SPACES

__all__ = [
    "REDUCTIONS",
    "SPACES",
    "check_bool",
    "check_choice",
    "check_float",
    "check_k",
    "check_mask",
    "check_nonneg",
    "check_pair_inputs",
    "check_positive",
    "check_same",
    "same_device",
]


def same_device(a: torch.device, b: torch.device) -> bool:
    """Device equality where a missing index means the current device of that type.

    ``torch.device("cuda") != torch.device("cuda:0")`` although both name the same GPU.
    """
    if a.type != b.type:
        return False
    return a.index is None or b.index is None or a.index == b.index


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_float(name: str, t: object) -> Tensor:
    """Raise unless ``t`` is a floating-point tensor; return it."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def check_bool(name: str, t: object) -> Tensor:
    """Raise unless ``t`` is a ``torch.bool`` tensor; return it."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.bool:
        raise TypeError(
            f"{name} must be a torch.bool tensor, got dtype {t.dtype} "
            f"(convert with `{name} > 0` or `{name}.bool()`)"
        )
    return t


def _orientation_hint(ref: Tensor, other: Tensor) -> str:
    if ref.dim() == 3 and other.dim() == 3 and ref.shape == other.transpose(-1, -2).shape:
        return (
            " The shapes are transposed: the contract is rows = emotion utterances, columns ="
            " candidate causes. If your matrix is stored [cause, emotion], pass"
            " `.transpose(-1, -2)`."
        )
    return ""


def check_pair_inputs(scores: Tensor, gold: Tensor, valid: Tensor, *, dims: int | None = 3) -> None:
    """Check the ``(scores, gold, valid)`` triple of the pair-matrix contract.

    Args:
        scores: float tensor, ``(B, N, M)`` when ``dims == 3`` (any shape when ``dims`` is None).
        gold: bool tensor of the same shape.
        valid: bool tensor of the same shape.
    """
    check_float("scores", scores)
    if dims is not None and scores.dim() != dims:
        raise ValueError(
            f"scores must have shape (B, N, M) (3 dims), got {tuple(scores.shape)}; "
            "add a batch dimension with `.unsqueeze(0)` for a single conversation"
        )
    check_mask("gold", gold, scores)
    check_mask("valid", valid, scores)


def check_mask(name: str, t: object, scores: Tensor, scores_name: str = "scores") -> Tensor:
    """Raise unless ``t`` is a bool tensor with the shape and device of ``scores``."""
    mask = check_bool(name, t)
    if mask.shape != scores.shape:
        raise ValueError(
            f"{name} must have the shape of {scores_name} {tuple(scores.shape)}, "
            f"got {tuple(mask.shape)}." + _orientation_hint(scores, mask)
        )
    if mask.device != scores.device:
        raise ValueError(f"{name} is on {mask.device} but {scores_name} is on {scores.device}")
    return mask


def check_same(name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    """Raise unless ``t`` has the shape, device and dtype of ``ref``."""
    if t.shape != ref.shape:
        raise ValueError(
            f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)}"
        )
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}")


def check_nonneg(name: str, value: float) -> None:
    """Raise unless ``value`` is a finite number ``>= 0``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def check_positive(name: str, value: float) -> None:
    """Raise unless ``value`` is a finite number ``> 0``."""
    check_nonneg(name, value)
    if value == 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def check_k(k: int) -> None:
    """Raise unless ``k`` is an integer ``>= 1``."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
