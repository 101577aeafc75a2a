"""Prompts for RL: the questions a policy answers during a run, read from any instruction or
preference layout (the answers in the file, if any, are not used), as chat messages."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from deltatune.config import DataConfig
from deltatune.data.conversations import FieldMap, rows_to_conversations
from deltatune.data.preference import rows_to_pairs
from deltatune.data.readers import read_rows, read_splits
from deltatune.errors import DataError

PAIR_LAYOUTS = ("hh", "prompt_chosen_rejected", "messages_pair")


class PromptData(DataConfig):
    """The ``data:`` options of RL tasks (ppo): where the prompts come from."""

    layout: Literal["auto", "alpaca", "messages", "prompt_completion", "hh", "prompt_chosen_rejected",
                    "messages_pair"] = Field(
        "auto", description="row layout; auto = preference rows (chosen/rejected) give their prompt, "
        "instruction rows their question (alpaca, messages, prompt_completion or a bare prompt)")
    fields: dict[str, str] = Field(default_factory=dict, description="map our field names to yours")
    template: str = Field("auto", description="as for sft: auto, chat, alpaca, raw, or a Jinja chat template")
    system_prompt: str | None = Field(None, description="system message for prompts that have none")


def read_prompts(path: str, data) -> list[list[dict]]:
    """The prompts (chat messages) of one file."""
    rows = read_rows(path, data.format)
    fields = FieldMap(data.fields)
    pairs = data.layout in PAIR_LAYOUTS or (data.layout == "auto" and fields["chosen"] in rows[0])
    if pairs:
        layout = {"messages_pair": "messages"}.get(data.layout, data.layout)
        found, _ = rows_to_pairs(rows, layout, fields, data.system_prompt)
        prompts = [p.prompt for p in found]
    else:
        convs = rows_to_conversations(rows, data.layout, fields, data.system_prompt, require_response=False)
        prompts = [c.prompt_messages for c in convs]
    if not any(prompts):
        raise DataError("no row has a prompt (a user message to answer)", path=path)
    return [p for p in prompts if p]


def load_prompt_splits(data, seed: int) -> dict[str, list[list[dict]]]:
    """train / validation prompts (validation from a seeded split when asked)."""
    return read_splits(lambda path: read_prompts(path, data), data, seed,
                       "prompts (any instruction or preference layout)", test=False)
