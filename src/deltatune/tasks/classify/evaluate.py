"""Evaluating and using a sequence classifier: logits, window aggregation, probabilities, decisions,
metrics, predictions, and the ``eval`` / ``predict`` commands of a trained classification run (a
:class:`~deltatune.runs.loaded.LoadedRun` whose ``extras`` hold its ``labels`` and ``scorer``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deltatune.data.batching import pad_collate
from deltatune.metrics.classification import classification_metrics, multilabel_metrics, tune_thresholds
from deltatune.tasks.classify.examples import Example, examples_from_file
from deltatune.tasks.classify.report import classify_markdown
from deltatune.tasks.classify.windows import encode_examples


@torch.no_grad()
def predict_logits(model, feats: list[dict], pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """Float32 logits (N, C) of ``feats`` in input order; batches sorted by length to avoid padding."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(feats)), key=lambda i: len(feats[i]["input_ids"]))
    out = [None] * len(feats)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = pad_collate([{**feats[i], "label": None} for i in idx], pad_id)
        inputs = {k: v.to(device) for k, v in batch.items() if k != "num_units"}
        logits = model(**inputs).logits.float().cpu()
        for j, i in enumerate(idx):
            out[i] = logits[j]
    model.train(was_training)
    return torch.stack(out) if out else torch.empty(0)


def predict_probs(model, feats: list[dict], pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """Softmax class probabilities (N, C) of ``feats`` in input order (no window aggregation)."""
    return predict_logits(model, feats, pad_id, batch_size).softmax(-1)


def aggregate_windows(logits: torch.Tensor, docs: list[int], how: str = "mean") -> torch.Tensor:
    """Document logits (D, C) from window logits (W, C); ``docs[w]`` is window w's document (0..D-1).

    ``mean`` and ``max`` are per class over a document's windows; ``first`` takes its first window.
    A document with one window keeps that window's logits bit for bit.
    """
    index = torch.as_tensor(docs, dtype=torch.long)
    n_docs = int(index.max()) + 1 if len(docs) else 0
    if how == "first":
        first = {}
        for w, d in enumerate(docs):
            first.setdefault(d, w)
        return logits[[first[d] for d in range(n_docs)]]
    if how == "max":
        out = torch.full((n_docs, logits.shape[1]), float("-inf"), dtype=logits.dtype)
        return out.scatter_reduce(0, index[:, None].expand_as(logits), logits, "amax")
    sums = torch.zeros((n_docs, logits.shape[1]), dtype=logits.dtype).index_add(0, index, logits)
    return sums / torch.bincount(index, minlength=n_docs).to(logits.dtype)[:, None]


def document_labels(feats: list[dict]) -> list:
    """The label of each document behind ``feats`` (one per document, in order)."""
    if not feats or "doc" not in feats[0]:
        return [f["label"] for f in feats]
    seen = {}
    for f in feats:
        seen.setdefault(f["doc"], f["label"])
    return [seen[d] for d in sorted(seen)]


@dataclass
class Scorer:
    """How a classifier's outputs become probabilities, decisions and reports: softmax and argmax,
    or (``multi_label``) sigmoids and per-label ``thresholds`` (None: 0.5); window logits are
    aggregated per document with ``aggregate``."""

    names: list[str]
    multi_label: bool = False
    aggregate: str = "mean"
    thresholds: list[float] | None = None

    def probs(self, model, feats: list[dict], pad_id: int) -> torch.Tensor:
        """(documents, C) probabilities."""
        logits = predict_logits(model, feats, pad_id)
        if feats and "doc" in feats[0]:
            logits = aggregate_windows(logits, [f["doc"] for f in feats], self.aggregate)
        return logits.sigmoid() if self.multi_label else logits.softmax(-1)

    def decide(self, probs: torch.Tensor):
        """Class ids (N,) or, multi-label, 0/1 decisions (N, C)."""
        if not self.multi_label:
            return probs.argmax(-1).tolist()
        t = torch.tensor(self.thresholds or [0.5] * len(self.names), dtype=probs.dtype)
        return (probs >= t).int().tolist()

    def metrics(self, y_true: list, probs: torch.Tensor) -> dict:
        if not self.multi_label:
            return classification_metrics(y_true, self.decide(probs), self.names)
        report = multilabel_metrics(y_true, self.decide(probs), self.names)
        report["thresholds"] = dict(zip(self.names, self.thresholds or [0.5] * len(self.names)))
        return report

    def evaluate(self, model, feats: list[dict], pad_id: int) -> dict:
        """The full report on labelled ``feats`` (one score per document)."""
        return self.metrics(document_labels(feats), self.probs(model, feats, pad_id))

    def tune(self, model, feats: list[dict], pad_id: int, per_label: bool) -> list[float]:
        """Set (and return) the thresholds with the best F1 on labelled ``feats`` (multi-label)."""
        self.thresholds = tune_thresholds(document_labels(feats), self.probs(model, feats, pad_id), per_label)
        return self.thresholds

    def rows(self, texts: list[str], probs: torch.Tensor) -> list[dict]:
        """One prediction row per text: ``label``, ``probability``, ``probabilities``; multi-label rows
        add ``labels`` (the predicted set; ``label`` is it joined by commas, ``probability`` the
        highest label probability)."""
        out = []
        for text, p, decision in zip(texts, probs, self.decide(probs)):
            probabilities = {n: round(float(x), 6) for n, x in zip(self.names, p)}
            if self.multi_label:
                chosen = [n for n, d in zip(self.names, decision) if d]
                out.append(
                    {
                        "text": text,
                        "labels": chosen,
                        "label": ",".join(chosen),
                        "probability": round(float(p.max()), 6),
                        "probabilities": probabilities,
                    }
                )
            else:
                out.append(
                    {
                        "text": text,
                        "label": self.names[decision],
                        "probability": round(float(p[decision]), 6),
                        "probabilities": probabilities,
                    }
                )
        return out


def evaluate_feats(model, feats: list[dict], pad_id: int, label_names: list[str]) -> dict:
    """Accuracy, precision/recall/F1, per-class scores and confusion matrix on labelled ``feats``."""
    return Scorer(list(label_names)).evaluate(model, feats, pad_id)


def prediction_rows(texts: list[str], probs: torch.Tensor, names: list[str]) -> list[dict]:
    """One ``{text, label, probability, probabilities}`` row per input (single-label)."""
    return Scorer(list(names)).rows(texts, probs)


def _features(run, examples: list[Example]) -> list[dict]:
    d = run.cfg.data
    return encode_examples(
        run.tokenizer, examples, d.max_length, getattr(d, "windows", None), len(run.extras["labels"])
    )


def evaluate_file(run, data_path: str, samples: int | None = None) -> dict:
    examples = examples_from_file(data_path, run.cfg.data, run.extras["labels"])
    return run.extras["scorer"].evaluate(run.model, _features(run, examples), run.tokenizer.pad_token_id)


def predict(run, texts: list[str] | None = None, data_path: str | None = None) -> list[dict]:
    if data_path is not None:
        examples = examples_from_file(data_path, run.cfg.data, None)
    else:
        examples = [
            Example(text=t, text_pair=None, label=None, line=i + 1) for i, t in enumerate(texts or [])
        ]
    scorer = run.extras["scorer"]
    probs = scorer.probs(run.model, _features(run, examples), run.tokenizer.pad_token_id)
    return scorer.rows([e.text for e in examples], probs)


def format_report(report: dict, title: str) -> str:
    return classify_markdown(title, {"data": report})
