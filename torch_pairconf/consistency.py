"""Agreement between clean and corrupted-view pair predictions."""

from __future__ import annotations

import math
from typing import Any, Final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import (
    REDUCTIONS,
    check_choice,
    check_float,
    check_mask,
    check_once_differentiable,
    check_same,
    reduce,
    reduce_total,
    use_fused,
)

__all__ = ["DIVERGENCES", "ConsistencyLoss", "bernoulli_kl", "consistency_loss"]

DIVERGENCES: Final = ("kl", "js", "mse")

#: ``divergence="kl"`` with ``reduction="mean"/"sum"`` on CPU inputs with at least this many
#: elements takes the fused implementation (:class:`_KLLoss`); CUDA, ``torch.compile``,
#: ``"js"``/``"mse"``, ``reduction="none"`` and smaller inputs the composite expression.
#: Measured with ``benchmarks/bench_losses`` (2-core EPYC, 1 thread, float32), fused vs
#: composite: on par at B=1, N=8 and faster from there (forward 1.2-3.8x, forward+backward
#: 1.1-2.3x), peak memory 3x the input instead of 7.5x at every size, so the threshold is 1.
#: Not measured on CUDA, where a fused variant of the margin loss was 1.4-1.8x slower
#: (launch-bound): CPU only, see :func:`~torch_pairconf._checks.use_fused`.
_FUSED_MIN_NUMEL: Final = 1


def bernoulli_kl(a: Tensor, b: Tensor) -> Tensor:
    r"""Elementwise :math:`\mathrm{KL}(\mathrm{Bern}(\sigma(a)) \,\|\, \mathrm{Bern}(\sigma(b)))`.

    Computed from logits as :math:`\operatorname{softplus}(b) - \operatorname{softplus}(a) -
    \sigma(a)(b - a)`, which stays finite for logits of magnitude ``1e4`` and beyond; tiny
    negative rounding is clamped to zero.
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


def _kl_sum(clean: Tensor, corrupted: Tensor, valid: Tensor, gate: bool) -> tuple[Tensor, Tensor | None]:
    """Sum over ``valid`` of :func:`bernoulli_kl` ``(clean, corrupted)``, in at least float32,
    and optionally the ``(B, N, M)`` bool gradient gate ``valid & (KL before clamping >= 0)``.

    Same ops in the same order as the composite path (``softplus(b) - softplus(a) - sigmoid(a)
    (b - a)``, clamped at 0), but on the raw inputs with the masked entries (NaN/inf included)
    zeroed by a masked fill of the result: three float buffers instead of six, no masked copies
    of the inputs.
    """
    work = torch.promote_types(clean.dtype, torch.float32)
    a, b = clean.to(work), corrupted.to(work)
    d = F.softplus(b)
    tmp = F.softplus(a)
    d.sub_(tmp)
    tmp = torch.sub(b, a, out=tmp).mul_(torch.sigmoid(a))
    d.sub_(tmp)
    del tmp
    keep = None
    if gate:  # clamp_min(0) passes the gradient where its input is >= 0
        keep = d >= 0
        keep &= valid
    total = torch.where(valid, d.clamp_min_(0), d.new_zeros(()), out=d).sum()
    return total, keep


class _KLLoss(torch.autograd.Function):
    """Mean or sum over ``valid`` of :func:`bernoulli_kl`, from :func:`_kl_sum`.

    Saves the inputs and the ``(B, N, M)`` bool gate (a quarter of a float32 input) instead of
    the composite graph's float intermediates; backward evaluates the derivatives in closed
    form, ``d KL / d b = sigmoid(b) - sigmoid(a)`` (as softplus' backward and the product rule
    compute it) and ``d KL / d a = sigmoid(a) sigmoid(-a) (a - b)`` (the composite path's autograd
    differs from this by up to ``sigmoid(-20)`` ~ 2e-9 per pair: softplus' backward is exactly 1
    above its threshold 20), and zeroes everything outside the gate
    with masked fills, so NaN/inf at masked positions cannot leak. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx: Any, clean: Tensor, corrupted: Tensor, valid: Tensor, mean: bool) -> Tensor:
        total, gate = _kl_sum(clean, corrupted, valid, gate=True)
        count = torch.count_nonzero(valid)
        ctx.save_for_backward(clean, corrupted, gate, count if mean else None)
        return reduce_total(total, count, mean, clean.dtype)

    @staticmethod
    def backward(ctx: Any, g_loss: Tensor) -> tuple[Tensor | None, ...]:
        check_once_differentiable("consistency_loss")
        clean, corrupted, gate, count = ctx.saved_tensors
        work = torch.promote_types(clean.dtype, torch.float32)
        # The gradient reaching each KL term, as in the composite path (divided in float32).
        g = g_loss.to(work) if count is None else g_loss.to(work) / count.clamp_min(1)
        a, b = clean.to(work), corrupted.to(work)
        off = ~gate
        grad_a = grad_b = None
        if ctx.needs_input_grad[1]:
            # softplus' backward (incl. its linear regime above 20) plus the product rule's
            # -g sigmoid(a), as autograd sums them for the composite expression.
            grad_b = torch.ops.aten.softplus_backward(g.expand_as(b), b, 1.0, 20.0)
            grad_b = grad_b.sub_(torch.sigmoid(a).mul_(g)).masked_fill_(off, 0)
            grad_b = grad_b.to(corrupted.dtype)
        if ctx.needs_input_grad[0]:
            # (a - b) sigmoid(a) sigmoid(-a): sigmoid(-a) rather than 1 - sigmoid(a), which
            # cancels to a few ulps of 1 for large |a|.
            grad_a = torch.sub(a, b).mul_(torch.sigmoid(a)).mul_(torch.sigmoid(a.neg()))
            grad_a = grad_a.mul_(g).masked_fill_(off, 0).to(clean.dtype)
        return grad_a, grad_b, None, None


def consistency_loss(
    clean: Tensor,
    corrupted: Tensor,
    valid: Tensor,
    divergence: str = "kl",
    detach_clean: bool = True,
    reduction: str = "mean",
) -> Tensor:
    r"""Divergence between clean and corrupted-view pair confidences over valid pairs.

    With :math:`p = \sigma(\text{clean})` and :math:`q = \sigma(\text{corrupted})`, per pair:
    ``"kl"``: :math:`\mathrm{KL}(\mathrm{Bern}(p) \| \mathrm{Bern}(q))` (clean → corrupted);
    ``"js"``: Jensen–Shannon divergence (symmetric, bounded by :math:`\log 2`);
    ``"mse"``: :math:`(p - q)^2`.
    All are computed from logits and stay finite for logits up to :math:`\pm 10^4`. Half-precision
    inputs are evaluated in float32 and the result is cast back.

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
    if divergence == "kl" and reduction != "none" and use_fused(clean, _FUSED_MIN_NUMEL):
        mean = reduction == "mean"
        if torch.is_grad_enabled() and (clean.requires_grad or corrupted.requires_grad):
            loss: Tensor = _KLLoss.apply(clean, corrupted, valid, mean)  # type: ignore[no-untyped-call]
            return loss
        total, _ = _kl_sum(clean.detach(), corrupted.detach(), valid, gate=False)
        return reduce_total(total, torch.count_nonzero(valid), mean, clean.dtype)
    work = torch.promote_types(clean.dtype, torch.float32)
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
    """Module form of :func:`consistency_loss`; arguments are the same.

    Example:
        >>> criterion = ConsistencyLoss(divergence="js")
        >>> clean, corrupted = torch.randn(2, 3, 3), torch.randn(2, 3, 3, requires_grad=True)
        >>> criterion(clean, corrupted, torch.ones(2, 3, 3, dtype=torch.bool)).backward()
    """

    def __init__(self, divergence: str = "kl", detach_clean: bool = True, reduction: str = "mean") -> None:
        super().__init__()
        check_choice("divergence", divergence, DIVERGENCES)
        check_choice("reduction", reduction, REDUCTIONS)
        self.divergence = divergence
        self.detach_clean = detach_clean
        self.reduction = reduction

    def forward(self, clean: Tensor, corrupted: Tensor, valid: Tensor) -> Tensor:
        return consistency_loss(clean, corrupted, valid, self.divergence, self.detach_clean, self.reduction)

    def extra_repr(self) -> str:
        return f"divergence={self.divergence!r}, detach_clean={self.detach_clean}, reduction={self.reduction!r}"
