"""Instruction data: rows in any common layout become one shape, a list of chat messages.

Layouts (``data.layout``; ``auto`` detects from the first row):

* ``alpaca``  ``instruction``, optional ``input``, ``output``, optional ``history`` (earlier
  ``[user, assistant]`` pairs) and ``system``;
* ``messages``  a list of ``{role, content}`` (roles system/user/assistant; ShareGPT's
  ``{from: human|gpt, value}`` is understood too);
* ``prompt_completion``  a ``prompt`` and a ``completion`` (strings, or lists of messages);
* ``text``  plain text, trained on every token.

Field names are mapped with ``data.fields`` (``{instruction: question, output: answer}``). Every
problem is a :class:`DataError` naming the file, line and field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from deltatune.data.readers import Row
from deltatune.errors import ConfigError, DataError

FIELD_NAMES = (
    "instruction",
    "input",
    "output",
    "history",
    "system",
    "messages",
    "prompt",
    "completion",
    "text",
    "role",
    "content",
    "chosen",
    "rejected",
    "margin",
)
LAYOUTS = ("alpaca", "messages", "prompt_completion", "text")
_ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
}


@dataclass
class Conversation:
    """One training example.

    ``messages``: ``[{"role", "content"}]``; user messages from alpaca rows also keep
    ``instruction`` and ``input`` apart for the ``### Instruction / ### Input`` template.
    ``raw``: a prompt/completion pair or plain text that is not put through a chat template
    (unless the config names one). ``line``: the source line.
    """

    messages: list[dict] = field(default_factory=list)
    raw: bool = False
    line: int = 0
    path: str | None = None

    @property
    def prompt_messages(self) -> list[dict]:
        """What a model is asked: everything before the last assistant message, or the whole
        conversation when it ends with a user message (a prompt-only row)."""
        if self.messages and self.messages[-1]["role"] == "user":
            return self.messages
        answers = [i for i, m in enumerate(self.messages) if m["role"] == "assistant"]
        return self.messages[: answers[-1]] if answers else []

    @property
    def reference(self) -> str | None:
        """The expected answer (the last assistant message); None for a prompt-only row."""
        if not self.messages or self.messages[-1]["role"] == "user":
            return None
        answers = [m for m in self.messages if m["role"] == "assistant"]
        return answers[-1]["content"] if answers else None


class FieldMap:
    """Our field names -> the file's (``data.fields``); unknown keys are a ConfigError."""

    def __init__(self, mapping: dict[str, str] | None = None):
        mapping = dict(mapping or {})
        for key in mapping:
            if key not in FIELD_NAMES:
                from deltatune.errors import suggest_key

                raise ConfigError(f"data.fields: unknown name '{key}'{suggest_key(key, list(FIELD_NAMES))}")
        self.mapping = mapping

    def __getitem__(self, name: str) -> str:
        return self.mapping.get(name, name)


def detect_layout(row: Row, fields: FieldMap, require_response: bool = True) -> str:
    """The layout of ``row`` from the fields it has."""
    has = lambda name: fields[name] in row  # noqa: E731
    if has("messages") or "conversations" in row:
        return "messages"
    if has("instruction") and (has("output") or not require_response):
        return "alpaca"
    if has("prompt") and has("completion"):
        return "prompt_completion"
    if has("text"):
        return "text"
    absent = [f"{ours}: {theirs}" for ours, theirs in fields.mapping.items() if theirs not in row]
    if absent:
        raise DataError(
            f"data.fields maps {', '.join(absent)}, but this row has no such field (its fields: "
            f"{', '.join(map(str, row))}); fix the names in data.fields",
            path=row.path,
            line=row.line,
        )
    raise DataError(
        f"cannot tell the layout of this row from its fields ({', '.join(map(str, row))}); "
        "expected instruction+output (alpaca), messages, prompt+completion, or text. "
        "Set data.layout and map your names with data.fields, e.g. "
        "fields: {instruction: question, output: answer}",
        path=row.path,
        line=row.line,
    )


def rows_to_conversations(
    rows: Sequence[Row],
    layout: str = "auto",
    fields: FieldMap | None = None,
    system_prompt: str | None = None,
    require_response: bool = True,
    allow_empty_answer: bool = False,
) -> list[Conversation]:
    """Convert rows (all of one layout) to conversations. ``require_response=False`` accepts
    prompt-only rows (alpaca without ``output``, chats ending with a user message): for generation.
    ``allow_empty_answer``: an empty answer is kept (the encoder drops it, counted) instead of an error."""
    fields = fields or FieldMap()
    if not rows:
        return []
    if layout == "auto":
        layout = detect_layout(rows[0], fields, require_response)
    convert = {
        "alpaca": _alpaca,
        "messages": _messages,
        "prompt_completion": _prompt_completion,
        "text": _text_row,
    }[layout]
    out = []
    for row in rows:
        conv = convert(row, fields, require_response, allow_empty_answer)
        conv.path = row.path
        if system_prompt and not conv.raw and conv.messages[0]["role"] != "system":
            conv.messages.insert(0, {"role": "system", "content": system_prompt})
        out.append(conv)
    return out


def _get(row: Row, fields: FieldMap, name: str, required: bool = True):
    key = fields[name]
    if key in row:
        return row[key]
    if not required:
        return None
    import difflib

    guess = difflib.get_close_matches(key, [str(k) for k in row], n=1, cutoff=0.5)
    hint = (
        f"did you mean '{guess[0]}'? Map it with `data.fields: {{{name}: {guess[0]}}}`"
        if guess
        else f"map the field that holds it with `data.fields: {{{name}: <your field>}}`"
    )
    raise DataError(
        f"missing field '{key}'; this row has {', '.join(map(str, row)) or 'no fields'}; {hint}",
        path=row.path,
        line=row.line,
        field=key,
    )


def _string(value, row: Row, name: str, allow_empty: bool = False) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        shown = "null" if value is None else type(value).__name__
        raise DataError(f"expected text (a string), got {shown}", path=row.path, line=row.line, field=name)
    if not allow_empty and not value.strip():
        raise DataError("the text is empty", path=row.path, line=row.line, field=name)
    return value


def _user(instruction: str, inp: str) -> dict:
    content = f"{instruction}\n\n{inp}" if inp.strip() else instruction
    return {"role": "user", "content": content, "instruction": instruction, "input": inp}


def _alpaca(row: Row, fields: FieldMap, need_answer: bool = True, allow_empty: bool = False) -> Conversation:
    msgs = []
    system = _get(row, fields, "system", required=False)
    if system:
        msgs.append({"role": "system", "content": _string(system, row, fields["system"])})
    history = _get(row, fields, "history", required=False) or []
    if not isinstance(history, list) or any(not isinstance(t, (list, tuple)) or len(t) != 2 for t in history):
        raise DataError(
            "history must be a list of [user, assistant] pairs",
            path=row.path,
            line=row.line,
            field=fields["history"],
        )
    for user, assistant in history:
        msgs.append(_user(_string(user, row, fields["history"]), ""))
        msgs.append({"role": "assistant", "content": _string(assistant, row, fields["history"])})
    instruction = _string(_get(row, fields, "instruction"), row, fields["instruction"])
    inp = _get(row, fields, "input", required=False)
    inp = "" if inp is None else _string(inp, row, fields["input"], allow_empty=True)
    msgs.append(_user(instruction, inp))
    output = _get(row, fields, "output", required=need_answer)
    if output is not None or need_answer:
        msgs.append({"role": "assistant", "content": _string(output, row, fields["output"], allow_empty)})
    return Conversation(msgs, line=row.line)


def _message_list(value, row: Row, name: str, fields: FieldMap) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise DataError("expected a non-empty list of messages", path=row.path, line=row.line, field=name)
    out = []
    for i, m in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise DataError(
                "each message must be an object with role and content",
                path=row.path,
                line=row.line,
                field=where,
            )
        role = m.get(fields["role"], m.get("from"))
        content = m.get(fields["content"], m.get("value"))
        if role not in _ROLES:
            raise DataError(
                f"unknown role {role!r}; use system, user or assistant (or map the key "
                "with data.fields: {role: ...})",
                path=row.path,
                line=row.line,
                field=where,
            )
        out.append({"role": _ROLES[role], "content": _string(content, row, where, allow_empty=True)})
    return out


def _messages(
    row: Row, fields: FieldMap, need_answer: bool = True, allow_empty: bool = False
) -> Conversation:
    key = fields["messages"] if fields["messages"] in row else "conversations"
    msgs = _message_list(
        _get(row, fields, "messages") if key != "conversations" else row[key], row, key, fields
    )
    answered = any(m["role"] == "assistant" and m["content"].strip() for m in msgs)
    if need_answer and not allow_empty and not answered:
        raise DataError(
            "no assistant message with content: nothing to train on", path=row.path, line=row.line, field=key
        )
    return Conversation(msgs, line=row.line)


def _prompt_completion(
    row: Row, fields: FieldMap, need_answer: bool = True, allow_empty: bool = False
) -> Conversation:
    prompt, completion = _get(row, fields, "prompt"), _get(row, fields, "completion")
    if isinstance(prompt, list):  # conversational pair (TRL's layout)
        msgs = _message_list(prompt, row, fields["prompt"], fields)
        answer = _message_list(completion, row, fields["completion"], fields)
        if not allow_empty and not any(m["role"] == "assistant" and m["content"].strip() for m in answer):
            raise DataError(
                "the completion has no assistant message with content: nothing to train on",
                path=row.path,
                line=row.line,
                field=fields["completion"],
            )
        return Conversation(msgs + answer, line=row.line)
    msgs = [
        {"role": "user", "content": _string(prompt, row, fields["prompt"])},
        {"role": "assistant", "content": _string(completion, row, fields["completion"], allow_empty)},
    ]
    return Conversation(msgs, raw=True, line=row.line)


def _text_row(
    row: Row, fields: FieldMap, need_answer: bool = True, allow_empty: bool = False
) -> Conversation:
    text = _string(_get(row, fields, "text"), row, fields["text"])
    return Conversation([{"role": "assistant", "content": text}], raw=True, line=row.line)


def read_conversations(path: str, data, require_response: bool = True) -> list[Conversation]:
    """Conversations of one file read with a run's ``data`` options (layout, fields, system prompt)."""
    from deltatune.data.readers import read_rows

    return rows_to_conversations(
        read_rows(path, data.format),
        data.layout,
        FieldMap(data.fields),
        data.system_prompt,
        require_response=require_response,
        allow_empty_answer=getattr(data, "empty_answers", "error") == "drop",
    )


def load_splits(data, seed: int) -> dict[str, list[Conversation]]:
    """train / validation / test conversations (validation from a seeded split when asked)."""
    from deltatune.data.readers import read_splits

    return read_splits(
        lambda path: read_conversations(path, data),
        data,
        seed,
        "instruction data (.jsonl, .json, .csv, .tsv or .parquet)",
    )
