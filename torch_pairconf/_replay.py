"""How :class:`~torch_pairconf.RPCLoss` runs the user's forward a second time, corrupted.

Two mechanisms, both owned by one :class:`Recording` per loss:

* **Recording hooks**, installed once for the life of the loss: a forward hook on the corrupted
  submodule remembers its output from the user's clean forward (with the autocast state it ran
  under), and, when the loss knows the whole ``model``, forward hooks on the modules *upstream*
  of it (every module outside the corrupted module's ancestors and subtree) remember what their
  outermost calls returned before the corrupted module ran. Hooks record only calls made in
  training mode with autograd enabled, outside ``torch.compile`` tracing and outside the second
  pass. A hook object deep-copies and pickles as an inert hook that never records, so model
  copies (``copy.deepcopy``, ``AveragedModel``, ``torch.save(model)``) carry no activation and
  no live hook.
* **Forward overrides**, armed only while ``rerun()`` runs: the corrupted submodule's ``forward``
  (an instance attribute, which compiled graphs guard on, unlike hooks registered after a graph
  was compiled) runs the corruption; recorded upstream modules return their recorded outputs
  call by call, as long as each call receives what the recorded call received (the same objects,
  or tensors viewing the same unmodified memory). Everything downstream recomputes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ._tracing import compiling

__all__ = ["AutocastState", "Recording", "Replay", "Taken", "forward_overridden", "upstream_modules"]


class Replay(str, Enum):
    """What the corrupted second pass reused from the clean forward (``RPCLoss.last_replayed``).

    Falsy only for :attr:`NONE`, so ``if rpcl.last_replayed:`` still reads "was anything replayed".
    """

    NONE = "none"  #: the second pass ran the whole forward again
    OUTPUT = "output"  #: the corrupted submodule's clean output was replayed; upstream ran again
    UPSTREAM = "upstream"  #: ... and every upstream module's recorded call was replayed too

    def __bool__(self) -> bool:
        return self is not Replay.NONE


@dataclass(frozen=True)
class AutocastState:
    """The autocast state of one device type at the time of a recorded call."""

    device_type: str
    enabled: bool
    dtype: torch.dtype

    @classmethod
    def current(cls, device_type: str) -> AutocastState:
        try:  # torch >= 2.4
            enabled = torch.is_autocast_enabled(device_type)
            dtype = torch.get_autocast_dtype(device_type)
        except TypeError:  # pragma: no cover - older torch: per-device functions
            cpu = device_type == "cpu"
            enabled = torch.is_autocast_cpu_enabled() if cpu else torch.is_autocast_enabled()
            dtype = torch.get_autocast_cpu_dtype() if cpu else torch.get_autocast_gpu_dtype()
        return cls(device_type, bool(enabled), dtype)

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block in this state if the current one differs (else leave it alone)."""
        if AutocastState.current(self.device_type) == self:
            yield
            return
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled):
            yield


@dataclass
class _Call:
    """One recorded upstream call: its arguments (with tensor versions) and its output."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    versions: tuple[int, ...]
    output: Any


def _tensors(value: Any, depth: int = 0) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif depth < 3 and isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v, depth + 1)
    elif depth < 3 and isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v, depth + 1)


def _versions(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, ...]:
    """The in-place version counters of the tensors among a call's arguments."""
    return tuple(t._version for t in itertools.chain(_tensors(args), _tensors(kwargs)))


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    """Whether ``b`` reads exactly the memory the recorded ``a`` read (no value is compared).

    The recorded ``a`` is alive, so its storage cannot have been reused by another tensor.
    """
    return a is b or (
        a.device == b.device
        and a.dtype == b.dtype
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.storage_offset() == b.storage_offset()
        and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    )


def _same_value(a: Any, b: Any, depth: int = 0) -> bool:
    if a is b:
        return True
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return _same_tensor(a, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, (int, float, bool, str, bytes, type(None), torch.dtype, torch.device)):
        return bool(a == b)
    if depth < 3 and isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same_value(x, y, depth + 1) for x, y in zip(a, b, strict=True))
    if depth < 3 and isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k], depth + 1) for k in a)
    return False


class _Hook:
    """A recording hook in a module's hook dict; pickles and deep-copies as an inert hook."""

    __slots__ = ("recording", "slot")

    def __init__(self, recording: Recording | None, slot: int) -> None:
        self.recording = recording
        self.slot = slot

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        """The inert hook: records nothing, changes nothing (subclasses record)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _Hook:
        return _Hook(None, self.slot)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Hook, (None, self.slot))


class _OutputHook(_Hook):
    """On the corrupted submodule: ``(module, args, output)``."""

    __slots__ = ()

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        rec = self.recording
        if rec is not None and rec.records(module):
            rec.record_target(output)


class _PreHook(_Hook):
    """On an upstream module, before its forward: tracks nesting so only outermost calls record."""

    __slots__ = ()

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        rec = self.recording
        if rec is not None and rec.records(module):
            rec.depth += 1


class _UpstreamHook(_Hook):
    """On an upstream module, after its forward: ``(module, args, kwargs, output)``."""

    __slots__ = ()

    def __call__(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        rec = self.recording
        if rec is not None and rec.records(module):
            rec.depth = max(rec.depth - 1, 0)
            if rec.depth == 0 and rec.target_calls == 0:
                rec.record_upstream(self.slot, args, kwargs, output)


def upstream_modules(model: nn.Module, target: nn.Module) -> list[nn.Module]:
    """Every module of ``model`` outside ``target``'s ancestors and ``target``'s own subtree.

    Raises ``ValueError`` if ``target`` is not a submodule of ``model``.
    """
    path = _path_to(model, target)
    inside = {id(m) for m in target.modules()}
    on_path = {id(m) for m in path}
    return [m for m in model.modules() if id(m) not in inside and id(m) not in on_path]


def _path_to(model: nn.Module, target: nn.Module) -> list[nn.Module]:
    """``model`` and the ancestors of ``target`` below it (not ``target`` itself)."""
    for name, module in model.named_modules():
        if module is target:
            path = [model]
            for part in name.split(".")[:-1] if name else []:
                path.append(path[-1].get_submodule(part))
            return path
    raise ValueError(
        f"RPCLoss(model=...): {type(target).__name__} (the corrupted submodule) is not a "
        f"submodule of {type(model).__name__}"
    )


@dataclass
class Recording:
    """What the hooks of one loss recorded since the last RPCL call (see the module docstring)."""

    target: nn.Module
    upstream: list[nn.Module] = field(default_factory=list)
    keep_output: bool = True  #: hold the target's clean output for replay (else only its autocast state)
    active: bool = True  #: false during the second pass
    target_calls: int = 0
    target_output: Any = None
    autocast: AutocastState | None = None
    depth: int = 0
    calls: dict[int, list[_Call]] = field(default_factory=dict)
    handles: list[RemovableHandle] = field(default_factory=list)

    def install(self) -> None:
        """Register the hooks (once, at construction of the loss)."""
        self.handles.append(self.target.register_forward_hook(_OutputHook(self, -1)))
        for slot, module in enumerate(self.upstream):
            self.handles.append(module.register_forward_pre_hook(_PreHook(self, slot)))
            self.handles.append(
                module.register_forward_hook(_UpstreamHook(self, slot), with_kwargs=True)
            )

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.clear()

    def records(self, module: nn.Module) -> bool:
        # compiling() first: traced hooks then read no state that compiled graphs would guard on.
        return not compiling() and self.active and module.training and torch.is_grad_enabled()

    def record_target(self, output: Any) -> None:
        self.target_calls += 1
        if self.target_calls == 1:
            self.target_output = output if self.keep_output else None
            self.autocast = _autocast_of(output)
        else:  # two clean calls: replay is off until the next clear, so hold nothing
            self.target_output = None
            self.calls.clear()

    def record_upstream(self, slot: int, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        self.calls.setdefault(slot, []).append(_Call(args, kwargs, _versions(args, kwargs), output))

    def clear(self) -> None:
        """Forget everything recorded (after each RPCL call: never carry a graph into the next step)."""
        self.target_calls = 0
        self.target_output = None
        self.autocast = None
        self.depth = 0
        self.calls = {}

    def take(self) -> Taken:
        """Hand over what the last clean forward recorded and forget it (the hooks then hold
        nothing). Replay needs that forward to have run the target exactly once, eagerly."""
        replayable = self.target_calls == 1 and not compiling()
        taken = Taken(
            self.target_output if replayable else None,
            self.calls if replayable else {},
            self.autocast,
        )
        self.clear()
        return taken

    @contextmanager
    def paused(self) -> Iterator[None]:
        self.active = False
        try:
            yield
        finally:
            self.active = True

    def upstream_overrides(
        self, calls: dict[int, list[_Call]], reached: Callable[[], bool], fell_back: list[bool]
    ) -> ExitStack:
        """Arm the upstream replay: each recorded module returns its recorded outputs in order
        while its calls receive what the recorded calls received; ``fell_back[0]`` turns true
        when a module had to compute instead before the target was ``reached``."""
        stack = ExitStack()
        for slot, recorded in calls.items():
            module = self.upstream[slot]
            replay = _replayer(module.forward, recorded, reached, fell_back)
            stack.enter_context(forward_overridden(module, replay))
        return stack


@dataclass(frozen=True)
class Taken:
    """What one clean forward recorded: the target's output (``None``: not replayable or not
    kept), the upstream calls by slot, and the autocast state the target ran under."""

    target_output: Any
    calls: dict[int, list[_Call]]
    autocast: AutocastState | None


def _autocast_of(output: Any) -> AutocastState | None:
    """The autocast state of the device of the first tensor in ``output`` (a PackedSequence is a
    tuple, a ModelOutput a dict)."""
    for t in _tensors(output):
        return AutocastState.current(t.device.type)
    return None


def _replayer(
    forward: Callable[..., Any],
    calls: list[_Call],
    reached: Callable[[], bool],
    fell_back: list[bool],
) -> Callable[..., Any]:
    position = 0

    def replay(*args: Any, **kwargs: Any) -> Any:
        nonlocal position
        if reached():  # after the target: downstream work, computed as usual
            return forward(*args, **kwargs)
        i, position = position, position + 1
        if i < len(calls):
            rec = calls[i]
            if (
                _same_value(rec.args, args)
                and _same_value(rec.kwargs, kwargs)
                and _versions(args, kwargs) == rec.versions  # nothing written in place since
            ):
                return rec.output
        fell_back[0] = True
        return forward(*args, **kwargs)

    return replay


@contextmanager
def forward_overridden(module: nn.Module, forward: Callable[..., Any]) -> Iterator[None]:
    """Within the block, calling ``module`` runs ``forward`` (hooks still run) instead of its own.

    An instance attribute shadows the class's ``forward``; one that was already there (set by
    another library) is put back afterwards.
    """
    missing = object()
    own = module.__dict__.get("forward", missing)
    module.forward = forward
    try:
        yield
    finally:
        if own is missing:
            del module.forward
        else:
            module.forward = own
