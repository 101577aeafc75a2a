"""The single extension point for tasks (classify, sft, ...), the same registry shape as methods and
metrics (:mod:`deltatune.registry`).

A task is one folder under ``deltatune/tasks/`` (or any module a test or a plugin imports) whose
``__init__`` calls :func:`register_task` with a :class:`TaskSpec`: its typed data options, its own config
section, how it prepares a run (data, model, batches, loss, evaluation, reports) and what the post-run
commands (``eval``, ``predict``, ``generate``, ``merge``) do with its runs. Config validation, the CLI
and ``deltatune train --help`` read the task list from here; nothing else names a task.

Plugins outside deltatune register through the ``deltatune.tasks`` entry-point group (the entry
point is a module to import).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from deltatune.errors import ConfigError
from deltatune.registry import Registry

if TYPE_CHECKING:
    import torch.nn as nn
    from pydantic import BaseModel

    from deltatune.config import Config
    from deltatune.methods.registry import MethodSpec
    from deltatune.results import BatchLoss, LoopResult

ENTRY_POINT_GROUP = "deltatune.tasks"


class TaskJob(Protocol):
    """One prepared run of a task: data read and validated, base model and tokenizer loaded.

    :func:`deltatune.runs.skeleton.train_run` drives it; everything here is what differs by task.
    """

    model: nn.Module
    tokenizer: Any
    model_path: str
    has_validation: bool
    run_dir: Path | None  # set by the skeleton before ``loader`` (for caches that live with the run)

    def describe(self) -> str:
        """One log line about the data (examples per split, labels or template)."""

    def header(self) -> dict:
        """Task-specific entries at the top of ``eval_report.json`` (labels, template, data stats)."""

    def evaluate(self, model: nn.Module) -> dict:
        """The full validation report of ``model`` (the base before training, in reports)."""

    def eval_metrics(self, model: nn.Module) -> dict[str, float]:
        """Scalar validation metrics during training (one may select the best checkpoint)."""

    def loader(self, method: MethodSpec, num_processes: int) -> Any:
        """Training batches (each with ``num_units``, the loss normaliser)."""

    def loss_fn(self, model: nn.Module, batch: dict) -> BatchLoss:
        """The summed loss of one micro-batch, its units and real tokens (:class:`BatchLoss`)."""

    def final(self, model: nn.Module) -> dict:
        """Report sections after training (tuned validation, test)."""

    def save(self, run_dir: Path) -> None:
        """Files besides the adapter that the run's later commands need (labels, template)."""

    def summary(self, report: dict) -> dict:
        """Scalar results for ``summary.json``."""

    def markdown(self, report: dict, result: LoopResult) -> str:
        """``eval_report.md``."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    data_options: type[BaseModel]
    """The ``data:`` section of this task (a subclass of :class:`deltatune.config.DataConfig`)."""
    prepare: Callable[[Config], TaskJob]
    """Read and validate the data, load model and tokenizer; touches no output directory."""
    load_model: Callable[[Config, str, Path | None, Path], tuple[Any, Any, str, dict]]
    """``(cfg, model source, run dir or None, saved adapter/model dir) -> (model, tokenizer, path,
    extras)``: rebuild the base model of a finished run (or of an adapter trained elsewhere)."""
    model_kind: str
    """"classifier" or "causal_lm": which post-run commands apply (generate and chat need a causal LM)."""
    peft_task_type: str
    """PEFT's task type written in adapter_config.json (SEQ_CLS, CAUSAL_LM)."""
    default_max_length: int
    default_metric: str
    options: type[BaseModel] | None = None
    """This task's own config section, under the task's name (``classify: {loss: focal}``)."""
    best_metrics: tuple[str, ...] | None = None
    """Metrics that may select the best checkpoint; None: any metric ``eval_metrics`` returns."""
    lower_is_better: tuple[str, ...] = ("loss", "perplexity")
    """Metrics where smaller is better (the default of ``train.greater_is_better`` follows)."""
    metric_kind: str | None = None
    """The kind of registered metrics (:mod:`deltatune.metrics`) this task's evaluations report, which may
    then select the best checkpoint too; None: none."""
    evaluate_file: Callable[..., dict] | None = None
    """``(loaded_run, data_path, samples=None) -> report`` for ``deltatune eval``."""
    format_report: Callable[[dict, str], str] | None = None
    """``(report, title) -> text`` printed by ``deltatune eval``."""
    predict: Callable[..., list[dict]] | None = None
    """``(loaded_run, texts=None, data_path=None) -> rows`` for ``deltatune predict``."""
    score: Callable[..., list[float]] | None = None
    """``(loaded_run, prompts, answers) -> rewards`` for ``deltatune score`` (reward models)."""
    preview: Callable[[Config, int, bool], str] | None = None
    """``(cfg, examples, color) -> text`` for ``deltatune preview``: the data as the model sees it."""
    check: Callable[[Config], None] | None = None
    """Task-specific config checks that need more than one section (raise ValueError with the fix)."""
    inspect: Callable[[Config], Any] | None = None
    """``cfg -> DataView``: the examples as the pre-flight data checks see them (text, labels, length,
    trained tokens; :mod:`deltatune.data.views`). None: ``deltatune check`` runs the config checks only."""
    resolved: Callable[[Config, Path], dict[str, Any]] | None = None
    """``(cfg, run_dir) -> {"section.key": value}``: what the options ``cfg`` leaves to the run to settle
    (``auto``) settle to for the finished run in ``run_dir`` (its model and data), so that a rerun that
    would settle them the same way counts as unchanged (``compare`` and ``demo`` reuse it)."""
    auto_min_steps: int = 0
    """``train.epochs: auto`` trains more passes (up to ``AUTO_MAX_EPOCHS``) while one pass is under this
    many optimizer steps; 0: auto is always one pass."""
    auto_evals: int = 1
    """With ``train.eval_every`` unset, evaluate at least this many times a run (evenly spaced, and at
    least once a pass); 1: once a pass."""
    int8_auto: bool = False
    """``train.int8_base: auto`` may run int8 base matmuls in this task (where measured), as the method's
    :attr:`MethodSpec.int8_auto` says."""
    summary_keys: tuple[str, ...] = field(default_factory=tuple)
    """Summary values the CLI prints after training."""
    adapter_default: bool = False
    """The task an adapter trained elsewhere with this ``peft_task_type`` is loaded as."""

    def commands(self) -> list[str]:
        """Post-run commands that work on this task's runs."""
        cmds = ["eval"] if self.evaluate_file else []
        cmds += ["predict"] if self.predict else []
        cmds += ["score"] if self.score else []
        cmds += ["generate", "chat"] if self.model_kind == "causal_lm" else []
        return cmds + ["merge"]


TASKS: Registry[TaskSpec] = Registry("task", package=__name__, entry_points=ENTRY_POINT_GROUP)
register_task = TASKS.register
unregister_task = TASKS.unregister
available_tasks = TASKS.available


def get_task(name: Any) -> TaskSpec:
    return TASKS.get(name, key="task")


def task_for_adapter(peft_task_type: str | None, source: Path) -> TaskSpec:
    """The task an adapter trained elsewhere belongs to, from its ``task_type``."""
    for spec in available_tasks().values():
        if spec.peft_task_type == peft_task_type and spec.adapter_default:
            return spec
    known = sorted({s.peft_task_type for s in available_tasks().values() if s.adapter_default})
    raise ConfigError(
        f"{source}: adapter task_type {peft_task_type!r} is not supported; deltatune "
        f"loads adapters for {', '.join(known)}"
    )
