"""What a training step's loss and a whole training loop give back: two small named results that the
loop, the tasks, the run skeleton and the reports share (a leaf: it imports nothing of deltatune)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BatchLoss:
    """A task's loss on one micro-batch.

    ``loss`` is the *sum* over the batch's units (a scalar tensor); ``units`` counts them (examples for a
    classifier, target tokens for a language model, pairs for a reward model or DPO), so the loop can
    normalise by the units of the whole optimizer step; ``tokens`` counts the real (non-padding) tokens for
    throughput; ``metrics`` are further sums over the units (DPO's reward accuracy), logged as means.
    """

    loss: Any
    units: int
    tokens: int
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoopResult:
    """What :func:`deltatune.training.loop.train` reports: counts, timings and the best evaluation."""

    steps: int = 0
    train_seconds: float = 0.0
    train_tokens: int = 0
    skipped_steps: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    epochs: float | None = (
        None  # passes planned (``train.epochs`` settled); None when max_steps sets the length
    )
    eval_every: int | None = None  # optimizer steps between evaluations (``train.eval_every`` settled)
    last_eval: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.train_tokens / self.train_seconds if self.train_seconds else 0.0
