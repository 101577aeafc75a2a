"""Helpers shared by test modules (rl_losses)."""

import torch


def _grpo_batch(seed=10, b=6, t=9):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, t, generator=g) * 3
    old = logp + 0.3 * torch.randn(b, t, generator=g)  # some ratios outside [0.8, 1.2]
    ref = logp + 0.5 * torch.randn(b, t, generator=g)
    lengths = torch.tensor([9, 1, 4, 7, 2, 9])
    mask = (torch.arange(t) < lengths[:, None]).long()
    return logp, old, ref, torch.randn(b, generator=g), mask
