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

from deltatune.data.conversations import Conversation
from deltatune.data.pairs import PairStats, PreferencePair
from deltatune.losses.lm import IGNORE_INDEX
from deltatune.tasks.preference.options import PreferenceData

# ----------------------------------------------------------------------------- rows -> pairs


# ----------------------------------------------------------------------------- pairs -> token ids


def encode_answer(tokenizer, template, prompt: list[dict], answer: str) -> tuple[list[int], list[int]]:
    """Ids of prompt + answer through the template, labels on the final answer only (earlier
    assistant turns of the prompt are context here, unlike SFT)."""
    from deltatune.data.masks import encode_segments

    segments = template.segments(Conversation(prompt + [{"role": "assistant", "content": answer}]))
    last = max((i for i, (_, trained) in enumerate(segments) if trained), default=-1)
    return encode_segments(tokenizer, [(text, i == last) for i, (text, _) in enumerate(segments)])


def _split(ids: list[int], labels: list[int]) -> int:
    return next((i for i, x in enumerate(labels) if x != IGNORE_INDEX), len(ids))


def special_wrap(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts around a text (BERT: [CLS] … [SEP]; Llama: <s> …)."""
    with_special = tokenizer("x")["input_ids"]
    without = tokenizer("x", add_special_tokens=False)["input_ids"]
    start = next((i for i in range(len(with_special)) if with_special[i : i + len(without)] == without), 0)
    return with_special[:start], with_special[start + len(without) :]


def encode_pair(
    tokenizer,
    template,
    pair: PreferencePair,
    max_length: int | None,
    truncation: str,
    stats: PairStats,
    wrap: tuple[list[int], list[int]] = ([], []),
) -> dict | None:
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
    if head and prompt[: len(head)] != head:
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
            prompt = head + prompt[len(prompt) - (keep - len(head)) :]
            stats.prompt_truncated += 1
        room = max_length - len(prompt)
        if longest > room:
            (ans_c, lab_c), (ans_r, lab_r) = _cut(ans_c, lab_c, room, tail), _cut(ans_r, lab_r, room, tail)
            stats.answer_truncated += 1
    masked = [IGNORE_INDEX] * len(prompt)
    return {
        "chosen_ids": prompt + ans_c,
        "chosen_labels": masked + lab_c,
        "rejected_ids": prompt + ans_r,
        "rejected_labels": masked + lab_r,
        "line": pair.line,
        "margin": pair.margin,
    }


def _cut(ids: list[int], labels: list[int], room: int, tail: list[int]) -> tuple[list[int], list[int]]:
    """An answer cut to ``room`` tokens at the end, its closing special tokens kept."""
    if len(ids) <= room:
        return ids, labels
    keep = room - len(tail)
    return ids[:keep] + tail, labels[:keep] + [IGNORE_INDEX] * len(tail)


def encode_pairs(
    pairs: list[PreferencePair],
    template,
    tokenizer,
    max_length: int | None,
    truncation: str = "truncate",
    stats: PairStats | None = None,
) -> tuple[list[dict], PairStats]:
    stats = stats or PairStats(rows=len(pairs))
    wrap = special_wrap(tokenizer)
    feats = [
        f
        for pair in pairs
        if (f := encode_pair(tokenizer, template, pair, max_length, truncation, stats, wrap)) is not None
    ]
    for i, f in enumerate(feats):
        f["index"] = i
    return feats, stats


def pair_rows(features: list[dict]) -> list[dict]:
    """The 2B sequences of a batch of B pairs: every chosen answer, then every rejected one."""
    return [{"input_ids": f["chosen_ids"], "labels": f["chosen_labels"]} for f in features] + [
        {"input_ids": f["rejected_ids"], "labels": f["rejected_labels"]} for f in features
    ]


def pair_collate(
    features: list[dict], pad_token_id: int, attention_mask: bool = True, split_parts: bool = True
) -> dict:
    """A batch of B pairs as its 2B sequences (chosen first), in separately padded parts when that
    saves padding (``split_parts``; off under DDP, which wants one forward per backward).

    Each part is an SFT batch plus ``rows`` (its sequences' places among the 2B) and ``last`` (the
    position of each sequence's last token, where a reward model reads it). ``num_units`` = B pairs.
    """
    import torch

    from deltatune.data.batching import padding_free_parts, sft_collate

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

    out = {
        "parts": parts,
        "num_units": torch.tensor(len(features)),
        "num_tokens": torch.tensor(sum(len(f["chosen_ids"]) + len(f["rejected_ids"]) for f in features)),
        "index": torch.tensor([f["index"] for f in features]),
    }
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

    out = {
        "input_ids": ids,
        "position_ids": positions,
        "group": group,
        "last": [],
        "src": [],
        "tokens": [],
        "seq": [],
    }
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
    inserted (the jobs check)."""
    import torch

    from deltatune.data.batching import padding_free_parts

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
        mask |= torch.eye(width, dtype=torch.bool) & (
            gq < 0
        )  # padding rows see themselves (no empty softmax)
        # sequence j of the part: 2k chosen, 2k+1 rejected, for pair idx[k]
        order = [j for i in idx for j in (i, b_all + i)]
        parts.append(
            {
                "input_ids": ids,
                "position_ids": pos,
                "attention_mask": mask[:, None],
                "shared": True,
                "rows": torch.tensor(order),
                "last": torch.tensor(last),
                "src": torch.tensor(src, dtype=torch.long),
                "tokens": torch.tensor(tokens, dtype=torch.long),
                "seq": torch.tensor(seq, dtype=torch.long),
                "num_units": torch.tensor(b),
            }
        )
    return _pair_batch(parts, features)  # num_tokens: both sequences in full, though the rows hold fewer


def can_share_prompt(model, inserts_tokens: bool, num_processes: int = 1) -> bool:
    """Whether :func:`shared_pair_collate` rows fit ``model``: a decoder, no virtual tokens (they
    widen a 2-D mask), one process (DDP wants one forward per backward), and an attention that takes
    a 4-D mask (SDPA or eager; not flash attention)."""
    from deltatune.models.loading import is_encoder

    attention = getattr(model.config, "_attn_implementation", "sdpa")
    return (
        not is_encoder(model.config)
        and not inserts_tokens
        and num_processes == 1
        and attention in ("sdpa", "eager")
    )


def training_collate(d: PreferenceData, model, method, pad_token_id: int, num_processes: int):
    """The collate function of a preference task's training batches: prefix-shared rows
    (:func:`shared_pair_collate`) where ``data.share_prompt`` and the model allow, else
    :func:`pair_collate`."""
    from functools import partial

    from deltatune.log import log
    from deltatune.models.loading import is_encoder

    if d.share_prompt and can_share_prompt(model, method.inserts_tokens, num_processes):
        log(
            "data.share_prompt: one row per pair, its prompt read once "
            "(a 4-D attention mask keeps the answers apart)"
        )
        return partial(shared_pair_collate, pad_token_id=pad_token_id)
    return partial(
        pair_collate,
        pad_token_id=pad_token_id,
        attention_mask=method.inserts_tokens or is_encoder(model.config),
        split_parts=num_processes == 1,
    )


def describe_stats(stats: dict[str, PairStats], template_name: str, max_length: int | None) -> str:
    """One log line per split: pairs kept, skipped, truncated, dropped."""
    return "\n".join(
        f"{split}: {s.kept} of {s.rows} pairs ({template_name} template); "
        f"{s.skipped_prompt_mismatch} without a shared prompt skipped, {s.prompt_truncated} "
        f"prompts and {s.answer_truncated} answers truncated, {s.dropped_too_long} dropped "
        f"at max_length {max_length}"
        for split, s in stats.items()
    )
