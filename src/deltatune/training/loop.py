"""The one training loop every task uses. Tasks differ only in their loss function and batches.

A loss function returns a :class:`~deltatune.results.BatchLoss` (sum of per-unit losses, units, real
tokens): units are examples for a classifier, target tokens for a language model, pairs for a reward
model or DPO; the loop neither knows nor cares which (set-up of devices and precision:
:mod:`deltatune.training.accelerator`).

Per optimizer step:
  1. take ``grad_accum`` micro-batches and count their loss units (examples or target tokens),
     summed over all processes;
  2. for each micro-batch, backward ``sum_loss / total_units`` — so accumulation is exact:
     batch 2 x accumulation 4 gives the same update as batch 8 x 1, whatever the lengths;
  3. clip, step, schedule; skip the step (and count it) if the loss or a gradient is not finite.
Evaluation runs every ``eval_every`` steps, or once per epoch and at least ``auto_evals`` times a run
(the task's); the best trainable state (by ``metric_for_best``) is kept and restored at the end.
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
from deltatune.log import MetricsWriter, Progress, log, peak_memory_mb
from deltatune.results import BatchLoss, LoopResult
from deltatune.training.checkpoint import latest_checkpoint, load_checkpoint, load_trainable, save_checkpoint
from deltatune.training.compile import RegionalCompile
from deltatune.training.optim import build_optimizer, build_scheduler

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], BatchLoss]
EvalFn = Callable[[nn.Module], dict[str, float]]

MAX_CONSECUTIVE_BAD_STEPS = 10


def steps_per_epoch(num_batches: int, grad_accum: int) -> int:
    return max(1, num_batches // grad_accum)


AUTO_MAX_EPOCHS = 5


def planned_epochs(epochs: float | str, per_epoch: int, min_steps: int) -> float:
    """``train.epochs`` as a number: ``auto`` is one pass, or the fewest whole passes (at most
    ``AUTO_MAX_EPOCHS``) that reach ``min_steps`` optimizer steps when one pass has fewer."""
    if epochs != "auto":
        return float(epochs)
    return float(min(AUTO_MAX_EPOCHS, max(1, math.ceil(min_steps / max(1, per_epoch)))))


def eval_interval(per_epoch: int, total_steps: int, auto_evals: int) -> int:
    """Steps between evaluations when ``train.eval_every`` is unset: once a pass, and more often when that
    gives fewer than ``auto_evals`` evaluations in the run (a one-pass classifier of 250 steps: every 63)."""
    return max(1, min(per_epoch, math.ceil(total_steps / max(1, auto_evals))))


@dataclass(frozen=True)
class LoopPlan:
    """What the run settles for the loop besides ``train:`` itself.

    ``lr``: the peak learning rate; ``param_lr``: per-parameter rates (``{id(param): lr}``, LoRA+);
    ``resume``: continue from the latest checkpoint; ``run_state``: stored in every checkpoint (e.g. data
    fingerprints); ``auto_min_steps`` and ``auto_evals``: the task's floors for ``train.epochs: auto``
    (:func:`planned_epochs`) and for evaluations with ``train.eval_every`` unset (:func:`eval_interval`).
    """

    lr: float
    param_lr: dict[int, float] | None = None
    resume: bool = False
    run_state: dict = field(default_factory=dict)
    auto_min_steps: int = 0
    auto_evals: int = 1


def train(
    model: nn.Module,
    loader: Iterable,
    loss_fn: LossFn,
    cfg: TrainConfig,
    plan: LoopPlan,
    run_dir: Path,
    accelerator: Accelerator,
    evaluate: EvalFn | None = None,
) -> LoopResult:
    """Train ``model`` in place; return timings and the best evaluation.

    ``train.epochs: auto`` trains more passes while one pass is under ``plan.auto_min_steps`` optimizer
    steps; with ``train.eval_every`` unset it evaluates once a pass and at least ``plan.auto_evals`` times a
    run. With ``plan.resume`` the loop continues from the latest checkpoint in ``run_dir`` and reports as
    if never interrupted: the same steps, tokens, loss lines and best checkpoint.
    """
    loop = _Loop(model, loader, loss_fn, cfg, plan, run_dir, accelerator)
    if evaluate is not None and not cfg.eval_every and loop.eval_every < loop.per_epoch:
        log(
            f"evaluating every {loop.eval_every} optimizer steps "
            f"({math.ceil(loop.total_steps / loop.eval_every)} times in the run); "
            "the best evaluation is kept. Set train.eval_every to choose"
        )
    if plan.resume:
        loop.resume()
    loop.model.train()
    start = time.perf_counter()
    for step in range(loop.res.steps, loop.total_steps):
        loop.step()
        if loop.res.steps % cfg.log_every == 0 or loop.res.steps == loop.total_steps:
            loop.log_window()
        last = loop.res.steps == loop.total_steps
        if evaluate is not None and (loop.res.steps % loop.eval_every == 0 or last):
            loop.res.train_seconds += time.perf_counter() - start
            loop.evaluate(evaluate)
            start = time.perf_counter()
            if cfg.checkpoint_every:
                loop.checkpoint(start)
            if loop.watch.stopped:
                break
        elif cfg.checkpoint_every and (loop.res.steps % cfg.checkpoint_every == 0 or last):
            loop.checkpoint(start)
    loop.res.train_seconds += time.perf_counter() - start
    return loop.finish()


class _Loop:
    """The state of one training run between steps (optimizer, schedule, counters, log window)."""

    def __init__(self, model, loader, loss_fn, cfg: TrainConfig, plan: LoopPlan, run_dir, accelerator):
        self.cfg, self.loss_fn, self.accelerator, self.run_state = cfg, loss_fn, accelerator, plan.run_state
        auto_min_steps = plan.auto_min_steps
        # A pass is what one process sees: with N processes the prepared loader holds 1/N of the batches.
        self.loader = accelerator.prepare(loader) if accelerator.num_processes > 1 else loader
        per_epoch = steps_per_epoch(len(self.loader), cfg.grad_accum)
        epochs = planned_epochs(cfg.epochs, per_epoch, auto_min_steps)
        if cfg.epochs == "auto" and epochs > 1 and not cfg.max_steps:
            log(
                f"train.epochs auto: {epochs:g} passes, since one pass is {per_epoch} optimizer steps (under "
                f"{auto_min_steps}); the best evaluation is kept. Set train.epochs to choose"
            )
        self.total_steps = cfg.max_steps or max(1, math.ceil(epochs * per_epoch))
        self.per_epoch = per_epoch
        self.eval_every = cfg.eval_every or eval_interval(per_epoch, self.total_steps, plan.auto_evals)
        self.regional = RegionalCompile(model) if cfg.compile else None
        optimizer = build_optimizer(model, plan.lr, cfg.weight_decay, plan.param_lr)
        self.scheduler = build_scheduler(optimizer, self.total_steps, cfg.warmup_ratio, cfg.scheduler)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.ckpt_root = run_dir / "checkpoints"
        self.writer = MetricsWriter(
            run_dir / "metrics.jsonl",
            enabled=accelerator.is_main_process,
            accelerator=accelerator if accelerator.log_with else None,
        )
        self.progress = Progress(self.total_steps, enabled=cfg.progress and accelerator.is_main_process)
        self.res = LoopResult(epochs=None if cfg.max_steps else epochs, eval_every=self.eval_every)
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_in_a_row, self.grad_norm = 0, None
        self.window = {"loss": 0.0, "units": 0, "tokens": 0}
        self.window_start = time.perf_counter()
        self.batches = None
        self.watch = _Watch(cfg)

    def resume(self) -> None:
        """Restore the latest checkpoint; metrics lines written after it are dropped (redone)."""
        latest = latest_checkpoint(self.ckpt_root)
        start_step = 0
        if latest is not None:
            state = load_checkpoint(
                latest, self.accelerator.unwrap_model(self.model), self.optimizer, self.scheduler
            )
            start_step = state["step"]
            for key in ("train_tokens", "train_seconds", "skipped_steps", "best_metric", "best_step"):
                setattr(self.res, key, state[key])
            self.window.update(state.get("window", {}))
            if self.res.best_step is not None and (self.ckpt_root / f"step-{self.res.best_step}").is_dir():
                self.best_state = load_trainable(self.ckpt_root / f"step-{self.res.best_step}")
        self.res.steps = start_step
        if self.res.best_step is not None:  # evaluations since the best one, for early stopping
            self.watch.since_best = (start_step - self.res.best_step) // self.eval_every
        self.progress.bar.update(start_step)
        self.writer.truncate_after(start_step)
        self.writer.write({"event": "resume", "step": start_step, "checkpoint": str(latest)})

    def step(self) -> None:
        """One optimizer step over ``grad_accum`` micro-batches (skipped if not finite)."""
        if self.batches is None:
            self.batches = _forever(self.loader, skip=self.res.steps * self.cfg.grad_accum)
        group = [next(self.batches) for _ in range(self.cfg.grad_accum)]
        loss_sum, units, tokens, finite, extras = _accumulate(
            self.model, group, self.loss_fn, self.accelerator
        )
        self.grad_norm = None
        if finite and self.cfg.max_grad_norm:
            self.grad_norm = float(self.accelerator.clip_grad_norm_(self.trainable, self.cfg.max_grad_norm))
            finite = math.isfinite(self.grad_norm)
        if finite:
            self.optimizer.step()
            self.bad_in_a_row = 0
        else:
            self.res.skipped_steps += 1
            self.bad_in_a_row += 1
            if self.bad_in_a_row >= MAX_CONSECUTIVE_BAD_STEPS:
                raise UserError(
                    f"loss or gradients were NaN/inf for {self.bad_in_a_row} steps in a row "
                    f"(step {self.res.steps + 1}); lower train.learning_rate or use precision=fp32"
                )
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.res.steps += 1
        self.res.train_tokens += tokens
        if finite:
            self.window["loss"] += loss_sum
            self.window["units"] += units
            self.watch.loss, self.watch.units = self.watch.loss + loss_sum, self.watch.units + units
            for key, value in extras.items():
                self.window[f"extra/{key}"] = self.window.get(f"extra/{key}", 0.0) + value
        self.window["tokens"] += tokens
        self.progress.update(
            loss=self.window["loss"] / max(self.window["units"], 1),
            lr=self.scheduler.get_last_lr()[0],
            tokens=tokens,
        )

    def log_window(self) -> None:
        """A metrics.jsonl line for the steps since the last one (all processes summed)."""
        now, w = time.perf_counter(), self.window
        keys = sorted(w)
        if self.accelerator.num_processes > 1:
            totals = self.accelerator.reduce(
                torch.tensor([w[k] for k in keys], dtype=torch.float64, device=self.accelerator.device),
                reduction="sum",
            ).tolist()
            w = dict(zip(keys, totals))
        units = max(int(w["units"]), 1)
        self.writer.write(
            {
                "step": self.res.steps,
                "epoch": round(self.res.steps / self.per_epoch, 4),
                "loss": w["loss"] / units,
                "lr": self.scheduler.get_last_lr()[0],
                "grad_norm": self.grad_norm,
                "tokens": int(w["tokens"]),
                "tokens_per_s": w["tokens"] / max(now - self.window_start, 1e-9),
                "skipped_steps": self.res.skipped_steps,
                **{k[6:]: w[k] / units for k in keys if k.startswith("extra/")},
            }
        )
        self.window, self.window_start = {"loss": 0.0, "units": 0, "tokens": 0}, now

    def evaluate(self, evaluate: EvalFn) -> None:
        with self.regional.eager() if self.regional else contextlib.nullcontext():
            self.best_state = _evaluate(
                self.model, evaluate, self.cfg, self.res, self.writer, self.progress, self.best_state
            )
        self.watch.after_evaluation(self.res, self.writer)
        self.model.train()

    def checkpoint(self, started: float) -> None:
        if self.accelerator.is_main_process:
            save_checkpoint(
                self.ckpt_root,
                self.res.steps,
                self.accelerator.unwrap_model(self.model),
                self.optimizer,
                self.scheduler,
                {
                    "train_tokens": self.res.train_tokens,
                    "skipped_steps": self.res.skipped_steps,
                    "train_seconds": self.res.train_seconds + time.perf_counter() - started,
                    "best_metric": self.res.best_metric,
                    "best_step": self.res.best_step,
                    "window": self.window,
                    "run_state": self.run_state,
                },
                keep=self.cfg.save_total_limit,
                best_step=self.res.best_step,
            )
        self.accelerator.wait_for_everyone()
        _fault_injection(self.res.steps)

    def finish(self) -> LoopResult:
        self.progress.close()
        if self.regional:
            self.regional.remove()
        if self.best_state is not None:
            _restore(self.model, self.best_state)
        res = self.res
        res.peak_memory_mb = peak_memory_mb()
        self.writer.write(
            {
                "event": "end",
                "steps": res.steps,
                "train_seconds": round(res.train_seconds, 3),
                "train_tokens_per_s": round(res.tokens_per_s, 2),
                "peak_memory_mb": res.peak_memory_mb,
                "skipped_steps": res.skipped_steps,
                "best_step": res.best_step,
            }
        )
        return res


class _Watch:
    """Overfitting warning and early stopping, from the evaluations and the training loss between them.

    Overfitting: the validation metric got worse at two evaluations in a row while the training loss
    (mean over the steps since the previous evaluation) fell at both: logged once, and written to
    metrics.jsonl as an ``overfitting`` event. Early stopping (``train.early_stopping`` = patience):
    no new best ``metric_for_best`` for that many evaluations stops the run; the best state is kept."""

    def __init__(self, cfg: TrainConfig):
        self.cfg, self.loss, self.units = cfg, 0.0, 0
        self.history: list[tuple[int, float, float | None]] = []  # (step, metric, training loss)
        self.since_best, self.worse_in_a_row, self.warned, self.stopped = 0, 0, False, False

    def after_evaluation(self, res: LoopResult, writer: MetricsWriter) -> None:
        metric = self.cfg.metric_for_best
        train = self.loss / self.units if self.units else None
        self.loss, self.units = 0.0, 0
        self.history.append((res.steps, res.last_eval[metric], train))
        self.since_best = 0 if res.best_step == res.steps else self.since_best + 1
        if len(self.history) >= 2:
            (_, before, t_before), (_, now, t_now) = self.history[-2:]
            worse = now < before if self.cfg.greater_is_better else now > before
            fell = train is not None and t_before is not None and t_now < t_before
            self.worse_in_a_row = self.worse_in_a_row + 1 if worse and fell else 0
        if self.worse_in_a_row == 2 and not self.warned:
            self.warned = True
            (s0, m0, l0), (s2, m2, l2) = self.history[-3], self.history[-1]
            self._event(
                writer,
                res.steps,
                "overfitting",
                f"overfitting: validation {metric} went from {m0:.4f} (step {s0}) to {m2:.4f} (step {s2}) "
                f"while the training loss fell from {l0:.4f} to {l2:.4f}; the best checkpoint (step "
                f"{res.best_step}) is kept; consider train.early_stopping, fewer epochs or more data",
            )
        if self.cfg.early_stopping and self.since_best >= self.cfg.early_stopping:
            self.stopped = True
            self._event(
                writer,
                res.steps,
                "early_stop",
                f"early stopping at step {res.steps}: no better validation {metric} than "
                f"{res.best_metric:.4f} (step {res.best_step}) for {self.since_best} evaluations "
                f"(train.early_stopping={self.cfg.early_stopping}); the best checkpoint is kept",
            )

    @staticmethod
    def _event(writer: MetricsWriter, step: int, event: str, message: str) -> None:
        log(message)
        writer.write({"event": event, "step": step, "message": message})


def _forever(loader: Iterable, skip: int = 0):
    """Yield micro-batches across epochs, reshuffling each epoch when the sampler supports it.
    The first ``skip`` micro-batches (already trained on before a resume) are passed over."""
    per_epoch = len(loader)
    for epoch in itertools.count(skip // per_epoch):
        if hasattr(loader, "set_epoch"):  # accelerate's prepared loader forwards it
            loader.set_epoch(epoch)
        elif hasattr(getattr(loader, "batch_sampler", None), "set_epoch"):
            loader.batch_sampler.set_epoch(epoch)
        if skip and hasattr(loader, "skip"):  # a loader that can skip cheaply (RL rollouts)
            loader.skip, skip = skip % per_epoch, 0
        batches = iter(loader)
        if skip:
            batches = itertools.islice(batches, skip % per_epoch, None)
            skip = 0
        yield from batches


def _fault_injection(step: int) -> None:
    """Test hook: ``DELTATUNE_FAULT_AT_STEP=N`` SIGKILLs the process right after checkpoint N, to
    prove that resume continues exactly (tests/tasks/test_resume.py)."""
    if os.environ.get("DELTATUNE_FAULT_AT_STEP") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def _accumulate(model, group, loss_fn, accelerator) -> tuple[float, int, int, bool, dict]:
    """Backward over one accumulation group with exact normalisation; returns (loss sum, units,
    tokens, finite, extra metric sums). A loss's ``metrics`` are sums over its units (e.g. DPO's reward
    accuracy), logged as means like the loss."""
    local_units = sum(int(b["num_units"]) for b in group)
    total_units = local_units
    if accelerator.num_processes > 1:
        total_units = int(
            accelerator.reduce(torch.tensor(local_units, device=accelerator.device), reduction="sum")
        )
    # DDP averages gradients over processes; scale up so the result is sum / total_units.
    scale = accelerator.num_processes / max(total_units, 1)
    loss_total, tokens, finite, extras = 0.0, 0, True, {}
    for i, batch in enumerate(group):
        sync = accelerator.no_sync(model) if i < len(group) - 1 else contextlib.nullcontext()
        with sync:
            # The loader is only prepared (sharded) with several processes: move the batch here, and
            # autocast here too, since a loss_fn may call submodules around the wrapped forward.
            with accelerator.autocast():
                out = loss_fn(model, send_to_device(batch, accelerator.device))
            loss_sum = out.loss
            if not torch.isfinite(loss_sum):
                finite = False
                continue
            accelerator.backward(loss_sum * scale)
        loss_total += float(loss_sum.detach())
        tokens += out.tokens
        for key, value in out.metrics.items():
            extras[key] = extras.get(key, 0.0) + float(value)
    return loss_total, local_units, tokens, finite, extras


def _evaluate(model, evaluate, cfg, res, writer, progress, best_state):
    metrics = evaluate(model)
    res.last_eval = metrics
    writer.write({"step": res.steps, **{f"eval/{k}": v for k, v in metrics.items()}})
    progress.note(metrics)
    if cfg.metric_for_best not in metrics:
        raise UserError(
            f"train.metric_for_best: '{cfg.metric_for_best}' is not an evaluation metric; "
            f"available: {', '.join(sorted(metrics))}"
        )
    value = metrics[cfg.metric_for_best]
    better = res.best_metric is None or (
        value > res.best_metric if cfg.greater_is_better else value < res.best_metric
    )
    if better:
        res.best_metric, res.best_step = value, res.steps
        best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return best_state


def _restore(model: nn.Module, state: dict[str, Any]) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in state:
                p.copy_(state[name])
