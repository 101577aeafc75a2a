"""Sequence classification, single- or multi-label: the task's registration. The wiring is in ``job.py``;
options and checks in ``options.py``; rows to examples ``examples.py`` (labels ``labels.py``,
``multilabel.py``, long documents ``windows.py``, the token cache ``tokens.py``); the head's pooling
``pooling.py``; evaluation ``evaluate.py``, its report ``report.py``; what ``check`` sees ``view.py``."""

from deltatune.registry import lazy
from deltatune.tasks import TaskSpec, register_task
from deltatune.tasks.classify.options import (
    AUTO_EVALS,
    AUTO_MIN_STEPS,
    MULTI_ONLY_METRICS,
    ClassifyData,
    ClassifyOptions,
    check,
    resolved,
)

CLASSIFY = register_task(
    TaskSpec(
        name="classify",
        description="sequence classification, single- or multi-label (a new head on an encoder or decoder; "
        "class weights, focal loss, sliding windows; accuracy, F1)",
        data_options=ClassifyData,
        options=ClassifyOptions,
        resolved=resolved,
        prepare=lazy("deltatune.tasks.classify.job:ClassifyJob"),
        load_model=lazy("deltatune.tasks.classify.job:load_model"),
        inspect=lazy("deltatune.tasks.classify.view:classify_view"),
        model_kind="classifier",
        peft_task_type="SEQ_CLS",
        default_max_length=128,
        default_metric="accuracy",
        best_metrics=(
            "accuracy",
            "f1_macro",
            "f1_weighted",
            "precision_macro",
            "recall_macro",
            "precision_weighted",
            "recall_weighted",
            *MULTI_ONLY_METRICS,
        ),
        metric_kind="classification",
        evaluate_file=lazy("deltatune.tasks.classify.job:evaluate_file"),
        format_report=lazy("deltatune.tasks.classify.evaluate:format_report"),
        predict=lazy("deltatune.tasks.classify.evaluate:predict"),
        check=check,
        auto_min_steps=AUTO_MIN_STEPS,
        auto_evals=AUTO_EVALS,
        int8_auto=True,
        summary_keys=("validation_accuracy", "validation_f1_macro", "test_accuracy", "test_f1_macro"),
        adapter_default=True,
    )
)
