"""Post-run services: evaluate, predict, generate with and merge a trained model (a run directory or
an adapter trained elsewhere). The CLI commands are thin shells over these; tasks supply the parts
that differ (``TaskSpec.evaluate_file``, ``predict``), so nothing here names a task."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from deltatune.errors import UserError
from deltatune.runs.loaded import LoadedRun, load_adapter, load_run, load_target
from deltatune.tasks import available_tasks


def evaluate(run: LoadedRun, data_path: str, samples: int | None = None) -> dict:
    """The task's metrics of a trained model on a file laid out like its training data."""
    run.require("eval")
    return run.task.evaluate_file(run, data_path, samples=samples)


def predict(run: LoadedRun, texts: list[str] | None = None, data_path: str | None = None) -> list[dict]:
    """Predictions for texts, or for each row of a file."""
    run.require("predict")
    return run.task.predict(run, texts=texts, data_path=data_path)


def score(
    run: LoadedRun, answers: list[str], prompt: str | None = None, data_path: str | None = None
) -> list[dict]:
    """Rewards from a reward-model run: of ``answers`` (to one ``prompt``, or none), or of every row of
    a file (preference pairs: both answers; instruction rows: the answer to the prompt)."""
    run.require("score")
    if data_path is not None:
        return _score_file(run, data_path)
    prompts = [[{"role": "user", "content": prompt}] if prompt else [] for _ in answers]
    rewards = run.task.score(run, prompts, answers)
    return [{"prompt": prompt, "answer": a, "reward": round(r, 6)} for a, r in zip(answers, rewards)]


def _score_file(run: LoadedRun, data_path: str) -> list[dict]:
    from deltatune.data.readers import read_rows

    rows = read_rows(data_path, run.cfg.data.format)
    if rows and "chosen" in rows[0] and "rejected" in rows[0]:
        from deltatune.data.pairs import read_pairs

        pairs, _ = read_pairs(data_path, run.cfg.data)
        rewards = run.task.score(
            run, [p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs]
        )
        n = len(pairs)
        return [
            {
                "line": p.line,
                "chosen_reward": round(rewards[i], 6),
                "rejected_reward": round(rewards[n + i], 6),
                "correct": rewards[i] > rewards[n + i],
            }
            for i, p in enumerate(pairs)
        ]
    from deltatune.data.conversations import FieldMap, rows_to_conversations

    convs = rows_to_conversations(rows, "auto", FieldMap(run.cfg.data.fields))
    rewards = run.task.score(run, [c.prompt_messages for c in convs], [c.reference or "" for c in convs])
    return [{"line": c.line, "answer": c.reference, "reward": round(r, 6)} for c, r in zip(convs, rewards)]


def merge(run: LoadedRun, out_dir: str | Path) -> Path:
    """Fold a mergeable adapter into the base weights; write a plain Hugging Face model directory."""
    if run.method.trains_whole_model:
        raise UserError(
            f"{run.name}: a '{run.method.name}' run already saved a whole model in "
            f"{run.saved}; load that directory directly (there is no adapter to merge)"
        )
    if run.method.merge is None:
        raise UserError(
            f"method '{run.method.name}' cannot be merged into the base weights "
            f"({run.method.description}); load the adapter with its base model instead"
        )
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"--out {out_dir} exists and is not an empty directory; choose a new directory")
    merged = run.method.merge(run.model)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except OSError as exc:
        raise UserError(
            f"--out {out_dir}: cannot write there ({exc.strerror}); choose a writable directory"
        ) from None
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        run.tokenizer.save_pretrained(tmp)
        for record in Path(run.saved).glob("deltatune_*.json"):  # e.g. how a classifier's head pooled
            shutil.copy2(record, tmp / record.name)
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def generation_target(
    run_dir: str | None, model_name: str | None, adapter: str | None = None, template: str | None = None
):
    """(model, tokenizer, template, config) to generate with: a run, an adapter on a base model,
    or (with ``model_name`` alone) a base model."""
    if run_dir and model_name:
        raise UserError("give a RUN_DIR or --model NAME, not both (--model goes with --adapter)")
    if run_dir or adapter:
        run = load_target(run_dir, adapter, model_name if adapter else None, command="generate")
        return run.model, run.tokenizer, run.template(template), run.cfg
    if not model_name:
        raise UserError("give a RUN_DIR (an sft run), --adapter DIR, or --model NAME (a base model)")
    from deltatune.config import validate_config
    from deltatune.data.templates import make_template

    task = next(t for t in available_tasks().values() if t.model_kind == "causal_lm" and t.adapter_default)
    cfg = validate_config({"task": task.name, "model": {"name": model_name}})
    model, tokenizer, _, _ = task.load_model(cfg, model_name, None, Path(model_name))
    model.eval()
    return (
        model,
        tokenizer,
        make_template(
            template or cfg.data.template, tokenizer, key="--template" if template else "data.template"
        ),
        cfg,
    )


def evaluate_code(
    run_dir: str | None = None,
    model_name: str | None = None,
    adapter: str | None = None,
    settings=None,
    template: str | None = None,
) -> dict:
    """Generated code judged by running it (MBPP, HumanEval: pass@k, execution rate, BLEU) for a
    causal-LM run, an adapter on its base model, or (``model_name`` alone) a base model.
    ``settings``: a :class:`deltatune.codeeval.evaluate.CodeEvalSettings` (default: MBPP, greedy)."""
    from deltatune.codeeval.evaluate import CodeEvalSettings, evaluate_model_code, load_tasks

    settings = settings or CodeEvalSettings()
    load_tasks(settings)  # a missing file or a bad --tasks fails before a model loads
    require_causal_lm(run_dir, adapter, "be evaluated on generated code")
    model, tokenizer, tmpl, _ = generation_target(run_dir, model_name, adapter, template)
    name = run_dir or (f"{adapter} on {model_name or 'its base model'}" if adapter else model_name)
    return evaluate_model_code(model, tokenizer, tmpl, settings, model_name=str(name))


def require_causal_lm(run_dir: str | None, adapter: str | None, what: str) -> None:
    """Refuse a run (or adapter) whose task is not a causal LM before loading its model."""
    from deltatune.io import read_json
    from deltatune.runs.loaded import finished_run_config
    from deltatune.tasks import get_task, task_for_adapter

    if run_dir and not adapter:
        task, name = get_task(finished_run_config(Path(run_dir)).task), run_dir
    elif adapter and (Path(adapter) / "adapter_config.json").is_file():
        task_type = read_json(Path(adapter) / "adapter_config.json", "adapter config").get("task_type")
        task, name = task_for_adapter(task_type, Path(adapter)), adapter
    else:
        return  # nothing to check here: generation_target says what is missing
    if task.model_kind != "causal_lm":
        able = sorted(n for n, t in available_tasks().items() if t.model_kind == "causal_lm")
        kind = "adapter" if adapter else "run"
        raise UserError(
            f"{name} is a '{task.name}' {kind} (a {task.model_kind}), which cannot {what}: that "
            f"needs a causal LM, i.e. a run of task {', '.join(able)}, or --model NAME for a base model"
        )


__all__ = [
    "LoadedRun",
    "evaluate",
    "evaluate_code",
    "generation_target",
    "load_adapter",
    "load_run",
    "load_target",
    "merge",
    "predict",
    "score",
]
