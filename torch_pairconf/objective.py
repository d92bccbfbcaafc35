r"""The whole RPCL objective, built so that an existing trainer adopts it with two lines.

.. math::

    \mathcal{L}_{\text{RPCL}} = w(t)\,\bigl(\lambda_r\,\mathcal{L}_{\text{rank}}(s)
        + \lambda_c\,\mathcal{L}_{\text{cons}}(s, \tilde s)\bigr)

:math:`s` are the clean pair logits, :math:`\tilde s` the logits of a second pass of the same model
with part of the non-gold context corrupted, :math:`\mathcal{L}_{\text{rank}}` a ranking term
(default :func:`~torch_pairconf.pair_margin_loss`), :math:`\mathcal{L}_{\text{cons}}` a
consistency term (default :func:`~torch_pairconf.consistency_loss`) and :math:`w(t)` a linear
warm-up from :math:`1/T_w` to 1 over the first ``warmup_steps`` training calls. Inference is
unchanged.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Final, cast

import torch
from torch import Tensor, nn

from ._checks import (
    check_bool,
    check_choice,
    check_float,
    check_mask,
    check_nonneg,
    check_pair_inputs,
)
from ._replay import Recording, Replay, forward_overridden, upstream_modules
from ._site import Field, locate_input, locate_output, map_representation
from .consistency import ConsistencyLoss
from .corruption import ContextCorruption, gold_utterances
from .listwise import PairListwiseLoss
from .margin import PairMarginLoss
from .ranking_ap import PairAPLoss
from .ranking_auc import PairAUCLoss
from .ranking_relative import PairRelativeMarginLoss

__all__ = ["RPCLoss", "Replay", "corrupt_submodule", "default_scores_fn", "unwrap_model", "utterance_mask"]

WHERE: Final = ("input", "output")

#: ``RPCLoss(ranking=name)``: the module each name builds and the defaults of the options that
#: name accepts (each ranking takes only its own options; any other raises). "hinge" and
#: "softmax" keep RPCL's defaults; the others are the rank-only candidates (their gradient sums
#: to zero over each row or batch, so they cannot shift the score scale).
_RANKINGS: Final[dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]]] = {
    "hinge": (
        PairMarginLoss,
        {"margin": 0.2, "k": 1, "space": "prob", "temperature": 1.0, "detach_negatives": True},
    ),
    "softmax": (
        PairListwiseLoss,
        {"margin": 0.2, "k": 1, "temperature": 1.0, "detach_negatives": True},
    ),
    "listwise": (
        PairListwiseLoss,
        {"margin": 0.0, "k": None, "temperature": 1.0, "detach_negatives": False},
    ),
    "ap": (PairAPLoss, {"scope": "batch", "temperature": 1.0}),
    "auc": (PairAUCLoss, {"scope": "batch", "margin": 1.0, "surrogate": "squared_hinge", "k": None}),
    "relative": (PairRelativeMarginLoss, {"margin": 1.0, "anchor": "hardest"}),
}
RANKINGS: Final = tuple(_RANKINGS)
#: Every ranking option of any ranking (what ``--rpcl-arg`` may name).
_RANKING_OPTIONS: Final = tuple(dict.fromkeys(key for _, opts in _RANKINGS.values() for key in opts))
_CORRUPTION_OPTIONS: Final = {"p": 0.3, "mode": "zero", "generator": None}
_CONSISTENCY_OPTIONS: Final = {"divergence": "kl", "detach_clean": True}


def utterance_mask(valid: Tensor) -> Tensor:
    """Real utterances of a square ``(B, N, N)`` validity mask: those with any valid pair, ``(B, N)``."""
    return valid.any(-1) | valid.any(-2)


def default_scores_fn(output: Any) -> Tensor:
    """Pair logits from what ``rerun()`` returned: only a tensor is taken as it is.

    A tuple, mapping or object is never guessed from (a model returning ``(emotion_logits,
    cause_logits, pair_logits)`` would otherwise feed the wrong tensor, silently when shapes
    agree): pick the pair logits with ``scores_fn=`` or inside ``rerun``.
    """
    if isinstance(output, Tensor):
        return output
    raise TypeError(
        f"rerun() returned a {type(output).__name__}, not the (B, N, M) pair-logit tensor; say "
        "which part holds the pair logits: RPCLoss(..., scores_fn=lambda out: out.pair_logits) "
        "or rerun=lambda: model(x)[2]"
    )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's own module inside ``DistributedDataParallel``/``DataParallel`` (``.module``) and
    ``torch.compile`` (``._orig_mod``) wrappers, however nested."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while True:
        if isinstance(model, wrappers):
            model = cast(nn.Module, model.module)
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = cast(nn.Module, model._orig_mod)
        else:
            return model


@contextmanager
def corrupt_submodule(
    module: nn.Module, fn: Callable[[Tensor], Tensor], where: str = "input", field: Field = None
) -> Iterator[None]:
    """Within the block, apply ``fn`` to the representation in ``module``'s input or output.

    ``where="input"``: the first positional input (or the one ``field`` names); ``"output"``: the
    output (a tensor, the first element of a tuple such as ``nn.LSTM``'s, a ``last_hidden_state``
    entry, or what ``field`` names). A ``PackedSequence`` is mapped through its padded view. The
    module's ``forward`` is overridden for the block and restored on exit, also when it raises.
    """
    check_choice("where", where, WHERE)
    owner = type(module).__name__
    inner = module.forward

    def corrupted(*args: Any, **kwargs: Any) -> Any:
        if where == "input":
            value, rebuild = locate_input(args, kwargs, field, owner)
            new_args, new_kwargs = rebuild(map_representation(value, fn, _steps(value), owner))
            return inner(*new_args, **new_kwargs)
        value, rebuild = locate_output(inner(*args, **kwargs), field, owner)
        return rebuild(map_representation(value, fn, _steps(value), owner))

    with forward_overridden(module, corrupted):
        yield


def _steps(value: Any) -> int:
    """The padded length of a representation (its second dim, or a PackedSequence's steps)."""
    if isinstance(value, Tensor):
        return int(value.shape[1]) if value.dim() > 1 else 0
    return int(value.batch_sizes.numel())


class _CorruptedForward:
    """The corrupted submodule's ``forward`` during the second pass.

    One object for the life of the loss, so that compiled graphs, which guard on the identity of
    a module's ``forward``, see the same function on every step; per-call state lives in its
    attributes.
    """

    def __init__(self, owner: str, where: str, field: Field, corruption: nn.Module) -> None:
        self.owner, self.where, self.field, self.corruption = owner, where, field, corruption
        self.inner: Callable[..., Any] | None = None
        self.clean: Any = None  # the replayed clean output, or None to compute it
        self.protect: Tensor | None = None
        self.real: Tensor | None = None
        self.calls = 0

    def arm(self, inner: Callable[..., Any], clean: Any, protect: Tensor, real: Tensor) -> None:
        self.inner, self.clean, self.protect, self.real, self.calls = inner, clean, protect, real, 0

    def disarm(self) -> None:
        self.inner = self.clean = self.protect = self.real = None

    def corrupt(self, x: Tensor) -> Tensor:
        protect, real = self.protect, self.real
        assert protect is not None and real is not None
        if x.dim() != 3 or x.shape[:2] != protect.shape:
            raise ValueError(
                f"the {self.where} of {self.owner} must be (B, N, D) with (B, N) = "
                f"{tuple(protect.shape)}, got {tuple(x.shape)} (batch_first=True is required; if "
                "that is not the utterance representation, name it with RPCLoss(..., field=...))"
            )
        corrupted: Tensor = self.corruption(x, protect, real)[0]
        return corrupted

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        assert self.inner is not None and self.protect is not None
        self.calls += 1
        n = int(self.protect.shape[1])
        if self.where == "input":
            value, rebuild = locate_input(args, kwargs, self.field, self.owner)
            new_args, new_kwargs = rebuild(map_representation(value, self.corrupt, n, self.owner))
            return self.inner(*new_args, **new_kwargs)
        output = self.clean if self.clean is not None else self.inner(*args, **kwargs)
        value, rebuild = locate_output(output, self.field, self.owner)
        return rebuild(map_representation(value, self.corrupt, n, self.owner))


def _replay_kind(output: bool, upstream: bool, where: str) -> Replay:
    """What the second pass reused: the clean output (``where="output"``) and the upstream calls."""
    if upstream and (output or where == "input"):
        return Replay.UPSTREAM
    return Replay.OUTPUT if output else Replay.NONE


def _split_options(
    options: dict[str, Any], part: str, given: nn.Module | str | None, defaults: dict[str, Any]
) -> dict[str, Any]:
    """The options of one part (``defaults`` filled in), refusing them next to a ready module."""
    mine = {k: options.pop(k) for k in list(options) if k in defaults}
    if isinstance(given, nn.Module) and mine:
        raise ValueError(
            f"pass either {part}=<module> or its options ({', '.join(sorted(mine))}), not both"
        )
    return {**defaults, **mine}


class RPCLoss(nn.Module):
    r"""Robust Pair Confidence Learning: a ranking and a consistency term added to a trainer's loss.

    The formula is in the module docstring. Two-line integration::

        rpcl = RPCLoss(model.context_encoder, model=model)                 # once
        loss = loss + rpcl(pair_logits, gold, valid, rerun=lambda: model(**batch))   # every step

    ``rerun`` re-runs the user's forward; during that call the representation of ``corrupt`` — a
    ``(B, N, D)`` utterance representation: its first positional input (``where="input"``) or its
    output (``where="output"``, default) — is replaced by a
    :class:`~torch_pairconf.ContextCorruption` of it that protects every utterance of a gold pair
    and the padding. What runs twice:

    * ``where="output"`` with output replay (``reuse_output=True``, default): ``corrupt`` does not
      run again; its clean output (graph included) is corrupted and handed on. With ``model``
      given, the modules upstream of ``corrupt`` do not run again either: each returns what its
      clean call returned, call by call. Only ``corrupt``'s consumers (and plain tensor code
      between modules) run twice. Without ``model`` the upstream modules run again and their
      results are thrown away.
    * ``where="input"``: ``corrupt`` and everything after it run twice; with ``model`` (and
      ``reuse_output=True``) the upstream modules are replayed.
    * ``reuse_output=False``: the whole forward runs twice (dropout draws fresh noise).

    Replay needs the clean forward to have run ``corrupt`` exactly once, in training mode with
    autograd enabled, since the previous call of this loss, the clean graph to be alive (one
    ``backward`` over base loss + RPCL) and eager execution; otherwise the second pass re-runs
    the forward. An upstream call replays only when it receives what the recorded call received
    (the same objects, or tensors viewing the same unmodified memory); otherwise that module
    computes. :attr:`last_replayed` (a :class:`Replay`) says what happened. The second pass runs
    under the autocast state the clean forward ran ``corrupt`` under, wherever ``rpcl(...)`` is
    called. Nothing recorded outlives a call of the loss; :meth:`remove_hooks` (or dropping the
    loss) removes the hooks, and model copies carry only inert hooks.

    Args:
        corrupt: the submodule whose input/output is corrupted, or its name in ``model``
            (``None`` if ``corrupted_scores`` are passed directly or ``consistency_weight == 0``).
        model: the model ``rerun`` calls (``DistributedDataParallel``/``torch.compile`` wrappers
            are unwrapped): enables the upstream replay and lets ``corrupt`` be a name.
        where: ``"input"`` or ``"output"`` of ``corrupt``.
        field: which part of the input/output is the representation (default: the first
            positional input; a tensor output, the first element of a tuple output, or a
            ``last_hidden_state`` entry): an int index, or a keyword / key / attribute name.
        ranking: a name, built with that name's own options (below), or any module
            ``(scores, gold, valid) -> loss``. ``"hinge"``
            (:class:`~torch_pairconf.PairMarginLoss`, the default); ``"softmax"``
            (:class:`~torch_pairconf.PairListwiseLoss` over the ``k`` hard negatives, ``margin``
            in logit units); the rank-only candidates ``"listwise"``
            (:class:`~torch_pairconf.PairListwiseLoss` over all of the row's negatives),
            ``"ap"`` (:class:`~torch_pairconf.PairAPLoss`), ``"auc"``
            (:class:`~torch_pairconf.PairAUCLoss`) and ``"relative"``
            (:class:`~torch_pairconf.PairRelativeMarginLoss`).
        corruption: a :class:`~torch_pairconf.ContextCorruption` (default built from ``p``,
            ``mode``, ``generator``).
        consistency: a :class:`~torch_pairconf.ConsistencyLoss` or any module
            ``(clean, corrupted, valid) -> loss`` (default built from ``divergence``,
            ``detach_clean``).
        margin_weight, consistency_weight: :math:`\lambda_r, \lambda_c \ge 0`; a zero weight skips
            its term (no second forward pass when ``consistency_weight == 0``).
        warmup_steps: linear warm-up of both weights over this many training calls (0: none).
        reuse_output: replay what the clean forward computed (see above); ``False`` re-runs.
        scores_fn: maps the output of ``rerun()`` to ``(B, N, M)`` pair logits (default
            :func:`default_scores_fn`: a tensor output only).
        scores_are: ``"logits"`` (default) or ``"probs"``; probabilities (e.g. sigmoid outputs
            multiplied by a position prior) are mapped to logits with ``torch.logit(p, eps)``.
        **options: the keyword convenience for the default parts. The ranking term's, per
            ``ranking`` (an option another ranking takes raises ``TypeError``): ``"hinge"``:
            ``margin`` (0.2), ``k`` (1), ``space`` ("prob"), ``temperature`` (1.0),
            ``detach_negatives`` (True); ``"softmax"``: ``margin`` (0.2), ``k`` (1),
            ``temperature`` (1.0), ``detach_negatives`` (True); ``"listwise"``: ``margin``
            (0.0), ``k`` (None: every negative), ``temperature`` (1.0), ``detach_negatives``
            (False); ``"ap"``: ``scope`` ("batch"), ``temperature`` (1.0); ``"auc"``: ``scope``
            ("batch"), ``margin`` (1.0), ``surrogate`` ("squared_hinge"), ``k`` (None);
            ``"relative"``: ``margin`` (1.0), ``anchor`` ("hardest"). ``p`` (0.3), ``mode``
            ("zero"), ``generator`` for the corruption; ``divergence`` ("kl"),
            ``detach_clean`` (True) for the consistency term.

    Shapes:
        ``scores`` ``(B, N, M)``, ``gold``/``valid`` bool ``(B, N, M)``; with a second pass
        ``M == N`` and the corrupted tensor is ``(B, N, D)``. Output: scalar.

    After each call, ``last`` holds the detached terms ``{"margin", "consistency", "weight"}`` for
    logging (no host sync).

    Example:
        >>> encoder = nn.Linear(4, 4)
        >>> def model(x):
        ...     h = encoder(x)
        ...     return h @ h.transpose(-1, -2)
        >>> rpcl = RPCLoss(encoder, p=0.5)
        >>> x = torch.randn(2, 3, 4)
        >>> gold = torch.eye(3, dtype=torch.bool).expand(2, 3, 3)
        >>> valid = torch.ones(2, 3, 3, dtype=torch.bool)
        >>> loss = rpcl(model(x), gold, valid, rerun=lambda: model(x))
        >>> bool(rpcl.last_replayed), rpcl.last_replayed.value
        (True, 'output')
    """

    last: dict[str, Tensor]
    last_replayed: Replay
    step: Tensor

    def __init__(
        self,
        corrupt: nn.Module | str | None = None,
        *,
        model: nn.Module | None = None,
        where: str = "output",
        field: Field = None,
        ranking: str | nn.Module = "hinge",
        corruption: ContextCorruption | None = None,
        consistency: nn.Module | None = None,
        margin_weight: float = 0.1,
        consistency_weight: float = 1.0,
        warmup_steps: int = 0,
        reuse_output: bool = True,
        scores_fn: Callable[[Any], Tensor] | None = None,
        scores_are: str = "logits",
        eps: float = 1e-6,
        **options: Any,
    ) -> None:
        super().__init__()
        check_choice("where", where, WHERE)
        check_nonneg("margin_weight", margin_weight)
        check_nonneg("consistency_weight", consistency_weight)
        check_choice("scores_are", scores_are, ("logits", "probs"))
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
        if field is not None and (isinstance(field, bool) or not isinstance(field, (int, str))):
            raise TypeError(f"field must be an int, a str or None, got {type(field).__name__}")
        self.margin_weight = margin_weight
        self.consistency_weight = consistency_weight
        self.where = where
        self.field = field
        self.warmup_steps = warmup_steps
        self.reuse_output = reuse_output
        self.scores_fn = scores_fn or default_scores_fn
        self.scores_are = scores_are
        self.eps = eps
        self.ranking = self._build_ranking(ranking, options)
        self.corruption = self._build_corruption(corruption, options)
        self.consistency = self._build_consistency(consistency, options)
        if options:
            raise TypeError(f"RPCLoss got unexpected keyword argument(s): {', '.join(sorted(options))}")
        root = unwrap_model(model) if model is not None else None
        target = self._resolve_corrupt(corrupt, root)
        # Held outside the module tree so that .to()/state_dict of the loss never touch the model.
        self._corrupt: tuple[nn.Module, ...] = (target,) if target is not None else ()
        self.register_buffer("step", torch.zeros((), dtype=torch.long), persistent=True)
        self.last = {}
        self.last_replayed = Replay.NONE
        self._recording: Recording | None = None
        self._forward: _CorruptedForward | None = None
        if target is not None and consistency_weight > 0:
            self._forward = _CorruptedForward(type(target).__name__, where, field, self.corruption)
            upstream = upstream_modules(root, target) if root is not None and reuse_output else []
            keep = reuse_output and where == "output"
            self._recording = Recording(target, upstream, keep_output=keep)
            self._recording.install()
            # The model keeps the hooks alive, not this loss: remove them when the loss goes away.
            weakref.finalize(self, self._recording.remove)

    # ---------------------------------------------------------------- construction helpers

    @staticmethod
    def _build_ranking(ranking: str | nn.Module, options: dict[str, Any]) -> nn.Module:
        if isinstance(ranking, nn.Module):
            _split_options(options, "ranking", ranking, dict.fromkeys(_RANKING_OPTIONS))
            return ranking
        check_choice("ranking", ranking, RANKINGS)
        build, defaults = _RANKINGS[ranking]
        opts = _split_options(options, "ranking", ranking, defaults)
        foreign = sorted(k for k in options if k in _RANKING_OPTIONS)
        if foreign:
            raise TypeError(
                f"ranking={ranking!r} takes no option {', '.join(map(repr, foreign))} (its "
                f"options: {', '.join(defaults)})"
            )
        return build(**opts)

    @staticmethod
    def _build_corruption(corruption: ContextCorruption | None, options: dict[str, Any]) -> ContextCorruption:
        opts = _split_options(options, "corruption", corruption, _CORRUPTION_OPTIONS)
        if corruption is not None:
            if not isinstance(corruption, ContextCorruption):
                raise TypeError(
                    f"corruption must be a ContextCorruption, got {type(corruption).__name__}"
                )
            return corruption
        return ContextCorruption(opts.pop("p"), **opts)

    @staticmethod
    def _build_consistency(consistency: nn.Module | None, options: dict[str, Any]) -> nn.Module:
        opts = _split_options(options, "consistency", consistency, _CONSISTENCY_OPTIONS)
        if consistency is not None:
            return consistency
        return ConsistencyLoss(opts.pop("divergence"), **opts)

    @staticmethod
    def _resolve_corrupt(corrupt: nn.Module | str | None, root: nn.Module | None) -> nn.Module | None:
        if isinstance(corrupt, str):
            if root is None:
                raise ValueError(f"corrupt={corrupt!r} names a submodule: pass model= as well")
            try:
                return root.get_submodule(corrupt)
            except AttributeError as exc:
                raise ValueError(f"corrupt={corrupt!r} is not a submodule of {type(root).__name__}") from exc
        if corrupt is not None and not isinstance(corrupt, nn.Module):
            raise TypeError(f"corrupt must be an nn.Module, a name or None, got {type(corrupt).__name__}")
        return corrupt

    @staticmethod
    def keywords() -> tuple[str, ...]:
        """Every keyword :class:`RPCLoss` accepts: its parameters and the part options."""
        params = [p for p in inspect.signature(RPCLoss).parameters if p not in ("corrupt", "options")]
        return (*params, *_RANKING_OPTIONS, *_CORRUPTION_OPTIONS, *_CONSISTENCY_OPTIONS)

    @property
    def margin_loss(self) -> nn.Module:
        """The ranking term (its name before :attr:`ranking`; kept for compatibility)."""
        return self.ranking

    def remove_hooks(self) -> None:
        """Remove the recording hooks (later calls re-run the forward instead of replaying)."""
        if self._recording is not None:
            self._recording.remove()
        self._recording = None

    # ------------------------------------------------------------------------- the call

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
        if not self._corrupt or self._forward is None:
            raise ValueError("rerun was given but RPCLoss(corrupt=...) names no submodule to corrupt")
        if gold.shape[-1] != gold.shape[-2]:
            raise ValueError(
                f"a corrupted second pass needs square pair matrices (B, N, N), got {tuple(gold.shape)}"
            )
        protect = gold_utterances(gold & valid)
        real = utterance_mask(valid) if utterances is None else check_bool("utterances", utterances)
        module, fwd, rec = self._corrupt[0], self._forward, self._recording
        taken = rec.take() if rec is not None else None
        clean = taken.target_output if taken is not None and self.reuse_output else None
        calls = taken.calls if taken is not None and self.reuse_output else {}
        fell_back = [False]
        with ExitStack() as stack:
            if rec is not None:
                stack.enter_context(rec.paused())
            if taken is not None and taken.autocast is not None:
                stack.enter_context(taken.autocast.entered())
            if rec is not None and calls:
                stack.enter_context(rec.upstream_overrides(calls, lambda: fwd.calls > 0, fell_back))
            fwd.arm(module.forward, clean, protect, real)
            stack.callback(fwd.disarm)
            stack.enter_context(forward_overridden(module, fwd))
            out = rerun()
        if fwd.calls == 0:
            raise ValueError(
                f"rerun() never called the corrupted submodule {type(module).__name__}: pass the "
                "module that the model's forward runs (e.g. RPCLoss(model.context_encoder); for a "
                "wrapped model, the wrapped module's: RPCLoss('context_encoder', model=ddp_model))"
            )
        self.last_replayed = _replay_kind(clean is not None, bool(calls) and not fell_back[0], self.where)
        return self._logits(self.scores_fn(out))

    def forward(
        self,
        scores: Tensor,
        gold: Tensor,
        valid: Tensor,
        rerun: Callable[[], Any] | None = None,
        *,
        corrupted_scores: Tensor | None = None,
        corrupted_valid: Tensor | None = None,
        utterances: Tensor | None = None,
    ) -> Tensor:
        """Compute the weighted RPCL terms.

        Args:
            scores: ``(B, N, M)`` clean pair logits (or probabilities with ``scores_are="probs"``).
            gold, valid: ``(B, N, M)`` bool.
            rerun: zero-argument callable that re-runs the model's forward (needed when
                ``consistency_weight > 0`` and ``corrupted_scores`` is not given).
            corrupted_scores: the corrupted view's scores, if computed by the caller (e.g. from
                an input-level perturbation built by the collate function, gathered into the
                clean view's ``(B, N, M)`` index space).
            corrupted_valid: ``(B, N, M)`` bool, the pairs the corrupted view has too (e.g. the
                pairs of utterances that survive a perturbation): the consistency term runs
                over ``valid & corrupted_valid`` (default: ``valid``).
            utterances: optional ``(B, N)`` bool real-utterance mask (default: derived from
                ``valid``).
        """
        self.last_replayed = Replay.NONE
        try:
            return self._terms(scores, gold, valid, rerun, corrupted_scores, corrupted_valid, utterances)
        finally:
            if self._recording is not None:
                self._recording.clear()  # never carry a clean output (and its graph) into the next step

    def _terms(
        self,
        scores: Tensor,
        gold: Tensor,
        valid: Tensor,
        rerun: Callable[[], Any] | None,
        corrupted_scores: Tensor | None,
        corrupted_valid: Tensor | None,
        utterances: Tensor | None,
    ) -> Tensor:
        check_float("scores", scores)
        scores = self._logits(scores)
        check_pair_inputs(scores, gold, valid)
        total = scores.new_zeros(())
        terms: dict[str, Tensor] = {}
        if self.margin_weight > 0:
            m = self.ranking(scores, gold, valid)
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
                corrupted_scores = self._logits(check_float("corrupted_scores", corrupted_scores))
            check_mask("valid", valid, corrupted_scores, "corrupted_scores")
            if corrupted_scores.dtype != scores.dtype:
                raise TypeError(
                    f"the corrupted view's pair scores are {corrupted_scores.dtype} but the clean "
                    f"scores are {scores.dtype}: both views must run under the same autocast state "
                    "(call RPCLoss inside the torch.autocast block of the clean forward, or cast "
                    "both to one dtype)"
                )
            shared = valid
            if corrupted_valid is not None:
                shared = valid & check_mask("corrupted_valid", corrupted_valid, scores)
            c = self.consistency(scores, corrupted_scores, shared)
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
        upstream = len(self._recording.upstream) if self._recording is not None else 0
        return (
            f"corrupt={target}, where={self.where!r}, field={self.field!r}, "
            f"reuse_output={self.reuse_output}, upstream_modules={upstream}, "
            f"margin_weight={self.margin_weight}, "
            f"consistency_weight={self.consistency_weight}, warmup_steps={self.warmup_steps}"
        )
