"""The whole RPCL objective, built so that an existing trainer adopts it with two lines."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import torch
from torch import Tensor, nn

from ._checks import (
    check_bool,
    check_choice,
    check_float,
    check_mask,
    check_nonneg,
    check_pair_inputs,
    compiling,
)
from .consistency import ConsistencyLoss
from .corruption import ContextCorruption, gold_utterances
from .listwise import PairListwiseLoss
from .margin import PairMarginLoss

__all__ = ["RPCLoss", "corrupt_submodule", "default_scores_fn", "utterance_mask"]

WHERE: Final = ("input", "output")
RANKINGS: Final = ("hinge", "softmax")


def utterance_mask(valid: Tensor) -> Tensor:
    """Real utterances of a square ``(B, N, N)`` validity mask: those with any valid pair, ``(B, N)``."""
    return valid.any(-1) | valid.any(-2)


def default_scores_fn(output: Any) -> Tensor:
    """Pair logits from a model output: the tensor itself, or the first element of a tuple/list."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"cannot take pair scores from a model output of type {type(output).__name__}; "
        "pass scores_fn=lambda out: ... to RPCLoss"
    )


def _swap_first(value: Any, fn: Callable[[Tensor], Tensor], module: nn.Module, where: str) -> Any:
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, tuple) and value and isinstance(value[0], Tensor):
        return (fn(value[0]), *value[1:])
    raise TypeError(
        f"RPCLoss cannot corrupt the {where} of {type(module).__name__}: expected a (B, N, D) tensor "
        f"or a tuple starting with one, got {type(value).__name__}"
    )


@contextmanager
def corrupt_submodule(module: nn.Module, fn: Callable[[Tensor], Tensor], where: str = "input") -> Iterator[None]:
    """Within the block, apply ``fn`` to the first input (or the output) of ``module``.

    A forward (pre-)hook is installed on entry and removed on exit, also when the block raises,
    so the user's model is left untouched. With ``where="output"`` and a tuple output (e.g.
    ``nn.LSTM``), the first element is replaced.
    """
    check_choice("where", where, WHERE)
    handle: Any
    if where == "input":

        def pre_hook(mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            if not args:
                raise TypeError(
                    f"RPCLoss corrupts the first positional input of {type(mod).__name__}, "
                    "but it was called without positional arguments"
                )
            swapped: tuple[Any, ...] = _swap_first(args, fn, mod, "input")
            return swapped

        handle = module.register_forward_pre_hook(pre_hook)
    else:

        def hook(mod: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            return _swap_first(output, fn, mod, "output")

        handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _OutputStash:
    """Forward hook that remembers the output of a module from the user's clean forward.

    It records only calls made with autograd enabled, outside ``torch.compile`` tracing and
    while not paused (the corrupted second pass pauses it); ``calls`` counts them so that
    :class:`RPCLoss` replays the output only when the clean forward ran the module exactly once.
    """

    __slots__ = ("__weakref__", "calls", "paused", "value")

    def __init__(self) -> None:
        self.value: Any = None
        self.calls = 0
        self.paused = False

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self.paused or not torch.is_grad_enabled() or compiling():
            return
        self.value = output
        self.calls += 1

    def clear(self) -> None:
        self.value = None
        self.calls = 0


@contextmanager
def _paused(stash: _OutputStash | None) -> Iterator[None]:
    if stash is None:
        yield
        return
    stash.paused = True
    try:
        yield
    finally:
        stash.paused = False


@contextmanager
def _forward_replaced(module: nn.Module, forward: Callable[..., Any]) -> Iterator[None]:
    """Within the block, calling ``module`` runs ``forward`` (hooks still run) instead of its own."""
    missing = object()
    own = module.__dict__.get("forward", missing)
    module.forward = forward  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        if own is missing:
            del module.forward
        else:
            module.forward = own


class RPCLoss(nn.Module):
    r"""Robust Pair Confidence Learning: margin + consistency terms added to a trainer's loss.

    .. math::

        \mathcal{L}_{\text{RPCL}} = w(t)\,\bigl(\lambda_m\,\mathcal{L}_{\text{margin}}(s)
            + \lambda_c\,\mathcal{L}_{\text{cons}}(s, \tilde s)\bigr)

    where :math:`s` are the clean pair logits, :math:`\tilde s` the logits of a second pass of the
    same model with part of the non-gold context corrupted, and :math:`w(t)` a linear warm-up
    from :math:`1/T_w` to 1 over the first ``warmup_steps`` training calls. Inference is unchanged.

    Two-line integration::

        rpcl = RPCLoss(model.context_encoder)                        # once, after building the model
        loss = loss + rpcl(pair_logits, gold, valid, rerun=lambda: model(**batch))   # every step

    ``rerun`` re-runs the user's forward; during that call the first positional input (or, with
    ``where="output"``, the output) of ``corrupt`` — a ``(B, N, D)`` utterance representation —
    is replaced by :func:`~torch_pairconf.context_corruption` of it, protecting every utterance of
    a gold pair and the padding. Dropout in the model makes the second pass differ as well.

    **Output replay** (``where="output"``, ``reuse_output=True``, the default): ``corrupt`` gets
    one forward hook that remembers its output from the clean forward (calls with autograd
    enabled). The second pass then does not run ``corrupt`` again: it corrupts that remembered
    output, graph included, so ``corrupt`` and everything upstream of it run forward and backward
    once per step (the consistency gradient joins the clean one at ``corrupt``'s output). The
    upstream modules still execute in ``rerun()`` but their results are not used. Replay needs
    the clean forward to have called ``corrupt`` exactly once since the previous RPCLoss call
    and the clean graph to be alive (one ``backward`` over base loss + RPCL); otherwise, and
    under ``torch.compile`` tracing, ``corrupt`` is simply re-run. ``last_replayed`` tells
    which happened; :meth:`remove_hooks` (or dropping the loss) removes the hook.

    Args:
        corrupt: submodule whose input/output is corrupted in the second pass (``None`` if the
            corrupted scores are passed directly or ``consistency_weight == 0``).
        where: ``"input"`` or ``"output"`` of ``corrupt``.
        margin_weight, consistency_weight: :math:`\lambda_m, \lambda_c \ge 0`; a zero weight skips
            its term (no second forward pass when ``consistency_weight == 0``).
        ranking: ``"hinge"`` (:func:`~torch_pairconf.pair_margin_loss`) or ``"softmax"``
            (:func:`~torch_pairconf.pair_listwise_loss`, where ``margin`` is in logit units and
            ``space`` is unused).
        margin, k, space, temperature, detach_negatives: see :func:`~torch_pairconf.pair_margin_loss`.
        p, mode: see :func:`~torch_pairconf.context_corruption`.
        divergence, detach_clean: see :func:`~torch_pairconf.consistency_loss`.
        warmup_steps: linear warm-up of both weights over this many training calls (0: none).
        reuse_output: with ``where="output"``, replay the clean output of ``corrupt`` in the
            second pass instead of recomputing it (see above). Upstream dropout is then shared
            by both views; ``False`` re-runs ``corrupt`` with fresh dropout.
        scores_fn: maps the output of ``rerun()`` to ``(B, N, M)`` pair logits
            (default: :func:`default_scores_fn`).
        scores_are: ``"logits"`` (default) or ``"probs"``; probabilities (e.g. sigmoid outputs
            multiplied by a position prior) are mapped to logits with ``torch.logit(p, eps)``.
        generator: optional ``torch.Generator`` for the corruption draws.

    Shapes:
        ``scores`` ``(B, N, M)``, ``gold``/``valid`` bool ``(B, N, M)``; with a second pass
        ``M == N`` and the corrupted tensor is ``(B, N, D)``. Output: scalar.

    After each call, ``last`` holds the detached terms ``{"margin", "consistency", "weight"}`` for
    logging (no host sync).
    """

    last: dict[str, Tensor]
    last_replayed: bool
    step: Tensor

    def __init__(
        self,
        corrupt: nn.Module | None = None,
        *,
        where: str = "output",
        margin_weight: float = 0.1,
        consistency_weight: float = 1.0,
        ranking: str = "hinge",
        margin: float = 0.2,
        k: int = 1,
        space: str = "prob",
        temperature: float = 1.0,
        detach_negatives: bool = True,
        p: float = 0.3,
        mode: str = "zero",
        divergence: str = "kl",
        detach_clean: bool = True,
        warmup_steps: int = 0,
        reuse_output: bool = True,
        scores_fn: Callable[[Any], Tensor] | None = None,
        scores_are: str = "logits",
        eps: float = 1e-6,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_choice("where", where, WHERE)
        check_choice("ranking", ranking, RANKINGS)
        check_nonneg("margin_weight", margin_weight)
        check_nonneg("consistency_weight", consistency_weight)
        check_choice("scores_are", scores_are, ("logits", "probs"))
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
        if corrupt is not None and not isinstance(corrupt, nn.Module):
            raise TypeError(f"corrupt must be an nn.Module or None, got {type(corrupt).__name__}")
        self.margin_weight = margin_weight
        self.consistency_weight = consistency_weight
        self.where = where
        self.warmup_steps = warmup_steps
        self.scores_fn = scores_fn or default_scores_fn
        self.scores_are = scores_are
        self.eps = eps
        # Held outside the module tree so that .to()/state_dict of the loss never touch the model.
        self._corrupt: tuple[nn.Module, ...] = (corrupt,) if corrupt is not None else ()
        self.margin_loss: nn.Module = (
            PairMarginLoss(margin, k, space, temperature, detach_negatives)
            if ranking == "hinge"
            else PairListwiseLoss(k, temperature, margin, detach_negatives)
        )
        self.corruption = ContextCorruption(p, mode, generator)
        self.consistency = ConsistencyLoss(divergence, detach_clean)
        self.register_buffer("step", torch.zeros((), dtype=torch.long), persistent=True)
        self.last = {}
        self.last_replayed = False
        self._stash: _OutputStash | None = None
        self._stash_handle: Any = None
        if corrupt is not None and where == "output" and reuse_output and consistency_weight > 0:
            self._stash = _OutputStash()
            self._stash_handle = corrupt.register_forward_hook(self._stash)
            # The model keeps the hook (and its last output) alive, not this loss: remove the hook
            # when the loss goes away.
            weakref.finalize(self, self._stash_handle.remove)

    def remove_hooks(self) -> None:
        """Remove the output-replay hook from ``corrupt`` (later calls re-run ``corrupt``)."""
        if self._stash_handle is not None:
            self._stash_handle.remove()
        self._stash_handle = None
        self._stash = None

    def _logits(self, scores: Tensor) -> Tensor:
        return torch.logit(scores, eps=self.eps) if self.scores_are == "probs" else scores

    def _warmup(self, like: Tensor) -> Tensor:
        if self.warmup_steps == 0:
            return like.new_ones(())
        step = self.step.to(like.device)
        return ((step + 1).to(like.dtype) / self.warmup_steps).clamp(max=1.0)

    def corrupted_view(
        self,
        rerun: Callable[[], Any],
        gold: Tensor,
        valid: Tensor,
        utterances: Tensor | None = None,
    ) -> Tensor:
        """Run ``rerun()`` with the context corrupted and return its ``(B, N, N)`` pair logits."""
        if not self._corrupt:
            raise ValueError("rerun was given but RPCLoss(corrupt=...) names no submodule to corrupt")
        if gold.shape[-1] != gold.shape[-2]:
            raise ValueError(
                f"a corrupted second pass needs square pair matrices (B, N, N), got {tuple(gold.shape)}"
            )
        protect = gold_utterances(gold & valid)
        real = utterance_mask(valid) if utterances is None else check_bool("utterances", utterances)
        module = self._corrupt[0]
        calls = 0

        def corrupt(x: Tensor) -> Tensor:
            nonlocal calls
            calls += 1
            if x.dim() != 3 or x.shape[:2] != protect.shape:
                raise ValueError(
                    f"the {self.where} of {type(module).__name__} must be (B, N, D) with (B, N) = "
                    f"{tuple(protect.shape)}, got {tuple(x.shape)} (batch_first=True is required)"
                )
            corrupted: Tensor = self.corruption(x, protect, real)[0]
            return corrupted

        stash = self._stash
        clean = stash.value if stash is not None and stash.calls == 1 and not compiling() else None
        if stash is not None:
            stash.clear()
        with _paused(stash):
            if clean is not None:
                with _forward_replaced(module, lambda *_a, **_k: _swap_first(clean, corrupt, module, "output")):
                    out = rerun()
            else:
                with corrupt_submodule(module, corrupt, self.where):
                    out = rerun()
        self.last_replayed = clean is not None
        if calls == 0:
            raise ValueError(
                f"rerun() never called the corrupted submodule {type(module).__name__}: pass the "
                "module that the model's forward runs (e.g. RPCLoss(model.context_encoder))"
            )
        return self._logits(self.scores_fn(out))

    def forward(
        self,
        scores: Tensor,
        gold: Tensor,
        valid: Tensor,
        rerun: Callable[[], Any] | None = None,
        *,
        corrupted_scores: Tensor | None = None,
        utterances: Tensor | None = None,
    ) -> Tensor:
        """Compute the weighted RPCL terms.

        Args:
            scores: ``(B, N, M)`` clean pair logits (or probabilities with ``scores_are="probs"``).
            gold, valid: ``(B, N, M)`` bool.
            rerun: zero-argument callable that re-runs the model's forward (needed when
                ``consistency_weight > 0`` and ``corrupted_scores`` is not given).
            corrupted_scores: the corrupted view's scores, if computed by the caller.
            utterances: optional ``(B, N)`` bool real-utterance mask (default: derived from
                ``valid``).
        """
        self.last_replayed = False
        try:
            return self._forward(scores, gold, valid, rerun, corrupted_scores, utterances)
        finally:
            if self._stash is not None:
                self._stash.clear()  # never carry a clean output (and its graph) into the next step

    def _forward(
        self,
        scores: Tensor,
        gold: Tensor,
        valid: Tensor,
        rerun: Callable[[], Any] | None,
        corrupted_scores: Tensor | None,
        utterances: Tensor | None,
    ) -> Tensor:
        check_float("scores", scores)
        scores = self._logits(scores)
        check_pair_inputs(scores, gold, valid)
        total = scores.new_zeros(())
        terms: dict[str, Tensor] = {}
        if self.margin_weight > 0:
            m = self.margin_loss(scores, gold, valid)
            total = total + self.margin_weight * m
            terms["margin"] = m.detach()
        if self.consistency_weight > 0:
            if corrupted_scores is None:
                if rerun is None:
                    raise ValueError(
                        "consistency_weight > 0 needs rerun=lambda: model(...) or corrupted_scores=..."
                    )
                corrupted_scores = self.corrupted_view(rerun, gold, valid, utterances)
            else:
                corrupted_scores = self._logits(corrupted_scores)
            check_mask("valid", valid, corrupted_scores, "corrupted_scores")
            c = self.consistency(scores, corrupted_scores, valid)
            total = total + self.consistency_weight * c
            terms["consistency"] = c.detach()
        weight = self._warmup(total)
        terms["weight"] = weight.detach()
        if self.training:
            with torch.no_grad():
                self.step.add_(1)
        self.last = terms
        out: Tensor = total * weight
        return out

    def extra_repr(self) -> str:
        target = type(self._corrupt[0]).__name__ if self._corrupt else None
        return (
            f"corrupt={target}, where={self.where!r}, reuse_output={self._stash is not None}, "
            f"margin_weight={self.margin_weight}, "
            f"consistency_weight={self.consistency_weight}, warmup_steps={self.warmup_steps}"
        )
