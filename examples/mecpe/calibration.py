r"""Post-hoc recalibration of pair logits (temperature, Platt), and the proper scores it is judged by.

Temperature scaling (Guo et al. 2017) divides every pair logit by one scalar :math:`T > 0`
fitted on the dev split's valid pairs by minimising their negative log-likelihood,

.. math::

    T^\star = \arg\min_{T \in [T_{\min}, T_{\max}]} \mathrm{NLL}(1/T, 0), \qquad
    \mathrm{NLL}(a, b) = \frac{1}{|V|} \sum_{v \in V}
        \operatorname{softplus}(a z_v + b) - y_v\, (a z_v + b),

and the test split reuses the dev-fitted :math:`T^\star` (as the ``*_devthr`` metrics reuse the
dev-chosen threshold). It is monotone, so it never changes a ranking (AUPRC, row MRR, F1 at a
threshold chosen on the same split); it only moves the scores' scale, which ECE, NLL and the
Brier score see. **It cannot move the 0.5 decision**: :math:`\sigma(z / T) > \tfrac12 \iff z > 0`
for every :math:`T`, so F1 at 0.5 of temperature-scaled scores is F1 at 0.5 of the raw ones.
Platt scaling, :math:`\sigma(a z + b)` with :math:`(a^\star, b^\star)` fitted the same way
(:func:`fit_platt`), also shifts the scores, and so is the free, post-hoc counterpart of a
training term that raises gold confidences (a recalibration moves F1 at 0.5, not the ranking).

**The search.** :math:`\mathrm{NLL}` is jointly convex in :math:`(a, b)`. For the temperature
it is convex in :math:`a = 1/T`, hence unimodal in :math:`u = \log T`; for Platt scaling the
profile :math:`\min_b \mathrm{NLL}(a, b)` is convex in :math:`a`, and the inner minimum solves
the monotone equation :math:`\overline{\sigma(a z + b)} = \bar y` (safeguarded Newton within
:math:`|b| \le` :data:`B_MAX`). The outer 1-D search evaluates the objective on a fixed grid of
:data:`GRID_POINTS` values of :math:`\log T` (or :math:`-\log a`) over
:math:`[\log T_{\min}, \log T_{\max}]` (ties: the point nearest 1), then refines the best point by
a golden-section search over its two neighbours: deterministic, no gradient, no starting point,
float64 throughout. A minimiser outside the range (scores no better than chance, whose NLL
keeps falling as :math:`T` grows) is reported at the bound.

Example::

    >>> import torch
    >>> logits = torch.tensor([[[4.0, -4.0], [-4.0, 4.0]]])  # over-confident: half are wrong
    >>> gold = torch.tensor([[[True, True], [False, False]]])
    >>> valid = torch.ones(1, 2, 2, dtype=torch.bool)
    >>> fit_temperature(logits, gold, valid) == T_MAX  # the best a temperature can do: p -> 1/2
    True
    >>> round(mean_nll(logits, gold, valid), 4), round(brier_score(logits, gold, valid), 4)
    (2.0181, 0.4823)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "B_MAX",
    "GRID_POINTS",
    "T_MAX",
    "T_MIN",
    "Platt",
    "brier_score",
    "fit_platt",
    "fit_temperature",
    "mean_nll",
]

#: The temperature range searched (a fitted temperature at a bound means the optimum is beyond).
T_MIN: Final = 0.05
T_MAX: Final = 20.0
#: Grid points over ``[log T_MIN, log T_MAX]`` (a log-step of 0.1 here).
GRID_POINTS: Final = 61
#: Bound on the Platt bias (in logits; a split without gold or negatives sits at the bound).
B_MAX: Final = 30.0
_NEWTON_STEPS: Final = 30  # quadratic once close; a bisection step at worst
_REFINE_STEPS: Final = 30  # golden-section steps: the bracket shrinks by 0.618^30 ~ 5e-7
_GOLDEN: Final = (math.sqrt(5.0) - 1.0) / 2.0


def _valid_logits(logits: Tensor, gold: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """The valid pairs' logits and labels as float64 vectors; raises on a non-finite logit."""
    if logits.shape != valid.shape or gold.shape != valid.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)}, gold {tuple(gold.shape)} and valid "
            f"{tuple(valid.shape)} must have one shape"
        )
    z = logits.detach()[valid].to(torch.float64)
    if not bool(torch.isfinite(z).all()):
        raise ValueError(f"{int((~torch.isfinite(z)).sum())} valid pair logit(s) are not finite")
    return z, gold[valid].to(torch.float64)


def _softplus(x: Tensor) -> Tensor:
    """Exact ``log(1 + e^x)`` (``F.softplus`` turns linear above 20, an ``e^-20`` error)."""
    return torch.logaddexp(x, torch.zeros((), dtype=x.dtype))


def _nll(z: Tensor, y: Tensor, inv_t: Tensor) -> Tensor:
    """Mean BCE of ``sigmoid(z * inv_t)`` for every value of ``inv_t`` ``(G,)`` → ``(G,)``."""
    scaled = z.unsqueeze(0) * inv_t.unsqueeze(1)
    return (_softplus(scaled) - y.unsqueeze(0) * scaled).mean(1)


def mean_nll(logits: Tensor, gold: Tensor, valid: Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (BCE, nats) of ``sigmoid(logits / temperature)`` over the
    valid pairs. Raises ``ValueError`` without a valid pair."""
    z, y = _valid_logits(logits, gold, valid)
    if z.numel() == 0:
        raise ValueError("no valid pair")
    return float(_nll(z, y, z.new_tensor([1.0 / temperature]))[0])


def brier_score(logits: Tensor, gold: Tensor, valid: Tensor, temperature: float = 1.0) -> float:
    """Mean squared error of ``sigmoid(logits / temperature)`` against the labels of the valid
    pairs. Raises ``ValueError`` without a valid pair."""
    z, y = _valid_logits(logits, gold, valid)
    if z.numel() == 0:
        raise ValueError("no valid pair")
    return float((torch.sigmoid(z / temperature) - y).square().mean())


def _minimise_log_scale(objective: Callable[[Tensor], Tensor]) -> float:
    """``argmin`` over ``u`` in ``[log T_MIN, log T_MAX]`` of a unimodal ``objective(u) -> (G,)``
    evaluated on a vector of ``u``: grid, then golden-section refinement; returns ``exp(u*)``."""
    u = torch.linspace(math.log(T_MIN), math.log(T_MAX), GRID_POINTS, dtype=torch.float64)
    values = objective(u)
    # Ties (a flat objective, e.g. all-zero logits): the grid point nearest u = 0.
    best = int(torch.argmin(torch.where(values == values.min(), u.abs(), torch.full_like(u, math.inf))))
    lo, hi = float(u[max(best - 1, 0)]), float(u[min(best + 1, GRID_POINTS - 1)])

    def at(x: float) -> float:
        return float(objective(torch.tensor([x], dtype=torch.float64))[0])

    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = at(a), at(b)
    for _ in range(_REFINE_STEPS):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = at(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = at(b)
    refined = (a, fa) if fa <= fb else (b, fb)
    if refined[1] < float(values[best]):
        return float(min(max(math.exp(refined[0]), T_MIN), T_MAX))
    # The grid point stands (a flat or boundary optimum); the bounds are returned exactly.
    if best in (0, GRID_POINTS - 1):
        return (T_MIN, T_MAX)[best // (GRID_POINTS - 1)]
    return float(torch.exp(u[best]))


def fit_temperature(logits: Tensor, gold: Tensor, valid: Tensor) -> float:
    """The temperature in ``[T_MIN, T_MAX]`` that minimises the valid pairs' NLL (module docstring).

    Args:
        logits: pair logits, any shape (e.g. ``(C, N, N)`` of a whole split).
        gold: bool, same shape (gold pairs outside ``valid`` are not scored, so not fitted).
        valid: bool, same shape.

    Raises:
        ValueError: without a valid pair, or when a valid logit is not finite.
    """
    z, y = _valid_logits(logits, gold, valid)
    if z.numel() == 0:
        raise ValueError("no valid pair to fit a temperature on")
    return _minimise_log_scale(lambda u: _nll(z, y, torch.exp(-u)))


class Platt(NamedTuple):
    """Affine recalibration ``sigmoid(scale * logit + bias)``."""

    scale: float
    bias: float


def _best_bias(z: Tensor, y: Tensor, scale: Tensor) -> Tensor:
    """For each ``scale`` ``(G,)`` the bias minimising the NLL: the root in ``[-B_MAX, B_MAX]``
    of ``f(b) = mean(sigmoid(scale * z + b)) - mean(y)``, increasing in ``b``.

    Safeguarded Newton: a Newton step from the current point when it lands inside the bracket
    that the signs of ``f`` keep, else the bracket's midpoint; a fixed number of steps.
    """
    target = y.mean()
    lo = torch.full_like(scale, -B_MAX)
    hi = torch.full_like(scale, B_MAX)
    b = torch.zeros_like(scale)
    for _ in range(_NEWTON_STEPS):
        p = torch.sigmoid(scale.unsqueeze(1) * z.unsqueeze(0) + b.unsqueeze(1))
        f = p.mean(1) - target
        slope = (p * (1 - p)).mean(1)
        lo, hi = torch.where(f < 0, b, lo), torch.where(f < 0, hi, b)
        step = b - f / slope.clamp_min(1e-300)
        # Non-strict: at the root (f == 0) the step is the point itself, a bracket end.
        inside = (step >= lo) & (step <= hi) & (slope > 0)
        b = torch.where(inside, step, (lo + hi) / 2)
    return b


def _platt_nll(z: Tensor, y: Tensor, scale: Tensor) -> Tensor:
    bias = _best_bias(z, y, scale)
    scaled = scale.unsqueeze(1) * z.unsqueeze(0) + bias.unsqueeze(1)
    return (_softplus(scaled) - y.unsqueeze(0) * scaled).mean(1)


def fit_platt(logits: Tensor, gold: Tensor, valid: Tensor) -> Platt:
    """The ``(scale, bias)`` minimising the valid pairs' NLL of ``sigmoid(scale * z + bias)``,
    with ``1 / scale`` in ``[T_MIN, T_MAX]`` and ``|bias| <= B_MAX`` (module docstring).

    Raises:
        ValueError: without a valid pair, or when a valid logit is not finite.
    """
    z, y = _valid_logits(logits, gold, valid)
    if z.numel() == 0:
        raise ValueError("no valid pair to fit a recalibration on")
    inverse_scale = _minimise_log_scale(lambda u: _platt_nll(z, y, torch.exp(-u)))
    scale = torch.tensor([1.0 / inverse_scale], dtype=torch.float64)
    return Platt(float(scale[0]), float(_best_bias(z, y, scale)[0]))
