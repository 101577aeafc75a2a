"""Multi-label rows (``data.multi_label: true``): each row holds a *set* of labels, given as a list
(``["ltd", "ter"]``, ``[]`` for none) or as one delimited string (``"ltd,ter"``, ``""`` for none;
``data.label_separator``, default ``,``).

The label set is the union of the training rows' labels (sorted like single-label classes: integers
numerically, strings alphabetically), or every label ``label_names`` names. An example's label is
the sorted tuple of its class ids; :func:`multi_hot` turns it into the (C,) 0/1 target of a batch.
Grouping by that tuple is what stratified splits and samples do (the same label *combination*
lands on both sides of a split in proportion).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from deltatune.data.readers import Row
from deltatune.errors import DataError
from deltatune.tasks.classify.labels import (
    LabelSet,
    _as_int,
    _as_str,
    _check_raw_label,
    _named_classes,
    _refuse_mixed_labels,
    get_field,
)


def split_labels(raw, separator: str, path: str, line: int, field: str) -> list:
    """The raw labels of one row: a list as is, a string split on ``separator`` (blank = none)."""
    if isinstance(raw, (list, tuple)):
        for value in raw:
            _check_raw_label(value, path, line, field)
        return list(raw)
    if isinstance(raw, str):
        return [part.strip() for part in raw.split(separator) if part.strip()]
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return [raw]
    shown = "null" if raw is None else f"{type(raw).__name__} {raw!r}"[:80]
    raise DataError(
        f'expected the row\'s labels as a list (e.g. ["a", "b"], [] for none) or a '
        f"string separated by {separator!r} (data.label_separator), got {shown}.",
        path=path,
        line=line,
        field=field,
    )


def multilabel_set(
    rows: Sequence[Row],
    label_field: str,
    separator: str,
    label_names: Sequence[str] | Mapping | None = None,
    path: str = "",
) -> LabelSet:
    """The label set of multi-label training ``rows`` (see the module docstring)."""
    first_line: dict = {}
    for row in rows:
        raw = get_field(row, label_field, path or row.path, "label_field")
        for value in split_labels(raw, separator, path or row.path, row.line, label_field):
            first_line.setdefault(value, row.line)
    integer = bool(first_line) and all(_as_int(raw) is not None for raw in first_line)
    if not integer and not isinstance(label_names, Mapping):
        _refuse_mixed_labels(first_line, path, label_field)
    convert = _as_int if integer else _as_str
    seen: dict = {}
    for raw, line in first_line.items():
        seen[convert(raw)] = min(line, seen.get(convert(raw), line))
    if label_names is None:
        values = sorted(seen)
        return LabelSet(values, [str(v) for v in values], path)
    values, names = _named_classes(seen, label_names, integer, path, label_field)
    return LabelSet(values, names, path)


def encode_label_set(
    raw, labels: LabelSet, separator: str, path: str, line: int, field: str
) -> tuple[int, ...]:
    """The sorted class ids of one row's labels (a DataError for a label training never had)."""
    values = split_labels(raw, separator, path, line, field)
    return tuple(sorted({labels.encode(v, path, line, field) for v in values}))


def multi_hot(ids: Sequence[int], num_labels: int) -> list[float]:
    """(C,) 0/1 target of one example's class ids."""
    out = [0.0] * num_labels
    for i in ids:
        out[i] = 1.0
    return out
