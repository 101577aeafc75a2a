"""Sequence classification: wiring only (rows -> examples -> token ids -> batches; classifier head;
cross-entropy from the loss table; accuracy/F1 reports; ``predict``)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch.utils.data import DataLoader

from deltatune.config import Config, DataConfig, _Strict
from deltatune.data.batching import LengthGroupedBatchSampler, pad_collate
from deltatune.data.classify import LabelSet, load_classification_data, tokenize
from deltatune.errors import DataError
from deltatune.evaluation.classify import evaluate_feats, evaluate_file, format_report, predict
from deltatune.evaluation.metrics import scalar_metrics
from deltatune.evaluation.reports import classification_markdown
from deltatune.io import read_json, write_json_atomic
from deltatune.losses.classification import CLASSIFICATION_LOSSES, classifier_batch_loss
from deltatune.models import fit_max_length, load_for_classification
from deltatune.tasks import TaskSpec, register_task


class ClassifyData(DataConfig):
    text_field: str = Field("text", description="field holding the input text")
    text_pair_field: str | None = Field(None, description="optional second text (sentence pairs)")
    label_field: str = Field("label", description="field holding the label (string or integer)")
    label_names: list[str] | dict[int | str, str] | None = Field(
        None, description="names for integer labels (list indexed by label, or {value: name})")


class ClassifyOptions(_Strict):
    loss: Literal[tuple(CLASSIFICATION_LOSSES)] = Field(
        "cross_entropy", description=f"training loss: {', '.join(CLASSIFICATION_LOSSES)}")


class ClassifyJob:
    """One classification run's data, model and parts (see :class:`deltatune.tasks.TaskJob`)."""

    def __init__(self, cfg: Config):
        d, t = cfg.data, cfg.train
        data = load_classification_data(d.train, d.validation, d.test, d.validation_split, d.text_field,
                                        d.text_pair_field, d.label_field, d.label_names, t.seed,
                                        d.max_train_samples, fmt=d.format)
        if len({e.label for e in data.train}) < 2:
            raise DataError(f"every training example has the same label ({data.labels.names[data.train[0].label]!r}), "
                            "so the model would learn to predict it always; add examples of the other "
                            "classes", path=d.train, field=d.label_field)
        self.cfg, self.labels = cfg, data.labels
        self.names = [data.labels.id2label[i] for i in range(len(data.labels))]
        self.model, self.tokenizer, self.model_path = load_for_classification(
            cfg.model.name, len(self.names), data.labels.id2label, t.seed, dtype=cfg.model.dtype)
        fit_max_length(cfg, self.model)
        self.counts = {s: len(v) for s, v in (("train", data.train), ("validation", data.validation),
                                               ("test", data.test)) if v}
        self.feats = {split: tokenize(self.tokenizer, exs, d.max_length) for split, exs in
                      (("train", data.train), ("validation", data.validation), ("test", data.test)) if exs}
        self.has_validation = "validation" in self.feats
        self.loss_fn = partial(classifier_batch_loss, loss=CLASSIFICATION_LOSSES[cfg.classify.loss])

    def describe(self) -> str:
        return (f"data: {self.counts.get('train', 0)} train, {self.counts.get('validation', 0)} "
                f"validation, {self.counts.get('test', 0)} test examples; labels: {', '.join(self.names)}")

    def header(self) -> dict:
        return {"labels": self.names}

    def evaluate(self, model, split: str = "validation") -> dict:
        return evaluate_feats(model, self.feats[split], self.tokenizer.pad_token_id, self.names)

    def eval_metrics(self, model) -> dict:
        return scalar_metrics(self.evaluate(model))

    def loader(self, method, num_processes: int) -> DataLoader:
        t = self.cfg.train
        train = self.feats["train"]
        sampler = LengthGroupedBatchSampler([len(f["input_ids"]) for f in train], t.batch_size,
                                            group_by_length=t.group_by_length, seed=t.seed)
        # Own generator: iterating the loader must not draw from the global RNG (exact resume).
        return DataLoader(train, batch_sampler=sampler, generator=torch.Generator(),
                          collate_fn=partial(pad_collate, pad_token_id=self.tokenizer.pad_token_id))

    def final(self, model) -> dict:
        return {s: self.evaluate(model, s) for s in ("validation", "test") if s in self.feats}

    def save(self, run_dir: Path) -> None:
        write_json_atomic({"id2label": {str(k): v for k, v in self.labels.id2label.items()},
                           "values": self.labels.values}, run_dir / "labels.json")

    def summary(self, report: dict) -> dict:
        return {f"{s}_{k}": v for s in ("validation", "test") if s in report
                for k, v in scalar_metrics(report[s]).items()}

    def markdown(self, report: dict, result) -> str:
        p = report["trainable_parameters"]
        sections = {**({"base (untuned)": report["base"]} if "base" in report else {}),
                    **{s: report[s] for s in ("validation", "test") if s in report}}
        return classification_markdown(
            f"deltatune classification: {report['method']} on {report['model']}", sections,
            {"trainable": f"{p['trainable']:,} / {p['total']:,} ({p['percent']:.3f}%)",
             "train tokens/s": f"{result.tokens_per_s:.0f}", "peak memory MB": result.peak_memory_mb})


def load_model(cfg: Config, source: str, run_dir: Path | None, saved: Path):
    """The classifier of a finished run (labels from its labels.json) or of a PEFT adapter (as many
    labels as its saved head has outputs, named by index)."""
    from deltatune.runs.loaded import saved_head_outputs

    if run_dir is not None and (run_dir / "labels.json").is_file():
        saved_labels = read_json(run_dir / "labels.json", "label list")
        id2label = {int(k): v for k, v in saved_labels["id2label"].items()}
        labels = LabelSet(saved_labels["values"], [id2label[i] for i in range(len(id2label))])
    else:
        n = saved_head_outputs(saved)
        labels = LabelSet(list(range(n)), [str(i) for i in range(n)])
    model, tokenizer, path = load_for_classification(source, len(labels), labels.id2label, 0,
                                                     dtype=cfg.model.dtype)
    return model, tokenizer, path, {"labels": labels}


CLASSIFY = register_task(TaskSpec(
    name="classify",
    description="sequence classification (a new head on an encoder or decoder; accuracy, F1)",
    data_options=ClassifyData,
    options=ClassifyOptions,
    prepare=ClassifyJob,
    load_model=load_model,
    model_kind="classifier",
    peft_task_type="SEQ_CLS",
    default_max_length=128,
    default_metric="accuracy",
    best_metrics=("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro",
                  "precision_weighted", "recall_weighted"),
    evaluate_file=evaluate_file,
    format_report=format_report,
    predict=predict,
    summary_keys=("validation_accuracy", "validation_f1_macro", "test_accuracy"),
    adapter_default=True,
))
