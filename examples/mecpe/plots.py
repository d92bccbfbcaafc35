"""Plots comparing the arms of a study from the saved pair scores (``scores_<split>.npz``).

* ``gap_hist.png``: distribution of the gold – hardest-negative confidence gap (probability
  space, :func:`torch_pairconf.confidence_gap`) per arm, pooled over the arm's runs.
* ``pr_curve.png``: precision–recall curves, one line per run, coloured by arm (recall counts
  gold pairs outside the candidate set as misses, as :func:`torch_pairconf.pair_auprc` does).
* ``reliability.png``: reliability diagram per arm (:func:`torch_pairconf.reliability_diagram`,
  10 equal-width bins, pooled over the arm's runs) with the bin counts below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from torch_pairconf import confidence_gap, pair_auprc, reliability_diagram

__all__ = ["gap_hist", "load_scores", "make_plots", "pr_curve", "reliability"]

ARM_COLORS = {"base": "tab:blue", "rpcl": "tab:orange"}


def _color(arm: str, k: int) -> str:
    return ARM_COLORS.get(arm, f"C{k + 2}")


def _pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_scores(run_dir: str | Path, split: str = "test") -> tuple[torch.Tensor, ...]:
    """``(logits, gold, valid)`` tensors ``(C, N, N)`` of a run directory's ``scores_<split>.npz``."""
    with np.load(Path(run_dir) / f"scores_{split}.npz") as z:
        return (
            torch.from_numpy(z["logits"].astype(np.float32)),
            torch.from_numpy(z["gold"].astype(bool)),
            torch.from_numpy(z["valid"].astype(bool)),
        )


def _pr_points(
    logits: torch.Tensor, gold: torch.Tensor, valid: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    s = logits[valid].double().numpy()
    g = gold[valid].numpy()
    n_gold = max(int(gold.sum()), 1)
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(g[order])
    k = np.arange(1, len(order) + 1)
    return tp / n_gold, tp / k


def gap_hist(runs: Mapping[str, Sequence[Path]], path: Path, split: str = "test") -> Path:
    """Histogram of per-gold-pair gaps (gold minus hardest row negative, probability space)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    bins = np.linspace(-1.0, 1.0, 41)
    for k, (arm, dirs) in enumerate(runs.items()):
        gaps: list[np.ndarray] = []
        for d in dirs:
            logits, gold, valid = load_scores(d, split)
            g, m, _ = confidence_gap(logits, gold, valid, space="prob")
            gaps.append(g[m].double().numpy())
        pooled = np.concatenate(gaps) if gaps else np.zeros(0)
        if pooled.size == 0:
            continue
        ax.hist(
            pooled,
            bins=bins,
            density=True,
            histtype="step",
            linewidth=1.8,
            color=_color(arm, k),
            label=f"{arm}: mean {pooled.mean():.3f}, <0.2: {(pooled < 0.2).mean():.1%} (n={pooled.size})",
        )
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.axvline(0.2, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("confidence gap: p(gold) − p(hardest negative of the row)")
    ax.set_ylabel("density")
    ax.set_title(f"Gold vs hardest-negative gap ({split})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pr_curve(runs: Mapping[str, Sequence[Path]], path: Path, split: str = "test") -> Path:
    """Precision–recall curves of every run, coloured by arm."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    for k, (arm, dirs) in enumerate(runs.items()):
        curves, aucs = [], []
        for d in dirs:
            logits, gold, valid = load_scores(d, split)
            aucs.append(float(pair_auprc(logits, gold, valid)))
            curves.append(_pr_points(logits, gold, valid))
        for i, (r, p) in enumerate(curves):
            label = f"{arm} (mean AUPRC {np.mean(aucs):.3f}, {len(aucs)} runs)" if i == 0 else None
            ax.plot(r, p, color=_color(arm, k), linewidth=1.0, alpha=0.8, label=label)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Pair precision–recall ({split})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def reliability(
    runs: Mapping[str, Sequence[Path]], path: Path, split: str = "test", n_bins: int = 10
) -> Path:
    """Reliability diagram (equal-width bins) per arm, pooled over runs, with bin counts."""
    plt = _pyplot()
    fig, (ax, axc) = plt.subplots(
        2, 1, figsize=(5.6, 6.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
    width = 1.0 / n_bins
    arms = list(runs)
    for k, (arm, dirs) in enumerate(runs.items()):
        if not dirs:
            continue
        parts = [load_scores(d, split) for d in dirs]
        logits = torch.cat([lg[v] for lg, _, v in parts])
        gold = torch.cat([g[v] for _, g, v in parts])
        valid = torch.ones_like(gold)
        conf, acc, count = reliability_diagram(logits, gold, valid, n_bins=n_bins, binning="width")
        c, a, n = conf.double().numpy(), acc.double().numpy(), count.double().numpy()
        keep = n > 0
        ax.plot(c[keep], a[keep], marker="o", color=_color(arm, k), label=arm)
        centers = (np.arange(n_bins) + 0.5) * width
        offset = (k - (len(arms) - 1) / 2) * width / max(len(arms), 1)
        axc.bar(
            centers + offset, n, width=width / max(len(arms), 1), color=_color(arm, k), alpha=0.8
        )
    ax.set_ylabel("fraction gold")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability of pair confidences ({split})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    axc.set_yscale("log")
    axc.set_xlabel("confidence sigmoid(logit)")
    axc.set_ylabel("pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def make_plots(
    runs: Mapping[str, Sequence[Path]], out_dir: str | Path, split: str = "test"
) -> list[Path]:
    """Write ``gap_hist.png``, ``pr_curve.png`` and ``reliability.png`` into ``out_dir``.

    Args:
        runs: run directories (holding ``scores_<split>.npz``) per arm.
        out_dir: destination folder.
        split: which saved scores to plot.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        gap_hist(runs, out / "gap_hist.png", split),
        pr_curve(runs, out / "pr_curve.png", split),
        reliability(runs, out / "reliability.png", split),
    ]
