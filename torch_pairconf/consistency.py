r"""Agreement between clean and corrupted-view pair predictions.

With :math:`p = \sigma(a)` the clean and :math:`q = \sigma(b)` the corrupted-view confidence of a
valid pair (logits :math:`a, b`), the per-pair divergence is

.. math::

    \mathrm{KL}(\mathrm{Bern}(p) \,\|\, \mathrm{Bern}(q))
        = \operatorname{softplus}(b) - \operatorname{softplus}(a) - p\,(b - a)
    \quad (\texttt{"kl"}), \qquad
    \tfrac12 \mathrm{KL}(p \| m) + \tfrac12 \mathrm{KL}(q \| m),\; m = \tfrac{p + q}{2}
    \quad (\texttt{"js"}), \qquad
    (p - q)^2 \quad (\texttt{"mse"}),

and ``reduction="mean"`` averages it over the valid pairs.
"""

from __future__ import annotations

import math
from typing import Final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _fused
from ._checks import REDUCTIONS, check_choice, check_float, check_mask, check_same
from ._reduce import accumulation_dtype, reduce

__all__ = ["DIVERGENCES", "ConsistencyLoss", "bernoulli_kl", "consistency_loss"]

DIVERGENCES: Final = ("kl", "js", "mse")


def bernoulli_kl(a: Tensor, b: Tensor) -> Tensor:
    r"""Elementwise :math:`\mathrm{KL}(\mathrm{Bern}(\sigma(a)) \,\|\, \mathrm{Bern}(\sigma(b)))`.

    Computed from logits as :math:`\operatorname{softplus}(b) - \operatorname{softplus}(a) -
    \sigma(a)(b - a)`, which stays finite for logits of magnitude ``1e4`` and beyond; tiny
    negative rounding is clamped to zero.

    Example:
        >>> bernoulli_kl(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 2.0]))
        tensor([0., 0.])
    """
    return (F.softplus(b) - F.softplus(a) - torch.sigmoid(a) * (b - a)).clamp_min(0)


def _bernoulli_js(a: Tensor, b: Tensor) -> Tensor:
    # log m and log(1 - m) of the mixture m = (p + q) / 2, from log-sigmoids.
    la, lb, na, nb = F.logsigmoid(a), F.logsigmoid(b), F.logsigmoid(-a), F.logsigmoid(-b)
    log_m = torch.logaddexp(la, lb) - math.log(2.0)
    log_1m = torch.logaddexp(na, nb) - math.log(2.0)
    pa, pb = torch.sigmoid(a), torch.sigmoid(b)
    kl_am = pa * (la - log_m) + (1 - pa) * (na - log_1m)
    kl_bm = pb * (lb - log_m) + (1 - pb) * (nb - log_1m)
    return (0.5 * (kl_am + kl_bm)).clamp_min(0)


def consistency_loss(
    clean: Tensor,
    corrupted: Tensor,
    valid: Tensor,
    *,
    divergence: str = "kl",
    detach_clean: bool = True,
    reduction: str = "mean",
) -> Tensor:
    r"""Divergence between clean and corrupted-view pair confidences over valid pairs.

    All divergences (module docstring) are computed from logits and stay finite for logits up to
    :math:`\pm 10^4`; ``"kl"`` is clean → corrupted, ``"js"`` symmetric and bounded by
    :math:`\log 2`. Half-precision inputs are evaluated in float32 and the result is cast back.

    Args:
        clean: ``(B, N, M)`` pair logits of the clean view.
        corrupted: ``(B, N, M)`` pair logits of the corrupted view, same dtype and device.
        valid: ``(B, N, M)`` bool candidate pairs; other positions never affect the result.
        divergence: ``"kl"``, ``"js"`` or ``"mse"``.
        detach_clean: treat the clean view as a fixed target (default), so only the corrupted view
            is pulled towards it.
        reduction: ``"none"`` (``(B, N, M)``, zero outside ``valid``), ``"mean"`` over valid pairs
            (zero attached to the graph when there are none) or ``"sum"``.

    Example:
        >>> clean = torch.randn(2, 4, 4)
        >>> corrupted = clean + 0.1 * torch.randn(2, 4, 4)
        >>> valid = torch.ones(2, 4, 4, dtype=torch.bool)
        >>> float(consistency_loss(clean, clean, valid))
        0.0
    """
    check_float("clean", clean)
    check_mask("valid", valid, clean, "clean")
    check_float("corrupted", corrupted)
    check_same("corrupted", corrupted, "clean", clean)
    check_choice("divergence", divergence, DIVERGENCES)
    check_choice("reduction", reduction, REDUCTIONS)
    if detach_clean:
        clean = clean.detach()
    if divergence == "kl" and _fused.applies(clean, reduction):
        return _fused.kl_loss(clean, corrupted, valid, mean=reduction == "mean")
    work = accumulation_dtype(clean.dtype)
    a = clean.masked_fill(~valid, 0).to(work)
    b = corrupted.masked_fill(~valid, 0).to(work)
    if divergence == "kl":
        d = bernoulli_kl(a, b)
    elif divergence == "js":
        d = _bernoulli_js(a, b)
    else:
        d = (torch.sigmoid(a) - torch.sigmoid(b)).square()
    return reduce(d.masked_fill(~valid, 0), valid, reduction, clean.dtype)


class ConsistencyLoss(nn.Module):
    """Module form of :func:`consistency_loss`; the options are the same.

    Example:
        >>> criterion = ConsistencyLoss(divergence="js")
        >>> clean, corrupted = torch.randn(2, 3, 3), torch.randn(2, 3, 3, requires_grad=True)
        >>> criterion(clean, corrupted, torch.ones(2, 3, 3, dtype=torch.bool)).backward()
    """

    def __init__(
        self, divergence: str = "kl", *, detach_clean: bool = True, reduction: str = "mean"
    ) -> None:
        super().__init__()
        check_choice("divergence", divergence, DIVERGENCES)
        check_choice("reduction", reduction, REDUCTIONS)
        self.divergence = divergence
        self.detach_clean = detach_clean
        self.reduction = reduction

    def forward(self, clean: Tensor, corrupted: Tensor, valid: Tensor) -> Tensor:
        return consistency_loss(
            clean, corrupted, valid, divergence=self.divergence,
            detach_clean=self.detach_clean, reduction=self.reduction,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"divergence={self.divergence!r}, detach_clean={self.detach_clean}, reduction={self.reduction!r}"
