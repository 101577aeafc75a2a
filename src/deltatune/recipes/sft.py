"""Instruction tuning (SFT) of causal LMs: wiring only (data -> model -> method -> loop -> reports).

The loss covers response tokens only (every assistant turn); held-out loss, perplexity and
generation metrics (ROUGE-L, BLEU, exact match) are reported for the untuned base and the tuned
model, with a side-by-side sample table in ``eval_report.md``.
"""

from __future__ import annotations

import math
import random
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from deltatune.config import Config, GenerateConfig
from deltatune.data.batching import LengthGroupedBatchSampler
from deltatune.data.conversations import Conversation, FieldMap, rows_to_conversations
from deltatune.data.readers import read_rows
from deltatune.data.sft import (Template, encode_conversations, make_template, pack, prompt_ids,
                                sft_collate, sft_collate_parts)
from deltatune.errors import ConfigError, UserError
from deltatune.losses.lm import response_cross_entropy_sum, token_cross_entropy_sum
from deltatune.methods.registry import ModelContext, get_method, trainable_report
from deltatune.methods.saving import write_json_atomic
from deltatune.models import load_for_causal_lm
from deltatune.training.loop import make_accelerator, train
from deltatune.training.run import RunInfo, log

INSERTS_TOKENS = {"prompt_tuning", "prefix_tuning"}  # virtual tokens: not packable, need the attention mask
SAMPLES_IN_REPORT = 8


# ----------------------------------------------------------------------------- data


def read_conversations(path: str, cfg: Config, require_response: bool = True) -> list[Conversation]:
    d = cfg.data
    return rows_to_conversations(read_rows(path, d.format), d.layout, FieldMap(d.fields), d.system_prompt,
                                 require_response=require_response)


def load_splits(cfg: Config) -> dict[str, list[Conversation]]:
    """train / validation / test conversations (validation from a seeded split when asked)."""
    d, seed = cfg.data, cfg.train.seed
    if not d.train:
        raise ConfigError("data.train: required (a .jsonl, .json, .csv or .tsv file of instruction data)")
    splits = {"train": read_conversations(d.train, cfg)}
    if d.max_train_samples and d.max_train_samples < len(splits["train"]):
        splits["train"] = random.Random(seed).sample(splits["train"], d.max_train_samples)
    if d.validation:
        splits["validation"] = read_conversations(d.validation, cfg)
    elif d.validation_split:
        order = list(range(len(splits["train"])))
        random.Random(seed + 1).shuffle(order)
        cut = max(1, round(len(order) * d.validation_split))
        splits["validation"] = [splits["train"][i] for i in sorted(order[:cut])]
        splits["train"] = [splits["train"][i] for i in sorted(order[cut:])]
    if d.test:
        splits["test"] = read_conversations(d.test, cfg)
    return splits


def template_for(cfg: Config, tokenizer, convs: list[Conversation]) -> Template:
    return make_template(cfg.data.template, tokenizer, raw_data=bool(convs) and convs[0].raw)


# ----------------------------------------------------------------------------- loss and evaluation


def _skips_logits(model) -> bool:
    """Whether the LM head can run on target positions alone: a plain (unwrapped) transformers
    causal LM whose logits are just ``lm_head(hidden)`` (no soft-capping or scaling)."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel) or model.base_model is model:
        return False
    if model.get_output_embeddings() is None:
        return False
    c = model.config
    return not (getattr(c, "final_logit_softcapping", None) or getattr(c, "logit_scale", None)
                or getattr(c, "logits_scaling", 1.0) not in (None, 1.0))


def loss_fn(model, batch):
    """(summed response cross-entropy, target tokens, real tokens) of one micro-batch (or of its
    separately padded parts, see ``data.sft.padding_free_parts``)."""
    if "parts" in batch:
        results = [loss_fn(model, part) for part in batch["parts"]]
        return (sum(r[0] for r in results), sum(r[1] for r in results), sum(r[2] for r in results))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    if _skips_logits(model):
        hidden = model.base_model(**inputs, use_cache=False).last_hidden_state
        loss, n = response_cross_entropy_sum(hidden, batch["labels"], model.get_output_embeddings())
    else:
        loss, n = token_cross_entropy_sum(model(**inputs, use_cache=False).logits, batch["labels"])
    return loss, n, int(batch["num_tokens"])


@torch.no_grad()
def heldout_loss(model, feats: list[dict], pad_id: int, batch_size: int = 8) -> dict:
    """Token-mean response loss and perplexity over ``feats`` (sorted by length: little padding)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(feats, key=lambda f: len(f["input_ids"]))
    total, units = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = {k: v.to(device) for k, v in sft_collate(order[start:start + batch_size], pad_id).items()}
        loss, n, _ = loss_fn(model, batch)
        total, units = total + float(loss), units + n
    model.train(was_training)
    mean = total / max(units, 1)
    return {"loss": round(mean, 6), "perplexity": round(math.exp(min(mean, 50)), 4), "target_tokens": units}


def generation_samples(convs: list[Conversation], n: int) -> list[Conversation]:
    """The first ``n`` examples that have a prompt (plain-text rows have none)."""
    return [c for c in convs if c.prompt_messages][:n]


def generate_answers(model, tokenizer, template: Template, convs: list[Conversation],
                     settings: GenerateConfig, seed: int = 0) -> list[str]:
    from deltatune.evaluation.generation import generate_texts

    ids = [prompt_ids(tokenizer, template, c.prompt_messages) for c in convs]
    return generate_texts(model, tokenizer, ids, settings, seed=seed)


def evaluate_model(model, tokenizer, template, feats, samples, settings, seed) -> dict:
    """Held-out loss/perplexity, plus generation metrics on ``samples`` (if any)."""
    from deltatune.evaluation.text_metrics import text_generation_metrics

    out = heldout_loss(model, feats, tokenizer.pad_token_id)
    if samples:
        answers = generate_answers(model, tokenizer, template, samples, settings, seed)
        out.update(text_generation_metrics(answers, [c.reference for c in samples]))
        out["answers"] = answers
    return out


# ----------------------------------------------------------------------------- the run


def _loader(feats: list[dict], cfg: Config, pad_id: int, split_parts: bool = True,
            attention_mask: bool = True) -> DataLoader:
    """Training batches: packed rows, or length-grouped examples padded in parts. ``split_parts``
    is off under DDP, whose reducer expects one forward per backward; ``attention_mask`` only
    matters for methods that insert tokens (see ``sft_collate``)."""
    d, t = cfg.data, cfg.train
    rows = pack(feats, d.max_length, t.seed) if d.packing else feats
    sampler = LengthGroupedBatchSampler([len(f["input_ids"]) for f in rows], t.batch_size,
                                        group_by_length=t.group_by_length, seed=t.seed)
    # Own generator: iterating the loader must not draw from the global RNG (exact resume).
    collate = sft_collate if d.packing or not split_parts else sft_collate_parts
    return DataLoader(rows, batch_sampler=sampler, generator=torch.Generator(),
                      collate_fn=partial(collate, pad_token_id=pad_id, attention_mask=attention_mask))


def run(cfg: Config, run: RunInfo) -> dict:
    """Train, evaluate and save one SFT run; returns the summary."""
    from deltatune.evaluation.reports import write_reports
    from deltatune.evaluation.sft_report import sft_markdown

    d, t = cfg.data, cfg.train
    spec = get_method(cfg.method["name"])
    if d.packing and spec.name in INSERTS_TOKENS:
        raise ConfigError(f"data.packing: not possible with {spec.name} (its virtual tokens would be "
                          "shared by every example in a row); set packing: false")
    splits = load_splits(cfg)
    model, tokenizer, model_path = load_for_causal_lm(cfg.model.name, dtype=cfg.model.dtype, seed=t.seed)
    template = template_for(cfg, tokenizer, splits["train"])
    feats, stats = {}, {}
    for split, convs in splits.items():
        feats[split], stats[split] = encode_conversations(convs, template, tokenizer, d.max_length,
                                                          d.truncation)
        s = stats[split]
        log(f"{split}: {s.kept} of {s.examples} examples ({template.name} template); "
            f"{s.truncated} truncated and {s.dropped_too_long} dropped at max_length {d.max_length}, "
            f"{s.dropped_no_target} without response tokens dropped")
    if not feats["train"]:
        raise UserError(f"{d.train}: no training example has response tokens within max_length "
                        f"{d.max_length}; raise data.max_length")

    val = feats.get("validation")
    samples = generation_samples(splits.get("validation", []), cfg.generate.eval_samples)
    report = {"task": "sft", "method": spec.name, "model": cfg.model.name, "template": template.name,
              "data": {k: vars(v) for k, v in stats.items()},
              "samples": [{"prompt": c.prompt_messages[-1]["content"] if c.prompt_messages else "",
                           "reference": c.reference} for c in samples]}
    if val:
        report["base"] = evaluate_model(model, tokenizer, template, val, samples, cfg.generate, t.seed)
        log(f"untuned base on validation: loss {report['base']['loss']:.4f}"
            + (f", ROUGE-L {report['base']['rouge_l']:.4f}" if samples else ""))

    ctx = ModelContext(base_model=str(model_path), task_type="CAUSAL_LM", head_modules=[])
    torch.manual_seed(t.seed)  # adapter init
    spec.apply(model, cfg.method_options(), ctx)
    params = trainable_report(model)
    log(f"model {cfg.model.name} ({model_path}); method {spec.name}: trainable "
        f"{params['trainable']:,} / {params['total']:,} parameters ({params['percent']:.3f}%)")
    report["trainable_parameters"] = params

    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    accelerator = make_accelerator(t.precision, t.report_to, run.dir, cfg.model_dump(mode="json"))
    pad_id = tokenizer.pad_token_id
    evaluate = (lambda m: {k: v for k, v in heldout_loss(m, val, pad_id).items()
                           if k != "target_tokens"}) if val else None
    lr = t.learning_rate or spec.default_lr
    param_lr = spec.param_lr(model, cfg.method_options(), lr) if spec.param_lr else None
    loader = _loader(feats["train"], cfg, pad_id, split_parts=accelerator.num_processes == 1,
                     attention_mask=spec.name in INSERTS_TOKENS)
    result = train(model, loader, loss_fn, t, lr, run.dir, accelerator,
                   evaluate, param_lr=param_lr, resume=t.resume)
    model = accelerator.unwrap_model(model)
    if val:
        report["tuned"] = evaluate_model(model, tokenizer, template, val, samples, cfg.generate, t.seed)
    if feats.get("test"):
        report["test"] = heldout_loss(model, feats["test"], pad_id)

    if not accelerator.is_main_process:
        return {}
    spec.save(model, cfg.method_options(), ctx, run.dir / spec.saved_dir)
    tokenizer.save_pretrained(run.dir / "tokenizer")
    if getattr(template, "source", None):  # a user Jinja template travels with the run
        from deltatune.methods.saving import write_text_atomic

        write_text_atomic(template.source, run.dir / "template.jinja")
    summary = {"task": "sft", "method": spec.name, "template": template.name, "learning_rate": lr, "steps": result.steps,
               "train_seconds": round(result.train_seconds, 3), "train_tokens": result.train_tokens,
               "train_tokens_per_s": round(result.tokens_per_s, 2), "peak_rss_mb": result.peak_memory_mb,
               "skipped_steps": result.skipped_steps, "best_step": result.best_step,
               "best_metric": result.best_metric, "trainable_parameters": params}
    for side in ("base", "tuned"):
        for k, v in report.get(side, {}).items():
            if isinstance(v, (int, float)):
                summary[f"{side}_{k}"] = v
    if "test" in report:
        summary.update({f"test_{k}": v for k, v in report["test"].items()})
    report["summary"] = summary
    write_reports(run.dir, report, sft_markdown(report, result, cfg))
    write_json_atomic(summary, run.dir / "summary.json")
    accelerator.end_training()
    return summary


# ----------------------------------------------------------------------------- trained runs


def load_trained(run_dir: str | Path):
    """Rebuild a trained SFT model from its run directory: (model, tokenizer, config)."""
    from deltatune.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a deltatune run (no config.yaml); pass the --output-dir "
                        "of a `deltatune train` run, or --model NAME for a base model")
    cfg = load_config(run_dir / "config.yaml")
    if cfg.task != "sft":
        raise UserError(f"{run_dir} is a '{cfg.task}' run; generate and chat need an sft run")
    spec = get_method(cfg.method["name"])
    saved = run_dir / spec.saved_dir
    if not saved.is_dir():
        raise UserError(f"{run_dir}: no {spec.saved_dir}/ directory; the run did not finish saving")
    if spec.saved_dir == "model":
        model, tokenizer, _ = load_for_causal_lm(str(saved), dtype=cfg.model.dtype)
    else:
        model, tokenizer, model_path = load_for_causal_lm(cfg.model.name, dtype=cfg.model.dtype)
        ctx = ModelContext(base_model=str(model_path), task_type="CAUSAL_LM", head_modules=[])
        spec.apply(model, cfg.method_options(), ctx)
        spec.load(model, saved)
    model.eval()
    return model, tokenizer, cfg


def load_for_generation(run_dir: str | None, model_name: str | None, template: str | None = None):
    """(model, tokenizer, template, config) for a trained run or, with ``model_name``, a base model."""
    from deltatune.config import validate_config

    if run_dir:
        model, tokenizer, cfg = load_trained(run_dir)
    else:
        cfg = validate_config({"task": "sft", "model": {"name": model_name}})
        model, tokenizer, _ = load_for_causal_lm(model_name)
        model.eval()
    name = template or cfg.data.template
    if run_dir and not template and (Path(run_dir) / "template.jinja").is_file():
        name = str(Path(run_dir) / "template.jinja")  # the user template the run was trained with
    if run_dir and name == "auto" and (Path(run_dir) / "summary.json").is_file():
        import json  # the template the run resolved to (auto keeps prompt/completion pairs raw)

        name = json.loads((Path(run_dir) / "summary.json").read_text()).get("template", name)
    return model, tokenizer, make_template(name, tokenizer), cfg


def evaluate_run(run_dir: str | Path, data_path: str, samples: int | None = None) -> dict:
    """Held-out loss, perplexity and generation metrics of a trained run on a file."""
    model, tokenizer, cfg = load_trained(run_dir)
    convs = read_conversations(data_path, cfg)
    template = template_for(cfg, tokenizer, convs)
    feats, _ = encode_conversations(convs, template, tokenizer, cfg.data.max_length, cfg.data.truncation)
    n = cfg.generate.eval_samples if samples is None else samples
    out = evaluate_model(model, tokenizer, template, feats, generation_samples(convs, n),
                         cfg.generate, cfg.train.seed)
    out.pop("answers", None)
    return out
