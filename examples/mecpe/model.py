"""The reference MECPE model: utterance encoder → BiLSTM context encoder → pair scorer.

Architecture (the *matched base*; the RPCL arm only adds the library's loss terms):

* :class:`UtteranceEncoder`: each modality (frozen text embedding, a trainable hashed n-gram
  ``EmbeddingBag``, or the pooled states of a transformer trained end to end,
  :class:`~examples.mecpe.transformer.TransformerText`; optional audio / video feature vectors)
  → ``Linear`` → concatenation → ``Linear(→ utt_dim)`` + ReLU + dropout: utterance
  representations ``(B, N, D)``.
* ``model.context`` (:class:`ContextEncoder`): a BiLSTM over the utterances of a conversation.
  Its **first positional input** is the utterance representations ``(B, N, D)`` and its output
  the contextual representations ``(B, N, H)``; :class:`torch_pairconf.RPCLoss` hooks it
  (``where="input"`` corrupts utterance representations, ``where="output"`` contextual ones).
* Auxiliary heads on ``H``: emotion (7-way) and cause (utterance is the cause of some pair).
* :class:`PairScorer`: an MLP over ``[h_i; h_j; h_i * h_j; rel-pos(i - j); same-speaker]`` whose
  first layer is factorised (``W_a h_i + W_b h_j + W_c (h_i * h_j) + embeddings``) so no
  ``(B, N, N, 3H + …)`` concatenation is ever built, and which runs on the pairs of real
  utterances only. Returns pair logits ``(B, N, N)`` with row ``i`` = emotion utterance and
  column ``j`` = candidate cause (padding slots: a large negative constant).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .batching import Batch
from .transformer import TransformerText

__all__ = [
    "ABSENT",
    "N_EMOTIONS",
    "ContextEncoder",
    "MECPEModel",
    "ModelConfig",
    "ModelOutput",
    "PairScorer",
    "UtteranceEncoder",
    "mecpe_loss",
]

N_EMOTIONS = 7


@dataclass
class ModelConfig:
    """Sizes of :class:`MECPEModel`.

    Attributes:
        text_dim: dimension of the frozen text embeddings, or ``None`` for the ``hash`` encoder.
        hash_buckets: buckets of the hashed n-gram ``EmbeddingBag`` (``hash`` encoder only).
        hash_dim: embedding size of the hashed n-grams.
        audio_dim: audio feature dimension or ``None`` (no audio).
        video_dim: video feature dimension or ``None`` (no video).
        modality_dim: output size of each per-modality ``Linear``.
        utt_dim: utterance representation size ``D``.
        hidden: BiLSTM hidden size per direction (``H = 2 * hidden``).
        pair_hidden: hidden size of the pair MLP.
        pair_rank: the product term ``h_i * h_j`` is taken in a learned ``pair_rank``-dimensional
            projection of ``h`` (``None``: in ``h`` itself, ``H`` dimensions). It is the pair
            scorer's largest cost, paid on every pair (and again in RPCL's second pass).
        pair_dropout: dropout on the pair MLP's hidden layer (``None``: ``dropout``). One Bernoulli
            draw per pair and hidden unit; ``h`` itself is already dropped out.
        max_rel: relative positions ``i - j`` are clipped to ``[-max_rel, max_rel]``.
        dropout: dropout rate.
        n_emotions: number of emotion classes.
        transformer: the model folder (``minilm`` or a path) of a transformer text encoder
            trained end to end, or ``None`` (``text_dim`` is then its hidden size).
        transformer_fingerprint: the folder's file fingerprint the model was built from.
        train_layers: the transformer's top layers that are part of the model (and trained).
        pooling: ``mean`` or ``cls`` pooling of the transformer's states per utterance.
        grad_checkpoint: recompute the transformer layers' activations in the backward pass.
    """

    text_dim: int | None = 384
    hash_buckets: int = 2**18
    hash_dim: int = 200
    audio_dim: int | None = None
    video_dim: int | None = None
    modality_dim: int = 200
    utt_dim: int = 200
    hidden: int = 200
    pair_hidden: int = 200
    pair_rank: int | None = 64
    pair_dropout: float | None = 0.0
    max_rel: int = 12
    dropout: float = 0.1
    n_emotions: int = N_EMOTIONS
    transformer: str | None = None
    transformer_fingerprint: str | None = None
    train_layers: int = 0
    pooling: str = "mean"
    grad_checkpoint: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (stored in checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "model config") -> ModelConfig:
        """Rebuild from :meth:`to_dict`; missing or unknown keys raise naming ``source``.

        (Files written before a field existed are refused by their format version first:
        :data:`examples.mecpe.checkpoint.FORMAT`; the transformer's fields, which no older
        model had, read as :data:`ABSENT` when missing.)
        """
        names = {f.name for f in fields(cls)}
        d = {**{k: v for k, v in ABSENT.items() if k not in d}, **d}
        missing, unknown = sorted(names - set(d)), sorted(set(d) - names)
        if missing or unknown:
            raise ValueError(
                f"{source}: the model settings do not match this trainer's (missing: "
                f"{', '.join(missing) or '-'}; unknown: {', '.join(unknown) or '-'})"
            )
        return cls(**d)


#: The values of the :class:`ModelConfig` fields added with the transformer text encoder in a
#: file written before they existed (such a model had no transformer).
ABSENT: dict[str, Any] = {
    "transformer": None,
    "transformer_fingerprint": None,
    "train_layers": 0,
    "pooling": "mean",
    "grad_checkpoint": False,
}


class ModelOutput(NamedTuple):
    """Outputs of :class:`MECPEModel` (give RPCLoss ``scores_fn=lambda out: out.pair_logits``)."""

    pair_logits: Tensor
    """``(B, N, N)`` pair logits, row = emotion utterance, column = candidate cause."""
    emotion_logits: Tensor
    """``(B, N, n_emotions)`` emotion logits."""
    cause_logits: Tensor
    """``(B, N)`` utterance-level cause logits."""


class UtteranceEncoder(nn.Module):
    """Per-modality projections, fusion ``Linear`` + ReLU + dropout → ``(B, N, utt_dim)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.bag: nn.EmbeddingBag | None = None
        self.transformer: TransformerText | None = None
        if cfg.transformer is not None:
            self.transformer = TransformerText(
                cfg.transformer,
                train_layers=cfg.train_layers,
                fingerprint=cfg.transformer_fingerprint,
                pooling=cfg.pooling,
                grad_checkpoint=cfg.grad_checkpoint,
            )
            self.text = nn.Linear(self.transformer.hidden, cfg.modality_dim)
        elif cfg.text_dim is None:
            self.bag = nn.EmbeddingBag(cfg.hash_buckets, cfg.hash_dim, mode="mean")
            nn.init.normal_(self.bag.weight, std=0.1)
            self.text = nn.Linear(cfg.hash_dim, cfg.modality_dim)
        else:
            self.text = nn.Linear(cfg.text_dim, cfg.modality_dim)
        self.audio = nn.Linear(cfg.audio_dim, cfg.modality_dim) if cfg.audio_dim else None
        self.video = nn.Linear(cfg.video_dim, cfg.modality_dim) if cfg.video_dim else None
        n_mod = 1 + (self.audio is not None) + (self.video is not None)
        self.fuse = nn.Linear(n_mod * cfg.modality_dim, cfg.utt_dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, batch: Batch) -> Tensor:
        """Return utterance representations ``(B, N, utt_dim)`` (padding rows are not zeroed)."""
        bsz, n = batch.mask.shape
        if self.bag is not None:
            if batch.token_ids is None or batch.token_offsets is None:
                raise ValueError("the hash text encoder needs batch.token_ids / token_offsets")
            text = self.bag(batch.token_ids, batch.token_offsets).view(bsz, n, -1)
        elif self.transformer is not None:
            if batch.text_tokens is None:
                raise ValueError("the transformer text encoder needs batch.text_tokens")
            text = self.transformer(batch.text_tokens, batch_size=bsz, n=n)
        else:
            if batch.text is None:
                raise ValueError("this model needs text embeddings (batch.text)")
            text = batch.text
        parts = [self.text(text)]
        if self.audio is not None:
            if batch.audio is None:
                raise ValueError("this model was built with audio features; batch.audio is None")
            parts.append(self.audio(batch.audio))
        if self.video is not None:
            if batch.video is None:
                raise ValueError("this model was built with video features; batch.video is None")
            parts.append(self.video(batch.video))
        x = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        out: Tensor = self.dropout(F.relu(self.fuse(x)))
        return out


class ContextEncoder(nn.Module):
    """A BiLSTM over the utterances of each conversation (padding handled by packing).

    ``forward(x, lengths_or_mask)``: ``x`` is ``(B, N, D)`` — the tensor RPCLoss corrupts with
    ``where="input"`` — and the result ``(B, N, 2 * hidden)`` (zeros on padding) is what it
    corrupts with ``where="output"``.
    """

    def __init__(self, input_dim: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_dim, hidden, batch_first=True, bidirectional=True)
        self.output_dim = 2 * hidden

    def forward(self, x: Tensor, lengths_or_mask: Tensor) -> Tensor:
        """Encode ``x`` ``(B, N, D)`` given ``(B,)`` lengths or a ``(B, N)`` bool mask."""
        lengths = lengths_or_mask
        if lengths.dtype == torch.bool:
            lengths = lengths.sum(dim=1)
        packed = pack_padded_sequence(
            x, lengths.detach().to("cpu", torch.long), batch_first=True, enforce_sorted=False
        )
        out, _ = self.lstm(packed)
        padded, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return padded


class PairScorer(nn.Module):
    """Pair MLP with a factorised first layer, evaluated on the real pairs only.

    ``z_ij = W_a h_i + W_b h_j + W_c (U h_i * U h_j) + E_rel[clip(i - j)] + E_spk[same(i, j)] + b``;
    ``logit_ij = w · dropout(relu(z_ij)) + c``, with ``U`` a ``rank``-dimensional projection
    (the identity when ``rank is None``). ``W_a h``, ``W_b h`` and ``U h`` are computed once
    per utterance; the product term and the MLP run on the ``P = sum_b n_b^2`` pairs of real
    utterances (gathered with their ``(b, i, j)`` indices) instead of all ``B * N * N`` padded
    slots, so the largest intermediate is ``(P, hidden)``. Padding slots get the logit
    :attr:`pad_logit` (probability ~0); they are never in ``valid``.
    """

    pad_logit: float = -1e4

    def __init__(
        self, input_dim: int, hidden: int, max_rel: int, dropout: float, rank: int | None = None
    ) -> None:
        super().__init__()
        self.max_rel = max_rel
        self.w_emo = nn.Linear(input_dim, hidden)
        self.w_cause = nn.Linear(input_dim, hidden, bias=False)
        self.u_prod = nn.Linear(input_dim, rank, bias=False) if rank is not None else None
        self.w_prod = nn.Linear(rank or input_dim, hidden, bias=False)
        self.rel = nn.Embedding(2 * max_rel + 1, hidden)
        self.spk = nn.Embedding(2, hidden)
        nn.init.normal_(self.rel.weight, std=0.02)
        nn.init.normal_(self.spk.weight, std=0.02)
        # nn.Identity at 0: a zero-rate nn.Dropout still draws its Bernoulli mask on some builds.
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out = nn.Linear(hidden, 1)

    def forward(self, h: Tensor, speakers: Tensor, mask: Tensor) -> Tensor:
        """Score all pairs of real utterances.

        Args:
            h: ``(B, N, H)`` contextual utterance representations.
            speakers: ``(B, N)`` speaker index within each conversation.
            mask: ``(B, N)`` bool, real utterances.

        Returns:
            ``(B, N, N)`` logits, row = emotion utterance, column = candidate cause.
        """
        bsz, n, _ = h.shape
        b, i, j = (mask[:, :, None] & mask[:, None, :]).nonzero(as_tuple=True)
        rel = (i - j).clamp(-self.max_rel, self.max_rel) + self.max_rel
        same = (speakers[b, i] == speakers[b, j]).long()
        u = self.u_prod(h) if self.u_prod is not None else h
        z = (
            self.w_emo(h)[b, i]
            + self.w_cause(h)[b, j]
            + self.w_prod(u[b, i] * u[b, j])
            + self.rel(rel)
            + self.spk(same)
        )
        scores = self.out(self.dropout(F.relu(z))).squeeze(-1)
        full = h.new_full((bsz, n, n), self.pad_logit)
        return full.index_put((b, i, j), scores)


class MECPEModel(nn.Module):
    """Utterance encoder → ``context`` (BiLSTM) → emotion / cause heads and pair scorer."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.utterance = UtteranceEncoder(cfg)
        self.context = ContextEncoder(cfg.utt_dim, cfg.hidden)
        h = self.context.output_dim
        self.dropout = nn.Dropout(cfg.dropout)
        self.emotion_head = nn.Linear(h, cfg.n_emotions)
        self.cause_head = nn.Linear(h, 1)
        pair_dropout = cfg.dropout if cfg.pair_dropout is None else cfg.pair_dropout
        self.pair_scorer = PairScorer(h, cfg.pair_hidden, cfg.max_rel, pair_dropout, cfg.pair_rank)

    def forward(self, batch: Batch) -> ModelOutput:
        """Run the model on a (device-resident) :class:`~examples.mecpe.batching.Batch`."""
        x = self.utterance(batch)
        h = self.dropout(self.context(x, batch.lengths))
        # float32 outputs under autocast too (a no-op in float32): losses and RPCL's two views
        # compare in one dtype
        return ModelOutput(
            pair_logits=self.pair_scorer(h, batch.speakers, batch.mask).float(),
            emotion_logits=self.emotion_head(h).float(),
            cause_logits=self.cause_head(h).squeeze(-1).float(),
        )


def mecpe_loss(
    out: ModelOutput, batch: Batch, *, pair_weight: float = 1.0, pos_weight: float = 1.0
) -> tuple[Tensor, dict[str, float]]:
    """Base loss: ``pair_weight`` * pair BCE (mean over valid candidates) + emotion CE + cause BCE.

    ``pos_weight`` multiplies the BCE of gold pairs (``torch.nn.BCEWithLogitsLoss`` semantics):
    about 6 % of ECF candidates are gold (dev: 866 of 13,495), and a plain BCE leaves the scorer
    under-confident at the fixed 0.5 decision threshold (the trainer uses ``pos_weight=2``).

    Emotion labels ``-1`` (unknown / padding) are ignored; the cause BCE is averaged over real
    utterances. Terms without any target contribute zero.

    Returns:
        ``(loss, parts)`` with ``parts`` the detached float value of each term.
    """
    zero = out.pair_logits.new_zeros(())
    valid = batch.valid
    if bool(valid.any()):
        logits = out.pair_logits[valid]
        pair = F.binary_cross_entropy_with_logits(
            logits,
            batch.gold[valid].to(logits.dtype),
            pos_weight=None if pos_weight == 1.0 else logits.new_tensor(pos_weight),
        )
    else:
        pair = zero
    known = batch.emotions >= 0
    if bool(known.any()):
        emotion = F.cross_entropy(out.emotion_logits[known], batch.emotions[known])
    else:
        emotion = zero
    mask = batch.mask
    cause = F.binary_cross_entropy_with_logits(out.cause_logits[mask], batch.causes[mask])
    loss = pair_weight * pair + emotion + cause
    parts = {
        "pair": float(pair.detach()),
        "emotion": float(emotion.detach()),
        "cause": float(cause.detach()),
    }
    return loss, parts
