"""Read data files into rows: JSON Lines, JSON, CSV and TSV.

Every :class:`Row` remembers the file and the 1-based line it starts on, so later checks (a missing
field, an unseen label) can point at the exact place. A file is read once as bytes and decoded
strictly as UTF-8 (a leading byte-order mark is allowed). Anything malformed raises one
:class:`~deltatune.errors.DataError` naming the file, the line and how to fix it.

Formats (picked from the extension, or forced with ``fmt`` / ``format:`` in the config):

- ``jsonl`` (``.jsonl``, ``.ndjson``): one JSON object per line; blank lines are skipped.
- ``json`` (``.json``): one list of objects; each row's line is where its object starts.
- ``csv`` (``.csv``): a header row, then standard quoting (``"a, b"`` holds a comma).
- ``tsv`` (``.tsv``): a header row, tab-separated, *no* quoting: ``"`` is an ordinary character,
  because sentences in GLUE/SST-2 style files contain unbalanced quotes.

CSV/TSV values arrive as strings; header names are stripped of surrounding whitespace.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from pathlib import Path
from typing import Callable, Iterator

from deltatune.errors import DataError

FORMATS = ("jsonl", "json", "csv", "tsv")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}
_EXAMPLE_OBJECT = '{"text": "a great film", "label": 1}'
_WHITESPACE = re.compile(r"[ \t\n\r]*")


class Row(dict):
    """One record: its fields as a dict, plus ``path`` (the file) and ``line`` (1-based)."""

    __slots__ = ("path", "line")
    path: str
    line: int

    @classmethod
    def make(cls, fields, path: str, line: int) -> Row:
        """A Row of ``fields`` (a mapping or key/value pairs) read from ``path`` at ``line``."""
        row = cls(fields)
        row.path, row.line = path, line
        return row

    def __repr__(self) -> str:
        return f"Row({dict.__repr__(self)}, path={self.path!r}, line={self.line})"


def read_rows(path: str | Path, fmt: str | None = None) -> list[Row]:
    """Read every record of ``path`` as a :class:`Row`.

    ``fmt`` is one of :data:`FORMATS` (or parquet / arrow / hf, see :mod:`deltatune.data.tables`);
    when None it comes from the file extension (a folder of shards or a ``save_to_disk`` folder, and
    ``hf://org/name`` hub ids, are recognised too). Raises
    :class:`DataError` for a missing file, an empty file, bad UTF-8, malformed JSON, a JSON value
    that is not an object, a CSV/TSV row with the wrong number of columns, or an unknown format.
    """
    from deltatune.data.tables import read_table_records, table_format

    path = str(path)
    columnar = table_format(path, fmt)
    if columnar is not None:
        return [Row.make(record, path, i + 1) for i, record in enumerate(read_table_records(path, columnar))]
    _check_is_file(path)
    fmt = _resolve_format(path, fmt)
    text = _decode(_read_bytes(path), path)
    if not text.strip():
        raise DataError(
            f"the file is empty; a {fmt} file needs at least one row ({_FORMAT_HINTS[fmt]}).", path=path
        )
    rows = _READERS[fmt](text, path)
    if not rows:
        raise DataError(
            f"no rows found; a {fmt} file needs at least one row ({_FORMAT_HINTS[fmt]}).", path=path
        )
    return rows


def iter_rows(path: str | Path, fmt: str | None = None) -> Iterator[Row]:
    """The rows :func:`read_rows` returns, one at a time, without holding the file in memory (JSON
    Lines, CSV, TSV and columnar sources stream; a ``.json`` list is read whole).

    Valid files give exactly the rows (and lines) of :func:`read_rows`. A bad file raises a
    :class:`DataError`, but not always the one :func:`read_rows` raises (an empty file yields no rows,
    bad UTF-8 is not located): callers re-read a bad file with :func:`read_rows` for its message.
    """
    from deltatune.data.tables import iter_table_records, table_format

    path = str(path)
    columnar = table_format(path, fmt)
    if columnar is not None:
        yield from (
            Row.make(record, path, i + 1) for i, record in enumerate(iter_table_records(path, columnar))
        )
        return
    _check_is_file(path)
    fmt = _resolve_format(path, fmt)
    if fmt == "json":
        yield from read_rows(path, fmt)
        return
    try:
        with open(path, "rb") as fh:
            if fmt == "jsonl":
                yield from _iter_jsonl(_utf8_lines(fh), path)
            else:
                yield from _iter_delimited(
                    io.TextIOWrapper(fh, encoding="utf-8-sig", newline=""), path, *_DIALECTS[fmt]
                )
    except (UnicodeDecodeError, OSError) as e:
        raise DataError(f"cannot read the file as UTF-8 ({e})", path=path) from None


def _utf8_lines(fh) -> Iterator[str]:
    """The lines of a binary file split on ``\\n`` only (as ``str.split("\\n")``), strictly decoded."""
    first = True
    for raw in fh:
        if first and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        first = False
        yield raw[:-1].decode("utf-8") if raw.endswith(b"\n") else raw.decode("utf-8")


def _resolve_format(path: str, fmt: str | None) -> str:
    """The format named by ``fmt``, or guessed from the extension of ``path``."""
    supported = ", ".join(FORMATS)
    if fmt is not None:
        name = fmt.lower().lstrip(".")
        if name not in FORMATS:
            raise DataError(
                f"unknown format '{fmt}'; supported formats are {supported}. "
                f"Set `data.format:` to one of them.",
                path=path,
            )
        return name
    suffix = Path(path).suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    shown = f"extension '{suffix}'" if suffix else "no file extension"
    raise DataError(
        f"cannot tell the format from {shown}; supported formats are {supported} "
        f"(.jsonl, .json, .csv, .tsv), and parquet (a file, glob or folder), Arrow folders "
        f"from save_to_disk and hf://org/name hub datasets. Rename the file, or set `data.format:` "
        f"(e.g. `data.format: jsonl`) in the config.",
        path=path,
    )


def _check_is_file(path: str) -> None:
    """A DataError for a missing path or a directory (before the format is guessed from a name)."""
    p = Path(path)
    if not p.exists():
        raise DataError(
            f"file not found (looked for {p.resolve()}). Check the path in the "
            f"config; relative paths are resolved from the current directory.",
            path=path,
        )
    if p.is_dir():
        raise DataError(
            "this is a directory, not a data file. Point the config at a "
            ".jsonl, .json, .csv or .tsv file inside it.",
            path=path,
        )


class _DuplicateKey(ValueError):
    """A JSON object names one key twice (``json`` would silently keep the last value)."""


def _unique_object(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def _duplicate_error(exc: _DuplicateKey, path: str, line: int) -> DataError:
    return DataError(
        f"the key '{exc}' appears twice in one object; JSON readers would silently keep "
        f"only the last value. Remove one of them.",
        path=path,
        line=line,
        field=str(exc),
    )


def _read_bytes(path: str) -> bytes:
    """The whole file as bytes, or a DataError saying why it cannot be read."""
    p = Path(path)
    _check_is_file(path)
    try:
        return p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read the file: {e.strerror}.", path=path) from None


def _decode(data: bytes, path: str) -> str:
    """Strict UTF-8 decode; a bad byte is reported with its line and column."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]  # Excel writes a BOM; it is not part of the data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"byte 0x{data[e.start]:02x} at column {column} is not valid UTF-8. "
            f"Re-encode the file as UTF-8 (for example `iconv -f latin1 -t utf-8 "
            f"in.csv > out.csv`, or 'Save as UTF-8' in your editor).",
            path=path,
            line=line,
        ) from None


def _read_jsonl(text: str, path: str) -> list[Row]:
    """One JSON object per line; blank lines are skipped."""
    return list(_iter_jsonl(text.split("\n"), path))


def _iter_jsonl(lines, path: str):
    """The rows of JSON Lines given as decoded lines (without their ``\\n``), one at a time."""
    count = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line, object_pairs_hook=_unique_object)
        except _DuplicateKey as e:
            raise _duplicate_error(e, path, number) from None
        except json.JSONDecodeError as e:
            hint = " Each line must be one complete JSON object, e.g. " + _EXAMPLE_OBJECT + "."
            if not count and line.lstrip().startswith("["):
                hint = _LIST_HINT
            raise DataError(
                f"not valid JSON: {e.msg} (column {e.colno}).{hint}", path=path, line=number
            ) from None
        if not isinstance(value, dict):
            hint = _LIST_HINT if isinstance(value, list) and not count else ""
            raise DataError(
                f"expected a JSON object like {_EXAMPLE_OBJECT}, got {_json_type(value)}.{hint}",
                path=path,
                line=number,
            )
        count += 1
        yield Row.make(value, path, number)


_LIST_HINT = (
    " This looks like a JSON list (a .json file), not JSON Lines: rename the file to .json "
    "or set `data.format: json`."
)


def _read_json(text: str, path: str) -> list[Row]:
    """A single JSON list of objects; each object is decoded in place to learn its line."""
    decoder = json.JSONDecoder(object_pairs_hook=_unique_object)
    pos = _WHITESPACE.match(text).end()
    if text[pos] != "[":
        _reject_non_list(text, path)
    rows: list[Row] = []
    line, counted = 1, 0  # ``line`` is the line number of offset ``counted``
    pos = _WHITESPACE.match(text, pos + 1).end()
    while pos < len(text) and text[pos] != "]":
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, end = decoder.raw_decode(text, pos)
        except _DuplicateKey as e:
            raise _duplicate_error(e, path, line) from None
        except json.JSONDecodeError as e:
            raise DataError(
                f"not valid JSON: {e.msg} (column {e.colno}) in item {len(rows) + 1} of the list.",
                path=path,
                line=e.lineno,
            ) from None
        if not isinstance(value, dict):
            raise DataError(
                f"item {len(rows) + 1} of the list should be a JSON object like "
                f"{_EXAMPLE_OBJECT}, got {_json_type(value)}.",
                path=path,
                line=line,
            )
        rows.append(Row.make(value, path, line))
        pos = _WHITESPACE.match(text, end).end()
        if pos < len(text) and text[pos] == ",":
            pos = _WHITESPACE.match(text, pos + 1).end()
        elif pos < len(text) and text[pos] != "]":
            _json_error(text, pos, f"expected ',' or ']' after item {len(rows)}", path)
    if pos >= len(text):
        _json_error(text, pos, "the list is never closed: add the final ']'", path)
    pos = _WHITESPACE.match(text, pos + 1).end()
    if pos < len(text):
        _json_error(
            text,
            pos,
            "extra data after the closing ']' (one list of objects per "
            "file; for one object per line use .jsonl or `data.format: jsonl`)",
            path,
        )
    return rows


def _reject_non_list(text: str, path: str) -> None:
    """Raise the right DataError for a .json file whose top level is not a list."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        hint = ""
        if e.msg == "Extra data":
            hint = " This looks like JSON Lines: name the file .jsonl or set `data.format: jsonl`."
        raise DataError(
            f"not valid JSON: {e.msg} (column {e.colno}).{hint}", path=path, line=e.lineno
        ) from None
    raise DataError(
        f"expected a JSON list of objects like [{_EXAMPLE_OBJECT}, ...], got "
        f"{_json_type(value)} at the top level. Wrap the records in [ ], or write "
        f"one object per line as .jsonl.",
        path=path,
        line=1,
    )


def _json_error(text: str, pos: int, what: str, path: str) -> None:
    """Raise a DataError for a structural problem at offset ``pos`` of a JSON text."""
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    raise DataError(f"not valid JSON: {what} (column {column}).", path=path, line=line)


def _json_type(value) -> str:
    """How a JSON value reads in a message: 'a list', 'a string', ..."""
    names = {
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


_DIALECTS = {  # delimiter, quoting, how to fix a malformed row
    "csv": (
        ",",
        csv.QUOTE_MINIMAL,
        'put fields that contain commas in double quotes, e.g. "good, not great",1',
    ),
    "tsv": (
        "\t",
        csv.QUOTE_NONE,
        "a tab inside a value splits it in two: replace tabs inside values with spaces",
    ),
}


def _read_csv(text: str, path: str) -> list[Row]:
    """Comma-separated with a header row and standard ``"`` quoting."""
    return _read_delimited(text, path, *_DIALECTS["csv"])


def _read_tsv(text: str, path: str) -> list[Row]:
    """Tab-separated with a header row and no quoting (``"`` is a plain character)."""
    return _read_delimited(text, path, *_DIALECTS["tsv"])


def _read_delimited(text: str, path: str, delimiter: str, quoting: int, fix: str) -> list[Row]:
    """Shared CSV/TSV reader: header row, then one Row per record (blank lines skipped)."""
    return list(_iter_delimited(io.StringIO(text, newline=""), path, delimiter, quoting, fix))


def _iter_delimited(stream, path: str, delimiter: str, quoting: int, fix: str):
    """The rows of a CSV/TSV text stream (opened with ``newline=""``), one at a time."""
    # Long documents (legal, code) easily pass csv's default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.reader(stream, delimiter=delimiter, quoting=quoting, strict=True)
    count = 0
    start = 1  # a record starts on the line after the previous record ended
    try:
        header, header_line = None, 0
        for values in reader:  # the first non-blank record is the header
            line, start = start, reader.line_num + 1
            if values and (len(values) > 1 or values[0].strip()):
                header, header_line = _check_header(values, path, line), line
                break
        if header is None:
            return
        width = len(header)
        for values in reader:
            line, start = start, reader.line_num + 1
            if len(values) == width:  # the fast path: no Python-level __init__
                row = Row(zip(header, values))
                row.path, row.line = path, line
                count += 1
                yield row
            elif values and (len(values) > 1 or values[0].strip()):
                _wrong_width(values, header, header_line, path, line, fix)
    except csv.Error as e:
        raise DataError(
            f"malformed row: {e}. Check the quoting on this line; {fix}.", path=path, line=start
        ) from None
    if not count:
        raise DataError(f"has a header row ({', '.join(header)}) but no data rows below it.", path=path)


def _check_header(values: list[str], path: str, line: int) -> list[str]:
    """Header names, stripped; empty or repeated names are errors."""
    names = [v.strip() for v in values]
    for i, name in enumerate(names):
        if not name:
            raise DataError(
                f"column {i + 1} of the header row has no name. Give every column "
                f"a name (the first row of the file is the header).",
                path=path,
                line=line,
            )
        if name in names[:i]:
            raise DataError(
                f"the header row names column '{name}' twice; column names must be unique.",
                path=path,
                line=line,
                field=name,
            )
    return names


def _wrong_width(
    values: list[str], header: list[str], header_line: int, path: str, line: int, fix: str
) -> None:
    """Raise a DataError for a row with too few or too many columns, naming the column."""
    plural = "" if len(values) == 1 else "s"
    counts = (
        f"this row has {len(values)} column{plural} but the header (line {header_line}) "
        f"has {len(header)} ({', '.join(header)})"
    )
    if len(values) < len(header):
        field = header[len(values)]
        raise DataError(
            f"{counts}: no value for column '{field}'. Add the missing values; {fix}.",
            path=path,
            line=line,
            field=field,
        )
    extra = values[len(header)]
    shown = extra if len(extra) <= 40 else extra[:37] + "..."
    raise DataError(
        f"{counts}: unexpected extra value {shown!r} after the last column '{header[-1]}'. Remove it; {fix}.",
        path=path,
        line=line,
        field=header[-1],
    )


_READERS: dict[str, Callable[[str, str], list[Row]]] = {
    "jsonl": _read_jsonl,
    "json": _read_json,
    "csv": _read_csv,
    "tsv": _read_tsv,
}
_FORMAT_HINTS = {
    "jsonl": f"one JSON object per line, e.g. {_EXAMPLE_OBJECT}",
    "json": f"a list of objects, e.g. [{_EXAMPLE_OBJECT}]",
    "csv": "a header row such as text,label followed by one row per example",
    "tsv": "a header row such as text<TAB>label followed by one row per example",
}


def read_splits(read, data, seed: int, what: str, test: bool = True) -> dict[str, list]:
    """train / validation (a file, or a seeded split of train) / test items of one run's ``data``
    options, where ``read(path)`` turns one file into a list of items (conversations, prompts)."""
    from deltatune.errors import ConfigError

    if not data.train:
        raise ConfigError(f"data.train: required; set it to a file of {what}")
    splits = {"train": read(data.train)}
    validation = read(data.validation) if data.validation else None
    splits["train"], validation = split_then_sample(
        splits["train"], validation, data.validation_split, data.max_train_samples, seed
    )
    if validation is not None:
        splits["validation"] = validation
    if test and data.test:
        splits["test"] = read(data.test)
    return splits


def split_then_sample(
    train: list,
    validation: list | None,
    validation_split: float | None,
    max_train_samples: int | None,
    seed: int,
) -> tuple[list, list | None]:
    """(train, validation) of unlabelled examples: the validation split is cut first (seeded by
    ``seed + 1``), then the training rows are sampled (seeded by ``seed``), so the held-out set does
    not change with ``max_train_samples``. Both keep file order. ``validation`` (from a file) wins."""
    import random

    if validation is None and validation_split:
        order = list(range(len(train)))
        random.Random(seed + 1).shuffle(order)
        cut = max(1, round(len(order) * validation_split))
        held = set(order[:cut])
        validation = [x for i, x in enumerate(train) if i in held]
        train = [x for i, x in enumerate(train) if i not in held]
    if max_train_samples and max_train_samples < len(train):
        keep = set(random.Random(seed).sample(range(len(train)), max_train_samples))
        train = [x for i, x in enumerate(train) if i in keep]
    return train, validation
