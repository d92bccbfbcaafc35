"""Hand-fused CPU kernels of the margin and KL consistency losses, behind one dispatch.

The loss modules define each loss once, as a composite expression of torch ops; for
``reduction="mean"/"sum"`` on eager CPU inputs they hand the same computation to a fused kernel
here (:func:`applies` decides), which is bit-identical (``k = 1``, KL) or equal up to rounding
(``k > 1``, summation order) and several times leaner in memory. Everything else — CUDA,
``torch.compile`` (inductor fuses the composite expression itself), ``reduction="none"`` and
inputs below :data:`MIN_NUMEL` elements — takes the composite expression.

On an H100 a fused variant of the margin loss ran 1.4-1.8x *slower* than the composite
expression (launch-bound), hence CPU only.
"""

from __future__ import annotations

from torch import Tensor

from .._tracing import compiling
from ._kl import kl_loss
from ._margin import margin_loss

__all__ = ["MIN_NUMEL", "applies", "kl_loss", "margin_loss"]

#: Inputs with at least this many elements take the fused kernels (tests set it to force a path).
#: 1: the fused kernels were measured no slower at every benchmarked size but the ``k > 1``
#: margin below ~4K elements (up to 0.2 ms slower), where they still save most of the memory.
MIN_NUMEL: int = 1


def applies(t: Tensor, reduction: str) -> bool:
    """Whether a loss on ``t`` with ``reduction`` takes its fused kernel.

    A shape/device decision only (nothing reads tensor values): eager CPU tensors with at least
    :data:`MIN_NUMEL` (and at least one) elements, ``reduction`` ``"mean"`` or ``"sum"``.
    """
    return reduction != "none" and t.is_cpu and t.numel() >= max(MIN_NUMEL, 1) and not compiling()
