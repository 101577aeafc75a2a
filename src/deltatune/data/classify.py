"""Turn rows into sequence-classification examples: fields, labels, splits and samples.

The label set is fixed by the training file: class ids are ``0 .. num_labels - 1`` in sorted order
of the raw label values (integers numerically, strings alphabetically). CSV/TSV values arrive as
strings, so a label set whose values all look like integers (``"0"``, ``"1"``) is an integer set.
Validation and test labels must come from that set; an unseen one is a :class:`DataError` naming
the file and line. A test file without the label column is a prediction-only file (labels None).
"""

from __future__ import annotations

import difflib
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from deltatune.data.readers import Row, read_rows
from deltatune.errors import ConfigError, DataError

_INTEGER = re.compile(r"[+-]?\d+\Z")
_FLOAT_INTEGER = re.compile(r"[+-]?\d+\.0*\Z")


@dataclass
class Example:
    """One example: the text (and optional second text), the class id or None, the source line."""

    text: str
    text_pair: str | None
    label: int | None
    line: int


def _as_int(raw) -> int | None:
    """The integer a raw label stands for (``1``, ``1.0``, ``" 1"``), or None if it is not one."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str) and _INTEGER.match(raw.strip()):
        return int(raw.strip())
    if isinstance(raw, str) and _FLOAT_INTEGER.match(raw.strip()):  # "1.0", as pandas writes 1
        return int(float(raw))
    return None


def _as_str(raw) -> str:
    """A raw label as a string name (JSON booleans spelled as in JSON)."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw).strip()


def _check_raw_label(raw, path: str, line: int, field: str) -> None:
    """A label must be a non-empty string or a number."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise DataError("the label is empty; every labelled example needs a label.",
                        path=path, line=line, field=field)
    if not isinstance(raw, (str, int, float)):
        raise DataError(f"a label must be a string or an integer, got {type(raw).__name__} "
                        f"{raw!r}.", path=path, line=line, field=field)


class LabelSet:
    """The classes of a classification task, fixed from the training rows.

    ``values[i]`` is the raw label (int or str) with class id ``i``; ``names[i]`` its display name
    (``str(value)`` unless ``label_names`` renames it). ``id2label``/``label2id`` are the mappings a
    Hugging Face config wants.
    """

    def __init__(self, values: Sequence[int | str], names: Sequence[str], source: str = ""):
        self.values = list(values)
        self.names = list(names)
        self.source = source
        self.is_integer = all(isinstance(v, int) for v in self.values)
        self._ids = {v: i for i, v in enumerate(self.values)}
        # Raw values as they usually arrive (1 from JSON, "1" from CSV) -> id, for speed.
        self._fast = {**self._ids, **{str(v): i for i, v in enumerate(self.values)}}

    @classmethod
    def from_rows(cls, rows: Sequence[Row], label_field: str = "label",
                  label_names: Sequence[str] | Mapping | None = None,
                  path: str | None = None) -> LabelSet:
        """Collect the label values of training ``rows``.

        ``label_names`` is a list indexed by the integer label (``["negative", "positive"]``) or a
        dict ``{raw value: name}``; when given, every label it names becomes a class, even one
        missing from these rows, so the model's head does not depend on a sample.
        """
        path = path or (rows[0].path if rows else "")
        first_line: dict = {}  # distinct raw value -> first line; checks then run per value
        for row in rows:
            try:
                raw = row[label_field]
            except KeyError:
                raw = get_field(row, label_field, path, "label_field")
            try:
                first_line.setdefault(raw, row.line)
            except TypeError:  # unhashable: a list or an object
                _check_raw_label(raw, path, row.line, label_field)
        for raw, line in first_line.items():
            _check_raw_label(raw, path, line, label_field)
        integer = all(_as_int(raw) is not None for raw in first_line)
        if not integer and not isinstance(label_names, Mapping):
            _refuse_mixed_labels(first_line, path, label_field)
        convert = _as_int if integer else _as_str
        seen: dict = {}
        for raw, line in first_line.items():
            value = convert(raw)
            seen[value] = min(line, seen.get(value, line))
        if label_names is None:
            values = sorted(seen)
            return cls(values, [str(v) for v in values], path)
        values, names = _named_classes(seen, label_names, integer, path, label_field)
        return cls(values, names, path)

    @property
    def num_labels(self) -> int:
        return len(self.values)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return f"LabelSet({self.id2label})"

    def __eq__(self, other) -> bool:
        if not isinstance(other, LabelSet):
            return NotImplemented
        return (self.values, self.names) == (other.values, other.names)

    def encode(self, raw, path: str, line: int, field: str | None = None) -> int:
        """The class id of a raw label value; a DataError if training never had it."""
        if type(raw) in (int, str):  # not bool: True == 1 would hit the integer 1
            found = self._fast.get(raw)
            if found is not None:
                return found
        _check_raw_label(raw, path, line, field)
        value = _as_int(raw) if self.is_integer else _as_str(raw)
        if value in self._ids:
            return self._ids[value]
        known = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in self.values)
        raise DataError(f"label {raw!r} was never seen in training; training labels are: "
                        f"{known} (from {self.source}). Fix the label, or add examples of it to "
                        f"the training file.", path=path, line=line, field=field)


def _refuse_mixed_labels(first_line: dict, path: str, field: str) -> None:
    """Integer labels next to other values (``0`` and ``"neg"``, or one ``0.5`` among integers)
    would silently become extra classes: refuse, showing one of each."""
    ints = {raw: line for raw, line in first_line.items() if _as_int(raw) is not None}
    others = {raw: line for raw, line in first_line.items() if _as_int(raw) is None}
    numbers = {raw: line for raw, line in others.items()
               if isinstance(raw, float) or (isinstance(raw, str) and _is_number(raw))}
    if not ints and not numbers:
        return  # all names: a string label set
    if not ints:  # e.g. 0.5 and 1.5: numbers that are not class ids
        raw, line = next(iter(numbers.items()))
        raise DataError(f"label {raw!r} is a number but not an integer; class labels are integers "
                        "(0, 1, ...) or names. Fix the label, or give label_names as a dict "
                        "{label: name} covering it.", path=path, line=line, field=field)
    raw, line = next(iter(others.items()))
    int_raw, int_line = next(iter(ints.items()))
    raise DataError(f"labels mix integers ({int_raw!r} on line {int_line}) with {raw!r}, which is not an "
                    f"integer; they would silently become separate classes. Use one kind of label, "
                    "or map every value with label_names as a dict, e.g. {0: neg, neg: neg}.",
                    path=path, line=line, field=field)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _named_classes(seen: dict, label_names, integer: bool, path: str,
                   field: str) -> tuple[list, list[str]]:
    """Classes and names when the config gives ``label_names`` (list or dict)."""
    if isinstance(label_names, Mapping):
        convert = _as_int if integer else _as_str
        named = {}
        for key, name in label_names.items():
            value = convert(key)
            if value is None:
                raise ConfigError(f"label_names key {key!r} is not an integer, but the labels "
                                  f"in {path} are integers; use the integer labels as keys.")
            named[value] = str(name)
    elif isinstance(label_names, (list, tuple)):
        if not integer:
            raise ConfigError(f"label_names is a list, which names integer labels 0, 1, ..., "
                              f"but the labels in {path} are strings; give a dict "
                              f"{{label: name}} instead, or leave label_names out.")
        named = {i: str(name) for i, name in enumerate(label_names)}
    else:
        raise ConfigError(f"label_names must be a list or a dict, got "
                          f"{type(label_names).__name__}.")
    for value, line in seen.items():
        if value not in named:
            hint = (f"label_names has {len(named)} entries, for labels 0-{len(named) - 1}"
                    if isinstance(label_names, (list, tuple))
                    else f"label_names names only {', '.join(map(repr, named))}")
            raise DataError(f"label {value!r} has no name: {hint}. Add a name for it to "
                            f"label_names.", path=path, line=line, field=field)
    names = list(named.values())
    duplicate = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if duplicate is not None:
        raise ConfigError(f"label_names gives the name '{duplicate}' to two labels; names must "
                          f"be unique.")
    values = sorted(named)
    return values, [named[v] for v in values]


def get_field(row: Row, field: str, path: str | None = None, key: str = "text_field"):
    """``row[field]``, or a DataError listing the fields the row has (with a did-you-mean)."""
    try:
        return row[field]
    except KeyError:
        pass
    fields = [str(f) for f in row]
    guess = difflib.get_close_matches(field, fields, n=1, cutoff=0.5)
    hint = (f" Did you mean '{guess[0]}'? If so, set `data.{key}: {guess[0]}` in the config."
            if guess else f" Set `data.{key}:` in the config to the field that holds it.")
    raise DataError(f"missing field '{field}'; this row has fields: {', '.join(fields) or '(none)'}"
                    f".{hint}", path=path or row.path, line=row.line, field=field)


def _text(value, path: str, line: int, field: str) -> str:
    """A text value as a non-empty string (numbers are converted)."""
    if isinstance(value, str):
        if value.strip():
            return value
        raise DataError("the text is empty; every example needs some text.",
                        path=path, line=line, field=field)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    shown = "null" if value is None else f"{type(value).__name__} {value!r}"[:80]
    raise DataError(f"expected text (a string), got {shown}.", path=path, line=line, field=field)


def has_field(rows: Sequence[Row], field: str) -> bool:
    """Whether any row has ``field`` (a test file without labels is prediction-only)."""
    return any(field in row for row in rows)


def rows_to_examples(rows: Sequence[Row], text_field: str = "text",
                     text_pair_field: str | None = None, label_field: str | None = "label",
                     labels: LabelSet | None = None, path: str | None = None) -> list[Example]:
    """Convert rows to examples; ``labels=None`` (or ``label_field=None``) leaves labels None.

    Every row needs ``text_field`` (and ``text_pair_field`` when set) with non-empty text; when
    ``labels`` is given every row needs a label the set knows.
    """
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
            label = labels.encode(raw, where, row.line, label_field)
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


def _pick(examples: Sequence[Example], seed: int, how_many) -> set[int]:
    """Indices chosen per class: ``how_many(counts) -> per-class counts``, seeded sampling."""
    groups: dict = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.label, []).append(i)
    keys = sorted(groups, key=lambda k: (k is not None, k if k is not None else 0))
    counts = how_many([len(groups[k]) for k in keys])
    rng = random.Random(seed)
    chosen: set[int] = set()
    for key, count in zip(keys, counts):
        chosen.update(rng.sample(groups[key], count))
    return chosen


def stratified_split(examples: Sequence[Example], fraction: float,
                     seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Split into (train, validation) with about ``fraction`` of each class in validation.

    Seeded and deterministic; both parts keep the input order. A class with at least two examples
    always keeps one in train; a class with one example stays in train.
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"validation_split must be between 0 and 1 (e.g. 0.1 for 10%), "
                          f"got {fraction}.")
    total = round(len(examples) * fraction)
    chosen = _pick(examples, seed, lambda counts: _allocate(
        counts, total, [0] * len(counts), [max(c - 1, 0) for c in counts]))
    train = [ex for i, ex in enumerate(examples) if i not in chosen]
    val = [ex for i, ex in enumerate(examples) if i in chosen]
    return train, val


def stratified_sample(examples: Sequence[Example], size: int, seed: int = 0) -> list[Example]:
    """A seeded sample of ``size`` examples with class proportions kept (input order kept).

    Every class is represented when ``size`` allows it. ``size >= len(examples)`` keeps all.
    """
    if size >= len(examples):
        return list(examples)
    chosen = _pick(examples, seed, lambda counts: _allocate(
        counts, size, [1 if size >= len(counts) else 0] * len(counts), counts))
    return [ex for i, ex in enumerate(examples) if i in chosen]


@dataclass
class ClassificationData:
    """Examples for training, validation (None if not asked for) and test (None if no file)."""

    train: list[Example]
    validation: list[Example] | None
    test: list[Example] | None
    labels: LabelSet


def load_classification_data(train_path: str | Path, validation_path: str | Path | None = None,
                             test_path: str | Path | None = None,
                             validation_split: float | None = None, text_field: str = "text",
                             text_pair_field: str | None = None, label_field: str = "label",
                             label_names: Sequence[str] | Mapping | None = None, seed: int = 0,
                             max_train_samples: int | None = None,
                             fmt: str | None = None) -> ClassificationData:
    """Read, validate and split the files of a classification task.

    The label set comes from the whole training file. Validation comes from ``validation_path``
    or, with ``validation_split``, from a stratified split of the training file (not both; neither
    gives None). ``max_train_samples`` then takes a seeded stratified sample of the *remaining*
    training examples, so the validation set does not change with the sample size. A test file
    without ``label_field`` is prediction-only (labels None). ``fmt`` forces the format of all files.
    """
    if validation_path is not None and validation_split:
        raise ConfigError("both validation_path and validation_split are set; choose one "
                          "(a validation file, or a fraction of the training file).")
    if max_train_samples is not None and max_train_samples < 1:
        raise ConfigError(f"max_train_samples must be a positive integer, got "
                          f"{max_train_samples}.")
    train_path = str(train_path)
    train_rows = read_rows(train_path, fmt)
    labels = LabelSet.from_rows(train_rows, label_field, label_names, train_path)
    train = rows_to_examples(train_rows, text_field, text_pair_field, label_field, labels,
                             train_path)
    validation = None
    if validation_path is not None:
        validation = _read_examples(validation_path, fmt, text_field, text_pair_field,
                                    label_field, labels)
    elif validation_split:
        train, validation = stratified_split(train, validation_split, seed)
        if not validation:
            raise DataError(f"validation_split={validation_split} of {len(train)} training "
                            f"examples leaves no validation examples; use a larger "
                            f"data.validation_split or give a data.validation file.", path=train_path)
    if max_train_samples is not None:
        train = stratified_sample(train, max_train_samples, seed)
    test = None
    if test_path is not None:
        test_rows = read_rows(str(test_path), fmt)
        test_labels = labels if has_field(test_rows, label_field) else None
        test = rows_to_examples(test_rows, text_field, text_pair_field, label_field,
                                test_labels, str(test_path))
    return ClassificationData(train, validation, test, labels)


def _read_examples(path, fmt, text_field, text_pair_field, label_field,
                   labels: LabelSet) -> list[Example]:
    """Read a labelled evaluation file with the training label set."""
    rows = read_rows(str(path), fmt)
    return rows_to_examples(rows, text_field, text_pair_field, label_field, labels, str(path))


def tokenize(tokenizer, examples: list[Example], max_length: int) -> list[dict]:
    """Token ids per example, truncated, unpadded (padding happens per batch)."""
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if examples and examples[0].text_pair is not None else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
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
    return rows_to_examples(rows, data.text_field, data.text_pair_field, data.label_field, labels, path)
