"""Preference learning: the reward model and DPO, registered here. The jobs are ``reward.py`` and
``dpo.py``; options ``options.py``; pairs to token ids and batches ``pairs.py`` (reading them:
:mod:`deltatune.data.pairs`); DPO's reference log-probs ``reference.py``; evaluation ``evaluate.py``;
``preview.py`` and ``view.py``. The losses are :mod:`deltatune.losses.preference`."""

from deltatune.registry import lazy
from deltatune.tasks import TaskSpec, register_task
from deltatune.tasks.preference.options import DpoOptions, PreferenceData, RewardOptions

REWARD = register_task(
    TaskSpec(
        name="reward",
        description="reward model: a scalar head scores answers; pairwise Bradley-Terry loss "
        "(pairwise accuracy)",
        data_options=PreferenceData,
        options=RewardOptions,
        prepare=lazy("deltatune.tasks.preference.reward:RewardJob"),
        load_model=lazy("deltatune.tasks.preference.reward:load_model"),
        inspect=lazy("deltatune.tasks.preference.view:pairs_view"),
        model_kind="classifier",
        peft_task_type="SEQ_CLS",
        default_max_length=512,
        default_metric="accuracy",
        best_metrics=("accuracy", "loss", "margin_mean"),
        evaluate_file=lazy("deltatune.tasks.preference.reward:evaluate_file"),
        format_report=lazy("deltatune.reports.writers:scalar_line"),
        score=lazy("deltatune.tasks.preference.reward:score"),
        preview=lazy("deltatune.tasks.preference.preview:preview_pairs"),
        summary_keys=("base_accuracy", "tuned_accuracy", "tuned_accuracy_ci_low", "tuned_accuracy_ci_high"),
    )
)

DPO = register_task(
    TaskSpec(
        name="dpo",
        description="direct preference optimisation of a causal LM (DPO, IPO, hinge); "
        "reference = the method off",
        data_options=PreferenceData,
        options=DpoOptions,
        prepare=lazy("deltatune.tasks.preference.dpo:DpoJob"),
        load_model=lazy("deltatune.tasks.preference.dpo:load_model"),
        inspect=lazy("deltatune.tasks.preference.view:pairs_view"),
        model_kind="causal_lm",
        peft_task_type="CAUSAL_LM",
        default_max_length=1024,
        default_metric="loss",
        best_metrics=("loss", "reward_accuracy", "reward_margin"),
        evaluate_file=lazy("deltatune.tasks.preference.dpo:evaluate_file"),
        format_report=lazy("deltatune.reports.writers:scalar_line"),
        preview=lazy("deltatune.tasks.preference.preview:preview_pairs"),
        summary_keys=("base_loss", "tuned_loss", "tuned_reward_accuracy", "tuned_reward_margin"),
    )
)
