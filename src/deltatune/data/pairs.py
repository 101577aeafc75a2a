"""Preference pairs read from rows: a prompt (chat messages), a chosen and a rejected answer, in the
layouts people keep them (prompt/chosen/rejected fields, HH-RLHF transcripts, message lists).

Shared by the preference tasks (which tokenize them, :mod:`deltatune.tasks.preference.pairs`), the RL
prompts read from pair files, and ``deltatune score``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from deltatune.data.conversations import FieldMap, _get, _message_list, _string
from deltatune.data.readers import Row, read_rows, split_then_sample
from deltatune.errors import ConfigError, DataError

PAIR_LAYOUTS = ("prompt_chosen_rejected", "hh", "messages")


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass
class PreferencePair:
    prompt: list[dict]
    chosen: str
    rejected: str
    line: int = 0
    path: str | None = None
    margin: float | None = None


@dataclass
class PairStats:
    """What reading and encoding did to the rows of one split (reported, never silent)."""

    rows: int = 0
    skipped_prompt_mismatch: int = 0
    prompt_truncated: int = 0
    answer_truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_answer: int = 0
    skipped_lines: list[int] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return self.rows - self.skipped_prompt_mismatch - self.dropped_too_long - self.dropped_no_answer


def hh_messages(text: str) -> list[dict] | None:
    """``\\n\\nHuman: a\\n\\nAssistant: b`` -> messages; None when the text is not in that form."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        return None
    return [
        {"role": _HH_ROLES[role], "content": body.strip()} for role, body in zip(parts[1::2], parts[2::2])
    ]


def _hh_pair(row: Row, fields: FieldMap) -> PreferencePair | None:
    chosen = hh_messages(_string(_get(row, fields, "chosen"), row, fields["chosen"]))
    rejected = hh_messages(_string(_get(row, fields, "rejected"), row, fields["rejected"]))
    for name, msgs in (("chosen", chosen), ("rejected", rejected)):
        if not msgs or msgs[-1]["role"] != "assistant":
            raise DataError(
                "not an HH-RLHF transcript (\\n\\nHuman: … \\n\\nAssistant: … ending with an "
                "Assistant turn); set data.layout for other layouts",
                path=row.path,
                line=row.line,
                field=fields[name],
            )
    if chosen[:-1] != rejected[:-1]:
        return None  # the two transcripts differ before the last answer: no shared prompt
    return PreferencePair(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"], row.line)


def _answer(value, row: Row, name: str, fields: FieldMap) -> tuple[list[dict], str]:
    """(messages before the answer, the answer) of a chosen/rejected value (a string or messages)."""
    if isinstance(value, list):
        msgs = _message_list(value, row, name, fields)
        if msgs[-1]["role"] != "assistant":
            raise DataError(
                "the last message must be the assistant's answer", path=row.path, line=row.line, field=name
            )
        return msgs[:-1], msgs[-1]["content"]
    return [], _string(value, row, name)


def _explicit_pair(row: Row, fields: FieldMap) -> PreferencePair:
    prompt = _get(row, fields, "prompt")
    messages = (
        _message_list(prompt, row, fields["prompt"], fields)
        if isinstance(prompt, list)
        else [{"role": "user", "content": _string(prompt, row, fields["prompt"])}]
    )
    before_c, chosen = _answer(_get(row, fields, "chosen"), row, fields["chosen"], fields)
    before_r, rejected = _answer(_get(row, fields, "rejected"), row, fields["rejected"], fields)
    if before_c != before_r:
        raise DataError(
            "chosen and rejected hold different earlier messages; put the shared turns in the prompt",
            path=row.path,
            line=row.line,
            field=fields["chosen"],
        )
    return PreferencePair(messages + before_c, chosen, rejected, row.line)


def _messages_pair(row: Row, fields: FieldMap) -> PreferencePair | None:
    before_c, chosen = _answer(_get(row, fields, "chosen"), row, fields["chosen"], fields)
    before_r, rejected = _answer(_get(row, fields, "rejected"), row, fields["rejected"], fields)
    if before_c != before_r or not before_c:
        return None
    return PreferencePair(before_c, chosen, rejected, row.line)


def detect_pair_layout(row: Row, fields: FieldMap) -> str:
    if fields["chosen"] not in row or fields["rejected"] not in row:
        raise DataError(
            f"a preference row needs '{fields['chosen']}' and '{fields['rejected']}' fields; this "
            f"row has {', '.join(map(str, row))}. Map yours with data.fields, e.g. "
            "fields: {chosen: good, rejected: bad}",
            path=row.path,
            line=row.line,
        )
    if fields["prompt"] in row:
        return "prompt_chosen_rejected"
    if isinstance(row[fields["chosen"]], list):
        return "messages"
    return "hh"


def rows_to_pairs(
    rows: list[Row], layout: str = "auto", fields: FieldMap | None = None, system_prompt: str | None = None
) -> tuple[list[PreferencePair], PairStats]:
    """Pairs of one file, and what was skipped (pairs without a shared prompt)."""
    fields = fields or FieldMap()
    if layout == "auto":
        layout = detect_pair_layout(rows[0], fields) if rows else "prompt_chosen_rejected"
    if layout not in PAIR_LAYOUTS:
        raise ConfigError(
            f"data.layout: '{layout}' is not a preference layout; use auto or one of "
            f"{', '.join(PAIR_LAYOUTS)}"
        )
    convert = {"hh": _hh_pair, "prompt_chosen_rejected": _explicit_pair, "messages": _messages_pair}[layout]
    pairs, stats = [], PairStats(rows=len(rows))
    for row in rows:
        pair = convert(row, fields)
        if pair is None:
            stats.skipped_prompt_mismatch += 1
            stats.skipped_lines.append(row.line)
            continue
        pair.path = row.path
        margin = _get(row, fields, "margin", required=False) if "margin" in fields.mapping else None
        pair.margin = None if margin is None else float(margin)
        if system_prompt and (not pair.prompt or pair.prompt[0]["role"] != "system"):
            pair.prompt.insert(0, {"role": "system", "content": system_prompt})
        pairs.append(pair)
    return pairs, stats


def read_pairs(path: str, data) -> tuple[list[PreferencePair], PairStats]:
    return rows_to_pairs(read_rows(path, data.format), data.layout, FieldMap(data.fields), data.system_prompt)


def load_pair_splits(data, seed: int) -> tuple[dict[str, list[PreferencePair]], dict[str, PairStats]]:
    """train / validation / test pairs (validation from a seeded split when asked) and their stats."""
    if not data.train:
        raise ConfigError("data.train: required; set it to a file of preference pairs")
    splits, stats = {}, {}
    splits["train"], stats["train"] = read_pairs(data.train, data)
    validation = None
    if data.validation:
        validation, stats["validation"] = read_pairs(data.validation, data)
    splits["train"], validation = split_then_sample(
        splits["train"], validation, data.validation_split, data.max_train_samples, seed
    )
    if validation is not None:
        splits["validation"] = validation
        stats.setdefault("validation", PairStats(rows=len(validation)))
    if data.test:
        splits["test"], stats["test"] = read_pairs(data.test, data)
    return splits, stats
