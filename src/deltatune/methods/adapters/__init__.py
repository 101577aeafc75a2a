"""The ``adapters`` method: registration only (the layers are in ``model.py``, the options in
``options.py``)."""

from deltatune.methods.adapters.options import TAG, AdaptersOptions
from deltatune.methods.registry import MethodSpec, lazy, register

ADAPTERS = register(
    MethodSpec(
        name="adapters",
        description="bottleneck adapters (Houlsby: after attention + feed-forward; Pfeiffer: feed-forward)",
        options=AdaptersOptions,
        apply=lazy("deltatune.methods.adapters.model:apply_adapters"),
        save=lazy("deltatune.methods.adapters.model:save_adapters"),
        load=lazy("deltatune.methods.adapters.model:load_adapters"),
        default_lr=1e-3,
        switch_off=lazy("deltatune.methods.adapters.model:adapters_switched_off"),
        saved_tags=(TAG,),
        options_from_saved=lazy("deltatune.methods.adapters.model:options_from_saved"),
    )
)
