"""Classification losses: small pure functions returning a *sum* over examples.

Returning sums (not means) lets the training loop normalise by the number of examples in the whole
accumulated batch, which makes gradient accumulation exact. A classification run picks its loss by
name from :data:`CLASSIFICATION_LOSSES` (``classify: {loss: ...}`` in the config); ``weight`` is the
run's ``classify.class_weights`` resolved to one number per label (:func:`resolve_class_weights`).

Single-label losses take ``labels`` (B,) int64 class ids; multi-label losses take ``targets`` (B, C)
float 0/1. Every loss takes ``logits`` (B, C) and computes in float32 even under bf16 autocast.

Normalisation: a weighted sum divided by the number of examples (not by the sum of the weights, as
``torch.nn.CrossEntropyLoss(weight=...)`` does with its default mean). With ``balanced`` weights the
mean weight over the training set is exactly 1, so the loss keeps its usual scale and learning rate.
"""

from __future__ import annotations

import difflib
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from deltatune.errors import ConfigError
from deltatune.results import BatchLoss


def cross_entropy_sum(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum over the batch of ``-w[y] log softmax(logits)[y]`` (``w`` = 1 when ``weight`` is None).

    logits: (B, C); labels: (B,) int64; weight: (C,) per-class weights or None.
    """
    w = None if weight is None else weight.to(logits.device, torch.float32)
    return F.cross_entropy(logits.float(), labels, weight=w, reduction="sum")


def focal_sum(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None, gamma: float = 2.0
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017, https://arxiv.org/abs/1708.02002), summed over the batch:

        FL = -alpha[y] * (1 - p_y) ** gamma * log p_y,   p = softmax(logits)

    ``alpha`` is ``weight`` (the class weights; 1 when None), Lin et al.'s alpha generalised to C
    classes. ``gamma`` = 0 with no weight is cross-entropy; larger gamma down-weights examples the
    model already gets right, so training concentrates on the hard (often minority) ones.
    logits: (B, C); labels: (B,) int64; weight: (C,) or None.
    """
    logp = F.log_softmax(logits.float(), -1).gather(1, labels[:, None]).squeeze(1)
    loss = -((1 - logp.exp()) ** gamma) * logp
    if weight is not None:
        loss = loss * weight.to(logits.device, torch.float32)[labels]
    return loss.sum()


def binary_cross_entropy_sum(
    logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-label sigmoid + binary cross-entropy, averaged over the C labels, summed over the batch:

        l = mean_j -( w_j y_j log s(z_j) + (1 - y_j) log(1 - s(z_j)) ),   s = sigmoid

    ``w`` = ``weight`` is PyTorch's ``pos_weight`` (per-label weight of the positive term; 1 when
    None). Divided by B this is ``BCEWithLogitsLoss(pos_weight=w)`` (mean over all elements), the loss
    transformers computes for ``problem_type="multi_label_classification"``.
    logits, targets: (B, C); weight: (C,) or None.
    """
    w = None if weight is None else weight.to(logits.device, torch.float32)
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=w, reduction="none")
    return loss.mean(-1).sum()


def binary_focal_sum(
    logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None, gamma: float = 2.0
) -> torch.Tensor:
    """Multi-label focal loss (Lin et al. 2017), averaged over labels, summed over the batch:

        l = mean_j -a_j (1 - p_t) ** gamma * log p_t,   p_t = s(z_j) if y_j else 1 - s(z_j)

    with ``a_j`` = ``weight[j]`` on positives and 1 on negatives (so ``gamma`` = 0 is
    :func:`binary_cross_entropy_sum` with the same ``pos_weight``). logits, targets: (B, C).
    """
    z, y = logits.float(), targets.float()
    ce = F.binary_cross_entropy_with_logits(z, y, reduction="none")  # -log p_t
    p_t = torch.exp(-ce)
    loss = (1 - p_t) ** gamma * ce
    if weight is not None:
        w = weight.to(logits.device, torch.float32)
        loss = loss * (y * w + (1 - y))
    return loss.mean(-1).sum()


CLASSIFICATION_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "cross_entropy": cross_entropy_sum,
    "focal": focal_sum,
    "binary_cross_entropy": binary_cross_entropy_sum,
    "binary_focal": binary_focal_sum,
}
MULTI_LABEL_LOSSES = ("binary_cross_entropy", "binary_focal")
"""Losses over independent sigmoids (``data.multi_label: true``); the others are softmax losses."""
FOCAL_LOSSES = ("focal", "binary_focal")


def make_loss(name: str, weight: Sequence[float] | None = None, gamma: float = 2.0) -> Callable:
    """The loss ``name`` with its weights and gamma bound: ``(logits, labels) -> summed loss``."""
    fn = CLASSIFICATION_LOSSES[name]
    w = None if weight is None else torch.tensor(list(weight), dtype=torch.float32)
    if name in FOCAL_LOSSES:
        return lambda logits, labels: fn(logits, labels, weight=w, gamma=gamma)
    return lambda logits, labels: fn(logits, labels, weight=w)


def balanced_class_weights(counts: Sequence[int]) -> list[float]:
    """``n / (C * n_c)`` per class (scikit-learn's ``class_weight="balanced"``): every class gets the
    same total weight, and the mean weight over the training examples is 1. A class without
    examples gets 1 (it is never a target, so its weight never counts)."""
    n, c = sum(counts), len(counts)
    return [n / (c * k) if k else 1.0 for k in counts]


def balanced_pos_weight(positives: Sequence[int], n: int) -> list[float]:
    """``(n - p_j) / p_j`` per label: positives weigh as much as negatives in each label's binary
    cross-entropy (the ``pos_weight`` PyTorch's docs suggest). 1 for a label without positives."""
    return [(n - p) / p if p else 1.0 for p in positives]


AUTO_WEIGHT_RATIO = 5.0
"""``class_weights: auto`` weighs the classes (balanced) from this largest/smallest class ratio on.
Measured with LoRA (README, "Defaults sweep"): on the unfair-clause data (11.7x) test macro-F1 0.479
unweighted (a model that always answers 'fair') against 0.678 balanced; on Medical Abstracts (3.2x)
0.614 unweighted against 0.523 balanced. 5 lies between the two."""


def auto_weighting(counts: Sequence[int], multi_label: bool) -> bool:
    """Whether ``class_weights: auto`` weighs these training labels: single-label, and the largest
    class at least :data:`AUTO_WEIGHT_RATIO` times the smallest present one."""
    present = [c for c in counts if c > 0]
    return not multi_label and len(present) > 1 and max(present) >= AUTO_WEIGHT_RATIO * min(present)


def resolve_class_weights(
    option, names: Sequence[str], values: Sequence, counts: Sequence[int], n: int, multi_label: bool
) -> list[float] | None:
    """One weight per label from ``classify.class_weights``: None or ``"none"``, ``"auto"`` (balanced
    when :func:`auto_weighting`, else None), ``"balanced"`` (from the training label ``counts``:
    examples per class, or positives per label of ``n`` examples), a list in label order, or a
    mapping ``{label name or raw value: weight}`` (labels it leaves out weigh 1)."""
    if option == "auto":
        option = "balanced" if auto_weighting(counts, multi_label) else None
    if option is None or option == "none":
        return None
    if option == "balanced":
        weights = balanced_pos_weight(counts, n) if multi_label else balanced_class_weights(counts)
        return [round(w, 6) for w in weights]
    if isinstance(option, (list, tuple)):
        if len(option) != len(names):
            raise ConfigError(
                f"classify.class_weights: {len(option)} weights for {len(names)} labels "
                f"({', '.join(names)}); give one per label in this order, or a mapping "
                "{label: weight}"
            )
        return [float(w) for w in option]
    index = {**{str(v): i for i, v in enumerate(values)}, **{name: i for i, name in enumerate(names)}}
    weights = [1.0] * len(names)
    for key, w in option.items():
        if str(key) not in index:
            close = difflib.get_close_matches(str(key), list(index), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(
                f"classify.class_weights: no label {key!r}; {hint}the labels are {', '.join(names)}"
            )
        weights[index[str(key)]] = float(w)
    return weights


def settle_class_weights(
    opts, names: Sequence[str], values: Sequence, counts: Sequence[int], n: int, multi_label: bool
) -> tuple[list[float] | None, bool]:
    """(weights, chosen by ``auto``) for a run's ``classify`` options, which then record what ran:
    the weights as ``{label: weight}``, or ``"none"`` where ``auto`` chose none."""
    weights = resolve_class_weights(opts.class_weights, names, values, counts, n, multi_label)
    auto = opts.class_weights == "auto"
    opts.class_weights = (
        dict(zip(names, weights)) if weights is not None else ("none" if auto else opts.class_weights)
    )
    return weights, auto and weights is not None


def classifier_batch_loss(model, batch: dict, loss=cross_entropy_sum):
    """Summed loss, examples and real tokens of one micro-batch through a sequence classifier."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "num_units")}
    logits = model(**inputs).logits
    return BatchLoss(
        loss(logits, batch["labels"]), int(batch["num_units"]), int(batch["attention_mask"].sum())
    )
