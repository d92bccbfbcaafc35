"""Where the corrupted representation sits in a module's input or output, and how to replace it.

The corrupted second pass of :class:`~torch_pairconf.RPCLoss` rewrites one ``(B, N, D)`` tensor of
utterance representations: the first positional input of a submodule (``where="input"``) or its
output (``where="output"``). Real modules hand that tensor around in several containers; this
module finds it (:func:`locate`) and builds the same container around a replacement.

Rules, with ``field=None``:

* input: the first positional argument;
* output: a tensor itself; a tuple or list whose first element is a tensor or a
  ``PackedSequence`` (the ``(output, h_n)`` convention of ``nn.LSTM``/``nn.GRU``); a mapping or an
  object (dataclass, ``ModelOutput``) with a ``last_hidden_state`` entry (the convention of
  Hugging Face encoders).

``field`` names it explicitly: an int (positional argument / tuple index) or a str (keyword
argument / mapping key / attribute). Anything else is a ``TypeError`` that says how to name it.
A ``PackedSequence`` is corrupted through its padded ``(B, N, D)`` view, row by row, keeping its
packing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

__all__ = ["Field", "Located", "locate_input", "locate_output", "map_representation"]

Field = int | str | None
Rebuild = Callable[[Any], Any]
Located = tuple[Any, Rebuild]

_HIDDEN = "last_hidden_state"


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"Tensor{tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_describe(v) for v in value[:4]) + (", ..." if len(value) > 4 else "")
        return f"{type(value).__name__}({inner})"
    if isinstance(value, Mapping):
        return f"{type(value).__name__} with keys {list(value)[:6]}"
    return type(value).__name__


def _is_representation(value: object) -> bool:
    return isinstance(value, (Tensor, PackedSequence))


def _replace_item(container: Any, key: int | str, new: Any) -> Any:
    """``container`` with entry ``key`` replaced by ``new`` (same container type)."""
    if isinstance(container, Mapping):
        if dataclasses.is_dataclass(container) and not isinstance(container, type):
            return dataclasses.replace(container, **{str(key): new})  # e.g. a ModelOutput
        rebuilt: Any = type(container)
        return rebuilt({**container, key: new})
    if isinstance(container, tuple) and hasattr(container, "_replace"):  # a NamedTuple
        name = container._fields[key] if isinstance(key, int) else key  # type: ignore[attr-defined]
        return container._replace(**{name: new})
    if isinstance(container, (tuple, list)) and isinstance(key, int):
        items = list(container)
        items[key] = new
        return type(container)(items)
    if dataclasses.is_dataclass(container) and not isinstance(container, type):
        return dataclasses.replace(container, **{str(key): new})
    raise TypeError(f"cannot replace entry {key!r} of a {type(container).__name__}")


def _get_item(container: Any, key: int | str) -> Any:
    if isinstance(container, Mapping):
        return container[key]
    if isinstance(key, int) and isinstance(container, (tuple, list)):
        return container[key]
    if isinstance(key, str):
        return getattr(container, key)
    raise TypeError(f"cannot index a {type(container).__name__} with {key!r}")


def locate_output(output: Any, field: Field, owner: str) -> Located:
    """The representation inside a module's ``output`` and a function rebuilding the output."""
    if field is not None:
        try:
            value = _get_item(output, field)
        except (KeyError, IndexError, AttributeError, TypeError) as exc:
            raise TypeError(
                f"RPCLoss(field={field!r}): the output of {owner} ({_describe(output)}) has no "
                f"entry {field!r}"
            ) from exc
        return value, lambda new: _replace_item(output, field, new)
    if _is_representation(output):
        return output, lambda new: new
    if isinstance(output, (tuple, list)) and output and _is_representation(output[0]):
        return output[0], lambda new: _replace_item(output, 0, new)
    if isinstance(output, Mapping) and _HIDDEN in output:
        return output[_HIDDEN], lambda new: _replace_item(output, _HIDDEN, new)
    if not isinstance(output, (tuple, list, Mapping)) and hasattr(output, _HIDDEN):
        return getattr(output, _HIDDEN), lambda new: _replace_item(output, _HIDDEN, new)
    raise TypeError(
        f"RPCLoss cannot find the (B, N, D) representation in the output of {owner}: got "
        f"{_describe(output)}; name it with RPCLoss(..., field=<index, key or attribute>)"
    )


def locate_input(args: tuple[Any, ...], kwargs: dict[str, Any], field: Field, owner: str) -> Located:
    """The representation among a module's call arguments and a function rebuilding
    ``(args, kwargs)`` around a replacement."""
    if isinstance(field, str):
        if field not in kwargs:
            raise TypeError(
                f"RPCLoss(where='input', field={field!r}): {owner} was called without the "
                f"keyword argument {field!r} (keywords: {sorted(kwargs)})"
            )
        return kwargs[field], lambda new: (args, {**kwargs, field: new})
    index = 0 if field is None else field
    if not 0 <= index < len(args):
        raise TypeError(
            f"RPCLoss corrupts positional input {index} of {owner}, but it was called with "
            f"{len(args)} positional argument(s); name a keyword input with field='name'"
        )

    def rebuild(new: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (*args[:index], new, *args[index + 1 :]), kwargs

    return args[index], rebuild


def _packed_rows(packed: PackedSequence) -> tuple[Tensor, Tensor]:
    """``(batch index, time step)`` of every row of ``packed.data`` (original batch order)."""
    sizes = packed.batch_sizes
    steps = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
    starts = sizes.cumsum(0) - sizes
    within = torch.arange(int(sizes.sum())) - starts[steps]
    device = packed.data.device
    rows = within.to(device)
    if packed.sorted_indices is not None:
        rows = packed.sorted_indices[rows]
    return rows, steps.to(device)


def map_representation(value: Any, fn: Callable[[Tensor], Tensor], n: int, owner: str) -> Any:
    """Apply ``fn`` (``(B, N, D) -> (B, N, D)``) to a tensor or to a ``PackedSequence``'s padded view.

    A ``PackedSequence`` is padded to ``n`` steps, passed through ``fn``, and its rows are taken
    back from the result, so its packing (``batch_sizes``, sort order) is unchanged.
    """
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, PackedSequence):
        padded, _ = pad_packed_sequence(value, batch_first=True, total_length=n)
        rows, steps = _packed_rows(value)
        data = fn(padded)[rows, steps]
        return PackedSequence(data, value.batch_sizes, value.sorted_indices, value.unsorted_indices)
    raise TypeError(
        f"RPCLoss can corrupt a (B, N, D) tensor or a PackedSequence; {owner} gave "
        f"{_describe(value)} (name the tensor with RPCLoss(..., field=...))"
    )
