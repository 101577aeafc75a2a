"""Classification losses: small pure functions returning a *sum* over examples.

Returning sums (not means) lets the training loop normalise by the number of examples in the whole
accumulated batch, which makes gradient accumulation exact. A classification run picks its loss by
name from :data:`CLASSIFICATION_LOSSES` (``classify: {loss: ...}`` in the config).
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


def classifier_batch_loss(model, batch: dict, loss=cross_entropy_sum):
    """(summed loss, examples, real tokens) of one micro-batch through a sequence classifier."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "num_units")}
    logits = model(**inputs).logits
    return (loss(logits, batch["labels"]), int(batch["num_units"]),
            int(batch["attention_mask"].sum()))
