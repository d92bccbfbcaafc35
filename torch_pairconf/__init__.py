"""torch-pairconf: robust pair confidence learning (RPCL) for emotion-cause pair extraction.

Tensor contract: ``scores`` float ``(B, N, M)`` pair logits, row ``i`` an emotion utterance and
column ``j`` a candidate cause; ``gold`` and ``valid`` bool ``(B, N, M)``.
"""

from .consistency import ConsistencyLoss, bernoulli_kl, consistency_loss
from .corruption import ContextCorruption, context_corruption, gold_utterances
from .diagnostics import (
    PRF,
    ConfidenceGap,
    Reliability,
    RowRanking,
    Threshold,
    Violations,
    best_threshold,
    confidence_gap,
    expected_calibration_error,
    margin_violations,
    pair_auprc,
    pair_prf,
    reliability_diagram,
    row_ranking,
)
from .listwise import PairListwiseLoss, pair_listwise_loss
from .margin import PairMarginLoss, confidence, pair_margin_loss
from .masks import (
    PairMasks,
    dense_from_candidates,
    pair_masks,
    two_class_to_logit,
    valid_from_labels,
    valid_from_lengths,
)
from .mining import HardNegatives, mine_hard_negatives
from .objective import (
    Replay,
    RPCLoss,
    corrupt_submodule,
    default_scores_fn,
    unwrap_model,
    utterance_mask,
)
from .ranking_ap import PairAPLoss, pair_ap_loss
from .ranking_auc import PairAUCLoss, pair_auc_loss
from .ranking_relative import PairRelativeMarginLoss, pair_relative_margin_loss
from .stability import (
    ConfidenceChange,
    FlipRate,
    GapChange,
    RankStability,
    Stability,
    confidence_change,
    decision_flips,
    gap_change,
    pair_stability,
    rank_stability,
)

__version__ = "0.2.0.dev0"

__all__ = [
    "PRF",
    "ConfidenceChange",
    "ConfidenceGap",
    "ConsistencyLoss",
    "ContextCorruption",
    "FlipRate",
    "GapChange",
    "HardNegatives",
    "PairAPLoss",
    "PairAUCLoss",
    "PairListwiseLoss",
    "PairMarginLoss",
    "PairMasks",
    "PairRelativeMarginLoss",
    "RPCLoss",
    "RankStability",
    "Reliability",
    "Replay",
    "RowRanking",
    "Stability",
    "Threshold",
    "Violations",
    "__version__",
    "bernoulli_kl",
    "best_threshold",
    "confidence",
    "confidence_change",
    "confidence_gap",
    "consistency_loss",
    "context_corruption",
    "corrupt_submodule",
    "decision_flips",
    "default_scores_fn",
    "dense_from_candidates",
    "expected_calibration_error",
    "gap_change",
    "gold_utterances",
    "margin_violations",
    "mine_hard_negatives",
    "pair_ap_loss",
    "pair_auc_loss",
    "pair_auprc",
    "pair_listwise_loss",
    "pair_margin_loss",
    "pair_masks",
    "pair_prf",
    "pair_relative_margin_loss",
    "pair_stability",
    "rank_stability",
    "reliability_diagram",
    "row_ranking",
    "two_class_to_logit",
    "unwrap_model",
    "utterance_mask",
    "valid_from_labels",
    "valid_from_lengths",
]
