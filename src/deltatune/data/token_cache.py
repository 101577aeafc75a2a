"""Tokenize once: tokenized data kept on disk as Arrow (Hugging Face ``datasets``), memory-mapped.

An entry is a folder ``$DELTATUNE_HOME/tokens/<kind>-<key>/`` (``~/.cache/deltatune/tokens`` by default)
holding ``data.arrow`` (written with ``datasets``' ``ArrowWriter``, read back memory-mapped as
``Dataset.from_file`` does) and ``meta.json``. The key is a hash of everything that decides the content: the
data file's sha256, the tokenizer (its full definition, see :func:`tokenizer_fingerprint`), the max length
and every option that changes tokens or labels, so a changed input is a new entry, never a stale hit.

Writes are atomic: an entry is built in a temporary folder beside its final place and renamed into it,
so a crash leaves no half entry. Every load checks the entry (its meta, the size and CRC-32 it recorded,
the Arrow offsets); a damaged entry is deleted and rebuilt. A cache folder that cannot be written makes the
entry in memory instead, with one log line. Entries are never evicted: delete the folder to reclaim space.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from bisect import bisect_right
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from deltatune.data.readers import iter_rows
from deltatune.errors import DataError
from deltatune.log import log

FORMAT_VERSION = 2
WRITER_BATCH_ROWS = 1 << 16
"""Rows per Arrow record batch at most (each ``batches()`` item is one batch): reading a mapped table
touches every batch's metadata page, so datasets' default of 1,000 rows would make a million-row table
count ~70 MB of resident memory before any row is read."""
_WARNED: set[str] = set()


def cache_root() -> Path:
    """``$DELTATUNE_HOME/tokens`` (``~/.cache/deltatune/tokens`` when unset), next to the converted models."""
    from deltatune.models.bundled import deltatune_home

    return deltatune_home() / "tokens"


def cache_key(*parts) -> str:
    """A short stable hash of JSON-able ``parts``."""
    text = json.dumps([FORMAT_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def tokenizer_fingerprint(tokenizer) -> str | None:
    """A hash of what decides a fast tokenizer's output (vocabulary, normalizer, pre-tokenizer, model,
    post-processor, added tokens, the inputs it returns); None for a tokenizer without a Rust backend."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    spec.pop("truncation", None)  # set per call by transformers, not part of the tokenizer
    spec.pop("padding", None)
    extra = [
        type(tokenizer).__name__,
        list(tokenizer.model_input_names),
        bool(getattr(tokenizer, "split_special_tokens", False)),
    ]
    return cache_key(spec, extra)


class TokenCache:
    """Entries under ``root`` (default :func:`cache_root`); ``load`` a checked entry or ``build`` one."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else cache_root()
        self.built = 0  # entries built by this object (tests and benchmarks count misses)

    def entry_dir(self, kind: str, key: str) -> Path:
        return self.root / f"{kind}-{key}"

    def load(self, kind: str, key: str):
        """``(pyarrow.Table memory-mapped, meta)`` of a sound entry, or None (missing, or damaged:
        removed)."""
        folder = self.entry_dir(kind, key)
        if not folder.is_dir():
            return None
        try:
            return _open_entry(folder)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log(f"token cache: {folder} is damaged ({str(exc).splitlines()[0][:120]}); building it again")
            shutil.rmtree(folder, ignore_errors=True)
            return None

    def get_or_build(self, kind: str, key: str, batches: Callable[[], Iterable[dict]], features, meta: dict):
        """The entry ``kind-key``: loaded, or built from ``batches()`` (dicts of columns, ``datasets``
        ``features``) with ``meta``; in memory when the cache folder cannot be written."""
        found = self.load(kind, key)
        if found is not None:
            return found
        self.built += 1
        try:
            return self._build_on_disk(kind, key, batches, features, meta)
        except OSError as exc:
            if str(self.root) not in _WARNED:
                _WARNED.add(str(self.root))
                log(
                    f"token cache: cannot write to {self.root} ({exc.strerror or exc}); tokenizing in memory "
                    "(set DELTATUNE_HOME to a writable folder to tokenize once)"
                )
            return _write_in_memory(batches, features), dict(meta)

    def _build_on_disk(self, kind: str, key: str, batches, features, meta: dict):
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{kind}-{key}-", dir=self.root))
        try:
            rows = _write_arrow(tmp / "data.arrow", batches, features)
            meta = {
                **meta,
                "rows": rows,
                "bytes": (tmp / "data.arrow").stat().st_size,
                "crc32": _crc32(tmp / "data.arrow"),
                "version": FORMAT_VERSION,
            }
            (tmp / "meta.json").write_text(json.dumps(meta))
            final = self.entry_dir(kind, key)
            try:
                os.replace(tmp, final)
            except OSError:  # another process published it first: use theirs when it is sound
                found = self.load(kind, key)
                if found is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
                    return found
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return _open_entry(final)


def _write_arrow(path: Path, batches, features) -> int:
    from datasets.arrow_writer import ArrowWriter

    writer = ArrowWriter(features=features, path=str(path), writer_batch_size=WRITER_BATCH_ROWS)
    try:
        for batch in batches():
            writer.write_batch(batch)
        rows, _ = writer.finalize()
    finally:
        writer.close()
    return rows


def _write_in_memory(batches, features):
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter

    stream = pa.BufferOutputStream()
    writer = ArrowWriter(features=features, stream=stream, writer_batch_size=WRITER_BATCH_ROWS)
    for batch in batches():
        writer.write_batch(batch)
    writer.finalize(close_stream=False)
    return pa.ipc.open_stream(stream.getvalue()).read_all()


def _crc32(path: Path) -> int:
    """CRC-32 of a file (finds damage, cheaply: about 1 GB/s)."""
    import zlib

    crc = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            crc = zlib.crc32(block, crc)
    return crc


_OPENED: dict[str, tuple] = {}
"""Entries this process has checked and mapped, by folder: the pre-flight checks and training read the
same tables, and a second mapping would count its pages twice in the resident memory."""


def _open_entry(folder: Path):
    """The checked entry in ``folder`` (the one this process already mapped while its file is unchanged)."""
    stat = (folder / "data.arrow").stat()
    stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns, (folder / "meta.json").stat().st_mtime_ns)
    known = _OPENED.get(str(folder))
    if known is not None and known[0] == stamp:
        return known[1], dict(known[2])
    table, meta = _check_entry(folder)
    _OPENED[str(folder)] = (stamp, table, meta)
    return table, dict(meta)


def _check_entry(folder: Path):
    """The checked entry in ``folder``: meta readable and of this format, the Arrow file as long as
    written and with its checksum, the rows all there. The checksum proves the bytes are the ones this
    module wrote, so the structure is checked without reading every value (a full validation would
    touch every page of the mapping and count the whole table in the process's resident memory)."""
    import pyarrow as pa

    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"format {meta.get('version')}, not {FORMAT_VERSION}")
    data = folder / "data.arrow"
    if data.stat().st_size != meta["bytes"]:
        raise ValueError(f"data.arrow has {data.stat().st_size} bytes, {meta['bytes']} were written")
    if _crc32(data) != meta["crc32"]:
        raise ValueError("data.arrow does not hold the bytes that were written (checksum)")
    try:
        # what datasets.Dataset.from_file does, without importing datasets (a second on a warm start)
        table = pa.ipc.open_stream(pa.memory_map(str(data))).read_all()
        table.validate()
    except Exception as exc:  # noqa: BLE001 - pyarrow's ArrowInvalid and friends
        raise ValueError(f"unreadable Arrow data: {exc}") from None
    if table.num_rows != meta["rows"]:
        raise ValueError(f"{table.num_rows} rows, {meta['rows']} were written")
    return table, meta


class ListColumn:
    """Rows of an Arrow list column as Python lists, read through zero-copy numpy views of each chunk."""

    def __init__(self, column):
        self.parts, self.starts, start = [], [], 0
        for chunk in column.chunks:
            self.parts.append((chunk.offsets.to_numpy(), chunk.values.to_numpy(zero_copy_only=False)))
            self.starts.append(start)
            start += len(chunk)

    def __getitem__(self, i: int) -> list:
        c = bisect_right(self.starts, i) - 1
        offsets, values = self.parts[c]
        j = i - self.starts[c]
        return values[offsets[j] : offsets[j + 1]].tolist()


class TableRows:
    """Rows of an Arrow table as a sequence of feature dicts (:meth:`_row`), optionally only the table
    rows at ``positions`` (splits and samples), in that order; ``lengths()`` reads the ``length``
    column only, for the length-grouped sampler."""

    def __init__(self, table, positions=None):
        self._lengths = table.column("length").to_numpy()
        self._pos = None if positions is None else np.asarray(positions, dtype=np.int64)

    def _row(self, row: int) -> dict:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._lengths) if self._pos is None else len(self._pos)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._row(int(i if self._pos is None else self._pos[i]))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def lengths(self) -> list[int]:
        """Tokens per feature, in order."""
        lengths = self._lengths if self._pos is None else self._lengths[self._pos]
        return lengths.tolist()


class TokenRows(TableRows):
    """Classification features stored in an Arrow table, as the dicts the in-memory route builds
    (``input_ids``, ``token_type_ids`` when stored, ``label``). Nothing is copied out of the table but
    the ``label`` and ``length`` columns."""

    def __init__(self, table, positions=None):
        super().__init__(table, positions)
        self._ids = ListColumn(table.column("input_ids"))
        names = table.column_names
        self._types = ListColumn(table.column("token_type_ids")) if "token_type_ids" in names else None
        labels = table.column("label")
        self._labels = None if labels.null_count == len(labels) else labels.to_numpy()

    def _row(self, row: int) -> dict:
        out = {"input_ids": self._ids[row], "label": None if self._labels is None else int(self._labels[row])}
        if self._types is not None:
            out["token_type_ids"] = self._types[row]
        return out


def feature_lengths(feats) -> list[int]:
    """Tokens per feature of :class:`TableRows` or a list of feature dicts."""
    return feats.lengths() if isinstance(feats, TableRows) else [len(f["input_ids"]) for f in feats]


CHUNK_ROWS = 8192
"""Rows validated and tokenized at a time on the streamed route."""
AUTO_CACHE_BYTES = 256 * 1024
"""``data.cache`` unset: files at least this large go through the token cache."""


def data_size(path: Path) -> int:
    """Bytes of a data file, or of every file under a folder of shards."""
    return (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def row_chunks(path: str, fmt, size: int = CHUNK_ROWS):
    """The rows of ``path`` streamed in lists of ``size``; a file without rows is a DataError."""
    chunk, any_rows = [], False
    for row in iter_rows(path, fmt):
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk, any_rows = [], True
    if chunk:
        yield chunk
    elif not any_rows:
        raise DataError("no rows", path=path)
