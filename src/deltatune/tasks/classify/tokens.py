"""The classify task's data in two steps: the labels (read before the model, whose head they size, is
loaded) and the features (tokenized once ``data.max_length`` is fitted to the model).

Two routes give the same features, batch for batch:

* **in memory** (the original route): every row is read into Python objects, validated, split and
  tokenized into lists. Used for multi-label data, sliding windows, hub ids and globs, slow
  tokenizers, ``data.cache: false``, and by default for training files under 256 KiB.
* **streamed through the token cache** (:mod:`deltatune.data.token_cache`): the file is read one row
  at a time, twice at most. The first pass fixes the label set and the class id of every row (kept as
  an Arrow column, so splits, samples and label counts need no rows); the second validates rows a chunk
  at a time with the same functions as the in-memory route and tokenizes each chunk with the fast
  tokenizer's batch call (its Rust side uses every core). Both results are cached on disk, so a
  second run, ``eval`` or ``--resume`` reads neither the rows nor the tokenizer again.

Validation errors stay exactly those of the in-memory route: the streamed passes validate with the
same functions, and at the first problem the run re-reads its files through the in-memory route,
which raises the error it always raised (file, line and field). That costs memory only for a run that
stops with an error anyway.
"""

from __future__ import annotations

import time
from array import array
from pathlib import Path

import numpy as np

from deltatune.data.masks import encode_untruncated
from deltatune.data.readers import iter_rows
from deltatune.data.token_cache import (
    AUTO_CACHE_BYTES,
    TokenCache,
    TokenRows,
    cache_key,
    data_size,
    row_chunks,
    tokenizer_fingerprint,
)
from deltatune.errors import ConfigError, DataError
from deltatune.log import log
from deltatune.tasks.classify.examples import (
    TEST_SPLIT_SEED,
    Example,
    check_split_options,
    load_classification_data,
    rows_to_examples,
    sample_positions,
    split_off_positions,
)
from deltatune.tasks.classify.labels import LabelSet, label_counts


def cache_route(d, path: str | None = None) -> bool:
    """Whether ``path`` (default ``d.train``) and the run's other files go through the token cache."""
    path = path or d.train
    files = [path] if path != d.train else [f for f in (d.train, d.validation, d.test) if f]
    if getattr(d, "cache", None) is False or not all(Path(f).exists() for f in files):
        return False
    if getattr(d, "multi_label", False) or getattr(d, "windows", None) is not None:
        if getattr(d, "cache", None):
            log("data.cache: multi-label and windowed data are tokenized in memory")
        return False
    return bool(getattr(d, "cache", None)) or data_size(Path(path)) >= AUTO_CACHE_BYTES


class ClassificationInputs:
    """One run's classification data: ``labels``, ``counts`` (per class), ``train_size`` and
    ``learnable`` (examples for :func:`~deltatune.tasks.classify.labels.check_learnable`) right away, then
    :meth:`features` per split. ``cache`` (default ``$DELTATUNE_HOME/tokens``) is used when
    :func:`cache_route` says so."""

    def __init__(self, d, seed: int, cache: TokenCache | None = None):
        self.d, self.seed, self.seconds = d, seed, 0.0
        self.streamed = cache_route(d)
        self.cache = cache if cache is not None else TokenCache() if self.streamed else None
        self.memory = None
        start = time.perf_counter()
        if self.streamed:
            try:
                self._stream_labels()
            except (DataError, ConfigError, OSError) as exc:
                self._in_memory(exc)
        else:
            self._in_memory()
        self.seconds += time.perf_counter() - start

    def _in_memory(self, stream_error: Exception | None = None) -> None:
        """The original route (raises the exact error of bad data)."""
        d = self.d
        data = load_classification_data(
            d.train,
            d.validation,
            d.test,
            d.validation_split,
            d.text_field,
            d.text_pair_field,
            d.label_field,
            d.label_names,
            self.seed,
            d.max_train_samples,
            fmt=d.format,
            test_split=d.test_split,
            label_separator=d.label_separator if d.multi_label else None,
        )
        if stream_error is not None:
            log(f"token cache: the streamed read stopped ({stream_error}); the data was read in memory")
        self.memory, self.streamed, self.labels = data, False, data.labels
        self.learnable, self.train_size = data.train, len(data.train)
        self.counts = label_counts(data.train, len(data.labels))

    def _stream_labels(self) -> None:
        d = self.d
        check_split_options(d.validation, d.validation_split, d.test, d.test_split, d.max_train_samples)
        from deltatune.io import file_fingerprint

        self.train_fp = file_fingerprint(d.train)
        key = cache_key("labels", self.train_fp, d.format, d.label_field, d.label_names)
        meta: dict = {"file": str(d.train)}
        table, meta = self.cache.get_or_build(
            "labels", key, lambda: _label_batches(d, meta), _LABEL_FEATURES(), meta
        )
        self.labels = LabelSet(meta["values"], meta["names"], str(d.train))
        ids = table.column("label").to_numpy()
        self.positions = _split_positions(ids, d, self.seed)
        train_ids = ids if self.positions["train"] is None else ids[self.positions["train"]]
        self.counts = np.bincount(train_ids, minlength=len(self.labels)).tolist()
        self.train_size = len(train_ids)
        values, first = np.unique(train_ids, return_index=True)
        self.learnable = [Example("", None, int(v), 0) for v in values[np.argsort(first)]]

    def features(self, tokenizer, max_length: int, windows=None) -> dict:
        """``{split: features}`` of train, validation and test (where the run has them): lists of dicts
        (in memory) or :class:`~deltatune.data.token_cache.TokenRows` (streamed)."""
        start = time.perf_counter()
        fingerprint = tokenizer_fingerprint(tokenizer) if self.streamed else None
        if fingerprint is not None:
            try:
                feats = self._stream_features(tokenizer, max_length, fingerprint)
                self.seconds += time.perf_counter() - start
                log(
                    f"token cache {self.cache.root}: {self.cache.built} entries built, the rest reused; "
                    f"data read and tokenized in {self.seconds:.1f} s"
                )
                return feats
            except (DataError, ConfigError, OSError) as exc:
                self._in_memory(exc)
        elif self.memory is None:
            self._in_memory()
        from deltatune.tasks.classify.windows import encode_examples

        data, n = self.memory, len(self.labels)
        splits = (("train", data.train), ("validation", data.validation), ("test", data.test))
        return {
            s: encode_examples(tokenizer, exs, max_length, windows, n, training=s == "train")
            for s, exs in splits
            if exs
        }

    def _stream_features(self, tokenizer, max_length: int, fingerprint: str) -> dict:
        d, pos = self.d, self.positions
        encode = (fingerprint, max_length, d.format, d.text_field, d.text_pair_field, d.label_field)
        train = file_tokens(self.cache, d, d.train, tokenizer, self.labels, encode, self.train_fp)
        feats = {"train": TokenRows(train, pos["train"])}
        if d.validation:
            feats["validation"] = TokenRows(
                file_tokens(self.cache, d, d.validation, tokenizer, self.labels, encode)
            )
        elif pos["validation"] is not None:
            feats["validation"] = TokenRows(train, pos["validation"])
        if d.test:
            feats["test"] = TokenRows(
                file_tokens(self.cache, d, d.test, tokenizer, self.labels, encode, optional=True)
            )
        elif pos["test"] is not None:
            feats["test"] = TokenRows(train, pos["test"])
        return feats


def _split_positions(ids: np.ndarray, d, seed: int) -> dict:
    """Rows of the training file in each split (None: every row, for train), as
    :func:`~deltatune.tasks.classify.examples.load_classification_data` cuts them: the test split (seed 0),
    the validation split of the rest, then the training sample."""
    out = {"train": None, "validation": None, "test": None}
    if not (d.test_split or (d.validation_split and not d.validation) or d.max_train_samples):
        return out
    labels = ids.tolist()
    train = list(range(len(labels)))
    if d.test_split:
        train, out["test"] = split_off_positions(labels, d.test_split, TEST_SPLIT_SEED, "test", d.train)
    if d.validation_split and not d.validation:
        rest, held = split_off_positions(
            [labels[i] for i in train], d.validation_split, seed, "validation", d.train
        )
        train, out["validation"] = [train[i] for i in rest], [train[i] for i in held]
    if d.max_train_samples is not None:
        train = [train[i] for i in sample_positions([labels[i] for i in train], d.max_train_samples, seed)]
    out["train"] = train
    return out


def _label_batches(d, meta: dict):
    """The class id of every row of the training file, from one streamed pass (the label set goes into
    ``meta``)."""
    path, field = str(d.train), d.label_field
    codes, firsts, seen = array("l"), [], {}

    def rows():
        for row in iter_rows(path, d.format):
            raw = row.get(field)
            try:
                key = (type(raw), raw)  # 1, 1.0 and True stay apart, as encode() tells them apart
                code = seen.get(key)
            except TypeError:  # unhashable: LabelSet.from_rows refuses it
                yield row
                continue
            if code is None:
                code = seen[key] = len(firsts)
                firsts.append((raw, row.line))
            codes.append(code)
            yield row

    labels = LabelSet.from_rows(rows(), field, d.label_names, path)
    if not codes:
        raise DataError("no rows", path=path)
    ids = np.asarray([labels.encode(raw, path, line, field) for raw, line in firsts], dtype=np.int64)
    meta.update(values=labels.values, names=labels.names)
    class_ids = ids[np.frombuffer(codes, dtype=np.int64 if codes.itemsize == 8 else np.int32)]
    for start in range(0, len(class_ids), 1 << 16):
        yield {"label": class_ids[start : start + (1 << 16)].tolist()}


def file_tokens(
    cache: TokenCache,
    d,
    path: str,
    tokenizer,
    labels: LabelSet,
    encode: tuple,
    fingerprint: dict | None = None,
    optional: bool = False,
):
    """The Arrow table of ``path``'s rows tokenized (``input_ids``, ``token_type_ids`` where the tokenizer
    makes them, ``label``, ``length``), from the cache or built into it. ``optional``: a file without
    the label field is prediction-only (labels null)."""
    from deltatune.io import file_fingerprint

    fingerprint = fingerprint or file_fingerprint(path)
    key = cache_key("tokens", fingerprint, [labels.values, labels.names, optional], *encode)
    types = "token_type_ids" in tokenizer.model_input_names

    def batches():
        return _token_batches(d, path, tokenizer, labels_kept(d, path, labels, optional), encode[1], types)

    table, _ = cache.get_or_build("tokens", key, batches, _token_features(types), {"file": str(path)})
    return table


def _token_batches(d, path: str, tokenizer, labels: LabelSet | None, max_length: int, types: bool):
    """The columns of each chunk of ``path`` (:func:`_prepare_chunk`, :func:`_chunk_columns`). The fast
    tokenizer encodes one chunk in a worker thread (its Rust side drops the GIL) while this thread reads
    and validates the next, so reading overlaps tokenizing; only the worker touches the tokenizer."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="deltatune-tokenize") as pool:
        pending = None
        for chunk in row_chunks(path, d.format):
            prepared = _prepare_chunk(chunk, d, path, labels)
            texts, pairs = prepared[1], prepared[2]
            future = pool.submit(_encode_cut, tokenizer, texts, pairs, max_length, types)
            if pending is not None:
                yield _chunk_columns(pending[0], pending[1].result())
            pending = (prepared, future)
        if pending is not None:
            yield _chunk_columns(pending[0], pending[1].result())


def _prepare_chunk(rows, d, path, labels):
    """A chunk's rows validated (the in-memory route's function): examples, texts, pairs (or None)."""
    examples = rows_to_examples(
        rows, d.text_field, d.text_pair_field, d.label_field if labels else None, labels, path
    )
    pairs = [e.text_pair for e in examples] if d.text_pair_field else None
    return examples, [e.text for e in examples], pairs


def _encode_cut(tokenizer, texts, pairs, max_length: int, types: bool):
    """``(input_ids, token_type_ids, lengths before truncation)``: one untruncated pass; rows longer than
    ``max_length`` are encoded again with the tokenizer's own truncation (the in-memory route's cut)."""
    ids, type_ids = encode_untruncated(tokenizer, texts, pairs)
    full = [len(x) for x in ids]
    long = [i for i, n in enumerate(full) if n > max_length]
    if long:
        cut = tokenizer(
            [texts[i] for i in long],
            None if pairs is None else [pairs[i] for i in long],
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,
        )
        for k, i in enumerate(long):
            ids[i] = cut["input_ids"][k]
            if types:
                type_ids[i] = cut["token_type_ids"][k]
    return ids, type_ids if types else None, full


def _chunk_columns(prepared, encoded) -> dict:
    """One chunk's columns: the tokens training reads (``input_ids``, ``token_type_ids``, ``label``,
    ``length`` after truncation) and what the data checks read (``key``, ``line``, ``tokens`` before
    truncation, ``text``)."""
    from deltatune.data.text_keys import text_key

    (examples, texts, pairs), (ids, type_ids, full) = prepared, encoded
    shown = texts if pairs is None else [f"{t} || {p}" for t, p in zip(texts, pairs)]
    batch = {
        "input_ids": ids,
        "label": [e.label for e in examples],
        "length": [len(x) for x in ids],
        "key": [text_key(t) for t in shown],
        "line": [e.line for e in examples],
        "tokens": full,
        "text": shown,
    }
    if type_ids is not None:
        batch["token_type_ids"] = type_ids
    return batch


def labels_kept(d, path: str, labels: LabelSet, optional: bool) -> LabelSet | None:
    """The label set to read ``path``'s labels with, or None for an ``optional`` file (a test file)
    where no row has the label field: it is prediction-only."""
    if not optional or any(d.label_field in row for row in iter_rows(path, d.format)):
        return labels
    return None


def _LABEL_FEATURES():
    import datasets

    return datasets.Features({"label": datasets.Value("int64")})


def _token_features(types: bool):
    import datasets

    ids = {
        "input_ids": datasets.List(datasets.Value("int32")),
        "label": datasets.Value("int64"),
        "length": datasets.Value("int32"),
        "key": datasets.Value("int64"),
        "line": datasets.Value("int64"),
        "tokens": datasets.Value("int64"),
        "text": datasets.Value("string"),
    }
    if types:
        ids["token_type_ids"] = datasets.List(datasets.Value("int8"))
    return datasets.Features(ids)


def cached_file_features(d, path: str, tokenizer, labels: LabelSet, max_length: int):
    """``eval --data``: the labelled file's features from the token cache (built there if missing), or
    None when the file takes the in-memory route."""
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint is None or not cache_route(d, path):
        return None
    encode = (fingerprint, max_length, d.format, d.text_field, d.text_pair_field, d.label_field)
    try:
        return TokenRows(file_tokens(TokenCache(), d, path, tokenizer, labels, encode))
    except (DataError, ConfigError):
        return None  # the in-memory route raises the exact error
