"""Options of the method (validated from the ``method:`` section; no torch here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from deltatune.methods.registry import MethodOptions

TAG = "adapters"
DEFAULT_REDUCTION_FACTOR = 16


class AdaptersOptions(MethodOptions):
    name: Literal["adapters"] = "adapters"
    variant: Literal["houlsby", "pfeiffer"] = Field(
        "houlsby", description="houlsby: after attention and feed-forward; pfeiffer: feed-forward only"
    )
    bottleneck: int | None = Field(None, gt=0, description="bottleneck width b (or reduction_factor)")
    reduction_factor: float | None = Field(
        None,
        gt=0,
        description=f"b = hidden // reduction_factor (default {DEFAULT_REDUCTION_FACTOR}); "
        "smaller = more capacity and parameters",
    )
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    train_layer_norms: bool | None = Field(
        None, description="also train every norm layer; default: true for houlsby, false for pfeiffer"
    )
    attention_output: str = Field(
        "auto", description="regex over full names of the attention output projections"
    )
    ffn_output: str = Field(
        "auto", description="regex over full names of the feed-forward output projections"
    )

    @model_validator(mode="after")
    def _one_size(self):
        if self.bottleneck is not None and self.reduction_factor is not None:
            raise ValueError("Can't provide both `bottleneck` and `reduction_factor`. Choose one.")
        return self

    def bottleneck_for(self, hidden: int) -> int:
        if self.bottleneck is not None:
            return self.bottleneck
        return max(1, int(hidden // (self.reduction_factor or DEFAULT_REDUCTION_FACTOR)))

    def trains_norms(self) -> bool:
        return self.variant == "houlsby" if self.train_layer_norms is None else self.train_layer_norms
