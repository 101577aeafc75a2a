"""The ``bitfit`` method: registration only (the layers are in ``model.py``, the options in
``options.py``)."""

from deltatune.methods.bitfit.options import TAG, BitFitOptions
from deltatune.methods.registry import MethodSpec, lazy, register

BITFIT = register(
    MethodSpec(
        name="bitfit",
        description="BitFit: only bias terms (and the task head) train; no new parameters",
        options=BitFitOptions,
        apply=lazy("deltatune.methods.bitfit.model:apply_bitfit"),
        save=lazy("deltatune.methods.bitfit.model:save_bitfit"),
        load=lazy("deltatune.methods.bitfit.model:load_bitfit"),
        default_lr=3e-3,  # measured: benchmarks/sweep.py (docs/methods.md)
        switch_off=lazy("deltatune.methods.switch:originals_restored"),
        saved_tags=(TAG,),
        options_from_saved=lazy("deltatune.methods.bitfit.options:saved_options"),
    )
)
