"""AdamW with the usual parameter groups, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, param_lr: dict[int, float] | None = None
) -> torch.optim.AdamW:
    """AdamW over trainable parameters. Biases and norm weights (1-D tensors) get no weight decay:
    decaying them only pulls scales/offsets toward zero, which hurts (BERT, GPT-2 practice).
    ``param_lr`` maps ``id(param)`` to a learning rate of its own (e.g. LoRA+)."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        wd = weight_decay if p.ndim >= 2 else 0.0
        group_lr = (param_lr or {}).get(id(p), lr)
        groups.setdefault((wd, group_lr), []).append(p)
    if not groups:
        raise RuntimeError("the model has no trainable parameters")
    param_groups = [{"params": ps, "weight_decay": wd, "lr": glr} for (wd, glr), ps in groups.items()]
    return torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=True)


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    1) linear warm-up from 0 over ``warmup`` steps;
    2) then ``constant``: 1; ``linear``: down to 0 at ``total``; ``cosine``: half a cosine to 0.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float, kind: str
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(round(warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, kind)
    )
