"""Options of the method (validated from the ``method:`` section; no torch here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from deltatune.methods.registry import MethodOptions


class PromptOptions(MethodOptions):
    name: Literal["prompt_tuning"] = "prompt_tuning"
    num_virtual_tokens: int = Field(
        20, gt=0, description="soft-prompt length; longer = more capacity, longer sequences"
    )
    init: Literal["vocab", "random", "text"] = Field(
        "vocab",
        description="vocab: embeddings of random vocabulary tokens; random: normal noise; "
        "text: embeddings of init_text",
    )
    init_text: str | None = Field(
        None, validate_default=True, description="text whose token embeddings start the prompt (init: text)"
    )
    placement: Literal["after_cls", "start"] = Field(
        "after_cls",
        description="encoders only: after_cls keeps [CLS] first for the pooler; start is "
        "PEFT's layout. Decoders always put the prompt first",
    )

    @field_validator("init_text")
    @classmethod
    def _check_text(cls, text: str | None, info: ValidationInfo) -> str | None:
        init = info.data.get("init")
        if init == "text" and not (text or "").strip():
            raise ValueError("init: text needs init_text, e.g. init_text: 'Classify the sentiment:'")
        if init != "text" and text is not None:
            raise ValueError(
                f"init_text is only used with init: text (init is '{init}'); "
                "set init: text or remove init_text"
            )
        return text
