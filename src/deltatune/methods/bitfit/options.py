"""Options of the method (validated from the ``method:`` section; no torch here)."""

from __future__ import annotations

from typing import Literal

from deltatune.methods.registry import MethodOptions

TAG = "bitfit"


class BitFitOptions(MethodOptions):
    name: Literal["bitfit"] = "bitfit"


def saved_options(adapter_dir) -> BitFitOptions:
    """BitFit has no options to read back from a saved adapter."""
    return BitFitOptions()
