"""A trained model back in memory: from a deltatune run directory, or from an adapter trained
elsewhere (PEFT's ``adapter_config.json`` + ``adapter_model.safetensors``) on a base model.

Every post-run command (eval, predict, generate, chat, merge, compare) starts here; the task and
method registries say how to rebuild the model, so nothing here names a task or a method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deltatune.config import Config, load_config, validate_config
from deltatune.errors import UserError
from deltatune.io import read_json
from deltatune.methods.registry import MethodSpec, ModelContext, get_method, method_for_adapter
from deltatune.models import head_module_names
from deltatune.runs.directory import FINISHED_MARKER, last_checkpoint_step, run_state
from deltatune.tasks import TaskSpec, get_task, task_for_adapter


@dataclass
class LoadedRun:
    """A trained model ready for evaluation, prediction, generation or merging."""

    model: Any
    tokenizer: Any
    cfg: Config
    task: TaskSpec
    method: MethodSpec
    saved: Path  # the adapter (or whole-model) directory it was loaded from
    run_dir: Path | None = None  # None for an adapter trained elsewhere
    extras: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.run_dir or self.saved)

    def template(self, override: str | None = None):
        """The prompt template of a causal-LM run: ``override`` (the ``--template`` flag), else the
        one it trained with."""
        from deltatune.data.templates import make_template

        if override:
            return make_template(override, self.tokenizer, key="--template")
        name = getattr(self.cfg.data, "template", "auto")
        if self.run_dir and (self.run_dir / "template.jinja").is_file():
            name = str(self.run_dir / "template.jinja")  # the user template the run was trained with
        if self.run_dir and name == "auto" and (self.run_dir / FINISHED_MARKER).is_file():
            # what auto resolved to in training (auto keeps prompt/completion pairs raw)
            name = read_json(self.run_dir / FINISHED_MARKER, "run summary").get("template", name)
        return make_template(name, self.tokenizer)

    def require(self, command: str) -> "LoadedRun":
        """Refuse a command this run's task cannot do, saying which ones it can."""
        require_command(self.task, command, self.name)
        return self


def require_command(task: TaskSpec, command: str | None, name: str) -> None:
    """One message for a command that does not apply to a task's runs, naming the ones that do."""
    cmds = task.commands()
    if command is None or command in cmds:
        return
    hint = f'; use `deltatune generate {name} "PROMPT"`' if "generate" in cmds else ""
    raise UserError(
        f"{name} is a '{task.name}' run, which cannot `{command}`; its runs support: {', '.join(cmds)}{hint}"
    )


def finished_run_config(run_dir: Path) -> Config:
    """The config a finished run trained with, or one message saying why it cannot be used."""
    state = run_state(run_dir)
    if state == "missing":
        raise UserError(
            f"{run_dir} is not a deltatune run (no such directory); pass the --output-dir of "
            "a `deltatune train` run (or --adapter DIR --model NAME for an adapter trained elsewhere)"
        )
    if state in ("foreign", "empty"):
        raise UserError(
            f"{run_dir} is not a deltatune run (no config.yaml); pass the --output-dir of a "
            "`deltatune train` run, or --adapter DIR --model NAME for an adapter trained elsewhere"
        )
    if state in ("started", "unfinished"):
        step = last_checkpoint_step(run_dir)
        where = f"its last checkpoint is at step {step}" if step else "it has no checkpoint yet"
        raise UserError(
            f"{run_dir} is an unfinished run (no summary.json; {where}); finish it with "
            f"`deltatune train {run_dir / 'config.yaml'} --resume`"
        )
    cfg_path = run_dir / "config.yaml"
    try:
        raw = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        raw = None  # load_config below names the exact problem
    else:
        missing = [
            k for k in ("task", "model", "method", "data") if not isinstance(raw, dict) or k not in raw
        ]
        if missing:
            raise UserError(
                f"{cfg_path}: damaged: a run's config.yaml holds the whole resolved config, but "
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing; restore "
                "the file (or train the run again with --overwrite)"
            )
    return load_config(cfg_path)


def load_run(run_dir: str | Path, command: str | None = None, untuned: bool = False) -> LoadedRun:
    """Rebuild the trained model of a finished run directory (checking first, when ``command`` is
    given, that the command applies to the run's task). ``untuned``: the run's base model as it was
    before training instead (the method not applied; a classifier gets a fresh head), the baseline
    of ``eval --baseline``, ``bench --baseline`` and ``compare``."""
    run_dir = Path(run_dir)
    cfg = finished_run_config(run_dir)
    task, method = get_task(cfg.task), get_method(cfg.method.name)
    require_command(task, command, str(run_dir))
    saved = run_dir / method.saved_dir
    if not saved.is_dir():
        raise UserError(
            f"{run_dir}: no {method.saved_dir}/ directory, so the trained weights are "
            f"missing; train the run again with `deltatune train {run_dir / 'config.yaml'} --overwrite`"
        )
    return _build(cfg, task, method, saved, run_dir, untuned)


def load_adapter(
    adapter_dir: str | Path,
    model_name: str | None = None,
    task_name: str | None = None,
    command: str | None = None,
    untuned: bool = False,
) -> LoadedRun:
    """An adapter trained elsewhere (PEFT format) on ``model_name`` (default: the base model its
    adapter_config.json names). The task follows from its ``task_type`` unless ``task_name``."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise UserError(
            f"--adapter {adapter_dir}: no adapter_config.json there; give a directory "
            "written by PEFT's save_pretrained or by deltatune (a run's adapter/ folder)"
        )
    acfg = read_json(adapter_dir / "adapter_config.json", "adapter config")
    method = method_for_adapter(acfg, adapter_dir)
    task = get_task(task_name) if task_name else task_for_adapter(acfg.get("task_type"), adapter_dir)
    require_command(task, command, str(adapter_dir))
    model_name = model_name or acfg.get("base_model_name_or_path")
    if not model_name:
        raise UserError(
            f"--adapter {adapter_dir}: its adapter_config.json names no base model; pass --model NAME"
        )
    cfg = validate_config(
        {
            "task": task.name,
            "model": {"name": str(model_name)},
            "method": method.options_from_saved(adapter_dir).model_dump(),
        },
        source=str(adapter_dir / "adapter_config.json"),
    )
    return _build(cfg, task, method, adapter_dir, None, untuned)


def _build(
    cfg: Config, task: TaskSpec, method: MethodSpec, saved: Path, run_dir: Path | None, untuned: bool = False
) -> LoadedRun:
    source = str(saved) if method.trains_whole_model and not untuned else cfg.model.name
    model, tokenizer, path, extras = task.load_model(cfg, source, run_dir, saved)
    if untuned:
        extras = {**extras, "untuned": True}
    elif not method.trains_whole_model:
        ctx = ModelContext(
            base_model=str(path), task_type=task.peft_task_type, head_modules=head_module_names(model)
        )
        method.apply(model, cfg.method, ctx)
        method.load(model, saved)
    model.eval()
    return LoadedRun(model, tokenizer, cfg, task, method, saved, run_dir, extras)


def load_target(
    run_dir: str | None,
    adapter: str | None,
    model_name: str | None,
    command: str | None = None,
    untuned: bool = False,
) -> LoadedRun:
    """What a post-run command works on: a run directory, or ``--adapter DIR`` (with ``--model``)."""
    if run_dir and adapter:
        raise UserError("give a RUN_DIR or --adapter DIR, not both")
    if adapter:
        return load_adapter(adapter, model_name, command=command, untuned=untuned)
    if not run_dir:
        raise UserError(
            "give a RUN_DIR (the --output-dir of `deltatune train`) or --adapter DIR --model NAME"
        )
    if model_name:
        raise UserError("--model goes with --adapter; a run directory knows its base model")
    return load_run(run_dir, command=command, untuned=untuned)


def saved_head_outputs(adapter_dir: Path) -> int:
    """Outputs of the classification head saved with an adapter (PEFT's ``modules_to_save``): the
    smallest first dimension among the head's 2-D weights (``classifier.out_proj`` of RoBERTa, not
    its dense layer)."""
    from safetensors import safe_open

    heads = read_json(adapter_dir / "adapter_config.json", "adapter config").get("modules_to_save") or []
    path = adapter_dir / "adapter_model.safetensors"
    try:
        with safe_open(str(path), "pt") as fh:
            shapes = [
                fh.get_slice(k).get_shape()
                for k in fh.keys()
                if k.endswith("weight") and any(f".{h}." in f".{k}" for h in heads)
            ]
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise UserError(f"{path}: cannot read the adapter weights ({exc}); the file is damaged") from None
    outputs = [s[0] for s in shapes if len(s) == 2]
    if not outputs:
        raise UserError(
            f"{adapter_dir}: the adapter saves no classification head (modules_to_save), so "
            "the number of labels is unknown; it was not trained for sequence classification"
        )
    return min(outputs)
