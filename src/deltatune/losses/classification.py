"""Classification losses: small pure functions returning a *sum* over examples.

Returning sums (not means) lets the training loop normalise by the number of examples in the whole
accumulated batch, which makes gradient accumulation exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of ``-log softmax(logits)[label]``.

    logits: (B, C) — computed in float32 even under bf16 autocast; labels: (B,) int64.
    """
    return F.cross_entropy(logits.float(), labels, reduction="sum")


CLASSIFICATION_LOSSES = {"cross_entropy": cross_entropy_sum}
