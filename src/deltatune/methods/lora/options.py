"""Options of the method (validated from the ``method:`` section; no torch here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from deltatune.methods.registry import MethodOptions


class LoraOptions(MethodOptions):
    name: Literal["lora"] = "lora"
    r: int = Field(16, gt=0, description="rank of the update; higher = more capacity and memory")
    alpha: float = Field(32, gt=0, description="scale numerator: update is scaled by alpha/r")
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description=(
            "dropout on the adapter input; 0 (default) is ~1.4x faster and saves a copy of every "
            "adapted layer's input"
        ),
    )
    target_modules: str | list[str] = Field(
        "auto", description="'auto' (attention + MLP), 'all-linear', a list of names, or a regex"
    )
    use_rslora: bool = Field(False, description="scale by alpha/sqrt(r) (rank-stabilised LoRA)")
    use_dora: bool = Field(
        False,
        description="DoRA: also learn a per-output magnitude vector; "
        "often better at low rank, ~1.5-2x slower to train",
    )
    loraplus_lr_ratio: float | None = Field(
        None, gt=0, description="LoRA+: lr of B = lr x ratio (paper suggests 16); None = plain LoRA"
    )
