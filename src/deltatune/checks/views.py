"""What the data checks see of a task's data: per split, each example's text (as compared for
duplicates and leakage), its labels, its length in tokens before ``max_length``, and how many of its
tokens the loss trains on. A task provides this through ``TaskSpec.inspect``; the builders for the
tasks shipped with deltatune are here (they read the data exactly as training does, and load only the
tokenizer).

The checks read columns (:class:`Rows`): a hash of each normalised text, its line, length, label and
trained tokens, a few dozen bytes a row, and texts one at a time. Small data is read into
:class:`Item` objects and turned into columns; a classification file large enough for the token cache
is streamed once, chunk by chunk, into the cached Arrow table training reads (texts included, memory-mapped), so the
checks of a million-row file hold tens of megabytes, and a second run reads the table back."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from deltatune.data.text_keys import normalise, text_key  # noqa: F401 - the checks import them from here
from deltatune.losses.lm import IGNORE_INDEX
from deltatune.training.logging import log


@dataclass
class Item:
    text: str
    line: int | None = None
    labels: tuple[str, ...] | None = None    # class names (classification); None elsewhere
    tokens: int = 0                           # length before max_length
    trained: int | None = None                # tokens trained after the length policy (None: n/a)


class Rows:
    """One split's examples as columns: ``keys`` (:func:`text_key`), ``lines`` (-1: none),
    ``tokens`` (length before max_length), ``labels`` (codes into ``label_sets``, -1: none; None when
    the task has no labels), ``trained`` (tokens the loss trains on; None when not applicable), and
    the text of row ``i`` from :meth:`text`."""

    def __init__(self, keys, lines, tokens, text: Callable[[int], str], labels=None,
                 label_sets: list[tuple[str, ...]] | None = None, trained=None):
        self.keys = np.asarray(keys, dtype=np.int64)
        self.lines = np.asarray(lines, dtype=np.int64)
        self.tokens = np.asarray(tokens, dtype=np.int64)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.label_sets = list(label_sets or [])
        self.trained = None if trained is None else np.asarray(trained, dtype=np.int64)
        self._text = text

    def __len__(self) -> int:
        return len(self.keys)

    def text(self, i) -> str:
        return self._text(int(i))

    def where(self, i) -> str:
        line = int(self.lines[i])
        return f"line {line}" if line >= 0 else "a row"

    def label_names(self, i) -> tuple[str, ...] | None:
        if self.labels is None or self.labels[i] < 0:
            return None
        return self.label_sets[int(self.labels[i])]

    @classmethod
    def from_items(cls, items: list[Item]) -> "Rows":
        sets: dict[tuple[str, ...], int] = {}
        codes = [-1 if x.labels is None else sets.setdefault(x.labels, len(sets)) for x in items]
        labelled = any(x.labels is not None for x in items)
        trained = [-1 if x.trained is None else x.trained for x in items]
        return cls([text_key(x.text) for x in items], [-1 if x.line is None else x.line for x in items],
                   [x.tokens for x in items], lambda i: items[i].text, codes if labelled else None, list(sets),
                   trained if any(x.trained is not None for x in items) else None)


@dataclass
class DataView:
    splits: dict[str, Rows]                   # lists of Items are turned into Rows
    max_length: int
    files: dict[str, str] = field(default_factory=dict)   # split -> where it comes from
    policy: str = "truncate"                  # what happens to longer examples: truncate | drop | windows
    model_positions: int | None = None        # longest input the model takes, when known

    def __post_init__(self):
        self.splits = {s: r if isinstance(r, Rows) else Rows.from_items(r) for s, r in self.splits.items()}


def view_for(cfg) -> DataView | None:
    from deltatune.tasks import get_task

    inspect = getattr(get_task(cfg.task), "inspect", None)
    return inspect(cfg) if inspect is not None else None


def _tokenizer(cfg):
    from deltatune.models.loading import load_tokenizer

    return load_tokenizer(cfg.model.name)


def _files(d) -> dict[str, str]:
    out = {"train": d.train}
    if d.validation:
        out["validation"] = d.validation
    elif d.validation_split:
        out["validation"] = f"the {d.validation_split:g} split of {d.train}"
    if d.test or getattr(d, "test_split", None):
        out["test"] = d.test or f"the {d.test_split:g} split of {d.train}"
    return out


def classify_view(cfg) -> DataView:
    """Classification examples as the recipe reads them (same splits and sample): streamed through
    the token cache where training would stream them (:func:`_streamed_classify_view`), else in memory."""
    from deltatune.data.classify import load_classification_data
    from deltatune.data.classify_tokens import cache_route

    d = cfg.data
    if cache_route(d):
        view = _streamed_classify_view(cfg)
        if view is not None:
            return view
    multi = getattr(d, "multi_label", False)
    extra = {"test_split": getattr(d, "test_split", None)} if hasattr(d, "test_split") else {}
    if multi:
        extra["label_separator"] = d.label_separator
    data = load_classification_data(d.train, d.validation, d.test, d.validation_split, d.text_field,
                                    d.text_pair_field, d.label_field, d.label_names, cfg.train.seed,
                                    d.max_train_samples, fmt=d.format, **extra)
    tok, names = _tokenizer(cfg), list(data.labels.names)
    splits = {}
    for split, examples in (("train", data.train), ("validation", data.validation), ("test", data.test)):
        if not examples:
            continue
        pairs = [e.text_pair for e in examples] if examples[0].text_pair is not None else None
        lengths = [len(ids) for ids in tok([e.text for e in examples], pairs, truncation=False)["input_ids"]]
        splits[split] = [Item(e.text + (f" || {e.text_pair}" if e.text_pair is not None else ""), e.line,
                              _names(e.label, names), n) for e, n in zip(examples, lengths)]
    return DataView(splits, d.max_length, _files(d), "windows" if getattr(d, "windows", None) else "truncate",
                    _positions(cfg))


def _streamed_classify_view(cfg) -> DataView | None:
    """The classify view of data on the token-cache route: the cached tables training reads (built
    here when missing, in the same single streamed pass per file: validated with the training route's
    functions, tokenized once), whose ``key``, ``line``, ``tokens``, ``label`` and ``text`` columns are
    the checks' columns; splits are the positions training uses. None when the data cannot be streamed
    (a slow tokenizer, a file that fails validation: the in-memory route then raises the exact error)."""
    from deltatune.data.classify_tokens import ClassificationInputs, file_tokens
    from deltatune.data.token_cache import tokenizer_fingerprint
    from deltatune.errors import ConfigError, DataError

    d = cfg.data
    tok = _tokenizer(cfg)
    fingerprint = tokenizer_fingerprint(tok)
    if fingerprint is None:
        return None
    start = time.perf_counter()
    try:
        inputs = ClassificationInputs(d, cfg.train.seed)
        if not inputs.streamed:
            return None
        sets = [(name,) for name in inputs.labels.names]
        encode = (fingerprint, d.max_length, d.format, d.text_field, d.text_pair_field, d.label_field)

        def table(path, optional=False, fp=None):
            return file_tokens(inputs.cache, d, path, tok, inputs.labels, encode, fp, optional)

        train, pos = table(d.train, fp=inputs.train_fp), inputs.positions
        splits = {"train": _table_rows(train, pos["train"], sets)}
        for split in ("validation", "test"):
            path = getattr(d, split)
            if path:
                splits[split] = _table_rows(table(path, split == "test"), None, sets)
            elif pos[split] is not None:
                splits[split] = _table_rows(train, pos[split], sets)
    except (DataError, ConfigError, OSError):
        return None
    log(f"token cache {inputs.cache.root}: {inputs.cache.built} entries built for the checks, the rest reused; "
        f"data read and tokenized in {time.perf_counter() - start:.1f} s")
    return DataView(splits, d.max_length, _files(d), "truncate", _positions(cfg))


def _table_rows(table, positions, label_sets) -> Rows:
    """The rows of ``table`` at ``positions`` (None: all) as columns; texts read from the table on demand."""
    idx = np.arange(len(table)) if positions is None else np.asarray(positions, dtype=np.int64)
    cols = {c: table.column(c).to_numpy()[idx] for c in ("key", "line", "tokens")}
    label = table.column("label")
    labels = None if label.null_count == len(label) else label.to_numpy()[idx]
    text = table.column("text")
    return Rows(cols["key"], cols["line"], cols["tokens"], lambda i: text[int(idx[i])].as_py(), labels, label_sets)


def _names(label, names: list[str]) -> tuple[str, ...] | None:
    if label is None:
        return None
    return tuple(names[i] for i in label) if isinstance(label, tuple) else (names[label],)


def _positions(cfg) -> int | None:
    try:
        from transformers import AutoConfig

        from deltatune.models.loading import resolve_model_path

        mc = AutoConfig.from_pretrained(resolve_model_path(cfg.model.name))
        return getattr(mc, "max_position_embeddings", None) or getattr(mc, "n_positions", None)
    except Exception:  # noqa: BLE001 - a hint only; the run itself checks max_length against the model
        return None


def sft_view(cfg) -> DataView:
    """Instruction examples rendered with the run's template: text, length, trained tokens (from the
    token cache's table where training streams the data, :func:`_streamed_sft_view`)."""
    from deltatune.data.conversations import load_splits
    from deltatune.data.sft import encode_segments, template_for
    from deltatune.data.sft_tokens import sft_cache_route

    d = cfg.data
    if sft_cache_route(d):
        view = _streamed_sft_view(cfg)
        if view is not None:
            return view
    splits = load_splits(d, cfg.train.seed)
    tok = _tokenizer(cfg)
    template = template_for(d, tok, splits["train"])
    out = {}
    for split, convs in splits.items():
        items = []
        for conv in convs:
            segments = template.segments(conv)
            ids, labels = encode_segments(tok, segments)
            kept = labels[:d.max_length] if d.truncation == "truncate" or len(ids) <= d.max_length else []
            items.append(Item(_content(conv.messages), conv.line, None, len(ids),
                              sum(x != IGNORE_INDEX for x in kept)))
        out[split] = items
    return DataView(out, d.max_length, _files(d), d.truncation, _positions(cfg))


def _streamed_sft_view(cfg) -> DataView | None:
    """The SFT view from the cached tables training reads (built here when missing: one streamed pass
    per file); None when the data must be read in memory (the in-memory view then raises any error)."""
    from deltatune.data.sft import make_template
    from deltatune.data.sft_tokens import first_is_raw, sft_tables
    from deltatune.data.token_cache import TokenCache
    from deltatune.errors import ConfigError, DataError

    d, start, cache = cfg.data, time.perf_counter(), TokenCache()
    try:
        tok = _tokenizer(cfg)
        tables = sft_tables(d, cfg.train.seed, tok, make_template(d.template, tok, raw_data=first_is_raw(d)), cache)
    except (DataError, ConfigError, OSError):
        return None
    splits = {}
    for split, (table, pos) in tables.items():
        cols = {c: table.column(c).to_numpy()[pos] for c in ("key", "line", "tokens", "trained")}
        text = table.column("text")
        splits[split] = Rows(cols["key"], cols["line"], cols["tokens"],
                             lambda i, text=text, pos=pos: text[int(pos[i])].as_py(), trained=cols["trained"])
    log(f"token cache {cache.root}: {cache.built} entries built for the checks, the rest reused; "
        f"data read and tokenized in {time.perf_counter() - start:.1f} s")
    return DataView(splits, d.max_length, _files(d), d.truncation, _positions(cfg))


def _content(messages: list[dict]) -> str:
    """The words of a conversation without its template (what makes two examples the same)."""
    return "\n".join(str(m.get("content", "")) for m in messages)


def pairs_view(cfg) -> DataView:
    """Preference pairs: prompt + both answers as text; length of the longer sequence; scored tokens
    of the shorter-scored answer."""
    from deltatune.data.preference import encode_pairs, load_pair_splits
    from deltatune.data.sft import template_for

    d = cfg.data
    splits, _ = load_pair_splits(d, cfg.train.seed)
    tok = _tokenizer(cfg)
    template = template_for(d, tok, [])
    out = {}
    for split, pairs in splits.items():
        texts = {p.line: f"{_content(p.prompt)}\n{p.chosen}\n{p.rejected}" for p in pairs}
        full, _ = encode_pairs(pairs, template, tok, None)
        cut = {f["line"]: f for f in encode_pairs(pairs, template, tok, d.max_length, d.truncation)[0]}
        items = []
        for f in full:
            kept = cut.get(f["line"])
            trained = 0 if kept is None else min(sum(x != IGNORE_INDEX for x in kept[f"{s}_labels"])
                                                 for s in ("chosen", "rejected"))
            items.append(Item(texts[f["line"]], f["line"], None, max(len(f["chosen_ids"]), len(f["rejected_ids"])), trained))
        out[split] = items
    return DataView(out, d.max_length, _files(d), d.truncation, _positions(cfg))
