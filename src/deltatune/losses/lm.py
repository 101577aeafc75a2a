"""Language-model loss: next-token cross-entropy summed over target tokens.

Returning (sum, number of target tokens) lets the training loop divide by the target tokens of the
*whole* accumulated batch, so accumulation is exact even when examples differ in length (a mean
per micro-batch would weight short micro-batches' tokens more).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``sum_t -log p(labels[t+1] | tokens <= t)`` over positions whose label is not -100.

    logits: (B, T, V); labels: (B, T), -100 where no loss applies (prompt, padding).
    Returns the summed loss (float32) and the number of target tokens.
    """
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((shift_labels != IGNORE_INDEX).sum())


def response_cross_entropy_sum(hidden: torch.Tensor, labels: torch.Tensor,
                               head: torch.nn.Module) -> tuple[torch.Tensor, int]:
    """The same loss as :func:`token_cross_entropy_sum`, with logits computed only where they are
    needed: ``head`` (the LM head) runs on the hidden states of target positions alone.

    hidden: (B, T, H) last hidden states; labels: (B, T). Prompt tokens are often half of an
    instruction example, and the head (hidden x vocabulary) is the largest single matmul of a small
    LM, so skipping it there saves time and the (B, T, V) logits' memory.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][keep]).float()  # (N, V)
    loss = F.cross_entropy(logits, targets[keep], reduction="sum")
    return loss, int(keep.sum())
