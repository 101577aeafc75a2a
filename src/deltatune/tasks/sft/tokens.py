"""Instruction data (SFT) through the token cache: large files streamed once into Arrow, memory-mapped.

The in-memory route (:func:`~deltatune.data.conversations.load_splits`, then
:func:`~deltatune.data.masks.encode_conversations`) holds every conversation and every token as Python
objects: a million conversations do not fit. For a training file of 256 KiB or more (or ``data.cache:
true``), each file is instead read a chunk of rows at a time, validated with the in-memory route's
functions, rendered with the run's template and tokenized in batches (:func:`encode_segments_many`,
the same ids and labels), into one cached table per file (:mod:`deltatune.data.token_cache`) holding,
per row: the ids and labels training reads (after ``max_length`` and ``truncation``), whether the row
is kept, and the columns the pre-flight checks read (text key, line, length before ``max_length``,
trained tokens, text). Splits and samples are row positions, cut exactly as the in-memory route cuts
them, so both routes give the same examples in the same order. A second run, ``eval`` or ``--resume``
reads the table back without the tokenizer.

Not on this route: packing (it builds its rows in memory), slow tokenizers, ``data.cache: false``,
files that do not exist on disk (hub ids). At the first bad row the run re-reads its data through the
in-memory route, which raises the exact error (file, line, field).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np

from deltatune.data.conversations import FieldMap, detect_layout, rows_to_conversations
from deltatune.data.masks import EncodeStats, encode_segments_many
from deltatune.data.token_cache import (
    AUTO_CACHE_BYTES,
    ListColumn,
    TableRows,
    TokenCache,
    cache_key,
    data_size,
    row_chunks,
    tokenizer_fingerprint,
)
from deltatune.errors import ConfigError, DataError
from deltatune.log import log
from deltatune.losses.lm import IGNORE_INDEX

KEPT, TOO_LONG, NO_TARGET = 0, 1, 2


def sft_cache_route(d) -> bool:
    """Whether this run's SFT data goes through the token cache."""
    files = [f for f in (d.train, d.validation, d.test) if f]
    cache = getattr(d, "cache", None)
    if cache is False or not files or not all(Path(f).exists() for f in files):
        return False
    if d.packing:
        if cache:
            log("data.cache: packed SFT rows are built in memory; the data is read in memory")
        return False
    return bool(cache) or data_size(Path(d.train)) >= AUTO_CACHE_BYTES


def first_is_raw(d) -> bool:
    """Whether the training file's first row is plain text / prompt+completion (``Conversation.raw``),
    which decides the ``auto`` template, read without reading the rest."""
    for chunk in row_chunks(str(d.train), d.format, size=1):
        convs = rows_to_conversations(
            chunk, d.layout, FieldMap(d.fields), d.system_prompt, allow_empty_answer=d.empty_answers == "drop"
        )
        return bool(convs) and convs[0].raw
    return False


class SftRows(TableRows):
    """Kept rows of an SFT table as the features the in-memory route builds (``input_ids``, ``labels``,
    ``line``)."""

    def __init__(self, table, positions):
        super().__init__(table, positions)
        self._ids, self._labels = ListColumn(table.column("input_ids")), ListColumn(table.column("labels"))
        self._lines = table.column("line").to_numpy()

    def _row(self, row: int) -> dict:
        return {"input_ids": self._ids[row], "labels": self._labels[row], "line": int(self._lines[row])}


def sft_tables(d, seed: int, tokenizer, template, cache: TokenCache | None = None) -> dict:
    """``{split: (table, positions)}`` of train, validation and test: every file's cached table and the
    table rows of each split (all rows, kept or not, in file order), cut as
    :func:`~deltatune.data.readers.split_then_sample` cuts conversations."""
    cache = cache or TokenCache()
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint is None:
        raise ConfigError("a slow tokenizer cannot use the token cache")
    encode = (
        fingerprint,
        getattr(tokenizer, "chat_template", None),
        template.name,
        getattr(template, "source", None),
        d.format,
        d.layout,
        d.fields,
        d.system_prompt,
        d.empty_answers,
        d.max_length,
        d.truncation,
    )
    train = _file_table(cache, d, str(d.train), tokenizer, template, encode)
    n = len(train)
    out = {}
    rows = np.arange(n)
    if d.validation:
        out["validation"] = (
            validation := _file_table(cache, d, str(d.validation), tokenizer, template, encode),
            np.arange(len(validation)),
        )
    elif d.validation_split:
        order = list(range(n))
        random.Random(seed + 1).shuffle(order)
        held = np.zeros(n, dtype=bool)
        held[order[: max(1, round(n * d.validation_split))]] = True
        out["validation"] = (train, np.flatnonzero(held))
        rows = np.flatnonzero(~held)
    if d.max_train_samples and d.max_train_samples < len(rows):
        rows = rows[sorted(random.Random(seed).sample(range(len(rows)), d.max_train_samples))]  # file order
    out = {"train": (train, rows.astype(np.int64)), **out}
    if d.test:
        test = _file_table(cache, d, str(d.test), tokenizer, template, encode)
        out["test"] = (test, np.arange(len(test)))
    return out


def sft_features(tables: dict) -> tuple[dict, dict]:
    """``(features, stats)`` per split from :func:`sft_tables`: the kept rows as :class:`SftRows` and
    the :class:`~deltatune.data.masks.EncodeStats` the in-memory route would count."""
    feats, stats = {}, {}
    for split, (table, pos) in tables.items():
        status = table.column("status").to_numpy()[pos]
        truncated = table.column("truncated").to_numpy(zero_copy_only=False)[pos]
        feats[split] = SftRows(table, pos[status == KEPT])
        stats[split] = EncodeStats(
            examples=len(pos),
            truncated=int(truncated.sum()),
            dropped_too_long=int((status == TOO_LONG).sum()),
            dropped_no_target=int((status == NO_TARGET).sum()),
        )
    return feats, stats


def sample_conversations(d, table, positions, n: int) -> list:
    """The first ``n`` conversations with a prompt among the table rows at ``positions`` (generation
    samples), read from the table's file."""
    if n <= 0 or not len(positions):
        return []
    wanted, out = set(np.asarray(positions).tolist()), []
    index, last, layout = 0, max(wanted), None
    for chunk in row_chunks(table.schema.metadata[b"deltatune_file"].decode(), d.format):
        layout = layout or _layout(d, chunk)  # the file's first row decides, as in training
        picked = [r for k, r in enumerate(chunk, index) if k in wanted]
        index += len(chunk)
        out += [
            c
            for c in rows_to_conversations(
                picked,
                layout,
                FieldMap(d.fields),
                d.system_prompt,
                allow_empty_answer=d.empty_answers == "drop",
            )
            if c.prompt_messages
        ]
        if len(out) >= n or index > last:
            break
    return out[:n]


def _layout(d, rows) -> str:
    return d.layout if d.layout != "auto" or not rows else detect_layout(rows[0], FieldMap(d.fields))


def _file_table(cache: TokenCache, d, path: str, tokenizer, template, encode: tuple):
    from deltatune.io import file_fingerprint

    key = cache_key("sft", file_fingerprint(path), *encode)
    table, _ = cache.get_or_build(
        "sft", key, lambda: _batches(d, path, tokenizer, template), _features(), {"file": path}
    )
    return table.replace_schema_metadata({**(table.schema.metadata or {}), b"deltatune_file": path.encode()})


def _batches(d, path: str, tokenizer, template):
    from deltatune.data.text_keys import text_key

    layout = None
    for chunk in row_chunks(path, d.format):
        layout = layout or _layout(d, chunk)  # the file's first row decides, as in memory
        convs = rows_to_conversations(
            chunk, layout, FieldMap(d.fields), d.system_prompt, allow_empty_answer=d.empty_answers == "drop"
        )
        encoded = encode_segments_many(tokenizer, [template.segments(c) for c in convs])
        cols = {
            k: []
            for k in (
                "input_ids",
                "labels",
                "length",
                "status",
                "truncated",
                "line",
                "key",
                "tokens",
                "trained",
                "text",
            )
        }
        for conv, (ids, labels) in zip(convs, encoded):
            content = "\n".join(str(m.get("content", "")) for m in conv.messages)
            long = len(ids) > d.max_length
            kept = labels[: d.max_length] if d.truncation == "truncate" or not long else []
            trained = sum(x != IGNORE_INDEX for x in kept)
            answered = any(m["role"] == "assistant" and m["content"].strip() for m in conv.messages)
            # what encode_conversations + apply_max_length decide (an unanswered row encodes as nothing)
            status = (
                NO_TARGET
                if not answered
                else TOO_LONG
                if long and d.truncation == "drop"
                else KEPT
                if trained
                else NO_TARGET
            )
            cols["input_ids"].append(ids[: d.max_length] if status == KEPT else [])
            cols["labels"].append(kept if status == KEPT else [])
            cols["length"].append(min(len(ids), d.max_length) if status == KEPT else 0)
            cut = answered and long and d.truncation == "truncate"
            for k, v in (
                ("status", status),
                ("truncated", cut),
                ("line", conv.line),
                ("key", text_key(content)),
                ("tokens", len(ids)),
                ("trained", trained),
                ("text", content),
            ):
                cols[k].append(v)
        yield cols


def _features():
    import datasets

    ints = datasets.List(datasets.Value("int32"))
    return datasets.Features(
        {
            "input_ids": ints,
            "labels": ints,
            "length": datasets.Value("int32"),
            "status": datasets.Value("int8"),
            "truncated": datasets.Value("bool"),
            "line": datasets.Value("int64"),
            "key": datasets.Value("int64"),
            "tokens": datasets.Value("int64"),
            "trained": datasets.Value("int64"),
            "text": datasets.Value("string"),
        }
    )


def load_sft_data(d, seed: int, tokenizer, samples: int):
    """``(template, features, stats, generation samples)`` of a run on the token-cache route; None when
    the data must be read in memory (a slow tokenizer, or a bad row: the in-memory route raises its error)."""
    from deltatune.data.templates import make_template

    start = time.perf_counter()
    cache = TokenCache()
    try:
        template = make_template(d.template, tokenizer, raw_data=first_is_raw(d))
        tables = sft_tables(d, seed, tokenizer, template, cache)
    except (DataError, ConfigError, OSError) as exc:
        log(
            f"token cache: the streamed read stopped ({str(exc).splitlines()[0][:200]}); "
            "the data is read in memory"
        )
        return None
    feats, stats = sft_features(tables)
    conversations = sample_conversations(d, *tables["validation"], samples) if "validation" in tables else []
    log(
        f"token cache {cache.root}: {cache.built} entries built, the rest reused; "
        f"data read and tokenized in {time.perf_counter() - start:.1f} s"
    )
    return template, feats, stats, conversations


def sft_data(d, seed: int, tokenizer, samples: int, streamed: bool, splits: dict | None = None):
    """``(template, features, stats, generation samples)`` of an SFT run: through the token cache when
    ``streamed`` (and the data can be), else from ``splits`` (read here when None) in memory."""
    from deltatune.data.conversations import load_splits
    from deltatune.data.masks import encode_conversations
    from deltatune.data.templates import template_for

    loaded = streamed and load_sft_data(d, seed, tokenizer, samples)
    if loaded:
        return loaded
    splits = splits or load_splits(d, seed)
    template = template_for(d, tokenizer, splits["train"])
    feats, stats = {}, {}
    for split, convs in splits.items():
        feats[split], stats[split] = encode_conversations(
            convs, template, tokenizer, d.max_length, d.truncation
        )
    return template, feats, stats, [c for c in splits.get("validation", []) if c.prompt_messages][:samples]
