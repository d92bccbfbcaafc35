r"""The optimizer of a run: AdamW parameter groups and the learning-rate schedule.

Parameter groups: everything but the transformer at ``--lr`` / ``--weight-decay`` (one group,
the whole model, when there is no transformer: the trainer's optimizer before the transformer
encoder existed); the transformer's matrices at ``--encoder-lr`` / ``--encoder-weight-decay``
and its biases and normalisation weights (1-d parameters) at ``--encoder-lr`` without decay.

Schedule (``--lr-schedule``), a factor on every group's learning rate at optimizer step
:math:`s = 0, 1, \dots, T - 1` of a run of :math:`T` steps with :math:`W = \lfloor r T \rfloor`
warm-up steps (``r``: ``--warmup-ratio``):

.. math::

    f(s) = \frac{s + 1}{W + 1}\ (s < W), \qquad f(s) = \frac{T - s}{T - W}\ (s \ge W)

``constant``: :math:`f = 1`. No step runs at a zero rate: the first warm-up step at
:math:`1 / (W + 1)`, the last step at :math:`1 / (T - W)`.

Example::

    >>> [round(linear_factor(s, total=6, warmup=2), 3) for s in range(6)]
    [0.333, 0.667, 1.0, 0.75, 0.5, 0.25]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from .config import TrainConfig

__all__ = ["build_optimizer", "build_schedule", "linear_factor", "parameter_groups"]


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The AdamW groups of ``model`` (see the module docstring); empty groups are left out."""
    encoder = getattr(getattr(model, "utterance", None), "transformer", None)
    if not isinstance(encoder, nn.Module):
        return [{"params": list(model.parameters())}]
    mine = {id(p) for p in encoder.parameters()}
    rest = [p for p in model.parameters() if id(p) not in mine]
    decay = [p for p in encoder.parameters() if p.ndim > 1]
    no_decay = [p for p in encoder.parameters() if p.ndim <= 1]
    groups = [
        {"params": rest, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": decay, "lr": cfg.encoder_lr, "weight_decay": cfg.encoder_weight_decay},
        {"params": no_decay, "lr": cfg.encoder_lr, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups`."""
    return torch.optim.AdamW(parameter_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)


def linear_factor(step: int, *, total: int, warmup: int) -> float:
    """The ``linear`` schedule's factor at optimizer step ``step`` (see the module docstring)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(total - step, 1) / max(total - warmup, 1)


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> LambdaLR | None:
    """The per-step schedule of ``cfg.lr_schedule`` over ``total_steps`` (``None``: constant)."""
    if cfg.lr_schedule == "constant":
        return None
    warmup = int(cfg.warmup_ratio * total_steps)

    def factor(step: int) -> float:  # a function: LambdaLR's state_dict then stores no copy
        return linear_factor(step, total=total_steps, warmup=warmup)

    return LambdaLR(optimizer, factor)
