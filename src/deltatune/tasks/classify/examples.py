"""Turn rows into sequence-classification examples: fields, labels, splits and samples.

The label set is fixed by the training file: class ids are ``0 .. num_labels - 1`` in sorted order
of the raw label values (integers numerically, strings alphabetically). CSV/TSV values arrive as
strings, so a label set whose values all look like integers (``"0"``, ``"1"``) is an integer set.
Validation and test labels must come from that set; an unseen one is a :class:`DataError` naming
the file and line. A test file without the label column is a prediction-only file (labels None).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from deltatune.data.readers import Row, read_rows
from deltatune.errors import ConfigError, DataError
from deltatune.tasks.classify.labels import LabelSet, get_field

__all__ = [
    "ClassificationData",
    "Example",
    "LabelSet",
    "check_split_options",
    "encode_texts",
    "examples_from_file",
    "get_field",
    "has_field",
    "load_classification_data",
    "rows_to_examples",
    "sample_positions",
    "split_off_positions",
    "split_positions",
    "stratified_sample",
    "stratified_split",
    "tokenize",
]


@dataclass
class Example:
    """One example: the text (and optional second text), the class id (multi-label: the sorted
    tuple of its class ids) or None, the source line."""

    text: str
    text_pair: str | None
    label: int | tuple[int, ...] | None
    line: int


def _text(value, path: str, line: int, field: str) -> str:
    """A text value as a non-empty string (numbers are converted)."""
    if isinstance(value, str):
        if value.strip():
            return value
        raise DataError(
            "the text is empty; every example needs some text.", path=path, line=line, field=field
        )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    shown = "null" if value is None else f"{type(value).__name__} {value!r}"[:80]
    raise DataError(f"expected text (a string), got {shown}.", path=path, line=line, field=field)


def has_field(rows: Sequence[Row], field: str) -> bool:
    """Whether any row has ``field`` (a test file without labels is prediction-only)."""
    return any(field in row for row in rows)


def rows_to_examples(
    rows: Sequence[Row],
    text_field: str = "text",
    text_pair_field: str | None = None,
    label_field: str | None = "label",
    labels: LabelSet | None = None,
    path: str | None = None,
    label_separator: str | None = None,
) -> list[Example]:
    """Convert rows to examples; ``labels=None`` (or ``label_field=None``) leaves labels None.

    Every row needs ``text_field`` (and ``text_pair_field`` when set) with non-empty text; when
    ``labels`` is given every row needs a label the set knows. ``label_separator`` set: multi-label
    rows (each label a tuple of class ids, see :mod:`deltatune.tasks.classify.multilabel`).
    """
    if label_separator is not None:
        from deltatune.tasks.classify.multilabel import encode_label_set
    examples = []
    for row in rows:
        where = path or row.path
        try:
            text = row[text_field]
        except KeyError:
            text = get_field(row, text_field, where, "text_field")
        if type(text) is not str or not text or text.isspace():
            text = _text(text, where, row.line, text_field)
        pair = None
        if text_pair_field is not None:
            raw_pair = get_field(row, text_pair_field, where, "text_pair_field")
            pair = _text(raw_pair, where, row.line, text_pair_field)
        label = None
        if labels is not None and label_field is not None:
            raw = get_field(row, label_field, where, "label_field")
            label = (
                labels.encode(raw, where, row.line, label_field)
                if label_separator is None
                else encode_label_set(raw, labels, label_separator, where, row.line, label_field)
            )
        examples.append(Example(text, pair, label, row.line))
    return examples


def _allocate(counts: list[int], total: int, low: list[int], high: list[int]) -> list[int]:
    """Split ``total`` across classes in proportion to ``counts``, within [low, high] each.

    Floors of the proportional quotas first, then one at a time to (or from) the classes whose
    share is furthest from their quota (largest-remainder method; ties go to the earlier class).
    """
    n = sum(counts)
    quotas = [c * total / n for c in counts]
    alloc = [min(max(int(q), lo), hi) for q, lo, hi in zip(quotas, low, high)]
    order = range(len(counts))
    while sum(alloc) < total:
        room = [i for i in order if alloc[i] < high[i]]
        if not room:
            break
        alloc[max(room, key=lambda i: (quotas[i] - alloc[i], -i))] += 1
    while sum(alloc) > total:
        spare = [i for i in order if alloc[i] > low[i]]
        if not spare:
            break
        alloc[max(spare, key=lambda i: (alloc[i] - quotas[i], -i))] -= 1
    return alloc


def _pick(labels: Sequence, seed: int, how_many) -> set[int]:
    """Positions chosen per class of ``labels``: ``how_many(counts) -> per-class counts``, seeded sampling."""
    groups: dict = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    keys = sorted(groups, key=lambda k: (k is not None, k if k is not None else 0))
    counts = how_many([len(groups[k]) for k in keys])
    rng = random.Random(seed)
    chosen: set[int] = set()
    for key, count in zip(keys, counts):
        chosen.update(rng.sample(groups[key], count))
    return chosen


def split_positions(labels: Sequence, fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """:func:`stratified_split` of the examples with these ``labels``, as (train, validation) positions."""
    if not 0 < fraction < 1:
        raise ConfigError(f"validation_split must be between 0 and 1 (e.g. 0.1 for 10%), got {fraction}.")
    total = round(len(labels) * fraction)
    chosen = _pick(
        labels,
        seed,
        lambda counts: _allocate(counts, total, [0] * len(counts), [max(c - 1, 0) for c in counts]),
    )
    return [i for i in range(len(labels)) if i not in chosen], sorted(chosen)


def sample_positions(labels: Sequence, size: int, seed: int = 0) -> list[int]:
    """:func:`stratified_sample` of the examples with these ``labels``, as positions."""
    if size >= len(labels):
        return list(range(len(labels)))
    return sorted(
        _pick(
            labels,
            seed,
            lambda counts: _allocate(counts, size, [1 if size >= len(counts) else 0] * len(counts), counts),
        )
    )


def stratified_split(
    examples: Sequence[Example], fraction: float, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Split into (train, validation) with about ``fraction`` of each class in validation.

    Seeded and deterministic; both parts keep the input order. A class with at least two examples
    always keeps one in train; a class with one example stays in train.
    """
    train, val = split_positions([ex.label for ex in examples], fraction, seed)
    return [examples[i] for i in train], [examples[i] for i in val]


def stratified_sample(examples: Sequence[Example], size: int, seed: int = 0) -> list[Example]:
    """A seeded sample of ``size`` examples with class proportions kept (input order kept).

    Every class is represented when ``size`` allows it. ``size >= len(examples)`` keeps all.
    """
    if size >= len(examples):
        return list(examples)
    return [examples[i] for i in sample_positions([ex.label for ex in examples], size, seed)]


@dataclass
class ClassificationData:
    """Examples for training, validation (None if not asked for) and test (None if no file)."""

    train: list[Example]
    validation: list[Example] | None
    test: list[Example] | None
    labels: LabelSet


TEST_SPLIT_SEED = 0
"""``test_split`` always draws with this seed, so every run of a config scores on the same test rows."""


def check_split_options(validation_path, validation_split, test_path, test_split, max_train_samples) -> None:
    """ConfigErrors for split options that contradict each other."""
    if validation_path is not None and validation_split:
        raise ConfigError(
            "both validation_path and validation_split are set; choose one "
            "(a validation file, or a fraction of the training file)."
        )
    if test_path is not None and test_split:
        raise ConfigError(
            "data.test and data.test_split are both set; choose one (a test file, or a "
            "fraction of the training file)."
        )
    if max_train_samples is not None and max_train_samples < 1:
        raise ConfigError(f"max_train_samples must be a positive integer, got {max_train_samples}.")


def load_classification_data(  # noqa: PLR0913 - one argument per key of the data: section it reads
    train_path: str | Path,
    validation_path: str | Path | None = None,
    test_path: str | Path | None = None,
    validation_split: float | None = None,
    text_field: str = "text",
    text_pair_field: str | None = None,
    label_field: str = "label",
    label_names: Sequence[str] | Mapping | None = None,
    seed: int = 0,
    max_train_samples: int | None = None,
    fmt: str | None = None,
    test_split: float | None = None,
    label_separator: str | None = None,
) -> ClassificationData:
    """Read, validate and split the files of a classification task.

    The label set comes from the whole training file. ``test_split`` first holds out a stratified
    share of the training file as the test set (seed :data:`TEST_SPLIT_SEED`; not with a test
    file). Validation comes from ``validation_path`` or, with ``validation_split``, from a
    stratified split of what is left (not both; neither gives None). ``max_train_samples`` then takes
    a seeded stratified sample of the *remaining* training examples, so the validation and test
    sets do not change with the sample size. A test file without ``label_field`` is
    prediction-only (labels None). ``fmt`` forces the format of all files. ``label_separator`` set:
    multi-label rows (:mod:`deltatune.tasks.classify.multilabel`).
    """
    check_split_options(validation_path, validation_split, test_path, test_split, max_train_samples)
    read = dict(
        fmt=fmt,
        text_field=text_field,
        text_pair_field=text_pair_field,
        label_field=label_field,
        label_separator=label_separator,
    )
    train_path = str(train_path)
    train_rows = read_rows(train_path, fmt)
    labels = _label_set(train_rows, label_field, label_names, train_path, label_separator)
    train = rows_to_examples(
        train_rows, text_field, text_pair_field, label_field, labels, train_path, label_separator
    )
    test = None
    if test_split:
        train, test = _split_off(train, test_split, TEST_SPLIT_SEED, "test", train_path)
    elif test_path is not None:
        test = _read_examples(test_path, labels, optional_labels=True, **read)
    validation = None
    if validation_path is not None:
        validation = _read_examples(validation_path, labels, **read)
    elif validation_split:
        train, validation = _split_off(train, validation_split, seed, "validation", train_path)
    if max_train_samples is not None:
        train = stratified_sample(train, max_train_samples, seed)
    return ClassificationData(train, validation, test, labels)


def _label_set(rows, label_field, label_names, path, label_separator) -> LabelSet:
    if label_separator is None:
        return LabelSet.from_rows(rows, label_field, label_names, path)
    from deltatune.tasks.classify.multilabel import multilabel_set

    return multilabel_set(rows, label_field, label_separator, label_names, path)


def _split_off(
    train: list[Example], fraction: float, seed: int, what: str, path: str
) -> tuple[list[Example], list[Example]]:
    """(rest, held out): a stratified ``fraction`` of ``train`` held out as the ``what`` set."""
    rest, held = split_off_positions([e.label for e in train], fraction, seed, what, path)
    return [train[i] for i in rest], [train[i] for i in held]


def split_off_positions(
    labels: Sequence, fraction: float, seed: int, what: str, path: str
) -> tuple[list[int], list[int]]:
    """(rest, held out) positions of :func:`split_positions`; a DataError when nothing is held out."""
    rest, held = split_positions(labels, fraction, seed)
    if not held:
        raise DataError(
            f"{what}_split={fraction} of {len(labels)} training examples leaves no {what} "
            f"examples; use a larger data.{what}_split or give a data.{what} file.",
            path=path,
        )
    return rest, held


def _read_examples(
    path,
    labels: LabelSet,
    fmt,
    text_field,
    text_pair_field,
    label_field,
    label_separator=None,
    optional_labels: bool = False,
) -> list[Example]:
    """Read an evaluation file with the training label set (``optional_labels``: a file without the
    label column is prediction-only)."""
    rows = read_rows(str(path), fmt)
    if optional_labels and not has_field(rows, label_field):
        labels = None
    return rows_to_examples(
        rows, text_field, text_pair_field, label_field, labels, str(path), label_separator
    )


def encode_texts(tokenizer, examples: list[Example], max_length: int):
    """The tokenizer's encoding (``input_ids``, ``token_type_ids`` where it makes them) of examples,
    truncated, unpadded."""
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if examples and examples[0].text_pair is not None else None
    return tokenizer(texts, pairs, truncation=True, max_length=max_length, return_attention_mask=False)


def tokenize(tokenizer, examples: list[Example], max_length: int) -> list[dict]:
    """Token ids per example, truncated, unpadded (padding happens per batch)."""
    enc = encode_texts(tokenizer, examples, max_length)
    feats = []
    for i, e in enumerate(examples):
        f = {"input_ids": enc["input_ids"][i], "label": e.label}
        if "token_type_ids" in enc:
            f["token_type_ids"] = enc["token_type_ids"][i]
        feats.append(f)
    return feats


def examples_from_file(path: str, data, labels: LabelSet | None) -> list[Example]:
    """Examples of an evaluation or prediction file read with a run's ``data`` options
    (``labels=None``: the label column is not read)."""
    rows = read_rows(path, data.format)
    separator = data.label_separator if getattr(data, "multi_label", False) else None
    return rows_to_examples(
        rows, data.text_field, data.text_pair_field, data.label_field, labels, path, separator
    )
