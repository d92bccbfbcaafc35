"""Input checks shared by the losses, the miner and the diagnostics.

Every check runs on metadata only (shape, dtype, device): none reads tensor values, so none
synchronises a CUDA stream and all of them are traced away by ``torch.compile``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import torch
from torch import Tensor

REDUCTIONS: Final = ("none", "mean", "sum")
SPACES: Final = ("prob", "logit")


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


def reduce(loss: Tensor, weight: Tensor, reduction: str, out_dtype: torch.dtype) -> Tensor:
    """Reduce a per-element loss that is already zero where ``weight`` is false.

    ``mean`` divides by the number of contributing elements (at least 1), so an input with no
    contributing element yields a zero that is still attached to the graph. Accumulation runs in
    at least float32 so that half-precision sums over large matrices stay accurate.
    """
    if reduction == "none":
        return loss.to(out_dtype)
    acc = torch.promote_types(loss.dtype, torch.float32)
    total = loss.sum(dtype=acc)
    if reduction == "sum":
        return total.to(out_dtype)
    # Counted as int64 (exact; a bool -> float sum is several times slower on CPU), the division
    # promotes it to the float dtype of ``total``.
    count = weight.sum().clamp_min(1)
    return (total / count).to(out_dtype)


def _is_compiling_fn() -> Callable[[], bool]:
    """``torch.compiler.is_compiling`` (torch >= 2.3) or ``torch._dynamo.is_compiling`` (older)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    if is_compiling is None:  # pragma: no cover - torch < 2.3
        from torch import _dynamo

        is_compiling = _dynamo.is_compiling
    return is_compiling


# Resolved once: the lookup costs as much as the call, and the losses ask on every call.
_IS_COMPILING: Final = _is_compiling_fn()


def compiling() -> bool:
    """Whether ``torch.compile`` is tracing the caller."""
    return bool(_IS_COMPILING())


def use_fused(t: Tensor, min_numel: int) -> bool:
    """Whether a loss should take its hand-fused CPU implementation for input ``t``.

    Only eager CPU tensors with at least ``min_numel`` (and at least one) elements qualify. On
    CUDA the composite expressions are kept (a fused variant was measured 1.4-1.8x slower on an
    H100: launch-bound), and under ``torch.compile`` inductor fuses the composite expressions
    itself. A shape/device decision only: nothing here reads tensor values.
    """
    return t.is_cpu and t.numel() >= max(min_numel, 1) and not _IS_COMPILING()


def check_once_differentiable(name: str) -> None:
    """Raise inside a fused loss' ``backward`` when a graph of the gradient is requested.

    The hand-written backward passes compute gradients outside autograd, so a second
    differentiation (``create_graph=True``, e.g. a gradient penalty) would silently see a
    constant; the composite path (``reduction="none"``, then reduce) supports it.
    """
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{name}: the fused CPU implementation is not twice differentiable "
            "(backward with create_graph=True); compute it with reduction='none' and reduce "
            "the result yourself"
        )


def reduce_total(total: Tensor, count: Tensor, mean: bool, dtype: torch.dtype) -> Tensor:
    """A fused loss' accumulated ``total`` (float32 or float64), divided by ``count`` if
    ``mean`` (at least 1, so no contributing element gives an exact zero), in ``dtype``."""
    if mean:
        total = total.div_(count.clamp_min(1))  # total is the fused loss' own fresh sum
    return total if total.dtype == dtype else total.to(dtype)
