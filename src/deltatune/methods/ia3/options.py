"""Options of the method (validated from the ``method:`` section; no torch here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from deltatune.methods.registry import MethodOptions


class IA3Options(MethodOptions):
    name: Literal["ia3"] = "ia3"
    target_modules: str | list[str] = Field(
        "auto",
        description="'auto' (PEFT's keys/values/feed-forward defaults), 'all-linear', "
        "a list of names, or a regex over full names",
    )
    feedforward_modules: str | list[str] = Field(
        "auto",
        description="which targets scale their input instead of their output: 'auto' "
        "(PEFT's defaults), a list of name suffixes, or a regex over full names",
    )
