"""The ``prompt_tuning`` method: registration only (the layers are in ``model.py``, the options in
``options.py``)."""

from deltatune.methods.prompt_tuning.options import PromptOptions
from deltatune.methods.registry import MethodSpec, lazy, register

PROMPT_TUNING = register(
    MethodSpec(
        name="prompt_tuning",
        description="soft prompt: n trained embedding vectors read before the input",
        options=PromptOptions,
        apply=lazy("deltatune.methods.prompt_tuning.model:apply_prompt_tuning"),
        save=lazy("deltatune.methods.prompt_tuning.model:save_prompt_tuning"),
        load=lazy("deltatune.methods.prompt_tuning.model:load_prompt_tuning"),
        default_lr=3e-2,
        # SST-2, MiniLM: 125 steps left it at 0.526 dev accuracy (majority 0.509), 500 reached 0.740
        min_steps=500,
        inserts_tokens=True,
        switch_off=lazy("deltatune.methods.prompt_tuning.model:prompt_switched_off"),
        saved_tags=("PROMPT_TUNING",),
        options_from_saved=lazy("deltatune.methods.prompt_tuning.model:options_from_peft"),
    )
)
