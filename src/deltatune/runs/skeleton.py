"""The one run skeleton every task shares: validate, prepare, open the run directory, evaluate the
base, apply the method, train, evaluate, save, report. A task supplies the parts that differ
(:class:`deltatune.tasks.TaskJob`); nothing here names a task or a method.

Order matters for never losing results: everything that can fail on bad input (config, data
files, model, tokenization, max_length against the model) runs *before* the run directory is
touched; see :mod:`deltatune.runs.directory`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from deltatune.config import Config
from deltatune.errors import ConfigError
from deltatune.io import file_fingerprint, write_json_atomic
from deltatune.log import log
from deltatune.methods.registry import MethodSpec, ModelContext, get_method, trainable_report
from deltatune.models import head_module_names
from deltatune.reports.writers import write_reports
from deltatune.results import LoopResult
from deltatune.runs.directory import (
    abandon_run,
    check_data_unchanged,
    check_same_config,
    finish_run,
    open_run,
    plan_run,
)
from deltatune.tasks import TaskJob, TaskSpec, get_task
from deltatune.training.accelerator import make_accelerator
from deltatune.training.int8 import restore_float_linears, setup_int8_base
from deltatune.training.loop import LoopPlan, train


def data_fingerprints(cfg: Config) -> dict[str, dict]:
    """Content fingerprints of the run's data files (stored in checkpoints; checked on resume)."""
    return {key: file_fingerprint(path) for key, path in cfg.data.files().items() if Path(path).exists()}


def train_run(
    cfg: Config, overwrite: bool = False, allow_data_change: bool = False, preflight: bool = False
) -> dict:
    """Train, evaluate and save one run of any task; returns its summary (``run_dir`` included).
    ``preflight``: run the fast pre-flight checks (:mod:`deltatune.checks`) on the data first and log
    their findings (advice: they never stop the run)."""
    from accelerate.utils import set_seed

    from deltatune.training.memory import limit_allocator_retention

    limit_allocator_retention()  # also for Python callers, not only the CLI (see training/memory.py)
    task, method = get_task(cfg.task), get_method(cfg.method.name)
    if not cfg.data.train:
        raise ConfigError(
            "data.train: required; set it to the training file (.jsonl, .json, .csv or "
            ".tsv), in the config or as data.train=PATH"
        )
    plan = plan_run(cfg, overwrite)
    fingerprints = data_fingerprints(cfg)
    if plan.resume:
        check_data_unchanged(plan.target, fingerprints, allow_data_change)
    set_seed(cfg.train.seed)
    job = task.prepare(cfg)
    log(job.describe())
    if preflight:
        _preflight(cfg)
    if plan.resume:  # after prepare: it may fit data.max_length to the model, as the first run did
        check_same_config(cfg, plan.target)
    work = open_run(plan, cfg)
    try:
        summary = _train(cfg, task, method, job, work, fingerprints)
    except BaseException:
        abandon_run(plan)
        raise
    finish_run(plan)
    if summary:  # empty on the other processes of a distributed run
        summary["run_dir"] = str(plan.target)
    return summary


def _preflight(cfg: Config) -> None:
    import os

    if os.environ.get("RANK", "0") != "0":
        return
    from deltatune.checks import run_checks

    try:
        report = run_checks(cfg, slow=False)
    except Exception as exc:  # noqa: BLE001 - advice only: a failing check must not stop training
        log(
            f"pre-flight checks skipped ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        )
        return
    for f in report.findings:
        log(f"check {f.severity}: {f.title}: {f.evidence}\n    fix: {f.fix}")
    if not report.findings:
        log(f"pre-flight checks: nothing found ({', '.join(report.ran)})")


def _apply_method(cfg: Config, task: TaskSpec, method: MethodSpec, job: TaskJob) -> ModelContext:
    ctx = ModelContext(
        base_model=str(job.model_path),
        task_type=task.peft_task_type,
        head_modules=head_module_names(job.model),
    )
    torch.manual_seed(cfg.train.seed)  # adapter init
    method.apply(job.model, cfg.method, ctx)
    if cfg.train.gradient_checkpointing:
        job.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return ctx


def _train(
    cfg: Config, task: TaskSpec, method: MethodSpec, job: TaskJob, run_dir: Path, fingerprints: dict
) -> dict:
    t = cfg.train
    report = {"task": task.name, "method": method.name, "model": cfg.model.name, **job.header()}
    if job.has_validation:
        report["base"] = job.evaluate(job.model)
        log("untuned base on validation: " + _headline(report["base"], t.metric_for_best))
    ctx = _apply_method(cfg, task, method, job)
    params = report["trainable_parameters"] = trainable_report(job.model)
    log(
        f"model {cfg.model.name} ({job.model_path}); method {method.name}: trainable "
        f"{params['trainable']:,} / {params['total']:,} parameters ({params['percent']:.3f}%)"
    )

    accelerator = make_accelerator(t.precision, t.report_to, run_dir, cfg.model_dump(mode="json"))
    int8 = setup_int8_base(
        job.model,
        t.int8_base,
        method.int8_auto if task.int8_auto else "off",
        accelerator.device.type,
        str(accelerator.mixed_precision),
        t.compile,
    )
    lr = t.learning_rate
    param_lr = method.param_lr(job.model, cfg.method, lr) if method.param_lr else None
    job.run_dir = run_dir
    plan = LoopPlan(
        lr, param_lr, t.resume, {"data_fingerprints": fingerprints}, task.auto_min_steps, task.auto_evals
    )
    loader = job.loader(method, accelerator.num_processes)
    evaluate = job.eval_metrics if job.has_validation else None
    result = train(job.model, loader, job.loss_fn, t, plan, run_dir, accelerator, evaluate)
    model = accelerator.unwrap_model(job.model)
    restore_float_linears(model)
    report.update(job.final(model))
    if not accelerator.is_main_process:
        return {}
    method.save(model, cfg.method, ctx, run_dir / method.saved_dir)
    if method.trains_whole_model:  # a complete Hugging Face model directory
        job.tokenizer.save_pretrained(run_dir / method.saved_dir)
    job.save(run_dir)
    summary = {
        "task": task.name,
        "method": method.name,
        "learning_rate": lr,
        **_loop_summary(result),
        "auto_evals": task.auto_evals,
        "int8_base": int8,
        "trainable_parameters": params,
        **job.summary(report),
    }
    report["summary"] = summary
    write_reports(run_dir, report, job.markdown(report, result))
    write_json_atomic(summary, run_dir / "summary.json")  # last: marks the run finished
    accelerator.end_training()
    return summary


def _loop_summary(result: LoopResult) -> dict:
    return {
        "epochs": result.epochs,
        "eval_every": result.eval_every,
        "steps": result.steps,
        "train_seconds": round(result.train_seconds, 3),
        "train_tokens": result.train_tokens,
        "train_tokens_per_s": round(result.tokens_per_s, 2),
        "peak_rss_mb": result.peak_memory_mb,
        "skipped_steps": result.skipped_steps,
        "best_step": result.best_step,
        "best_metric": result.best_metric,
    }


def _headline(report: dict, metric: str | None) -> str:
    shown = [
        k for k in (metric, "accuracy", "loss", "rouge_l") if k in report and isinstance(report[k], float)
    ]
    return ", ".join(f"{k} {report[k]:.4f}" for k in dict.fromkeys(shown))
