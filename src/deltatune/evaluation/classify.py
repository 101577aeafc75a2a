"""Evaluating and using a sequence classifier: class probabilities, metrics, predictions, and the
``eval`` / ``predict`` commands of a trained classification run (a :class:`~deltatune.runs.loaded.LoadedRun`
whose ``extras["labels"]`` is its label set)."""

from __future__ import annotations

import torch

from deltatune.data.batching import pad_collate
from deltatune.data.classify import Example, examples_from_file, tokenize
from deltatune.evaluation.metrics import classification_metrics
from deltatune.evaluation.reports import classification_markdown


@torch.no_grad()
def predict_probs(model, feats: list[dict], pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """Class probabilities (N, C) in input order; batches sorted by length to avoid padding."""
    was_training = model.training
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
    model.train(was_training)
    return torch.stack(out) if out else torch.empty(0)


def evaluate_feats(model, feats: list[dict], pad_id: int, label_names: list[str]) -> dict:
    """Accuracy, precision/recall/F1, per-class scores and confusion matrix on labelled ``feats``."""
    probs = predict_probs(model, feats, pad_id)
    y_pred = probs.argmax(-1).tolist()
    return classification_metrics([f["label"] for f in feats], y_pred, label_names)


def prediction_rows(texts: list[str], probs: torch.Tensor, names: list[str]) -> list[dict]:
    """One ``{text, label, probability, probabilities}`` row per input."""
    out = []
    for text, p in zip(texts, probs):
        k = int(p.argmax())
        out.append({"text": text, "label": names[k], "probability": round(float(p[k]), 6),
                    "probabilities": {n: round(float(x), 6) for n, x in zip(names, p)}})
    return out


def evaluate_file(run, data_path: str, samples: int | None = None) -> dict:
    examples = examples_from_file(data_path, run.cfg.data, run.extras["labels"])
    feats = tokenize(run.tokenizer, examples, run.cfg.data.max_length)
    return evaluate_feats(run.model, feats, run.tokenizer.pad_token_id, run.extras["labels"].names)


def predict(run, texts: list[str] | None = None, data_path: str | None = None) -> list[dict]:
    if data_path is not None:
        examples = examples_from_file(data_path, run.cfg.data, None)
    else:
        examples = [Example(text=t, text_pair=None, label=None, line=i + 1) for i, t in enumerate(texts or [])]
    probs = predict_probs(run.model, tokenize(run.tokenizer, examples, run.cfg.data.max_length),
                          run.tokenizer.pad_token_id)
    return prediction_rows([e.text for e in examples], probs, run.extras["labels"].names)


def format_report(report: dict, title: str) -> str:
    return classification_markdown(title, {"data": report})
