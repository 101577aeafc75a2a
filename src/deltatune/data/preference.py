"""Preference pairs: a prompt (chat messages), a chosen and a rejected answer, in the layouts people
have, encoded with the same templates and token-exact masks as SFT.

Layouts (``data.layout``; ``auto`` detects from the first row):

* ``prompt_chosen_rejected``  ``prompt`` (a string or a list of messages) with ``chosen`` and
  ``rejected`` (strings, or lists of messages whose last assistant message is the answer);
* ``hh``  Anthropic HH-RLHF: ``chosen`` / ``rejected`` are whole transcripts
  ``\\n\\nHuman: … \\n\\nAssistant: …``; the prompt is everything up to the last ``\\n\\nAssistant:``
  and becomes chat messages, so the model's chat template applies. Pairs whose transcripts do not
  share that prompt are counted, reported and skipped, never mangled;
* ``messages``  ``chosen`` / ``rejected`` as message lists that share every message but the last.

Field names map with ``data.fields`` (``{prompt: question, chosen: good, rejected: bad}``); an
optional ``margin`` field gives a per-pair margin for the reward model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from typing import Literal

from pydantic import Field

from deltatune.config import DataConfig
from deltatune.data.conversations import Conversation, FieldMap, _get, _message_list, _string
from deltatune.data.readers import Row, read_rows, split_then_sample
from deltatune.errors import ConfigError, DataError
from deltatune.losses.lm import IGNORE_INDEX

PAIR_LAYOUTS = ("prompt_chosen_rejected", "hh", "messages")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


class PreferenceData(DataConfig):
    """The ``data:`` options of the preference tasks (reward, dpo)."""

    layout: Literal["auto", "prompt_chosen_rejected", "hh", "messages"] = Field(
        "auto", description="pair layout; auto = prompt+chosen+rejected if there is a prompt field, "
        "messages if chosen is a list, else HH-RLHF transcripts")
    fields: dict[str, str] = Field(
        default_factory=dict, description="map our field names to yours, e.g. {prompt: question, "
        "chosen: good, rejected: bad, margin: score_gap}")
    template: str = Field("auto", description="as for sft: auto, chat, alpaca, raw, or a Jinja chat template")
    system_prompt: str | None = Field(None, description="system message for prompts that have none")
    truncation: Literal["truncate", "drop"] = Field(
        "truncate", description="pairs longer than max_length: cut (the prompt from the left first, "
        "then both answers at the end) or dropped")
    share_prompt: bool = Field(
        True, description="train decoders on one row per pair, the shared prompt read once (exact; not with "
        "encoders, prompt/prefix tuning, flash attention or several processes)")


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
        return (self.rows - self.skipped_prompt_mismatch - self.dropped_too_long
                - self.dropped_no_answer)


# ----------------------------------------------------------------------------- rows -> pairs


def hh_messages(text: str) -> list[dict] | None:
    """``\\n\\nHuman: a\\n\\nAssistant: b`` -> messages; None when the text is not in that form."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        return None
    return [{"role": _HH_ROLES[role], "content": body.strip()} for role, body in zip(parts[1::2], parts[2::2])]


def _hh_pair(row: Row, fields: FieldMap) -> PreferencePair | None:
    chosen = hh_messages(_string(_get(row, fields, "chosen"), row, fields["chosen"]))
    rejected = hh_messages(_string(_get(row, fields, "rejected"), row, fields["rejected"]))
    for name, msgs in (("chosen", chosen), ("rejected", rejected)):
        if not msgs or msgs[-1]["role"] != "assistant":
            raise DataError("not an HH-RLHF transcript (\\n\\nHuman: … \\n\\nAssistant: … ending with an "
                            "Assistant turn); set data.layout for other layouts", path=row.path, line=row.line,
                            field=fields[name])
    if chosen[:-1] != rejected[:-1]:
        return None  # the two transcripts differ before the last answer: no shared prompt
    return PreferencePair(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"], row.line)


def _answer(value, row: Row, name: str, fields: FieldMap) -> tuple[list[dict], str]:
    """(messages before the answer, the answer) of a chosen/rejected value (a string or messages)."""
    if isinstance(value, list):
        msgs = _message_list(value, row, name, fields)
        if msgs[-1]["role"] != "assistant":
            raise DataError("the last message must be the assistant's answer", path=row.path, line=row.line,
                            field=name)
        return msgs[:-1], msgs[-1]["content"]
    return [], _string(value, row, name)


def _explicit_pair(row: Row, fields: FieldMap) -> PreferencePair:
    prompt = _get(row, fields, "prompt")
    messages = (_message_list(prompt, row, fields["prompt"], fields) if isinstance(prompt, list)
                else [{"role": "user", "content": _string(prompt, row, fields["prompt"])}])
    before_c, chosen = _answer(_get(row, fields, "chosen"), row, fields["chosen"], fields)
    before_r, rejected = _answer(_get(row, fields, "rejected"), row, fields["rejected"], fields)
    if before_c != before_r:
        raise DataError("chosen and rejected hold different earlier messages; put the shared turns in "
                        "the prompt", path=row.path, line=row.line, field=fields["chosen"])
    return PreferencePair(messages + before_c, chosen, rejected, row.line)


def _messages_pair(row: Row, fields: FieldMap) -> PreferencePair | None:
    before_c, chosen = _answer(_get(row, fields, "chosen"), row, fields["chosen"], fields)
    before_r, rejected = _answer(_get(row, fields, "rejected"), row, fields["rejected"], fields)
    if before_c != before_r or not before_c:
        return None
    return PreferencePair(before_c, chosen, rejected, row.line)


def detect_pair_layout(row: Row, fields: FieldMap) -> str:
    if fields["chosen"] not in row or fields["rejected"] not in row:
        raise DataError(f"a preference row needs '{fields['chosen']}' and '{fields['rejected']}' fields; this "
                        f"row has {', '.join(map(str, row))}. Map yours with data.fields, e.g. "
                        "fields: {chosen: good, rejected: bad}", path=row.path, line=row.line)
    if fields["prompt"] in row:
        return "prompt_chosen_rejected"
    if isinstance(row[fields["chosen"]], list):
        return "messages"
    return "hh"


def rows_to_pairs(rows: list[Row], layout: str = "auto", fields: FieldMap | None = None,
                  system_prompt: str | None = None) -> tuple[list[PreferencePair], PairStats]:
    """Pairs of one file, and what was skipped (pairs without a shared prompt)."""
    fields = fields or FieldMap()
    if layout == "auto":
        layout = detect_pair_layout(rows[0], fields) if rows else "prompt_chosen_rejected"
    if layout not in PAIR_LAYOUTS:
        raise ConfigError(f"data.layout: '{layout}' is not a preference layout; use auto or one of "
                          f"{', '.join(PAIR_LAYOUTS)}")
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
    splits["train"], validation = split_then_sample(splits["train"], validation, data.validation_split,
                                                    data.max_train_samples, seed)
    if validation is not None:
        splits["validation"] = validation
        stats.setdefault("validation", PairStats(rows=len(validation)))
    if data.test:
        splits["test"], stats["test"] = read_pairs(data.test, data)
    return splits, stats


# ----------------------------------------------------------------------------- pairs -> token ids


def encode_answer(tokenizer, template, prompt: list[dict], answer: str) -> tuple[list[int], list[int]]:
    """Ids of prompt + answer through the template, labels on the final answer only (earlier
    assistant turns of the prompt are context here, unlike SFT)."""
    from deltatune.data.sft import encode_segments

    segments = template.segments(Conversation(prompt + [{"role": "assistant", "content": answer}]))
    last = max((i for i, (_, trained) in enumerate(segments) if trained), default=-1)
    return encode_segments(tokenizer, [(text, i == last) for i, (text, _) in enumerate(segments)])


def _split(ids: list[int], labels: list[int]) -> int:
    return next((i for i, x in enumerate(labels) if x != IGNORE_INDEX), len(ids))


def special_wrap(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts around a text (BERT: [CLS] … [SEP]; Llama: <s> …)."""
    with_special = tokenizer("x")["input_ids"]
    without = tokenizer("x", add_special_tokens=False)["input_ids"]
    start = next((i for i in range(len(with_special)) if with_special[i:i + len(without)] == without), 0)
    return with_special[:start], with_special[start + len(without):]


def encode_pair(tokenizer, template, pair: PreferencePair, max_length: int | None,
                truncation: str, stats: PairStats, wrap: tuple[list[int], list[int]] = ([], [])) -> dict | None:
    """``{chosen_ids, chosen_labels, rejected_ids, rejected_labels, line, margin}``, or None (dropped).

    ``wrap``: the tokenizer's special tokens around a text (:func:`special_wrap`), added when the
    template did not (an encoder's [CLS] … [SEP]). Too long: the prompt is cut from the left first
    (keeping a leading special token), down to half of ``max_length`` at most, then both answers are
    cut at the end (``truncation: truncate``); or the pair is dropped (``truncation: drop``)."""
    c_ids, c_lab = encode_answer(tokenizer, template, pair.prompt, pair.chosen)
    r_ids, r_lab = encode_answer(tokenizer, template, pair.prompt, pair.rejected)
    p = min(_split(c_ids, c_lab), _split(r_ids, r_lab))
    prompt, ans_c, ans_r = c_ids[:p], c_ids[p:], r_ids[p:]
    lab_c, lab_r = c_lab[p:], r_lab[p:]
    if all(x == IGNORE_INDEX for x in lab_c) or all(x == IGNORE_INDEX for x in lab_r):
        stats.dropped_no_answer += 1
        return None
    head, tail = wrap
    if head and prompt[:len(head)] != head:
        prompt = head + prompt
    ans_c, ans_r = ans_c + tail, ans_r + tail
    lab_c, lab_r = lab_c + [IGNORE_INDEX] * len(tail), lab_r + [IGNORE_INDEX] * len(tail)
    longest = max(len(ans_c), len(ans_r))
    if max_length and len(prompt) + longest > max_length:
        if truncation == "drop":
            stats.dropped_too_long += 1
            return None
        keep = max(max_length - longest, min(len(prompt), max_length // 2))
        if keep < len(prompt):
            prompt = head + prompt[len(prompt) - (keep - len(head)):]
            stats.prompt_truncated += 1
        room = max_length - len(prompt)
        if longest > room:
            (ans_c, lab_c), (ans_r, lab_r) = _cut(ans_c, lab_c, room, tail), _cut(ans_r, lab_r, room, tail)
            stats.answer_truncated += 1
    masked = [IGNORE_INDEX] * len(prompt)
    return {"chosen_ids": prompt + ans_c, "chosen_labels": masked + lab_c,
            "rejected_ids": prompt + ans_r, "rejected_labels": masked + lab_r,
            "line": pair.line, "margin": pair.margin}


def _cut(ids: list[int], labels: list[int], room: int, tail: list[int]) -> tuple[list[int], list[int]]:
    """An answer cut to ``room`` tokens at the end, its closing special tokens kept."""
    if len(ids) <= room:
        return ids, labels
    keep = room - len(tail)
    return ids[:keep] + tail, labels[:keep] + [IGNORE_INDEX] * len(tail)


def encode_pairs(pairs: list[PreferencePair], template, tokenizer, max_length: int | None,
                 truncation: str = "truncate", stats: PairStats | None = None) -> tuple[list[dict], PairStats]:
    stats = stats or PairStats(rows=len(pairs))
    wrap = special_wrap(tokenizer)
    feats = [f for pair in pairs
             if (f := encode_pair(tokenizer, template, pair, max_length, truncation, stats, wrap)) is not None]
    for i, f in enumerate(feats):
        f["index"] = i
    return feats, stats


def pair_rows(features: list[dict]) -> list[dict]:
    """The 2B sequences of a batch of B pairs: every chosen answer, then every rejected one."""
    return ([{"input_ids": f["chosen_ids"], "labels": f["chosen_labels"]} for f in features]
            + [{"input_ids": f["rejected_ids"], "labels": f["rejected_labels"]} for f in features])


def pair_collate(features: list[dict], pad_token_id: int, attention_mask: bool = True,
                 split_parts: bool = True) -> dict:
    """A batch of B pairs as its 2B sequences (chosen first), in separately padded parts when that
    saves padding (``split_parts``; off under DDP, which wants one forward per backward).

    Each part is an SFT batch plus ``rows`` (its sequences' places among the 2B) and ``last`` (the
    position of each sequence's last token, where a reward model reads it). ``num_units`` = B pairs.
    """
    import torch

    from deltatune.data.sft import padding_free_parts, sft_collate

    rows = pair_rows(features)
    lengths = [len(r["input_ids"]) for r in rows]
    groups = padding_free_parts(lengths) if split_parts else [list(range(len(rows)))]
    parts = []
    for idx in groups:
        part = sft_collate([rows[i] for i in idx], pad_token_id, attention_mask)
        part["rows"] = torch.tensor(idx)
        part["last"] = torch.tensor([lengths[i] - 1 for i in idx])
        parts.append(part)
    return _pair_batch(parts, features)


def _pair_batch(parts: list[dict], features: list[dict]) -> dict:
    """A batch of pairs from its parts: ``num_units`` (pairs), ``num_tokens`` (both sequences of every
    pair in full, however the parts hold them, so tokens/s compares across layouts and libraries),
    ``index`` and, where the pairs have them, ``margin``."""
    import torch

    out = {"parts": parts, "num_units": torch.tensor(len(features)),
           "num_tokens": torch.tensor(sum(len(f["chosen_ids"]) + len(f["rejected_ids"]) for f in features)),
           "index": torch.tensor([f["index"] for f in features])}
    if any(f.get("margin") is not None for f in features):
        out["margin"] = torch.tensor([float(f.get("margin") or 0.0) for f in features])
    return out


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def shared_pair_rows(f: dict) -> dict:
    """One pair as one row ``[shared prefix, rest of chosen, rest of rejected]``, for a decoder.

    The shared prefix is the longest common prefix of the two token lists (the prompt, and any first
    answer tokens both share). Returns the row's ``input_ids``, ``position_ids`` (the rejected part
    restarts right after the prefix), ``group`` (0 prefix, 1 chosen, 2 rejected: what each token may
    attend to), and per sequence (chosen, rejected) its ``last`` token's place in the row and, for each
    answer token it scores, the row place of the hidden state that predicts it (``src``) and the token."""
    c, r = f["chosen_ids"], f["rejected_ids"]
    n = common_prefix(c, r)
    a = len(c) - n
    ids = c + r[n:]
    positions = list(range(len(c))) + list(range(n, len(r)))
    group = [0] * n + [1] * a + [2] * (len(r) - n)

    def place(seq: int, t: int) -> int:  # row place of token t of the chosen (0) / rejected (1) sequence
        return t if seq == 0 or t < n else t + a

    out = {"input_ids": ids, "position_ids": positions, "group": group, "last": [], "src": [], "tokens": [], "seq": []}
    for seq, (seq_ids, labels) in enumerate(((c, f["chosen_labels"]), (r, f["rejected_labels"]))):
        out["last"].append(place(seq, len(seq_ids) - 1))
        for t in range(1, len(seq_ids)):
            if labels[t] != IGNORE_INDEX:
                out["src"].append(place(seq, t - 1))
                out["tokens"].append(labels[t])
                out["seq"].append(seq)
    return out


def shared_pair_collate(features: list[dict], pad_token_id: int, split_parts: bool = True) -> dict:
    """A batch of B pairs, each pair's shared prompt read once (prefix sharing, Wang & Hegde 2024,
    https://arxiv.org/abs/2410.20305): one row per pair (:func:`shared_pair_rows`) with its own
    position ids and a 4-D attention mask ``(b, 1, T, T)`` in which a token sees the earlier tokens of
    the prefix and of its own answer only. Every hidden state is the one the sequence gets alone, so
    rewards and log-probs equal those of :func:`pair_collate` (tested), from fewer tokens: the prompt,
    usually most of a pair, once instead of twice.

    Each part holds its pairs' rows plus ``rows`` (the 2b places among the 2B sequences: chosen
    first), ``last`` (flat row places where a reward model reads each of the 2b sequences) and
    ``src``/``tokens``/``seq`` (flat places of the hidden states that predict each scored answer token,
    the token, and its sequence among the part's 2b). Decoders only, with the method's tokens not
    inserted (the recipes check)."""
    import torch

    from deltatune.data.sft import padding_free_parts

    rows = [shared_pair_rows(f) for f in features]
    lengths = [len(r["input_ids"]) for r in rows]
    groups = padding_free_parts(lengths) if split_parts else [list(range(len(rows)))]
    b_all, parts = len(features), []
    for idx in groups:
        width = max(lengths[i] for i in idx)
        b = len(idx)
        ids = torch.full((b, width), pad_token_id, dtype=torch.long)
        pos = torch.zeros((b, width), dtype=torch.long)
        group = torch.full((b, width), -1, dtype=torch.long)
        last, src, tokens, seq = [], [], [], []
        for k, i in enumerate(idx):
            row, n = rows[i], lengths[i]
            ids[k, :n] = torch.tensor(row["input_ids"])
            pos[k, :n] = torch.tensor(row["position_ids"])
            group[k, :n] = torch.tensor(row["group"])
            last += [k * width + row["last"][0], k * width + row["last"][1]]
            src += [k * width + s for s in row["src"]]
            tokens += row["tokens"]
            seq += [2 * k + s for s in row["seq"]]
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        gq, gk = group[:, :, None], group[:, None, :]
        mask = causal & (gk >= 0) & ((gk == 0) | (gk == gq))
        mask |= torch.eye(width, dtype=torch.bool) & (gq < 0)  # padding rows see themselves (no empty softmax)
        # sequence j of the part: 2k chosen, 2k+1 rejected, for pair idx[k]
        order = [j for i in idx for j in (i, b_all + i)]
        parts.append({"input_ids": ids, "position_ids": pos, "attention_mask": mask[:, None], "shared": True,
                      "rows": torch.tensor(order), "last": torch.tensor(last), "src": torch.tensor(src, dtype=torch.long),
                      "tokens": torch.tensor(tokens, dtype=torch.long), "seq": torch.tensor(seq, dtype=torch.long),
                      "num_units": torch.tensor(b)})
    return _pair_batch(parts, features)  # num_tokens: both sequences in full, though the rows hold fewer


def can_share_prompt(model, inserts_tokens: bool, num_processes: int = 1) -> bool:
    """Whether :func:`shared_pair_collate` rows fit ``model``: a decoder, no virtual tokens (they
    widen a 2-D mask), one process (DDP wants one forward per backward), and an attention that takes
    a 4-D mask (SDPA or eager; not flash attention)."""
    from deltatune.models.loading import is_encoder

    attention = getattr(model.config, "_attn_implementation", "sdpa")
    return (not is_encoder(model.config) and not inserts_tokens and num_processes == 1
            and attention in ("sdpa", "eager"))


def training_collate(d: PreferenceData, model, method, pad_token_id: int, num_processes: int):
    """The collate function of a preference task's training batches: prefix-shared rows
    (:func:`shared_pair_collate`) where ``data.share_prompt`` and the model allow, else
    :func:`pair_collate`."""
    from functools import partial

    from deltatune.models.loading import is_encoder
    from deltatune.training.logging import log

    if d.share_prompt and can_share_prompt(model, method.inserts_tokens, num_processes):
        log("data.share_prompt: one row per pair, its prompt read once (a 4-D attention mask keeps the answers apart)")
        return partial(shared_pair_collate, pad_token_id=pad_token_id)
    return partial(pair_collate, pad_token_id=pad_token_id,
                   attention_mask=method.inserts_tokens or is_encoder(model.config), split_parts=num_processes == 1)


def describe_stats(stats: dict[str, PairStats], template_name: str, max_length: int | None) -> str:
    """One log line per split: pairs kept, skipped, truncated, dropped."""
    return "\n".join(f"{split}: {s.kept} of {s.rows} pairs ({template_name} template); "
                     f"{s.skipped_prompt_mismatch} without a shared prompt skipped, {s.prompt_truncated} "
                     f"prompts and {s.answer_truncated} answers truncated, {s.dropped_too_long} dropped "
                     f"at max_length {max_length}" for split, s in stats.items())
