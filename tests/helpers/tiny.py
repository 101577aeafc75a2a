"""Small helpers shared by test modules (not fixtures)."""

import torch


def inputs():
    """A fixed batch for the tiny classifiers: 3 rows of 7 token ids (vocabulary 100), the first
    row padded after 5 tokens."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}
