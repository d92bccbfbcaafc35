"""Row-wise margin between gold pairs and the row's hard negatives."""

from __future__ import annotations

import math
from typing import Any, Final

import torch
from torch import Tensor, nn

from ._checks import (
    REDUCTIONS,
    SPACES,
    check_choice,
    check_k,
    check_nonneg,
    check_once_differentiable,
    check_pair_inputs,
    check_positive,
    reduce,
    reduce_total,
    use_fused,
)
from .mining import mine_hard_negatives

__all__ = ["PairMarginLoss", "confidence", "pair_margin_loss"]

#: ``reduction="mean"/"sum"`` on CPU inputs with at least this many elements take the fused
#: implementations (:class:`_HingeK1`, :class:`_HingeTopK`); CUDA, ``torch.compile`` (inductor
#: fuses the composite expression itself), ``reduction="none"`` and smaller inputs take the
#: composite expression at the end of :func:`pair_margin_loss`. Measured with
#: ``benchmarks/bench_losses`` (2-core EPYC, 1 thread, float32), fused vs composite:
#:
#: * ``k=1``: faster at every size, from 1.5x (forward) / 1.1x (forward+backward) at B=1, N=8
#:   to 7x / 3x at B=128, N=128; peak memory 1.6x / 3.4x the input instead of 7x / 8.6x.
#: * ``k>1``: faster from ~4K elements (forward+backward 1.2x at B=8, N=33, 4-7x at N >= 128),
#:   up to 1.9x slower below (B=1, N=8: +0.2 ms, the per-slot loops' Python overhead), but the
#:   only path within 4x of the input in memory (3.7x instead of 17x), so the threshold stays
#:   at 1 for both; ~4096 would trade that memory for speed on tiny ``k>1`` inputs.
#:
#: On an H100 the colleague's fused variant ran 1.4-1.8x *slower* than the composite expression
#: (launch-bound); these are not measured on CUDA, hence the CPU-only check in
#: :func:`~torch_pairconf._checks.use_fused`.
_FUSED_MIN_NUMEL: Final = 1


def confidence(scores: Tensor, space: str, temperature: float = 1.0) -> Tensor:
    """Map pair logits to the space the margin is measured in.

    ``"prob"``: ``sigmoid(scores / temperature)``; ``"logit"``: ``scores / temperature``.
    """
    check_choice("space", space, SPACES)
    scaled = scores if temperature == 1.0 else scores / temperature
    return torch.sigmoid(scaled) if space == "prob" else scaled


def _check_margin_args(margin: float, k: int, space: str, temperature: float, reduction: str) -> None:
    check_nonneg("margin", margin)
    check_k(k)
    check_choice("space", space, SPACES)
    check_positive("temperature", temperature)
    check_choice("reduction", reduction, REDUCTIONS)
    if space == "prob" and margin >= 1:
        raise ValueError(
            f"margin must be < 1 in space='prob' (confidences lie in [0, 1]), got {margin}; "
            "use space='logit' for larger margins"
        )


def _conf_of(scores: Tensor, out: Tensor | None, prob: bool, temperature: float) -> Tensor:
    """:func:`confidence` (same ops) written into the scratch buffer ``out`` (``None``: a new one).

    ``space="logit"`` at temperature 1 returns ``scores`` itself, which must then not be written.
    """
    if temperature == 1.0 and not prob:
        return scores
    if out is None:  # one kernel that allocates, not an allocation and a kernel
        scaled = scores if temperature == 1.0 else scores / temperature
        return torch.sigmoid(scaled) if prob else scaled
    if temperature != 1.0:
        scores = torch.div(scores, temperature, out=out)
    return torch.sigmoid(scores, out=out) if prob else out


def _contributing(gold: Tensor, valid: Tensor, has: Tensor) -> Tensor:
    """``gold & valid & has`` (``has``: ``(B, N, 1)``, rows with a negative) as a fresh bool tensor.

    The row mask is applied as an in-place ``uint8`` product: a broadcast bool ``&`` runs ~25x
    slower on CPU.
    """
    out = gold & valid
    out.view(torch.uint8).mul_(has.view(torch.uint8))
    return out


def _count_dtype(n: int) -> torch.dtype:
    """The narrowest integer type that holds ``0..n`` (``n`` is a shape, so this is static)."""
    return torch.uint8 if n < 2**8 else torch.int16 if n < 2**15 else torch.int32


def _row_count(mask: Tensor) -> Tensor:
    """``(..., 1)`` number of true entries along the last dim of a bool tensor.

    Summed as ``uint8`` in the narrowest type that holds the count: integer sums first cast
    the whole input to the accumulation type, which for the default int64 is a temporary twice
    the size of a float32 ``(B, N, M)`` tensor.
    """
    return mask.view(torch.uint8).sum(-1, keepdim=True, dtype=_count_dtype(mask.shape[-1]))


_CONSTANTS: dict[tuple[float, torch.dtype], Tensor] = {}


_MAX_CONSTANTS: Final = 64


def _cpu_constant(value: float, dtype: torch.dtype) -> Tensor:
    """A cached 0-dim CPU tensor: creating one costs about as much as a small op.

    The cache is bounded: a margin schedule passes a new value on every step.
    """
    key = (value, dtype)
    t = _CONSTANTS.get(key)
    if t is None:
        if len(_CONSTANTS) >= _MAX_CONSTANTS:
            _CONSTANTS.clear()
        t = _CONSTANTS[key] = torch.full((), value, dtype=dtype)
    return t


def _hinge_k1(
    scores: Tensor,
    gold: Tensor,
    valid: Tensor,
    margin: float,
    prob: bool,
    temperature: float,
    grad: bool = False,
    with_neg: bool = False,
    mean: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``k = 1``: sum and count of the hinges of :func:`pair_margin_loss` and, if ``grad``, the
    gradient of the reduced loss (``mean``: the sum divided by the count) with respect to
    ``scores`` (``with_neg``: including the negatives'), bit for bit the composite path's
    gradient for an incoming gradient of 1.

    ``scores`` must not require grad. Evaluates the composite path's expression in the same
    dtype and order (``(c_neg + margin) - c``, clamped, zeroed outside the contributing pairs by
    a masked fill, summed in at least float32) with one ``(B, N, M)`` float buffer, two with
    ``grad``. Rows whose best negative scores ``-inf`` count as rows without negatives.
    """
    acc = torch.promote_types(scores.dtype, torch.float32)
    # The masked selects below take 0-dim tensors: on CPU torch.where with a tensor runs ~1.6x
    # faster than masked_fill_ or torch.where with a Python scalar. This path runs on CPU only,
    # so the constants are cached.
    zero = _cpu_constant(0.0, scores.dtype)
    ninf = _cpu_constant(-math.inf, scores.dtype)
    # The hardest negative of each row straight from the scores: the first maximal negative
    # (the column mine_hard_negatives picks as well). Non-negatives, NaN included, are -inf.
    key = torch.where(valid > gold, scores, ninf)  # valid & ~gold
    if with_neg:
        neg, index = key.max(-1, keepdim=True)
    else:
        neg, index = key.amax(-1, keepdim=True), None
    has = neg != ninf  # NaN (a NaN valid negative) counts as a negative, as in the composite path
    c_neg = _conf_of(neg, None, prob, temperature)
    # In place unless backward needs c_neg (the negatives' gradient in probability space). The
    # margin as a cached 0-dim tensor in the accumulation type: the kernel reads it at that
    # precision, exactly like a Python float, without wrapping a new tensor on every call.
    m = _cpu_constant(margin, acc)
    t = c_neg + m if (grad and index is not None and prob) else c_neg.add_(m)
    contributes = _contributing(gold, valid, has)
    c = _conf_of(scores, key, prob, temperature)  # the key's buffer is reused
    hinge = torch.sub(t, c, out=None if grad else key).clamp_min_(0)
    total = torch.where(contributes, hinge, zero, out=hinge).sum(dtype=acc)
    count = torch.count_nonzero(contributes)
    if not grad:
        return total, count, None
    # d loss / d hinge on contributing pairs, as the composite path's backward computes it:
    # 1 / count in float32 (or float64), cast to the scores' dtype.
    q = (torch.ones_like(total) / count.clamp_min(1) if mean else torch.ones_like(total))
    q = q.to(scores.dtype)
    # Active pairs: the contributing ones with t - c >= 0 (the gradient gate of clamp_min(0)),
    # i.e. c <= t.
    active = c <= t
    active.view(torch.uint8).mul_(contributes.view(torch.uint8))
    del contributes
    # d hinge / d c = -1; d c / d s = c (1 - c) / T (prob) or 1 / T (logit).
    if prob:
        ds = hinge.copy_(c).sub_(1).mul_(q).mul_(c)  # (c - 1) q c == ((-q) (1 - c)) c
    else:
        ds = hinge.copy_(q.neg().expand_as(hinge))
    if temperature != 1.0:
        ds.div_(temperature)
    torch.where(active, ds, zero, out=ds)
    if index is not None:
        # d loss / d c_neg = (the row's active pairs) * q, summed in float32 like the
        # composite's reduction; rows without a negative have no active pair, so their
        # (arbitrary) index receives an exact zero.
        n_active = _row_count(active)
        d_neg = n_active.to(acc).mul_(q.to(acc)).to(ds.dtype)
        if prob:
            d_neg = d_neg * (1 - c_neg) * c_neg
        if temperature != 1.0:
            d_neg.div_(temperature)
        ds.scatter_add_(-1, index, d_neg.masked_fill_(n_active == 0, 0))
    return total, count, ds


class _HingeK1(torch.autograd.Function):
    """``k = 1`` margin loss (mean or sum) whose gradient :func:`_hinge_k1` computes in forward.

    The forward has the confidences and masks at hand anyway, so it keeps the gradient of the
    loss (one ``(B, N, M)`` tensor, the only one kept) and backward just scales it by the
    incoming gradient: no recomputation, no ``(B, N, M)`` autograd intermediates, one graph
    node. Not twice differentiable.
    """

    @staticmethod
    def forward(
        ctx: Any,
        scores: Tensor,
        gold: Tensor,
        valid: Tensor,
        margin: float,
        prob: bool,
        temperature: float,
        with_neg: bool,
        mean: bool,
    ) -> Tensor:
        total, count, ds = _hinge_k1(
            scores, gold, valid, margin, prob, temperature, True, with_neg, mean
        )
        ctx.ds = ds
        return reduce_total(total, count, mean, scores.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        check_once_differentiable("pair_margin_loss")
        ds: Tensor = ctx.ds
        return ds * g, None, None, None, None, None, None, None


def _hinge_topk(
    scores: Tensor,
    gold: Tensor,
    valid: Tensor,
    margin: float,
    k: int,
    prob: bool,
    temperature: float,
    want_index: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """``k > 1``: sum and count of the hinges of :func:`pair_margin_loss`, and what backward
    needs. Same expression and order as the composite path, with two ``(B, N, M)`` buffers.

    Returns ``(total, count, t, has, index)``: the hinge thresholds ``t = c_neg + margin``
    (``(B, N, k)``, ``-inf`` on empty slots), the rows that have a negative (``(B, N, 1)``) and,
    if ``want_index``, the negatives' columns (``(B, N, k)`` in the narrowest integer type that
    holds ``M``: int64 would be as large as the input at ``k = M / 2``).
    """
    acc = torch.promote_types(scores.dtype, torch.float32)
    mined = mine_hard_negatives(scores, gold, valid, k)
    index = mined.indices.to(_count_dtype(scores.shape[-1])) if want_index else None
    n_neg = _row_count(mined.mask)
    has = n_neg > 0
    contributes = _contributing(gold, valid, has)
    # Empty slots get the threshold -inf: their hinge relu(-inf - c) is exactly the 0 the
    # composite path writes there.
    t = confidence(mined.values, "prob" if prob else "logit", temperature).add_(margin)
    t.masked_fill_(~mined.mask, -math.inf)
    del mined
    # Average over the row's negatives: sum the k hinges in slot order, then divide. c is
    # recomputed per slot so that two (B, N, M) buffers suffice.
    hinge = torch.empty_like(scores)
    tmp = torch.empty_like(scores)
    for r in range(k):
        out = tmp if r else hinge
        h = torch.sub(t[..., r : r + 1], _conf_of(scores, out, prob, temperature), out=out)
        h.clamp_min_(0)
        if r:
            hinge.add_(h)
    del tmp, h
    hinge.div_(n_neg.clamp_min_(1))
    total = torch.where(contributes, hinge, hinge.new_zeros(()), out=hinge).sum(dtype=acc)
    count = torch.count_nonzero(contributes)
    return total, count, t, has, index


class _HingeTopK(torch.autograd.Function):
    """``k > 1`` hinge sum (:func:`_hinge_topk`) with a hand-written backward.

    Saves the inputs, the thresholds ``t`` and the negatives' columns (``(B, N, k)``) and no
    ``(B, N, M)`` intermediate: backward recomputes the confidences ``c`` and the active
    hinges ``c <= t``, exactly the gradient gate of ``clamp_min(0)`` (``t - c >= 0`` iff
    ``c <= t`` for floats). Gradients reach the contributing gold pairs and, unless
    ``detach_negatives``, the selected negatives; everything else gets exact zeros from masked
    fills (never products with a 0/1 mask, so NaN/inf cannot leak). Peak: two ``(B, N, M)``
    float buffers, one of them the returned gradient. Not twice differentiable.
    """

    @staticmethod
    def forward(
        ctx: Any,
        scores: Tensor,
        gold: Tensor,
        valid: Tensor,
        margin: float,
        k: int,
        prob: bool,
        temperature: float,
        with_neg: bool,
        mean: bool,
    ) -> Tensor:
        total, count, t, has, index = _hinge_topk(
            scores, gold, valid, margin, k, prob, temperature, want_index=with_neg
        )
        ctx.save_for_backward(scores, gold, valid, t, has, index, count if mean else None)
        ctx.prob, ctx.temperature = prob, temperature
        return reduce_total(total, count, mean, scores.dtype)

    @staticmethod
    def backward(ctx: Any, g_loss: Tensor) -> tuple[Tensor | None, ...]:
        check_once_differentiable("pair_margin_loss")
        scores, gold, valid, t, has, index, count = ctx.saved_tensors
        prob, temperature = ctx.prob, ctx.temperature
        k = t.shape[-1]
        # The gradient reaching the hinges, as in the composite path: divided by the count in
        # float32 (or float64), then cast to the scores' dtype.
        acc = torch.promote_types(scores.dtype, torch.float32)
        g = g_loss.to(acc) if count is None else g_loss.to(acc) / count.clamp_min(1)
        g = g.to(scores.dtype)
        c = _conf_of(scores, None, prob, temperature)
        contributes = _contributing(gold, valid, has)
        n_neg = _row_count(t > -math.inf).clamp_min_(1)
        # Per pair the number of active slots; per slot the row's number of active gold pairs.
        n_slots = torch.zeros_like(contributes, dtype=_count_dtype(k))
        per_slot = []
        for r in range(k):
            act = c <= t[..., r : r + 1]
            act.view(torch.uint8).mul_(contributes.view(torch.uint8))
            if index is not None:
                per_slot.append(_row_count(act))
            n_slots.add_(act.view(torch.uint8))
        del act
        # d total / d c = -(active slots) g / |N_k|; d c / d s = c (1 - c) / T or 1 / T.
        grad = n_slots.to(scores.dtype).mul_(-g / n_neg)
        del n_slots
        if prob:
            grad.mul_(c).mul_(c.neg_().add_(1))  # c is a scratch buffer in prob space
        del c
        if temperature != 1.0:
            grad.div_(temperature)
        grad.masked_fill_(~contributes, 0)
        del contributes
        if index is not None:
            # d total / d c_neg = (active gold pairs of the slot) g / |N_k|, accumulated in at
            # least float32 like the composite path's sum. In chunks of slots whose int64
            # indices stay within 1/8 of the input (all slots at once unless k is close to M).
            g_slot = g.to(acc) / n_neg
            n_active_all = torch.cat(per_slot, -1)
            step = max(1, scores.shape[-1] // 16)
            for r in range(0, k, step):
                idx = index[..., r : r + step].long()
                n_active = n_active_all[..., r : r + step]
                d_neg = n_active.to(acc).mul_(g_slot)
                if prob:
                    c_neg = confidence(scores.gather(-1, idx), "prob", temperature)
                    d_neg = d_neg * (1 - c_neg) * c_neg
                if temperature != 1.0:
                    d_neg.div_(temperature)
                # Empty slots have no active pair and add exact zeros.
                grad.scatter_add_(-1, idx, d_neg.masked_fill_(n_active == 0, 0).to(grad.dtype))
        return grad, None, None, None, None, None, None, None, None


def pair_margin_loss(
    scores: Tensor,
    gold: Tensor,
    valid: Tensor,
    margin: float = 0.2,
    k: int = 1,
    space: str = "prob",
    temperature: float = 1.0,
    detach_negatives: bool = False,
    reduction: str = "mean",
) -> Tensor:
    r"""Hinge between every gold pair and the hard negatives of its row.

    With :math:`c = \sigma(s / T)` (``space="prob"``) or :math:`c = s / T` (``space="logit"``),
    :math:`\mathcal{N}_k(b, i)` the :func:`~torch_pairconf.mine_hard_negatives` of row
    :math:`(b, i)`, and :math:`\mathcal{G}` the valid gold pairs whose row has at least one
    negative,

    .. math::

        \ell_{bij} = \frac{1}{|\mathcal{N}_k(b,i)|} \sum_{n \in \mathcal{N}_k(b,i)}
            \max\bigl(0,\; m - (c_{bij} - c_{bin})\bigr), \qquad (b,i,j) \in \mathcal{G}

    and :math:`\ell_{bij} = 0` elsewhere. ``k > 1`` therefore averages the hinge over the row's
    (up to) ``k`` hardest negatives; ``k = 1`` is the hardest negative alone. A gold pair is never
    compared with another gold pair, so rows with several gold causes are handled exactly.
    ``reduction="mean"`` divides by :math:`|\mathcal{G}|`; if :math:`\mathcal{G}` is empty the
    result is a zero attached to the graph.

    The loss is zero exactly when every gold pair in :math:`\mathcal{G}` exceeds each of its hard
    negatives by at least ``margin``. Gold pairs outside ``valid`` are ignored.

    Args:
        scores: ``(B, N, M)`` float pair logits; rows are emotion utterances, columns candidate
            causes. Values outside ``valid`` never affect the value or the gradient.
        gold: ``(B, N, M)`` bool gold pairs.
        valid: ``(B, N, M)`` bool candidate pairs.
        margin: required confidence gap, ``>= 0`` (``< 1`` in probability space).
        k: number of hard negatives per row, ``>= 1``.
        space: ``"prob"`` or ``"logit"``.
        temperature: logits are divided by it before the sigmoid / comparison, ``> 0``.
        detach_negatives: if true the hinge only pushes gold pairs up; negatives get no gradient.
        reduction: ``"none"`` (returns ``(B, N, M)``), ``"mean"`` or ``"sum"``.

    Returns:
        The loss, a scalar or ``(B, N, M)``, in the dtype of ``scores``.

    Example:
        >>> scores = torch.tensor([[[2.0, 1.5, -1.0]]])
        >>> gold = torch.tensor([[[True, False, False]]])
        >>> valid = torch.ones(1, 1, 3, dtype=torch.bool)
        >>> pair_margin_loss(scores, gold, valid, margin=1.0, space="logit")
        tensor(0.5000)
    """
    check_pair_inputs(scores, gold, valid)
    _check_margin_args(margin, k, space, temperature, reduction)
    if reduction != "none" and use_fused(scores, _FUSED_MIN_NUMEL):
        prob, temperature, mean = space == "prob", float(temperature), reduction == "mean"
        if scores.requires_grad and torch.is_grad_enabled():
            with_neg = not detach_negatives
            fn = _HingeK1 if k == 1 else _HingeTopK
            args = (margin, prob, temperature) if k == 1 else (margin, k, prob, temperature)
            loss: Tensor = fn.apply(scores, gold, valid, *args, with_neg, mean)  # type: ignore[no-untyped-call]
            return loss
        if k == 1:
            # No graph is recorded here (no grad required, or grad mode off): no detach needed.
            total, count, _ = _hinge_k1(scores, gold, valid, margin, prob, temperature)
        else:
            total, count, *_ = _hinge_topk(
                scores.detach(), gold, valid, margin, k, prob, temperature, False
            )
        return reduce_total(total, count, mean, scores.dtype)
    # Zero the masked entries first so that NaN/inf there cannot reach values or gradients.
    clean = scores.masked_fill(~valid, 0)
    c = confidence(clean, space, temperature)
    neg = mine_hard_negatives(clean, gold, valid, k)
    c_neg = confidence(neg.values, space, temperature)
    if detach_negatives:
        c_neg = c_neg.detach()
    n_neg = neg.mask.sum(-1, keepdim=True)  # (B, N, 1)
    contributes = gold & valid & (n_neg > 0)
    if k == 1:
        hinge = (c_neg + margin - c).clamp_min(0)
    else:
        # (B, N, M, k): average over the row's available negatives only.
        per_neg = (c_neg.unsqueeze(-2) + margin - c.unsqueeze(-1)).clamp_min(0)
        per_neg = per_neg.masked_fill(~neg.mask.unsqueeze(-2), 0)
        hinge = per_neg.sum(-1) / n_neg.clamp_min(1)
    loss = hinge.masked_fill(~contributes, 0)
    return reduce(loss, contributes, reduction, scores.dtype)


class PairMarginLoss(nn.Module):
    """Module form of :func:`pair_margin_loss`; arguments are the same.

    Example:
        >>> criterion = PairMarginLoss(margin=0.2, k=1, space="prob")
        >>> scores = torch.randn(2, 5, 5, requires_grad=True)
        >>> gold = torch.zeros(2, 5, 5, dtype=torch.bool); gold[:, 2, 1] = True
        >>> valid = torch.ones(2, 5, 5, dtype=torch.bool)
        >>> criterion(scores, gold, valid).backward()
    """

    def __init__(
        self,
        margin: float = 0.2,
        k: int = 1,
        space: str = "prob",
        temperature: float = 1.0,
        detach_negatives: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_margin_args(margin, k, space, temperature, reduction)
        self.margin = margin
        self.k = k
        self.space = space
        self.temperature = temperature
        self.detach_negatives = detach_negatives
        self.reduction = reduction

    def forward(self, scores: Tensor, gold: Tensor, valid: Tensor) -> Tensor:
        return pair_margin_loss(
            scores,
            gold,
            valid,
            self.margin,
            self.k,
            self.space,
            self.temperature,
            self.detach_negatives,
            self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, k={self.k}, space={self.space!r}, "
            f"temperature={self.temperature}, detach_negatives={self.detach_negatives}, "
            f"reduction={self.reduction!r}"
        )
