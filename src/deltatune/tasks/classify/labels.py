"""Label sets of classification tasks: raw label values (from JSON, CSV, TSV) to class ids.

The label set is fixed by the training file: class ids are ``0 .. num_labels - 1`` in sorted order
of the raw label values (integers numerically, strings alphabetically). CSV/TSV values arrive as
strings, so a label set whose values all look like integers (``"0"``, ``"1"``) is an integer set.
Also the label statistics of a training set: counts per class, how imbalanced they are, and whether
a classifier can learn from them. (Label sets moved here from :mod:`deltatune.tasks.classify.examples`, which
re-exports the public names, so that :mod:`deltatune.tasks.classify.multilabel` can build on them.)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence

from deltatune.data.readers import Row
from deltatune.errors import ConfigError, DataError

_INTEGER = re.compile(r"[+-]?\d+\Z")
_FLOAT_INTEGER = re.compile(r"[+-]?\d+\.0*\Z")


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
        raise DataError(
            "the label is empty; every labelled example needs a label.", path=path, line=line, field=field
        )
    if not isinstance(raw, (str, int, float)):
        raise DataError(
            f"a label must be a string or an integer, got {type(raw).__name__} {raw!r}.",
            path=path,
            line=line,
            field=field,
        )


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
    def from_rows(
        cls,
        rows: Sequence[Row],
        label_field: str = "label",
        label_names: Sequence[str] | Mapping | None = None,
        path: str | None = None,
    ) -> LabelSet:
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
        raise DataError(
            f"label {raw!r} was never seen in training; training labels are: "
            f"{known} (from {self.source}). Fix the label, or add examples of it to "
            f"the training file.",
            path=path,
            line=line,
            field=field,
        )


def _refuse_mixed_labels(first_line: dict, path: str, field: str) -> None:
    """Integer labels next to other values (``0`` and ``"neg"``, or one ``0.5`` among integers)
    would silently become extra classes: refuse, showing one of each."""
    ints = {raw: line for raw, line in first_line.items() if _as_int(raw) is not None}
    others = {raw: line for raw, line in first_line.items() if _as_int(raw) is None}
    numbers = {
        raw: line
        for raw, line in others.items()
        if isinstance(raw, float) or (isinstance(raw, str) and _is_number(raw))
    }
    if not ints and not numbers:
        return  # all names: a string label set
    if not ints:  # e.g. 0.5 and 1.5: numbers that are not class ids
        raw, line = next(iter(numbers.items()))
        raise DataError(
            f"label {raw!r} is a number but not an integer; class labels are integers "
            "(0, 1, ...) or names. Fix the label, or give label_names as a dict "
            "{label: name} covering it.",
            path=path,
            line=line,
            field=field,
        )
    raw, line = next(iter(others.items()))
    int_raw, int_line = next(iter(ints.items()))
    raise DataError(
        f"labels mix integers ({int_raw!r} on line {int_line}) with {raw!r}, which is not an "
        f"integer; they would silently become separate classes. Use one kind of label, "
        "or map every value with label_names as a dict, e.g. {0: neg, neg: neg}.",
        path=path,
        line=line,
        field=field,
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _named_classes(seen: dict, label_names, integer: bool, path: str, field: str) -> tuple[list, list[str]]:
    """Classes and names when the config gives ``label_names`` (list or dict)."""
    if isinstance(label_names, Mapping):
        convert = _as_int if integer else _as_str
        named = {}
        for key, name in label_names.items():
            value = convert(key)
            if value is None:
                raise ConfigError(
                    f"label_names key {key!r} is not an integer, but the labels "
                    f"in {path} are integers; use the integer labels as keys."
                )
            named[value] = str(name)
    elif isinstance(label_names, (list, tuple)):
        if not integer:
            raise ConfigError(
                f"label_names is a list, which names integer labels 0, 1, ..., "
                f"but the labels in {path} are strings; give a dict "
                f"{{label: name}} instead, or leave label_names out."
            )
        named = {i: str(name) for i, name in enumerate(label_names)}
    else:
        raise ConfigError(f"label_names must be a list or a dict, got {type(label_names).__name__}.")
    for value, line in seen.items():
        if value not in named:
            hint = (
                f"label_names has {len(named)} entries, for labels 0-{len(named) - 1}"
                if isinstance(label_names, (list, tuple))
                else f"label_names names only {', '.join(map(repr, named))}"
            )
            raise DataError(
                f"label {value!r} has no name: {hint}. Add a name for it to label_names.",
                path=path,
                line=line,
                field=field,
            )
    names = list(named.values())
    duplicate = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if duplicate is not None:
        raise ConfigError(f"label_names gives the name '{duplicate}' to two labels; names must be unique.")
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
    hint = (
        f" Did you mean '{guess[0]}'? If so, set `data.{key}: {guess[0]}` in the config."
        if guess
        else f" Set `data.{key}:` in the config to the field that holds it."
    )
    raise DataError(
        f"missing field '{field}'; this row has fields: {', '.join(fields) or '(none)'}.{hint}",
        path=path or row.path,
        line=row.line,
        field=field,
    )


IMBALANCED_RATIO = 1.5
"""Training labels are *imbalanced* when the largest class (or label) count is at least this many
times the smallest: classify runs then select the best checkpoint on macro-F1 by default."""


def label_counts(examples, num_labels: int) -> list[int]:
    """Training examples per class (single-label) or positives per label (multi-label)."""
    counts = [0] * num_labels
    for ex in examples:
        for i in ex.label if isinstance(ex.label, tuple) else (ex.label,):
            counts[i] += 1
    return counts


def imbalance_ratio(counts: Sequence[int]) -> float:
    """Largest over smallest class count among the classes that occur (1.0 for one class or none)."""
    present = [c for c in counts if c > 0]
    return max(present) / min(present) if len(present) > 1 else 1.0


def check_learnable(examples, labels: LabelSet, multi_label: bool, path: str, field: str) -> None:
    """Training data a classifier can learn from: two classes at least, or for multi-label some
    rows with a label and some without each label it has."""
    if not multi_label:
        if len({e.label for e in examples}) < 2:
            raise DataError(
                f"every training example has the same label "
                f"({labels.names[examples[0].label]!r}), so the model would learn to "
                "predict it always; add examples of the other classes",
                path=path,
                field=field,
            )
        return
    counts = label_counts(examples, len(labels))
    if not any(counts):
        raise DataError(
            "no training row has any label, so there is nothing to learn; check "
            "data.label_field and data.label_separator",
            path=path,
            field=field,
        )
    everywhere = [labels.names[i] for i, c in enumerate(counts) if c == len(examples)]
    if everywhere:
        raise DataError(
            f"every training row has label {everywhere[0]!r}, so the model would learn to "
            "predict it always; add rows without it",
            path=path,
            field=field,
        )
