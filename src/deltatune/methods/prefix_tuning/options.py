"""Options of the method (validated from the ``method:`` section; no torch here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from deltatune.methods.registry import MethodOptions


class PrefixOptions(MethodOptions):
    name: Literal["prefix_tuning"] = "prefix_tuning"
    num_virtual_tokens: int = Field(
        20, gt=0, description="prefix length per layer; longer = more capacity, slower attention"
    )
    prefix_projection: bool = Field(
        False, description="train through an MLP (steadier); only the computed prefixes are saved"
    )
    encoder_hidden_size: int | None = Field(
        None, gt=0, description="hidden size of that MLP (default: the key/value width)"
    )
    init: Literal["vocab", "random"] | None = Field(
        None,
        validate_default=True,
        description="vocab: activations of random vocabulary tokens (default); random: normal noise "
        "(the default with prefix_projection)",
    )

    @field_validator("encoder_hidden_size")
    @classmethod
    def _check_hidden(cls, size: int | None, info: ValidationInfo) -> int | None:
        if size is not None and not info.data.get("prefix_projection"):
            raise ValueError(
                "encoder_hidden_size sizes the MLP of prefix_projection: set "
                "prefix_projection: true or remove encoder_hidden_size"
            )
        return size

    @field_validator("init")
    @classmethod
    def _check_init(cls, init: str | None, info: ValidationInfo) -> str:
        projection = info.data.get("prefix_projection")
        if init == "vocab" and projection:
            raise ValueError(
                "init: vocab sets the prefixes directly, which prefix_projection replaces "
                "by an MLP; remove init (or set init: random)"
            )
        return init or ("random" if projection else "vocab")
