"""Classification metrics (scikit-learn does the arithmetic)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


def classification_metrics(y_true: list[int] | np.ndarray, y_pred: list[int] | np.ndarray,
                           label_names: list[str]) -> dict:
    """Accuracy, macro/weighted precision, recall and F1, per-class scores, confusion matrix.

    ``label_names[i]`` names label id ``i``; the confusion matrix is ``[true][predicted]`` over all
    labels, including ones absent from ``y_true``.
    """
    labels = list(range(len(label_names)))
    out: dict = {"accuracy": float(accuracy_score(y_true, y_pred)), "n": int(len(y_true))}
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg,
                                                     zero_division=0)
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = float(p), float(r), float(f)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out["per_class"] = {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                               "support": int(s[i])} for i, name in enumerate(label_names)}
    out["confusion_matrix"] = {
        "labels": list(label_names),
        "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    return out


def scalar_metrics(report: dict) -> dict[str, float]:
    """The float-valued entries (for metrics.jsonl and best-checkpoint selection)."""
    return {k: v for k, v in report.items() if isinstance(v, float)}
