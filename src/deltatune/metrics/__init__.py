"""Pure metric functions, and the registry that lets a new metric join the reports.

A metric is one function plus one registration::

    from deltatune.metrics import register_metric

    @register_metric("balanced_error", kind="classification", greater_is_better=False)
    def balanced_error(y_true, y_pred) -> float: ...

Kinds and the arguments their functions take:

* ``text``: ``(predictions, references)``, two equally long lists of strings (SFT's generated answers);
  every registered text metric is in ``text_generation_metrics``.
* ``classification``: ``(y_true, y_pred)``, single-label class ids; every registered one is in a
  classifier's validation and test reports, and may select the best checkpoint
  (``train.metric_for_best``), its direction taken from ``greater_is_better``.

The built-in text metrics (ROUGE-L, BLEU, exact match, mean words) are registered the same way in
:mod:`deltatune.metrics.text`; a classifier's accuracy, precision, recall and F1 come from one
scikit-learn call in :mod:`deltatune.metrics.classification` and registered metrics add to them.
"""

from deltatune.metrics.registry import METRICS, MetricSpec, metrics_of, register_metric, registered

__all__ = ["METRICS", "MetricSpec", "metrics_of", "register_metric", "registered"]
