"""Sequence classification recipe: wiring only (data -> model -> method -> loop -> reports)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from deltatune.config import Config
from deltatune.data.batching import LengthGroupedBatchSampler, pad_collate
from deltatune.data.classify import Example, LabelSet, load_classification_data, rows_to_examples
from deltatune.data.readers import read_rows
from deltatune.evaluation.metrics import classification_metrics, scalar_metrics
from deltatune.evaluation.reports import classification_markdown, write_reports
from deltatune.losses.classification import cross_entropy_sum
from deltatune.methods.registry import ModelContext, get_method, trainable_report
from deltatune.methods.saving import write_json_atomic
from deltatune.models import head_module_names, load_for_classification
from deltatune.training.loop import make_accelerator, train
from deltatune.training.run import RunInfo, log


def tokenize(tokenizer, examples: list[Example], max_length: int) -> list[dict]:
    """Token ids per example, truncated, unpadded (padding happens per batch)."""
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if examples and examples[0].text_pair is not None else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    feats = []
    for i, e in enumerate(examples):
        f = {"input_ids": enc["input_ids"][i], "label": e.label}
        if "token_type_ids" in enc:
            f["token_type_ids"] = enc["token_type_ids"][i]
        feats.append(f)
    return feats


def loss_fn(model, batch):
    """(sum of cross-entropy, examples, real tokens) for one micro-batch."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "num_units")}
    logits = model(**inputs).logits
    return (cross_entropy_sum(logits, batch["labels"]), int(batch["num_units"]),
            int(batch["attention_mask"].sum()))


@torch.no_grad()
def predict_probs(model, feats: list[dict], pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """Class probabilities (N, C) in input order; batches sorted by length to avoid padding."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(feats)), key=lambda i: len(feats[i]["input_ids"]))
    out = [None] * len(feats)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = pad_collate([{**feats[i], "label": None} for i in idx], pad_id)
        inputs = {k: v.to(device) for k, v in batch.items() if k != "num_units"}
        probs = model(**inputs).logits.float().softmax(-1).cpu()
        for j, i in enumerate(idx):
            out[i] = probs[j]
    return torch.stack(out) if out else torch.empty(0)


def evaluate_feats(model, feats, pad_id, label_names) -> dict:
    probs = predict_probs(model, feats, pad_id)
    y_pred = probs.argmax(-1).tolist()
    return classification_metrics([f["label"] for f in feats], y_pred, label_names)


def run(cfg: Config, run: RunInfo) -> dict:
    """Train, evaluate and save one classification run; returns the summary."""
    d, t = cfg.data, cfg.train
    data = load_classification_data(d.train, d.validation, d.test, d.validation_split, d.text_field,
                                    d.text_pair_field, d.label_field, d.label_names, t.seed,
                                    d.max_train_samples, fmt=d.format)
    names = [data.labels.id2label[i] for i in range(len(data.labels.id2label))]
    model, tokenizer, model_path = load_for_classification(
        cfg.model.name, len(names), data.labels.id2label, t.seed, dtype=cfg.model.dtype)
    spec = get_method(cfg.method["name"])
    ctx = ModelContext(base_model=str(model_path), task_type="SEQ_CLS",
                       head_modules=head_module_names(model))
    torch.manual_seed(t.seed)  # adapter init
    spec.apply(model, cfg.method_options(), ctx)
    params = trainable_report(model)
    log(f"model {cfg.model.name} ({model_path}); method {spec.name}: trainable "
        f"{params['trainable']:,} / {params['total']:,} parameters ({params['percent']:.3f}%)")
    log(f"data: {len(data.train)} train, {len(data.validation or [])} validation, "
        f"{len(data.test or [])} test examples; labels: {', '.join(names)}")

    pad_id = tokenizer.pad_token_id
    feats = {split: tokenize(tokenizer, exs, d.max_length) for split, exs in
             (("train", data.train), ("validation", data.validation), ("test", data.test)) if exs}
    sampler = LengthGroupedBatchSampler([len(f["input_ids"]) for f in feats["train"]], t.batch_size,
                                        group_by_length=t.group_by_length, seed=t.seed)
    # Own generator: iterating the loader must not draw from the global RNG (exact resume).
    loader = DataLoader(feats["train"], batch_sampler=sampler, generator=torch.Generator(),
                        collate_fn=partial(pad_collate, pad_token_id=pad_id))
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    accelerator = make_accelerator(t.precision, t.report_to, run.dir, cfg.model_dump(mode="json"))
    val = feats.get("validation")
    evaluate = (lambda m: scalar_metrics(evaluate_feats(m, val, pad_id, names))) if val else None
    report = {"task": "classify", "method": spec.name, "model": cfg.model.name, "labels": names,
              "trainable_parameters": params}
    if val:
        report["base"] = evaluate_feats(model, val, pad_id, names)
        log(f"untuned base on validation: accuracy {report['base']['accuracy']:.4f}")

    lr = t.learning_rate or spec.default_lr
    param_lr = spec.param_lr(model, cfg.method_options(), lr) if spec.param_lr else None
    result = train(model, loader, loss_fn, t, lr, run.dir, accelerator, evaluate,
                   param_lr=param_lr, resume=t.resume)
    model = accelerator.unwrap_model(model)
    sections = {s: evaluate_feats(model, feats[s], pad_id, names) for s in ("validation", "test")
                if s in feats}
    report.update(sections)

    if accelerator.is_main_process:
        spec.save(model, cfg.method_options(), ctx, run.dir / spec.saved_dir)
        if spec.saved_dir == "model":
            tokenizer.save_pretrained(run.dir / "model")
        write_json_atomic({"id2label": {str(k): v for k, v in data.labels.id2label.items()},
                           "values": data.labels.values}, run.dir / "labels.json")
        summary = {"task": "classify", "method": spec.name, "learning_rate": lr,
                   "steps": result.steps, "train_seconds": round(result.train_seconds, 3),
                   "train_tokens": result.train_tokens,
                   "train_tokens_per_s": round(result.tokens_per_s, 2),
                   "peak_rss_mb": result.peak_memory_mb, "skipped_steps": result.skipped_steps,
                   "best_step": result.best_step, "best_metric": result.best_metric,
                   "trainable_parameters": params,
                   **{f"{s}_{k}": v for s, r in sections.items() for k, v in scalar_metrics(r).items()}}
        report["summary"] = summary
        md = classification_markdown(f"deltatune classification: {spec.name} on {cfg.model.name}",
                                     {**({"base (untuned)": report["base"]} if "base" in report else {}),
                                      **sections},
                                     {"trainable": f"{params['trainable']:,} / {params['total']:,} "
                                                   f"({params['percent']:.3f}%)",
                                      "train tokens/s": f"{result.tokens_per_s:.0f}",
                                      "peak memory MB": result.peak_memory_mb})
        write_reports(run.dir, report, md)
        write_json_atomic(summary, run.dir / "summary.json")
        accelerator.end_training()
        return summary
    return {}


# ----------------------------------------------------------------------------- trained runs


def load_trained(run_dir: str | Path):
    """Rebuild a trained classifier from its run directory: (model, tokenizer, config, LabelSet)."""
    from deltatune.config import load_config
    from deltatune.errors import UserError

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "labels.json").is_file():
        raise UserError(f"{run_dir} is not a finished deltatune run (no config.yaml / labels.json); "
                        "pass the --output-dir of a `deltatune train` run")
    cfg = load_config(run_dir / "config.yaml")
    saved_labels = json.loads((run_dir / "labels.json").read_text())
    id2label = {int(k): v for k, v in saved_labels["id2label"].items()}
    names = [id2label[i] for i in range(len(id2label))]
    labels = LabelSet(saved_labels["values"], names)
    spec = get_method(cfg.method["name"])
    saved = run_dir / spec.saved_dir
    if not saved.is_dir():
        raise UserError(f"{run_dir}: no {spec.saved_dir}/ directory; the run did not finish saving")
    if spec.saved_dir == "model":  # a complete model: load it directly
        model, tokenizer, _ = load_for_classification(str(saved), len(names), id2label, 0,
                                                      dtype=cfg.model.dtype)
    else:
        model, tokenizer, model_path = load_for_classification(cfg.model.name, len(names), id2label, 0,
                                                               dtype=cfg.model.dtype)
        ctx = ModelContext(base_model=str(model_path), task_type="SEQ_CLS",
                           head_modules=head_module_names(model))
        spec.apply(model, cfg.method_options(), ctx)
        spec.load(model, saved)
    model.eval()
    return model, tokenizer, cfg, labels


def _examples_from_file(path: str, cfg: Config, labels: LabelSet | None):
    d = cfg.data
    rows = read_rows(path, d.format)
    return rows_to_examples(rows, d.text_field, d.text_pair_field, d.label_field, labels, path)


def evaluate_run(run_dir: str | Path, data_path: str) -> dict:
    """Metrics of a trained run on a labelled file (same field names as its training config)."""
    model, tokenizer, cfg, labels = load_trained(run_dir)
    examples = _examples_from_file(data_path, cfg, labels)
    feats = tokenize(tokenizer, examples, cfg.data.max_length)
    return evaluate_feats(model, feats, tokenizer.pad_token_id, labels.names)


def predict(run_dir: str | Path, texts: list[str] | None = None, data_path: str | None = None) -> list[dict]:
    """Label and probability for each input text (or each row of a file)."""
    model, tokenizer, cfg, labels = load_trained(run_dir)
    names = labels.names
    if data_path is not None:
        examples = _examples_from_file(data_path, cfg, None)
    else:
        examples = [Example(text=t, text_pair=None, label=None, line=i + 1) for i, t in enumerate(texts or [])]
    feats = tokenize(tokenizer, examples, cfg.data.max_length)
    probs = predict_probs(model, feats, tokenizer.pad_token_id)
    out = []
    for e, p in zip(examples, probs):
        k = int(p.argmax())
        out.append({"text": e.text, "label": names[k], "probability": round(float(p[k]), 6),
                    "probabilities": {n: round(float(x), 6) for n, x in zip(names, p)}})
    return out


def merge_run(run_dir: str | Path, out_dir: str | Path, loader=None) -> Path:
    """Fold a mergeable adapter into the base weights; write a plain Hugging Face model directory.

    ``loader(run_dir) -> (model, tokenizer)`` rebuilds the trained model (default: a classifier)."""
    import shutil
    import tempfile

    from deltatune.errors import UserError

    from deltatune.config import load_config

    model, tokenizer = (loader or (lambda d: load_trained(d)[:2]))(run_dir)
    spec = get_method(load_config(Path(run_dir) / "config.yaml").method["name"])
    if spec.merge is None:
        raise UserError(f"method '{spec.name}' cannot be merged into the base weights "
                        f"({spec.description}); load the adapter with its base model instead")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"--out {out_dir} exists and is not empty; choose a new directory")
    merged = spec.merge(model)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
