"""Corrupted views of a conversation: replace non-gold context utterances."""

from __future__ import annotations

from typing import Final

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._checks import check_bool, check_choice, check_float, same_device

__all__ = ["MODES", "ContextCorruption", "context_corruption", "gold_utterances"]

MODES: Final = ("zero", "mean", "noise", "shuffle")


def gold_utterances(gold: Tensor) -> Tensor:
    """Utterances that take part in a gold pair, the default ``protect`` mask.

    Args:
        gold: ``(B, N, N)`` bool gold pairs (rows emotion, columns cause).

    Returns:
        ``(B, N)`` bool, true for every utterance that is the emotion or the cause of a gold pair.
    """
    check_bool("gold", gold)
    if gold.dim() != 3 or gold.shape[-1] != gold.shape[-2]:
        raise ValueError(
            f"gold must have shape (B, N, N) (emotions and causes index the same utterances), "
            f"got {tuple(gold.shape)}"
        )
    return gold.any(-1) | gold.any(-2)


def _check_p(p: float) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"p must be a float, got {type(p).__name__}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")


def _replacement(x: Tensor, mask: Tensor, mode: str, generator: torch.Generator | None) -> Tensor:
    """What a corrupted utterance is replaced with, ``(B, N, D)`` (or broadcastable)."""
    if mode == "zero":
        return torch.zeros_like(x)
    m = mask.unsqueeze(-1)
    real = x.masked_fill(~m, 0)  # padding may hold anything, NaN included
    count = m.sum(1, keepdim=True).clamp_min(1)
    if mode == "mean":
        return real.sum(1, keepdim=True) / count
    if mode == "noise":
        # Gaussian with the conversation's root-mean-square feature magnitude.
        rms = (real.square().sum((1, 2), keepdim=True) / (count * x.shape[-1])).sqrt()
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return noise * rms
    # shuffle: an utterance drawn uniformly from the real utterances of the whole batch.
    weights = mask.reshape(-1).to(x.dtype if x.dtype == torch.float64 else torch.float32)
    weights = weights + (weights.sum() == 0).to(weights.dtype)  # all padding: any row will do
    src = torch.multinomial(weights, mask.numel(), replacement=True, generator=generator)
    return real.reshape(-1, x.shape[-1])[src].reshape(x.shape)


def context_corruption(
    x: Tensor,
    protect: Tensor,
    mask: Tensor,
    *,
    p: float,
    mode: str = "zero",
    training: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Corrupt each unprotected real utterance independently with probability ``p``.

    The corrupted view keeps the gold utterances (``protect``) and padding intact and replaces a
    random part of the remaining context, so that a consistency term can ask the pair scorer not
    to lean on incidental context.

    Modes: ``"zero"`` (a zero vector), ``"mean"`` (the mean of the conversation's real
    utterances), ``"noise"`` (Gaussian noise with the conversation's RMS feature scale),
    ``"shuffle"`` (a real utterance drawn uniformly from the whole batch).

    Args:
        x: ``(B, N, D)`` float utterance representations.
        protect: ``(B, N)`` bool, utterances never corrupted (see :func:`gold_utterances`).
        mask: ``(B, N)`` bool, true for real (non-padding) utterances.
        p: corruption probability in ``[0, 1]``.
        mode: one of ``"zero"``, ``"mean"``, ``"noise"``, ``"shuffle"``.
        training: identity when false (as in eval mode).
        generator: optional ``torch.Generator`` on ``x``'s device for repeatable draws
            (``None``: torch's default generator).

    Returns:
        ``(corrupted, corrupted_mask)``: the ``(B, N, D)`` view (gradient flows to the kept
        utterances) and the ``(B, N)`` bool mask of the utterances that were replaced.

    Example:
        >>> x = torch.randn(2, 4, 8)
        >>> protect = torch.zeros(2, 4, dtype=torch.bool); protect[:, 0] = True
        >>> mask = torch.ones(2, 4, dtype=torch.bool)
        >>> g = torch.Generator().manual_seed(0)
        >>> y, hit = context_corruption(x, protect, mask, p=0.5, generator=g)
        >>> bool((y[:, 0] == x[:, 0]).all())
        True
    """
    check_float("x", x)
    check_bool("protect", protect)
    check_bool("mask", mask)
    _check_p(p)
    check_choice("mode", mode, MODES)
    if x.dim() != 3:
        raise ValueError(f"x must have shape (B, N, D), got {tuple(x.shape)}")
    for name, t in (("protect", protect), ("mask", mask)):
        if t.shape != x.shape[:2]:
            raise ValueError(f"{name} must have shape (B, N) = {tuple(x.shape[:2])}, got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if generator is not None and not same_device(generator.device, x.device):
        raise ValueError(f"generator is on {generator.device} but x is on {x.device}")
    if not training or p == 0.0:
        return x, torch.zeros_like(mask)
    draw = torch.rand(mask.shape, generator=generator, device=x.device) < p
    hit = draw & mask & ~protect
    out = torch.where(hit.unsqueeze(-1), _replacement(x, mask, mode, generator), x)
    return out, hit


class ContextCorruption(nn.Module):
    """Module form of :func:`context_corruption`; identity in eval mode or when ``p == 0``.

    Args:
        p: corruption probability in ``[0, 1]``.
        mode: ``"zero"``, ``"mean"``, ``"noise"`` or ``"shuffle"``.
        generator: optional generator used for every call (keeps runs repeatable).

    **Data-parallel runs.** Without a ``generator``, draws come from torch's default generator,
    except when ``torch.distributed`` is initialised with more than one process: then each rank
    draws from its own generator, seeded on first use with
    ``(torch.initial_seed() + RANK_STRIDE * (rank + 1)) mod 2**64``, so that ranks started with the
    same seed still corrupt different utterances, and a rerun with the same seed draws the same
    masks. Its state is part of :meth:`state_dict` (``_extra_state``), so a resumed run continues
    the same stream. With an explicit ``generator`` the caller chooses (seed it per rank).

    Example:
        >>> corrupt = ContextCorruption(p=0.3, mode="mean")
        >>> x = torch.randn(2, 4, 8)
        >>> none = torch.zeros(2, 4, dtype=torch.bool)
        >>> y, hit = corrupt(x, none, torch.ones(2, 4, dtype=torch.bool))
        >>> corrupt.eval()(x, none, none)[0] is x
        True
    """

    #: Odd 64-bit constant (the golden ratio's) that spreads the per-rank seeds.
    RANK_STRIDE: Final = 0x9E3779B97F4A7C15

    def __init__(
        self, p: float, *, mode: str = "zero", generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        _check_p(p)
        check_choice("mode", mode, MODES)
        self.p = p
        self.mode = mode
        self.generator = generator
        self._rank_generators: dict[str, torch.Generator] = {}

    def draw_generator(self, device: torch.device) -> torch.Generator | None:
        """The generator the next draw on ``device`` uses (see the class docstring)."""
        if self.generator is not None:
            return self.generator
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return None
        key = str(device)
        g = self._rank_generators.get(key)
        if g is None:
            seed = (torch.initial_seed() + self.RANK_STRIDE * (dist.get_rank() + 1)) % 2**64
            g = self._rank_generators[key] = torch.Generator(device=device).manual_seed(seed)
        return g

    def forward(self, x: Tensor, protect: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        generator = self.draw_generator(x.device) if self.training and self.p > 0 else None
        return context_corruption(
            x, protect, mask, p=self.p, mode=self.mode, training=self.training, generator=generator
        )

    def get_extra_state(self) -> dict[str, Tensor]:
        return {key: g.get_state() for key, g in self._rank_generators.items()}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self._rank_generators = {
            key: _generator_from_state(key, value) for key, value in state.items()
        }

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode!r}"


def _generator_from_state(device: str, state: Tensor) -> torch.Generator:
    g = torch.Generator(device=device)
    g.set_state(state)
    return g
