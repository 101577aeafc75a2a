"""The memory check: one real optimizer step on the heaviest batch of the run, measured.

The run's own parts do the work (the task prepares data and model, the method adapts it, the task's
loader and loss make the step, AdamW allocates its moments), so the number is what training will
need at its peak, not an estimate from a formula. The heaviest of the first batches (most token
positions; length-grouped batching puts the longest examples together) is the one stepped. Memory
is the process's peak resident memory on CPU (the limit: what the machine has available plus what
the process holds) or peak allocated memory on CUDA (the limit: the device's free plus allocated
memory). Slow: it loads the model, so ``train`` does not run it; ``deltatune check`` does.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from deltatune.checks.findings import CheckReport, Finding

HEADROOM = 0.9  # a step may use this share of the usable memory
BATCHES_SCANNED = 200


def usable_memory_mb() -> float:
    import torch

    from deltatune.inference.efficiency import current_rss_mb

    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return (free + torch.cuda.memory_allocated()) / 2**20
    import psutil

    return psutil.virtual_memory().available / 2**20 + current_rss_mb()


def _weight(batch) -> int:
    import torch

    return (
        sum(t.numel() for t in batch.values() if isinstance(t, torch.Tensor) and t.dim() >= 2)
        if isinstance(batch, dict)
        else 0
    )


def heaviest_batch(loader):
    best, best_w = None, -1
    for i, batch in enumerate(loader):
        if _weight(batch) > best_w:
            best, best_w = batch, _weight(batch)
        if i + 1 >= BATCHES_SCANNED:
            break
    return best


def measure_step(cfg) -> dict:
    """Peak memory (MB) of one optimizer step of ``cfg``'s run on its heaviest batch."""
    import torch
    from accelerate.utils import send_to_device

    from deltatune.inference.efficiency import PeakMemory
    from deltatune.methods.registry import ModelContext, get_method
    from deltatune.models import head_module_names
    from deltatune.tasks import get_task
    from deltatune.training.accelerator import make_accelerator

    cfg = cfg.model_copy(deep=True)
    task, method = get_task(cfg.task), get_method(cfg.method.name)
    torch.manual_seed(cfg.train.seed)
    job = task.prepare(cfg)
    method.apply(
        job.model,
        cfg.method,
        ModelContext(str(job.model_path), task.peft_task_type, head_module_names(job.model)),
    )
    if cfg.train.gradient_checkpointing:
        job.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    accelerator = make_accelerator(cfg.train.precision)
    model = job.model.to(accelerator.device)
    model.train()
    with tempfile.TemporaryDirectory() as tmp:
        job.run_dir = Path(tmp)
        batch = heaviest_batch(job.loader(method, 1))
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=cfg.train.learning_rate
        )
        with PeakMemory() as pm:
            with accelerator.autocast():
                loss = job.loss_fn(model, send_to_device(batch, accelerator.device)).loss
            loss.backward()
            optimizer.step()
    shapes = [tuple(t.shape) for t in batch.values() if isinstance(t, torch.Tensor) and t.dim() >= 2]
    return {
        "peak_mb": pm.peak_mb,
        "start_mb": pm.start_mb,
        "shape": shapes[0] if shapes else None,
        "kind": pm.kind,
    }


def _fix(cfg, step: dict, usable: float) -> str:
    t = cfg.train
    grow = step["peak_mb"] - step["start_mb"]
    fits = (
        math.floor(t.batch_size * (HEADROOM * usable - step["start_mb"]) / grow) if grow > 0 else t.batch_size
    )
    if fits >= 1:
        accum = math.ceil(t.batch_size * t.grad_accum / fits)
        return (
            f"train.batch_size={fits} train.grad_accum={accum} (the same {t.batch_size * t.grad_accum} "
            "examples per optimizer step, in smaller pieces); or train.gradient_checkpointing=true"
        )
    return (
        "even one example does not fit: set train.gradient_checkpointing=true, a smaller data.max_length, "
        "or a parameter-efficient method (LoRA needs no gradients or optimizer state for the base weights)"
    )


def probe_memory(cfg, report: CheckReport, limit_mb: float | None = None) -> list[Finding]:
    import torch

    report.ran.append("memory")
    usable = float(limit_mb) if limit_mb else usable_memory_mb()
    try:
        step = measure_step(cfg)
    except torch.OutOfMemoryError:
        return [
            Finding(
                "memory",
                "error",
                "Batch too large for the memory",
                f"one training step with train.batch_size {cfg.train.batch_size} ran out of device memory",
                "halve train.batch_size and double train.grad_accum; or train.gradient_checkpointing=true",
            )
        ]
    what = (
        f"one optimizer step on the heaviest batch ({' x '.join(map(str, step['shape'] or ()))} token ids) "
        f"peaked at {step['peak_mb']:,.0f} MB "
        f"({'allocated on the GPU' if step['kind'] != 'rss' else 'resident'}; "
        f"{step['start_mb']:,.0f} MB before the step) of {usable:,.0f} MB usable"
    )
    if step["peak_mb"] <= HEADROOM * usable:
        report.notes.append(f"memory: {what}")
        return []
    return [
        Finding(
            "memory",
            "error",
            "Batch too large for the memory",
            f"{what}{' (--memory-mb)' if limit_mb else ''}; training would be killed or swap",
            _fix(cfg, step, usable),
        )
    ]
