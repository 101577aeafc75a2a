"""The ``ia3`` method: registration only (the layers are in ``model.py``, the options in
``options.py``)."""

from deltatune.methods.ia3.options import IA3Options
from deltatune.methods.registry import MethodSpec, lazy, register

IA3 = register(
    MethodSpec(
        name="ia3",
        description="IA3: learned scaling of keys, values and feed-forward inputs (mergeable)",
        options=IA3Options,
        apply=lazy("deltatune.methods.ia3.model:apply_ia3"),
        save=lazy("deltatune.methods.ia3.model:save_ia3"),
        load=lazy("deltatune.methods.ia3.model:load_ia3"),
        default_lr=1e-2,  # measured: benchmarks/sweep.py (docs/methods.md)
        merge=lazy("deltatune.methods.ia3.model:merge_and_unload_ia3"),
        switch_off=lazy("deltatune.methods.ia3.model:ia3_switched_off"),
        saved_tags=("IA3",),
        options_from_saved=lazy("deltatune.methods.ia3.model:options_from_peft"),
    )
)
