"""The ``prefix_tuning`` method: registration only (the layers are in ``model.py``, the options in
``options.py``)."""

from deltatune.methods.prefix_tuning.options import PrefixOptions
from deltatune.methods.registry import MethodSpec, lazy, register

PREFIX_TUNING = register(
    MethodSpec(
        name="prefix_tuning",
        description="per-layer trained key/value prefixes that every token attends to",
        options=PrefixOptions,
        apply=lazy("deltatune.methods.prefix_tuning.model:apply_prefix_tuning"),
        save=lazy("deltatune.methods.prefix_tuning.model:save_prefix_tuning"),
        load=lazy("deltatune.methods.prefix_tuning.model:load_prefix_tuning"),
        default_lr=1e-2,
        inserts_tokens=True,
        switch_off=lazy("deltatune.methods.prefix_tuning.model:prefix_switched_off"),
        saved_tags=("PREFIX_TUNING",),
        options_from_saved=lazy("deltatune.methods.prefix_tuning.model:options_from_peft"),
    )
)
