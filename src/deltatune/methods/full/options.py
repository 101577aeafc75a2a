"""Options of the method (validated from the ``method:`` section; no torch here)."""

from __future__ import annotations

from typing import Literal

from deltatune.methods.registry import MethodOptions


class FullOptions(MethodOptions):
    name: Literal["full"] = "full"
