"""What ``deltatune check`` sees of classification data: texts, labels and token lengths per split
(see :mod:`deltatune.data.views`)."""

from __future__ import annotations

import time

import numpy as np

from deltatune.data.views import DataView, Item, Rows, data_files, model_positions, view_tokenizer
from deltatune.log import log


def classify_view(cfg) -> DataView:
    """Classification examples as the task reads them (same splits and sample): streamed through
    the token cache where training would stream them (:func:`_streamed_classify_view`), else in memory."""
    from deltatune.tasks.classify.examples import load_classification_data
    from deltatune.tasks.classify.tokens import cache_route

    d = cfg.data
    if cache_route(d):
        view = _streamed_classify_view(cfg)
        if view is not None:
            return view
    multi = getattr(d, "multi_label", False)
    extra = {"test_split": getattr(d, "test_split", None)} if hasattr(d, "test_split") else {}
    if multi:
        extra["label_separator"] = d.label_separator
    data = load_classification_data(
        d.train,
        d.validation,
        d.test,
        d.validation_split,
        d.text_field,
        d.text_pair_field,
        d.label_field,
        d.label_names,
        cfg.train.seed,
        d.max_train_samples,
        fmt=d.format,
        **extra,
    )
    tok, names = view_tokenizer(cfg), list(data.labels.names)
    splits = {}
    for split, examples in (("train", data.train), ("validation", data.validation), ("test", data.test)):
        if not examples:
            continue
        pairs = [e.text_pair for e in examples] if examples[0].text_pair is not None else None
        lengths = [len(ids) for ids in tok([e.text for e in examples], pairs, truncation=False)["input_ids"]]
        splits[split] = [
            Item(
                e.text + (f" || {e.text_pair}" if e.text_pair is not None else ""),
                e.line,
                _names(e.label, names),
                n,
            )
            for e, n in zip(examples, lengths)
        ]
    return DataView(
        splits,
        d.max_length,
        data_files(d),
        "windows" if getattr(d, "windows", None) else "truncate",
        model_positions(cfg),
    )


def _streamed_classify_view(cfg) -> DataView | None:
    """The classify view of data on the token-cache route: the cached tables training reads (built
    here when missing, in the same single streamed pass per file: validated with the training route's
    functions, tokenized once), whose ``key``, ``line``, ``tokens``, ``label`` and ``text`` columns are
    the checks' columns; splits are the positions training uses. None when the data cannot be streamed
    (a slow tokenizer, a file that fails validation: the in-memory route then raises the exact error)."""
    from deltatune.data.token_cache import tokenizer_fingerprint
    from deltatune.errors import ConfigError, DataError
    from deltatune.tasks.classify.tokens import ClassificationInputs, file_tokens

    d = cfg.data
    tok = view_tokenizer(cfg)
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
    log(
        f"token cache {inputs.cache.root}: {inputs.cache.built} entries built for the checks, the rest "
        f"reused; data read and tokenized in {time.perf_counter() - start:.1f} s"
    )
    return DataView(splits, d.max_length, data_files(d), "truncate", model_positions(cfg))


def _table_rows(table, positions, label_sets) -> Rows:
    """The rows of ``table`` at ``positions`` (None: all) as columns; texts read from the table on demand."""
    idx = np.arange(len(table)) if positions is None else np.asarray(positions, dtype=np.int64)
    cols = {c: table.column(c).to_numpy()[idx] for c in ("key", "line", "tokens")}
    label = table.column("label")
    labels = None if label.null_count == len(label) else label.to_numpy()[idx]
    text = table.column("text")
    return Rows(
        cols["key"], cols["line"], cols["tokens"], lambda i: text[int(idx[i])].as_py(), labels, label_sets
    )


def _names(label, names: list[str]) -> tuple[str, ...] | None:
    if label is None:
        return None
    return tuple(names[i] for i in label) if isinstance(label, tuple) else (names[label],)
