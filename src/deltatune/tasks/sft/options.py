"""The sft task's ``data:`` options and its checks across sections (no torch here)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from deltatune.config.schema import DataConfig
from deltatune.methods.registry import get_method

if TYPE_CHECKING:
    from deltatune.config import Config


class SftData(DataConfig):
    layout: Literal["auto", "alpaca", "messages", "prompt_completion", "text"] = Field(
        "auto",
        description="row layout; auto = detect from the first row's fields "
        "(instruction/output, messages, prompt/completion, text)",
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="map our field names to yours, e.g. "
        "{instruction: question, output: answer}; names: instruction input output history system "
        "messages prompt completion text role content",
    )
    template: str = Field(
        "auto",
        description="auto (the tokenizer's chat template if it has one, else alpaca), "
        "chat, alpaca (### Instruction/### Input/### Response), raw (no template), or a Jinja chat "
        "template (inline text or a .jinja file)",
    )
    system_prompt: str | None = Field(None, description="system message for rows that have none")
    empty_answers: Literal["error", "drop"] = Field(
        "error",
        description="rows whose answer is empty: stop at the first (file and line), or drop them "
        "(counted with the examples without response tokens)",
    )
    truncation: Literal["truncate", "drop"] = Field(
        "truncate", description="examples longer than max_length are cut at the end, or dropped"
    )
    packing: bool = Field(
        False,
        description="pack several examples per row (positions restart, no attention "
        "across examples); rows hold max_length tokens and batch_size counts rows",
    )
    cache: bool | None = Field(
        None,
        description="tokenize once: keep the tokenized data on disk (Arrow, memory-mapped, "
        "under $DELTATUNE_HOME/tokens) for the next run and --resume; default: for "
        "training files of 256 KiB or more (not with packing)",
    )


def check(cfg: Config) -> None:
    method = get_method(cfg.method.name)
    if cfg.data.packing and method.inserts_tokens:
        raise ValueError(
            f"data.packing: not possible with {method.name} (its virtual tokens would be "
            "shared by every example in a row); set packing: false"
        )
