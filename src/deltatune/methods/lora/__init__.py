"""The ``lora`` method: registration only (the layers are in ``model.py``, the options in
``options.py``)."""

from deltatune.methods.lora.options import LoraOptions
from deltatune.methods.registry import MethodSpec, lazy, register

LORA = register(
    MethodSpec(
        name="lora",
        description="low-rank update B·A on attention and MLP projections (mergeable)",
        options=LoraOptions,
        apply=lazy("deltatune.methods.lora.model:apply_lora"),
        save=lazy("deltatune.methods.lora.model:save_lora"),
        load=lazy("deltatune.methods.lora.model:load_lora"),
        default_lr=1e-3,
        variants={
            "dora": {"use_dora": True},
            "rslora": {"use_rslora": True},
            "loraplus": {"loraplus_lr_ratio": 16},
        },
        merge=lazy("deltatune.methods.lora.model:merge_and_unload_lora"),
        param_lr=lazy("deltatune.methods.lora.model:lora_param_lr"),
        switch_off=lazy("deltatune.methods.lora.model:lora_switched_off"),
        saved_tags=("LORA",),
        options_from_saved=lazy("deltatune.methods.lora.model:options_from_peft"),
        int8_auto="backward",
    )
)
