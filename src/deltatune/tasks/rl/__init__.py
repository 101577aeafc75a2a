"""RLHF of a causal LM: PPO (value head, GAE) or GRPO (group advantages), registered as task ``ppo``.
The wiring is in ``job.py``; options ``options.py``; the prompts ``prompts.py``; rollouts and the update
loss ``rollout.py``; where the reward comes from ``rewards.py``; evaluation ``evaluate.py``. The losses
are :mod:`deltatune.losses.rl`."""

from deltatune.registry import lazy
from deltatune.tasks import TaskSpec, register_task
from deltatune.tasks.rl.options import PpoOptions, PromptData, check

PPO = register_task(
    TaskSpec(
        name="ppo",
        description="RLHF of a causal LM: PPO (value head, per-token KL, GAE) or GRPO, "
        "against a reward model or function",
        data_options=PromptData,
        options=PpoOptions,
        prepare=lazy("deltatune.tasks.rl.job:PpoJob"),
        load_model=lazy("deltatune.tasks.rl.job:load_model"),
        model_kind="causal_lm",
        peft_task_type="CAUSAL_LM",
        default_max_length=1024,
        default_metric="score",
        best_metrics=("score", "win_rate"),
        lower_is_better=(),
        format_report=lazy("deltatune.reports.writers:scalar_line"),
        check=check,
        summary_keys=("base_score", "tuned_score", "tuned_win_rate"),
    )
)
