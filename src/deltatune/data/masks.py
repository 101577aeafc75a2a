"""Token-exact answer masks: a template's segments to token ids and labels (-100 wherever no loss is
taken), truncation to ``max_length``, and the prompt ids generation starts from.

Each segment is tokenized on its own and the ids are concatenated, so the label mask follows the
segment boundaries exactly — never found by re-tokenizing a prefix (``tokens(prompt + response)`` is
not always ``tokens(prompt) + tokens(response)``). SFT, preference pairs and RL prompts all encode
through here, so training and generation see the same ids at the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from deltatune.data.conversations import Conversation
from deltatune.data.templates import Segments, Template, bos_to_add, continuation_prefixes, encode_piece
from deltatune.losses.lm import IGNORE_INDEX


def encode_segments(tokenizer, segments: Segments) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 on untrained segments and on the first token)."""
    ids = bos_to_add(tokenizer, segments[0][0] if segments else "")
    labels = [IGNORE_INDEX] * len(ids)
    for n, (text, trained) in enumerate(segments):
        piece = encode_piece(tokenizer, text, continuation=n > 0)
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    if labels:
        labels[0] = IGNORE_INDEX  # nothing predicts the first token (also keeps packing exact)
    return ids, labels


def encode_segments_many(tokenizer, many: Sequence[Segments]) -> list[tuple[list[int], list[int]]]:
    """:func:`encode_segments` of each segment list, with every piece encoded in one batch call of the
    fast tokenizer (pieces whose continuation sentinel merges with the text fall back to
    :func:`encode_piece`); the same ids and labels (``tests/unit/data/test_templates_and_masks.py`` compares
    them)."""
    prefixes = continuation_prefixes(tokenizer)
    sentinel, head = prefixes[0] if prefixes else ("", ())
    texts = [
        (sentinel + text if n and prefixes else text)
        for segments in many
        for n, (text, _) in enumerate(segments)
    ]
    pieces = iter(encode_untruncated(tokenizer, texts, special=False)[0] if texts else [])
    out = []
    for segments in many:
        ids = bos_to_add(tokenizer, segments[0][0] if segments else "")
        labels = [IGNORE_INDEX] * len(ids)
        for n, (text, trained) in enumerate(segments):
            piece = next(pieces)
            if n and prefixes:
                piece = (
                    piece[len(head) :]
                    if tuple(piece[: len(head)]) == head
                    else encode_piece(tokenizer, text, True)
                )
            ids += piece
            labels += piece if trained else [IGNORE_INDEX] * len(piece)
        if labels:
            labels[0] = IGNORE_INDEX
        out.append((ids, labels))
    return out


@dataclass
class EncodeStats:
    examples: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_target: int = 0

    @property
    def kept(self) -> int:
        return self.examples - self.dropped_too_long - self.dropped_no_target


def encode_conversations(
    convs: Sequence[Conversation],
    template: Template,
    tokenizer,
    max_length: int | None = None,
    truncation: str = "truncate",
) -> tuple[list[dict], EncodeStats]:
    """Features ``{input_ids, labels, line}`` for each kept example, and the counts. An example whose
    answers are all empty (``data.empty_answers: drop``) counts as one without target tokens."""
    feats = [
        dict(zip(("input_ids", "labels"), encode_segments(tokenizer, template.segments(c))), line=c.line)
        if any(m["role"] == "assistant" and m["content"].strip() for m in c.messages)
        else {"input_ids": [], "labels": [], "line": c.line}
        for c in convs
    ]
    return apply_max_length(feats, max_length, truncation)


def apply_max_length(
    feats: Sequence[dict], max_length: int | None, truncation: str = "truncate"
) -> tuple[list[dict], EncodeStats]:
    """Cut (``truncate``) or drop over-long examples; drop those left without target tokens."""
    kept, stats = [], EncodeStats(examples=len(feats))
    for f in feats:
        if max_length is not None and len(f["input_ids"]) > max_length:
            if truncation == "drop":
                stats.dropped_too_long += 1
                continue
            f = {**f, "input_ids": f["input_ids"][:max_length], "labels": f["labels"][:max_length]}
            stats.truncated += 1
        if all(x == IGNORE_INDEX for x in f["labels"]):
            stats.dropped_no_target += 1
            continue
        kept.append(f)
    return kept, stats


def prompt_ids(tokenizer, template: Template, messages: list[dict]) -> list[int]:
    """Ids of a prompt (ending with the generation prompt), as in training."""
    return encode_segments(tokenizer, template.prompt(messages))[0]


def encode_untruncated(tokenizer, texts: list[str], pairs: list[str] | None = None, special: bool = True):
    """``(input_ids, token_type_ids)`` lists of ``tokenizer(texts, pairs, add_special_tokens=special)``
    (no truncation, no padding), read straight from the fast tokenizer's Rust encodings: the same ids
    (``tests/unit/data/test_token_cache.py`` compares them) without building a ``BatchEncoding`` row by
    row."""
    from transformers.tokenization_utils_base import PaddingStrategy, TruncationStrategy

    tokenizer.set_truncation_and_padding(
        padding_strategy=PaddingStrategy.DO_NOT_PAD,
        truncation_strategy=TruncationStrategy.DO_NOT_TRUNCATE,
        max_length=None,
        stride=0,
        pad_to_multiple_of=None,
        padding_side=None,
    )
    backend = tokenizer.backend_tokenizer
    split = bool(getattr(tokenizer, "split_special_tokens", False))
    if backend.encode_special_tokens != split:
        backend.encode_special_tokens = split
    encodings = backend.encode_batch(
        texts if pairs is None else list(zip(texts, pairs)), add_special_tokens=special
    )
    return [e.ids for e in encodings], [e.type_ids for e in encodings]
