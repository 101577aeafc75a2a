"""Classification metrics (scikit-learn does the arithmetic)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from deltatune.metrics.registry import registered


def classification_metrics(
    y_true: list[int] | np.ndarray, y_pred: list[int] | np.ndarray, label_names: list[str]
) -> dict:
    """Accuracy, macro/weighted precision, recall and F1, per-class scores, confusion matrix.

    ``label_names[i]`` names label id ``i``; the confusion matrix is ``[true][predicted]`` over all
    labels, including ones absent from ``y_true``.
    """
    labels = list(range(len(label_names)))
    out: dict = {"accuracy": float(accuracy_score(y_true, y_pred)), "n": int(len(y_true))}
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=avg, zero_division=0
        )
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = float(p), float(r), float(f)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(label_names)
    }
    out["confusion_matrix"] = {
        "labels": list(label_names),
        "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    for metric in registered("classification").values():  # metrics a user or plugin added
        out[metric.name] = float(metric.fn(list(y_true), list(y_pred)))
    return out


def scalar_metrics(report: dict) -> dict[str, float]:
    """The float-valued entries (for metrics.jsonl and best-checkpoint selection)."""
    return {k: v for k, v in report.items() if isinstance(v, float)}


def multilabel_metrics(y_true, y_pred, label_names: list[str]) -> dict:
    """Multi-label scores of (N, C) 0/1 arrays: ``accuracy`` (exact label-set match), micro / macro /
    weighted / samples precision, recall and F1, and per label precision, recall, F1, support and the
    true/false positive and false negative counts."""
    from sklearn.metrics import multilabel_confusion_matrix

    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    out: dict = {"accuracy": float(accuracy_score(y_true, y_pred)), "n": int(len(y_true))}
    for avg in ("micro", "macro", "weighted", "samples"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=avg, zero_division=0)
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = float(p), float(r), float(f)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    cm = multilabel_confusion_matrix(y_true, y_pred)  # (C, 2, 2): [[tn, fp], [fn, tp]]
    out["per_class"] = {
        name: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
            "tp": int(cm[i, 1, 1]),
            "fp": int(cm[i, 0, 1]),
            "fn": int(cm[i, 1, 0]),
        }
        for i, name in enumerate(label_names)
    }
    return out


THRESHOLD_GRID = tuple(round(0.01 * k, 2) for k in range(1, 100))  # 0.01 .. 0.99


def _f1_counts(y_true: np.ndarray, probs: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, ...]:
    """(tp, fp, fn) of shape (C, K): label j decided at threshold ``grid[k]``."""
    counts = []
    for j in range(y_true.shape[1]):  # one label at a time: (N, K) decisions, not (N, C, K)
        pred, truth = probs[:, j, None] >= grid[None, :], y_true[:, j, None].astype(bool)
        counts.append(((pred & truth).sum(0), (pred & ~truth).sum(0), (~pred & truth).sum(0)))
    return tuple(np.stack([c[i] for c in counts]) for i in range(3))


def tune_thresholds(y_true, probs, per_label: bool) -> list[float]:
    """Decision thresholds from labelled (N, C) 0/1 ``y_true`` and probabilities, searched over
    :data:`THRESHOLD_GRID`: one for all labels (the best micro-F1) or one per label (each label's
    best F1). Ties go to the value nearest 0.5, so a label without positives keeps 0.5."""
    y_true, probs = np.asarray(y_true, dtype=int), np.asarray(probs, dtype=float)
    grid = np.array(sorted(THRESHOLD_GRID, key=lambda t: (abs(t - 0.5), t)))  # argmax keeps the first
    tp, fp, fn = _f1_counts(y_true, probs, grid)
    if not per_label:
        tp, fp, fn = tp.sum(0, keepdims=True), fp.sum(0, keepdims=True), fn.sum(0, keepdims=True)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(tp.shape), where=(2 * tp + fp + fn) > 0)
    best = [float(grid[k]) for k in f1.argmax(1)]
    return best if per_label else best * y_true.shape[1]
