"""Sequence classification, single- or multi-label: wiring only (rows -> examples -> token ids or
windows -> batches; classifier head; a loss from the loss table with class weights; reports with
per-class scores; ``predict``)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from deltatune.config import Config
from deltatune.config.fit import fit_max_length
from deltatune.data.batching import LengthGroupedBatchSampler, pad_collate
from deltatune.data.token_cache import feature_lengths
from deltatune.io import read_json, write_json_atomic
from deltatune.log import log
from deltatune.losses.classification import classifier_batch_loss, make_loss, settle_class_weights
from deltatune.metrics.classification import scalar_metrics
from deltatune.models import load_for_classification
from deltatune.tasks.classify.evaluate import Scorer
from deltatune.tasks.classify.evaluate import evaluate_file as evaluate_in_memory
from deltatune.tasks.classify.examples import LabelSet
from deltatune.tasks.classify.labels import check_learnable
from deltatune.tasks.classify.options import select_metric
from deltatune.tasks.classify.pooling import install_pooling, record_pooling, resolve_pooling, saved_pooling
from deltatune.tasks.classify.report import run_markdown
from deltatune.tasks.classify.tokens import ClassificationInputs, cached_file_features
from deltatune.tasks.classify.windows import document_count


class ClassifyJob:
    """One classification run's data, model and parts (see :class:`deltatune.tasks.TaskJob`)."""

    def __init__(self, cfg: Config):
        d, t, o = cfg.data, cfg.train, cfg.classify
        data = ClassificationInputs(d, t.seed)  # labels now; tokens once max_length fits the model
        check_learnable(data.learnable, data.labels, d.multi_label, d.train, d.label_field)
        self.cfg, self.labels, self.names = cfg, data.labels, list(data.labels.names)
        self.model, self.tokenizer, self.model_path = load_classifier(
            cfg, cfg.model.name, data.labels, t.seed
        )
        fit_max_length(cfg, self.model)
        counts = data.counts
        self.weights, self.auto_weights = settle_class_weights(
            o, self.names, data.labels.values, counts, data.train_size, d.multi_label
        )
        self.label_counts, self.selection = dict(zip(self.names, counts)), select_metric(cfg, counts)
        self.scorer = scorer_for(cfg, self.names)
        self.feats = data.features(self.tokenizer, d.max_length, d.windows)
        self.has_validation = "validation" in self.feats
        self.loss_fn = partial(classifier_batch_loss, loss=make_loss(o.loss, self.weights, o.gamma))

    def describe(self) -> str:
        if self.has_validation:
            log(f"best checkpoint by {self.selection['metric']} ({self.selection['reason']})")
        windows = {s: f" ({len(f)} windows)" if self.cfg.data.windows else "" for s, f in self.feats.items()}
        auto = (
            " (auto: imbalanced labels; classify.class_weights: none to turn off)"
            if self.auto_weights
            else ""
        )
        weights = f"; class weights {self.cfg.classify.class_weights}{auto}" if self.weights else ""
        return (
            f"data: {', '.join(f'{document_count(f)} {s}{windows[s]}' for s, f in self.feats.items())} "
            f"examples; labels: {', '.join(self.names)}{weights}"
        )

    def header(self) -> dict:
        o, d = self.cfg.classify, self.cfg.data
        return {
            "labels": self.names,
            "multi_label": d.multi_label,
            "label_counts": self.label_counts,
            "loss": o.loss,
            "gamma": o.gamma,
            "class_weights": o.class_weights,
            "selection": self.selection,
            "windows": d.windows.model_dump() if d.windows else None,
        }

    def evaluate(self, model, split: str = "validation") -> dict:
        return self.scorer.evaluate(model, self.feats[split], self.tokenizer.pad_token_id)

    def eval_metrics(self, model) -> dict:
        return scalar_metrics(self.evaluate(model))

    def loader(self, method, num_processes: int) -> DataLoader:
        t = self.cfg.train
        train = self.feats["train"]
        sampler = LengthGroupedBatchSampler(
            feature_lengths(train), t.batch_size, group_by_length=t.group_by_length, seed=t.seed
        )
        # Own generator: iterating the loader must not draw from the global RNG (exact resume).
        return DataLoader(
            train,
            batch_sampler=sampler,
            generator=torch.Generator(),
            collate_fn=partial(pad_collate, pad_token_id=self.tokenizer.pad_token_id),
        )

    def final(self, model) -> dict:
        how = self.cfg.classify.threshold
        if isinstance(how, str) and self.has_validation:
            tuned = self.scorer.tune(
                model, self.feats["validation"], self.tokenizer.pad_token_id, how == "per_label"
            )
            log(f"decision thresholds ({how}, on validation): {dict(zip(self.names, tuned))}")
        return {s: self.evaluate(model, s) for s in ("validation", "test") if s in self.feats}

    def save(self, run_dir: Path) -> None:
        record_pooling(self.cfg.classify.pooling, run_dir)
        write_json_atomic(
            {
                "id2label": {str(k): v for k, v in self.labels.id2label.items()},
                "values": self.labels.values,
                "multi_label": self.scorer.multi_label,
                "thresholds": self.scorer.thresholds,
            },
            run_dir / "labels.json",
        )

    def summary(self, report: dict) -> dict:
        return {
            f"{s}_{k}": v
            for s in ("validation", "test")
            if s in report
            for k, v in scalar_metrics(report[s]).items()
        }

    def markdown(self, report: dict, result) -> str:
        return run_markdown(report, result)


def scorer_for(cfg: Config, names: list[str], thresholds: list[float] | None = None) -> Scorer:
    d, how = cfg.data, cfg.classify.threshold
    fixed = [how] * len(names) if isinstance(how, float) and d.multi_label else None
    return Scorer(names, d.multi_label, d.windows.aggregate if d.windows else "mean", thresholds or fixed)


def load_classifier(cfg: Config, source: str, labels: LabelSet, seed: int):
    model, tokenizer, path = load_for_classification(
        source, len(labels), labels.id2label, seed, dtype=cfg.model.dtype
    )
    cfg.classify.pooling = resolve_pooling(cfg.classify.pooling, model, path)  # config.yaml says which ran
    install_pooling(model, cfg.classify.pooling)
    if cfg.data.multi_label:  # saved in config.json: transformers' own loss is then BCE too
        model.config.problem_type = "multi_label_classification"
    return model, tokenizer, path


def load_model(cfg: Config, source: str, run_dir: Path | None, saved: Path):
    """The classifier of a finished run (labels and thresholds from its labels.json) or of a PEFT
    adapter (as many labels as its saved head has outputs, named by index)."""
    from deltatune.runs.loaded import saved_head_outputs

    saved_labels = {}
    if run_dir is not None and (run_dir / "labels.json").is_file():
        saved_labels = read_json(run_dir / "labels.json", "label list")
        id2label = {int(k): v for k, v in saved_labels["id2label"].items()}
        labels = LabelSet(saved_labels["values"], [id2label[i] for i in range(len(id2label))])
    else:
        n = saved_head_outputs(saved)
        labels = LabelSet(list(range(n)), [str(i) for i in range(n)])
    if run_dir is None:  # an adapter alone: pools as PEFT does, unless deltatune saved how it pooled
        cfg.classify.pooling = saved_pooling(saved)
    model, tokenizer, path = load_classifier(
        cfg, source, labels, cfg.train.seed
    )  # untuned: the run's base head
    return (
        model,
        tokenizer,
        path,
        {"labels": labels, "scorer": scorer_for(cfg, labels.names, saved_labels.get("thresholds"))},
    )


def evaluate_file(run, data_path: str, samples: int | None = None) -> dict:
    d = run.cfg.data
    feats = cached_file_features(d, data_path, run.tokenizer, run.extras["labels"], d.max_length)
    if feats is None:
        return evaluate_in_memory(run, data_path, samples)
    return run.extras["scorer"].evaluate(run.model, feats, run.tokenizer.pad_token_id)
