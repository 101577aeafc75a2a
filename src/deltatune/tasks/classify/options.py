"""The classify task's config sections: its ``data:`` options (:class:`ClassifyData`, with
``data.windows``), its own ``classify:`` section (:class:`ClassifyOptions`: loss, class weights, focal
gamma, multi-label threshold), the checks across sections, and the default metric that selects the
best checkpoint when the training labels are imbalanced."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from deltatune.config.schema import DataConfig, _Strict
from deltatune.tasks.classify.labels import IMBALANCED_RATIO, imbalance_ratio

if TYPE_CHECKING:
    from deltatune.config import Config

# The names of the losses in :data:`deltatune.losses.classification.CLASSIFICATION_LOSSES` (kept here
# without torch, so that validating a config stays cheap; a contract test checks the two agree).
SINGLE_LABEL_LOSSES = ("cross_entropy", "focal")
MULTI_LABEL_LOSSES = ("binary_cross_entropy", "binary_focal")
MULTI_ONLY_METRICS = ("f1_micro", "f1_samples", "precision_micro", "recall_micro")
# `train.epochs: auto` for classification: more passes while one pass is under this many optimizer steps.
# Medical Abstracts (1,000 rows, 63 steps a pass): one pass left adapters at one class (macro-F1 0.100) and
# LoRA at 0.603 test; auto's 4 passes gave 0.640 and 0.648 (README, "Defaults sweep"). SST-2 8k (500) and
# the unfair clauses (250) stay at one pass.
AUTO_MIN_STEPS = 200
# With `train.eval_every` unset, a classifier evaluates at least this many times a run (and keeps the best).
# Measured: bottleneck adapters at their default 1e-3 on the weighted unfair-clause data score 0.645
# validation macro-F1 after 50 of their 250 steps, then diverge to one class (0.480) by step 150; with one
# evaluation at the end the run kept the collapsed model (README, "Defaults sweep").
AUTO_EVALS = 4


class Windows(_Strict):
    """``data.windows``: classify long documents by sliding windows of ``data.max_length`` tokens."""

    stride: int | None = Field(
        None,
        gt=0,
        description="text tokens from one window's start to the next (overlap = window text "
        "tokens - stride); default half a window",
    )
    aggregate: Literal["mean", "max", "first"] = Field(
        "mean", description="window logits -> document logits: mean, max (per class), or the first window"
    )
    max_train_windows: int | None = Field(
        None, gt=0, description="train on the first k windows of each document; default every window"
    )

    @model_validator(mode="before")
    @classmethod
    def _length_is_data_max_length(cls, value):
        if isinstance(value, dict) and "max_length" in value:
            raise ValueError(
                f"the window length is data.max_length; set data.max_length: "
                f"{value['max_length']} and remove data.windows.max_length"
            )
        return value


class ClassifyData(DataConfig):
    text_field: str = Field("text", description="field holding the input text")
    text_pair_field: str | None = Field(None, description="optional second text (sentence pairs)")
    label_field: str = Field("label", description="field holding the label (string or integer)")
    label_names: list[str] | dict[int | str, str] | None = Field(
        None, description="names for integer labels (list indexed by label, or {value: name})"
    )
    multi_label: bool = Field(
        False,
        description="rows have a set of labels (a list, [] for none, or a string "
        "split on label_separator): independent sigmoids, binary cross-entropy",
    )
    label_separator: str = Field(",", description="multi_label: separator of labels given as one string")
    test_split: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="fraction of train held out (stratified, "
        "seed 0) as the test set when no test file; validation_split splits the rest",
    )
    windows: Windows | None = Field(
        None,
        description="long documents as overlapping windows of max_length "
        "tokens: {stride, aggregate: mean|max|first, max_train_windows}",
    )
    cache: bool | None = Field(
        None,
        description="tokenize once: keep the tokenized data on disk (Arrow, memory-mapped, "
        "under $DELTATUNE_HOME/tokens) for the next run, eval and --resume; default: for "
        "training files of 256 KiB or more (single-label, no windows)",
    )


class ClassifyOptions(_Strict):
    loss: Literal[(*SINGLE_LABEL_LOSSES, *MULTI_LABEL_LOSSES)] | None = Field(
        None,
        description="cross_entropy or focal (single-label), binary_cross_entropy or binary_focal "
        "(multi-label); default the first of each",
    )
    class_weights: Literal["auto", "balanced", "none"] | dict[int | str, float] | list[float] | None = Field(
        "auto",
        description="loss weight per label: auto (balanced when single-label training labels are "
        "imbalanced, largest class >= 5x the smallest; else none), balanced (from the training labels: "
        "n/(C*n_c); multi-label pos_weight negatives/positives), none, {label: weight} or a list; "
        "config.yaml gets the weights used",
    )
    gamma: float = Field(
        2.0, ge=0, description="focal losses: scale each example by (1 - p_true)^gamma (0 = no focusing)"
    )
    pooling: Literal["auto", "cls", "mean"] = Field(
        "auto",
        description="what the head reads: cls (the model's own pooler), mean (mean of the real tokens' "
        "hidden states, then the pooler layer; BERT-style encoders) or auto (mean for sentence-embedding "
        "checkpoints trained with mean pooling, like the bundled MiniLM; else cls)",
    )
    threshold: float | Literal["tuned", "per_label"] = Field(
        0.5,
        description="multi-label decision threshold: a number, tuned (one, best validation micro-F1) or "
        "per_label (each label's best validation F1); saved with the run",
    )

    @field_validator("class_weights")
    @classmethod
    def _positive(cls, value):
        weights = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        if any(w <= 0 for w in weights):
            raise ValueError("weights must be positive numbers (1 = unweighted)")
        return value

    @field_validator("threshold")
    @classmethod
    def _probability(cls, value):
        if isinstance(value, float) and not 0 < value < 1:
            raise ValueError("a threshold is a probability between 0 and 1 (exclusive)")
        return value


def check(cfg: Config) -> None:
    """Fill the loss default (so config.yaml says what ran) and refuse options that do not fit."""
    d, o, multi = cfg.data, cfg.classify, cfg.data.multi_label
    o.loss = o.loss or ("binary_cross_entropy" if multi else "cross_entropy")
    if (o.loss in MULTI_LABEL_LOSSES) != multi:
        fits = "binary_cross_entropy or binary_focal" if multi else "cross_entropy or focal"
        raise ValueError(
            f"classify.loss: {o.loss} does not fit data.multi_label: {str(multi).lower()}; use {fits}"
        )
    if not multi and (o.threshold != 0.5 or cfg.train.metric_for_best in MULTI_ONLY_METRICS):
        key = "classify.threshold" if o.threshold != 0.5 else "train.metric_for_best"
        raise ValueError(f"{key}: for multi-label runs only; set data.multi_label: true or remove it")
    if isinstance(o.threshold, str) and not (d.validation or d.validation_split):
        raise ValueError(
            f"classify.threshold: {o.threshold} is tuned on validation data; set data.validation "
            "or data.validation_split, or give a number"
        )
    if d.windows and d.text_pair_field:
        raise ValueError("data.windows: slides over one text; remove data.text_pair_field or data.windows")


def select_metric(cfg: Config, counts: list[int]) -> dict:
    """Macro-F1 selects the best checkpoint when the training labels are imbalanced (and the user
    chose no metric); says which metric selects, and why."""
    ratio, t = imbalance_ratio(counts), cfg.train
    if not getattr(cfg, "_metric_is_default", False):
        reason = "set in the config"
    elif ratio >= IMBALANCED_RATIO:
        t.metric_for_best = "f1_macro"
        reason = f"training labels are imbalanced: largest/smallest class {ratio:.2f} >= {IMBALANCED_RATIO}"
    else:
        t.metric_for_best = "f1_micro" if cfg.data.multi_label else t.metric_for_best
        reason = f"training labels are balanced: largest/smallest class {ratio:.2f} < {IMBALANCED_RATIO}"
    return {"metric": t.metric_for_best, "reason": reason, "imbalance_ratio": round(ratio, 4)}


def resolved(cfg: Config, run_dir: Path) -> dict:
    """What ``classify.pooling: auto`` and ``classify.class_weights: auto`` settle to for ``cfg``'s
    model and the training labels of the finished run in ``run_dir`` (its eval_report.json; the
    data itself is checked unchanged separately)."""
    from deltatune.io import read_json
    from deltatune.losses.classification import resolve_class_weights
    from deltatune.models.bundled import resolve_model_path
    from deltatune.tasks.classify.pooling import checkpoint_pooling

    o, out = cfg.classify, {}
    if o.pooling == "auto":  # (a mean-pooling checkpoint without a BERT pooler ran cls: trains again)
        try:
            path = resolve_model_path(cfg.model.name)
        except Exception:  # a model that cannot be found now: the run trains again and says why
            path = None
        out["classify.pooling"] = "mean" if checkpoint_pooling(path) == "mean" else "cls"
    if o.class_weights == "auto":
        report = run_dir / "eval_report.json"
        counts = read_json(report, "evaluation report").get("label_counts") if report.is_file() else None
        names, n = list(counts or {}), sum((counts or {}).values())
        weights = resolve_class_weights(
            "auto", names, names, list((counts or {}).values()), n, cfg.data.multi_label
        )
        out["classify.class_weights"] = (
            "unknown" if not counts else dict(zip(names, weights)) if weights else "none"
        )
    return out
