"""Instruction tuning (SFT) of causal LMs, loss on the answers only: the task's registration. The wiring
is in ``job.py``; options ``options.py``; the token cache for large files ``tokens.py``; packing
``packing.py``; evaluation (held-out loss, generation metrics) ``evaluate.py``, its report ``report.py``;
``preview.py`` and ``view.py``. The answer masks themselves are shared: :mod:`deltatune.data.masks`."""

from deltatune.registry import lazy
from deltatune.tasks import TaskSpec, register_task
from deltatune.tasks.sft.options import SftData, check

SFT = register_task(
    TaskSpec(
        name="sft",
        description="instruction tuning of a causal LM, loss on responses only "
        "(loss, perplexity, ROUGE-L, BLEU)",
        data_options=SftData,
        prepare=lazy("deltatune.tasks.sft.job:SftJob"),
        load_model=lazy("deltatune.tasks.sft.job:load_model"),
        inspect=lazy("deltatune.tasks.sft.view:sft_view"),
        model_kind="causal_lm",
        peft_task_type="CAUSAL_LM",
        default_max_length=1024,
        default_metric="loss",
        best_metrics=("loss", "perplexity"),
        evaluate_file=lazy("deltatune.tasks.sft.evaluate:evaluate_file"),
        format_report=lazy("deltatune.reports.writers:scalar_line"),
        check=check,
        preview=lazy("deltatune.tasks.sft.preview:preview"),
        summary_keys=("base_loss", "tuned_loss", "base_rouge_l", "tuned_rouge_l"),
        adapter_default=True,
    )
)
