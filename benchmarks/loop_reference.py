"""Straightforward Python-loop versions of the library's miner and losses (the "loop" baseline).

Each function loops over the conversations and the rows of the ``(B, N, M)`` pair matrix and
uses per-row tensor ops (boolean indexing, ``topk`` on the row's negatives, a small hinge /
divergence per row), which is how these quantities are typically first written. They compute
the same quantity as the library (checked in ``tests/benchmarks/test_bench_smoke.py``) but
are not meant to be used: they exist to be timed.

The ranking terms with ``scope="batch"`` compare each gold pair of a row with every valid pair
(or negative) of the batch, gathered once by boolean indexing; per row that is a
``(gold, batch)`` tensor, which is how such a term is usually first written.

Rows are taken with ``unbind`` (views whose backward is a single ``stack``) rather than
``scores[b, i]`` (whose backward materialises a full ``(B, N, M)`` zero tensor per row), so the
baseline is O(B·N·M) like the library and not artificially quadratic.

``rows``: optional list of ``(b, i)`` rows to process (default: all). The benchmark uses it to
time a subset of the rows of very large inputs and scale linearly; with a subset, the miner
returns only those rows and the losses average over those rows only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "all_rows",
    "loop_consistency_loss",
    "loop_mine_hard_negatives",
    "loop_pair_ap_loss",
    "loop_pair_auc_loss",
    "loop_pair_listwise_loss",
    "loop_pair_margin_loss",
    "loop_pair_relative_margin_loss",
]

Row = tuple[int, int]


def all_rows(b: int, n: int) -> list[Row]:
    """Every ``(b, i)`` row of a ``(B, N, M)`` matrix, batch-major."""
    return [(bb, i) for bb in range(b) for i in range(n)]


def _iter_rows(rows: Sequence[Row] | None, *tensors: Tensor) -> Iterator[tuple[Tensor, ...]]:
    """Yield the ``(M,)`` row views of each tensor for the requested rows, in order."""
    b, n = tensors[0].shape[:2]
    rows = all_rows(b, n) if rows is None else rows
    per_batch = [t.unbind(0) for t in tensors]
    cache: dict[int, list[tuple[Tensor, ...]]] = {}
    for bb, i in rows:
        if bb not in cache:
            cache.clear()  # rows are batch-major: keep only the current conversation
            cache[bb] = [p[bb].unbind(0) for p in per_batch]
        yield tuple(r[i] for r in cache[bb])


def loop_mine_hard_negatives(
    scores: Tensor, gold: Tensor, valid: Tensor, k: int = 1, rows: Sequence[Row] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row hard-negative mining: ``(values, indices, mask)``.

    Shapes are ``(B, N, k)`` when ``rows`` is None, else ``(len(rows), k)``. Padded slots hold
    value 0 (no gradient), index 0 and mask False, as in :func:`torch_pairconf.mine_hard_negatives`.
    """
    values, indices, masks = [], [], []
    for s, g, v in _iter_rows(rows, scores, gold, valid):
        neg = v & ~g
        idx = neg.nonzero().squeeze(-1)
        kk = min(k, idx.numel())
        if kk > 0:
            top = s[idx].topk(kk)
            val, ind = top.values, idx[top.indices]
        else:
            val, ind = s.new_zeros(0), idx.new_zeros(0)
        pad = k - kk
        values.append(torch.cat([val, s.new_zeros(pad)]) if pad else val)
        indices.append(torch.cat([ind, ind.new_zeros(pad)]) if pad else ind)
        masks.append(torch.arange(k, device=s.device) < kk)
    out = torch.stack(values), torch.stack(indices), torch.stack(masks)
    if rows is None:
        b, n = scores.shape[:2]
        out = out[0].view(b, n, k), out[1].view(b, n, k), out[2].view(b, n, k)
    return out


def loop_pair_margin_loss(
    scores: Tensor,
    gold: Tensor,
    valid: Tensor,
    margin: float = 0.2,
    k: int = 1,
    space: str = "prob",
    temperature: float = 1.0,
    detach_negatives: bool = False,
    rows: Sequence[Row] | None = None,
) -> Tensor:
    """Per-row hinge between each valid gold pair and the row's ``k`` hardest negatives, mean
    over contributing gold pairs (``reduction="mean"`` of :func:`torch_pairconf.pair_margin_loss`)."""

    def conf(x: Tensor) -> Tensor:
        x = x / temperature
        return torch.sigmoid(x) if space == "prob" else x

    total = scores.new_zeros((), dtype=torch.float32)
    count = 0
    for s, g, v in _iter_rows(rows, scores, gold, valid):
        neg = v & ~g
        pos = v & g
        if not bool(neg.any()) or not bool(pos.any()):
            continue
        neg_scores = s[neg]
        top = neg_scores.topk(min(k, neg_scores.numel())).values
        c_neg = conf(top)
        if detach_negatives:
            c_neg = c_neg.detach()
        c_pos = conf(s[pos])
        hinge = (c_neg[None, :] + margin - c_pos[:, None]).clamp_min(0).mean(-1)
        total = total + hinge.sum()
        count += int(pos.sum())
    return (total / max(count, 1)).to(scores.dtype)


def loop_consistency_loss(
    clean: Tensor,
    corrupted: Tensor,
    valid: Tensor,
    detach_clean: bool = True,
    rows: Sequence[Row] | None = None,
) -> Tensor:
    """Per-row Bernoulli KL(clean || corrupted) from logits, mean over valid pairs
    (``divergence="kl"``, ``reduction="mean"`` of :func:`torch_pairconf.consistency_loss`)."""
    if detach_clean:
        clean = clean.detach()
    total = clean.new_zeros((), dtype=torch.float32)
    count = 0
    for a_row, b_row, v in _iter_rows(rows, clean, corrupted, valid):
        if not bool(v.any()):
            continue
        a = a_row[v].float()
        b = b_row[v].float()
        d = (F.softplus(b) - F.softplus(a) - torch.sigmoid(a) * (b - a)).clamp_min(0)
        total = total + d.sum()
        count += int(v.sum())
    return (total / max(count, 1)).to(clean.dtype)


def _kappa(d: Tensor) -> Tensor:
    """The Laplace-CDF smooth step of :mod:`torch_pairconf.ranking_ap` (no overflowing branch)."""
    half_tail = 0.5 * torch.exp(-d.abs())
    return torch.where(d >= 0, 1 - half_tail, half_tail)


def loop_pair_ap_loss(
    scores: Tensor,
    gold: Tensor,
    valid: Tensor,
    scope: str = "batch",
    temperature: float = 1.0,
    rows: Sequence[Row] | None = None,
) -> Tensor:
    """Per-row smoothed AP loss with a pairwise ``(gold, scope)`` kernel matrix, mean over
    contributing gold pairs (``reduction="mean"`` of :func:`torch_pairconf.pair_ap_loss`)."""
    z_all = scores / temperature
    batch_valid = z_all[valid]  # the batch scope: every valid pair (boolean indexing)
    batch_gold = z_all[gold & valid]
    batch_has_neg = bool((valid & ~gold).any())
    total = scores.new_zeros((), dtype=torch.float32)
    count = 0
    for z, g, v in _iter_rows(rows, z_all, gold, valid):
        pos = v & g
        if not bool(pos.any()):
            continue
        if scope == "row":
            if not bool((v & ~g).any()):
                continue
            others, others_gold = z[v], z[pos]
        else:
            if not batch_has_neg:
                continue
            others, others_gold = batch_valid, batch_gold
        zg = z[pos]
        # every comparison includes the pair itself (kappa(0) = 1/2): remove it from both ranks
        r_valid = 0.5 + _kappa(others[None, :] - zg[:, None]).sum(-1)
        r_gold = 0.5 + _kappa(others_gold[None, :] - zg[:, None]).sum(-1)
        total = total + ((r_valid - r_gold) / r_valid).sum()
        count += int(pos.sum())
    return (total / max(count, 1)).to(scores.dtype)


def loop_pair_auc_loss(
    scores: Tensor,
    gold: Tensor,
    valid: Tensor,
    scope: str = "batch",
    margin: float = 1.0,
    surrogate: str = "squared_hinge",
    rows: Sequence[Row] | None = None,
) -> Tensor:
    """Per-row pairwise AUC surrogate against every negative of the row or batch, mean over
    contributing gold pairs (``reduction="mean"`` of :func:`torch_pairconf.pair_auc_loss`)."""
    batch_neg = scores[valid & ~gold]
    total = scores.new_zeros((), dtype=torch.float32)
    count = 0
    for s, g, v in _iter_rows(rows, scores, gold, valid):
        pos = v & g
        negs = s[v & ~g] if scope == "row" else batch_neg
        if not bool(pos.any()) or negs.numel() == 0:
            continue
        gap = margin - (s[pos][:, None] - negs[None, :])
        hinge = gap.clamp_min(0)
        phi = hinge * hinge if surrogate == "squared_hinge" else hinge
        total = total + phi.mean(-1).sum()
        count += int(pos.sum())
    return (total / max(count, 1)).to(scores.dtype)


def loop_pair_listwise_loss(
    scores: Tensor,
    gold: Tensor,
    valid: Tensor,
    temperature: float = 1.0,
    margin: float = 0.0,
    rows: Sequence[Row] | None = None,
) -> Tensor:
    """Per-row softmax CE of each gold pair against all of its row's negatives, mean over
    contributing gold pairs (:func:`torch_pairconf.pair_listwise_loss` with ``k=None``)."""
    total = scores.new_zeros((), dtype=torch.float32)
    count = 0
    for s, g, v in _iter_rows(rows, scores, gold, valid):
        pos, neg = v & g, v & ~g
        if not bool(pos.any()) or not bool(neg.any()):
            continue
        lse = torch.logsumexp(s[neg] / temperature, 0)
        total = total + F.softplus(lse - s[pos] / temperature + margin).sum()
        count += int(pos.sum())
    return (total / max(count, 1)).to(scores.dtype)


def loop_pair_relative_margin_loss(
    scores: Tensor,
    gold: Tensor,
    valid: Tensor,
    margin: float = 1.0,
    anchor: str = "hardest",
    rows: Sequence[Row] | None = None,
) -> Tensor:
    """Per-row hinge of each gold logit against the row's hardest or mean negative logit, mean
    over contributing gold pairs (:func:`torch_pairconf.pair_relative_margin_loss`)."""
    total = scores.new_zeros((), dtype=torch.float32)
    count = 0
    for s, g, v in _iter_rows(rows, scores, gold, valid):
        pos, neg = v & g, v & ~g
        if not bool(pos.any()) or not bool(neg.any()):
            continue
        negs = s[neg]
        a = negs.max() if anchor == "hardest" else negs.mean()
        total = total + (margin - (s[pos] - a)).clamp_min(0).sum()
        count += int(pos.sum())
    return (total / max(count, 1)).to(scores.dtype)
