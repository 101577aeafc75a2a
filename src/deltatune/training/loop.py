"""The one training loop every task uses. Tasks differ only in their loss function and batches.

Per optimizer step:
  1. take ``grad_accum`` micro-batches and count their loss units (examples or target tokens),
     summed over all processes;
  2. for each micro-batch, backward ``sum_loss / total_units`` — so accumulation is exact:
     batch 2 x accumulation 4 gives the same update as batch 8 x 1, whatever the lengths;
  3. clip, step, schedule; skip the step (and count it) if the loss or a gradient is not finite.
Evaluation runs every ``eval_every`` steps or once per epoch; the best trainable state (by
``metric_for_best``) is kept and restored at the end.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import send_to_device

from deltatune.config import TrainConfig
from deltatune.errors import UserError
from deltatune.training.checkpoint import (latest_checkpoint, load_checkpoint, load_trainable,
                                           save_checkpoint)
from deltatune.training.compile import RegionalCompile
from deltatune.training.logging import MetricsWriter, Progress, peak_memory_mb
from deltatune.training.optim import build_optimizer, build_scheduler

# loss_fn(model, batch) -> (sum of per-unit losses, number of units, number of real tokens)
LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, int, int]]
EvalFn = Callable[[nn.Module], dict[str, float]]

MAX_CONSECUTIVE_BAD_STEPS = 10


@dataclass
class LoopResult:
    steps: int = 0
    train_seconds: float = 0.0
    train_tokens: int = 0
    skipped_steps: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    last_eval: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.train_tokens / self.train_seconds if self.train_seconds else 0.0


def cpu_has_fast_bf16() -> bool:
    """True when oneDNN has native bf16 kernels (AVX512-BF16 / AMX). Without them bf16 matmuls are
    emulated: measured 20x *slower* than fp32 on an AVX2-only EPYC (see benchmarks/precision.py)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str) -> str:
    """``auto`` = bf16 autocast where the hardware runs it fast (CUDA with bf16, or a CPU with
    native bf16), fp16 on older GPUs, else fp32."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


# report_to name -> the package it needs
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def make_accelerator(precision: str, report_to: list[str] | tuple[str, ...] = (),
                     project_dir: Path | None = None, run_config: dict | None = None) -> Accelerator:
    """Accelerator with the resolved precision and the requested experiment trackers, started with
    ``run_config`` (the nested config, flattened to ``train.learning_rate``-style keys)."""
    import importlib.util

    for name in report_to:
        if name not in TRACKER_PACKAGES:
            raise UserError(f"train.report_to: unknown tracker '{name}'; "
                            f"choose from {', '.join(TRACKER_PACKAGES)}")
        if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None:
            raise UserError(f"train.report_to: '{name}' is not installed; "
                            f"`pip install {TRACKER_PACKAGES[name]}` or remove it from report_to")
    precision = resolve_precision(precision)
    if precision == "fp16" and not torch.cuda.is_available():
        raise UserError("train.precision=fp16 needs a CUDA GPU; on CPU use bf16 or fp32")
    accelerator = Accelerator(mixed_precision={"fp32": "no"}.get(precision, precision),
                              log_with=list(report_to) or None,
                              project_dir=str(project_dir) if project_dir else None)
    if report_to:
        accelerator.init_trackers("deltatune", config=_flat(run_config or {}))
    return accelerator


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested config -> {"train.learning_rate": ...} with tracker-friendly scalar values."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def steps_per_epoch(num_batches: int, grad_accum: int) -> int:
    return max(1, num_batches // grad_accum)


def train(model: nn.Module, loader: Iterable, loss_fn: LossFn, cfg: TrainConfig, lr: float,
          run_dir: Path, accelerator: Accelerator, evaluate: EvalFn | None = None,
          param_lr: dict[int, float] | None = None, resume: bool = False) -> LoopResult:
    """Train ``model`` in place; return timings and the best evaluation."""
    per_epoch = steps_per_epoch(len(loader), cfg.grad_accum)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
    regional = RegionalCompile(model) if cfg.compile else None
    optimizer = build_optimizer(model, lr, cfg.weight_decay, param_lr)
    scheduler = build_scheduler(optimizer, total_steps, cfg.warmup_ratio, cfg.scheduler)
    model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.num_processes > 1:  # shard batches across processes
        loader = accelerator.prepare(loader)
    trainable = [p for p in model.parameters() if p.requires_grad]
    ckpt_root = run_dir / "checkpoints"

    writer = MetricsWriter(run_dir / "metrics.jsonl", enabled=accelerator.is_main_process,
                           accelerator=accelerator if accelerator.log_with else None)
    progress = Progress(total_steps, enabled=cfg.progress and accelerator.is_main_process)
    eval_every = cfg.eval_every or per_epoch
    res = LoopResult()
    best_state: dict[str, torch.Tensor] | None = None
    bad_in_a_row = 0
    window_loss, window_units, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()

    start_step = 0
    if resume and (latest := latest_checkpoint(ckpt_root)) is not None:
        state = load_checkpoint(latest, accelerator.unwrap_model(model), optimizer, scheduler)
        start_step = state["step"]
        for key in ("train_tokens", "train_seconds", "skipped_steps", "best_metric", "best_step"):
            setattr(res, key, state[key])
        if res.best_step is not None and (ckpt_root / f"step-{res.best_step}").is_dir():
            best_state = load_trainable(ckpt_root / f"step-{res.best_step}")
        progress.bar.update(start_step)
        writer.write({"event": "resume", "step": start_step, "checkpoint": str(latest)})

    def checkpoint(step: int) -> None:
        if accelerator.is_main_process:
            save_checkpoint(ckpt_root, step, accelerator.unwrap_model(model), optimizer, scheduler,
                            {"train_tokens": res.train_tokens, "skipped_steps": res.skipped_steps,
                             "train_seconds": res.train_seconds + time.perf_counter() - start,
                             "best_metric": res.best_metric, "best_step": res.best_step},
                            keep=cfg.save_total_limit, best_step=res.best_step)
        accelerator.wait_for_everyone()
        _fault_injection(step)

    model.train()
    micro_batches = _forever(loader, skip=start_step * cfg.grad_accum)
    start = time.perf_counter()
    for step in range(start_step, total_steps):
        group = [next(micro_batches) for _ in range(cfg.grad_accum)]
        loss_sum, units, tokens, finite = _accumulate(model, group, loss_fn, accelerator)
        grad_norm = None
        if finite and cfg.max_grad_norm:
            grad_norm = float(accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm))
            finite = math.isfinite(grad_norm)
        if finite:
            optimizer.step()
            bad_in_a_row = 0
        else:
            res.skipped_steps += 1
            bad_in_a_row += 1
            if bad_in_a_row >= MAX_CONSECUTIVE_BAD_STEPS:
                raise UserError(f"loss or gradients were NaN/inf for {bad_in_a_row} steps in a row "
                                f"(step {step + 1}); lower train.learning_rate or use precision=fp32")
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        res.steps = step + 1
        res.train_tokens += tokens
        if finite:
            window_loss += loss_sum
            window_units += units
        window_tokens += tokens
        progress.update(loss=window_loss / max(window_units, 1), lr=scheduler.get_last_lr()[0],
                        tokens=tokens)

        if res.steps % cfg.log_every == 0 or res.steps == total_steps:
            now = time.perf_counter()
            if accelerator.num_processes > 1:  # loss and tokens of all processes
                totals = accelerator.reduce(torch.tensor(
                    [window_loss, window_units, window_tokens], dtype=torch.float64,
                    device=accelerator.device), reduction="sum").tolist()
                window_loss, window_units, window_tokens = totals[0], int(totals[1]), int(totals[2])
            writer.write({"step": res.steps, "epoch": round(res.steps / per_epoch, 4),
                          "loss": window_loss / max(window_units, 1),
                          "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                          "tokens": window_tokens, "tokens_per_s": window_tokens / max(now - window_start, 1e-9),
                          "skipped_steps": res.skipped_steps})
            window_loss, window_units, window_tokens, window_start = 0.0, 0, 0, now

        if evaluate is not None and (res.steps % eval_every == 0 or res.steps == total_steps):
            res.train_seconds += time.perf_counter() - start
            with regional.eager() if regional else contextlib.nullcontext():
                best_state = _evaluate(model, evaluate, cfg, res, writer, progress, best_state)
            model.train()
            start = time.perf_counter()
            if cfg.checkpoint_every:
                checkpoint(res.steps)
        elif cfg.checkpoint_every and res.steps % cfg.checkpoint_every == 0:
            checkpoint(res.steps)
    res.train_seconds += time.perf_counter() - start
    progress.close()
    if regional:
        regional.remove()
    if best_state is not None:
        _restore(model, best_state)
    res.peak_memory_mb = peak_memory_mb()
    writer.write({"event": "end", "steps": res.steps, "train_seconds": round(res.train_seconds, 3),
                  "train_tokens_per_s": round(res.tokens_per_s, 2), "peak_memory_mb": res.peak_memory_mb,
                  "skipped_steps": res.skipped_steps, "best_step": res.best_step})
    return res


def _forever(loader: Iterable, skip: int = 0):
    """Yield micro-batches across epochs, reshuffling each epoch when the sampler supports it.
    The first ``skip`` micro-batches (already trained on before a resume) are passed over."""
    per_epoch = len(loader)
    for epoch in itertools.count(skip // per_epoch):
        if hasattr(loader, "set_epoch"):  # accelerate's prepared loader forwards it
            loader.set_epoch(epoch)
        elif hasattr(getattr(loader, "batch_sampler", None), "set_epoch"):
            loader.batch_sampler.set_epoch(epoch)
        batches = iter(loader)
        if skip:
            batches = itertools.islice(batches, skip % per_epoch, None)
            skip = 0
        yield from batches


def _fault_injection(step: int) -> None:
    """Test hook: ``DELTATUNE_FAULT_AT_STEP=N`` SIGKILLs the process right after checkpoint N, to
    prove that resume continues exactly (tests/test_resume.py)."""
    if os.environ.get("DELTATUNE_FAULT_AT_STEP") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def _accumulate(model, group, loss_fn, accelerator) -> tuple[float, int, int, bool]:
    """Backward over one accumulation group with exact normalisation; returns (loss sum, units,
    tokens, finite)."""
    local_units = sum(int(b["num_units"]) for b in group)
    total_units = local_units
    if accelerator.num_processes > 1:
        total_units = int(accelerator.reduce(torch.tensor(local_units, device=accelerator.device),
                                             reduction="sum"))
    # DDP averages gradients over processes; scale up so the result is sum / total_units.
    scale = accelerator.num_processes / max(total_units, 1)
    loss_total, tokens, finite = 0.0, 0, True
    for i, batch in enumerate(group):
        sync = accelerator.no_sync(model) if i < len(group) - 1 else contextlib.nullcontext()
        with sync:
            # The loader is only prepared (sharded) with several processes: move the batch here, and
            # autocast here too, since a loss_fn may call submodules around the wrapped forward.
            with accelerator.autocast():
                loss_sum, _, n_tokens = loss_fn(model, send_to_device(batch, accelerator.device))
            if not torch.isfinite(loss_sum):
                finite = False
                continue
            accelerator.backward(loss_sum * scale)
        loss_total += float(loss_sum.detach())
        tokens += n_tokens
    return loss_total, local_units, tokens, finite


def _evaluate(model, evaluate, cfg, res, writer, progress, best_state):
    metrics = evaluate(model)
    res.last_eval = metrics
    writer.write({"step": res.steps, **{f"eval/{k}": v for k, v in metrics.items()}})
    progress.note(metrics)
    if cfg.metric_for_best not in metrics:
        raise UserError(f"train.metric_for_best: '{cfg.metric_for_best}' is not an evaluation metric; "
                        f"available: {', '.join(sorted(metrics))}")
    value = metrics[cfg.metric_for_best]
    better = (res.best_metric is None or
              (value > res.best_metric if cfg.greater_is_better else value < res.best_metric))
    if better:
        res.best_metric, res.best_step = value, res.steps
        best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return best_state


def _restore(model: nn.Module, state: dict[str, Any]) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in state:
                p.copy_(state[name])
