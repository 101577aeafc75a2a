"""Prompts for RL: the questions a policy answers during a run, read from any instruction or
preference layout (the answers in the file, if any, are not used), as chat messages."""

from __future__ import annotations

from deltatune.data.conversations import FieldMap, rows_to_conversations
from deltatune.data.pairs import rows_to_pairs
from deltatune.data.readers import read_rows, read_splits
from deltatune.errors import DataError
from deltatune.tasks.rl.options import PAIR_LAYOUTS


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
    return read_splits(
        lambda path: read_prompts(path, data),
        data,
        seed,
        "prompts (any instruction or preference layout)",
        test=False,
    )
