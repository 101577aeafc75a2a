"""Columnar sources, where the Hugging Face ecosystem keeps data: Parquet files (one file, a glob, or a
folder of shards), Arrow directories written by ``Dataset.save_to_disk``, and hub dataset ids
``hf://org/name`` (``?split=train&config=name`` optional; needs the network). Read with Hugging Face
``datasets`` / ``pyarrow`` (memory-mapped Arrow), served as :class:`~deltatune.data.readers.Row` s whose
``line`` is the 1-based row number, so every check still names the file and the row.
"""

from __future__ import annotations

import glob
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from deltatune.errors import DataError

HUB_PREFIX = "hf://"
TABLE_FORMATS = ("parquet", "arrow", "hf")


def table_format(path: str, fmt: str | None) -> str | None:
    """``parquet`` / ``arrow`` / ``hf`` when ``path`` (or ``fmt``) names a columnar source, else None."""
    if fmt in TABLE_FORMATS:
        return fmt
    if path.startswith(HUB_PREFIX):
        return "hf"
    if path.endswith(".parquet") or (any(c in path for c in "*?[") and ".parquet" in path):
        return "parquet"
    p = Path(path)
    if p.is_dir():
        if (p / "state.json").is_file() or (p / "dataset_info.json").is_file() or any(p.glob("*.arrow")):
            return "arrow"
        if any(p.glob("*.parquet")):
            return "parquet"
    return None


def open_table(path: str, fmt: str):
    """A ``datasets.Dataset`` (memory-mapped Arrow) for a columnar source."""
    import datasets

    datasets.disable_progress_bars()
    if fmt == "parquet":
        files = _parquet_files(path)
        _check_parquet(files)
        return datasets.Dataset.from_parquet(files)
    if fmt == "arrow":
        try:
            loaded = datasets.load_from_disk(path)
        except (FileNotFoundError, ValueError) as exc:
            raise DataError(f"not a dataset saved with Dataset.save_to_disk ({exc})", path=path) from None
        if isinstance(loaded, datasets.DatasetDict):
            raise DataError(
                f"this is a DatasetDict with splits {', '.join(loaded)}; point the config at one "
                f"split's folder, e.g. {path}/{next(iter(loaded))}",
                path=path,
            )
        return loaded
    return _hub(path)


def read_table_records(path: str, fmt: str) -> list[dict]:
    """Every row of a columnar source as a dict, in order (row numbers are positions + 1)."""
    table = open_table(path, fmt)
    if len(table) == 0:
        raise DataError("no rows found", path=path)
    return list(table)


def iter_table_records(path: str, fmt: str, batch_size: int = 1000):
    """The records of :func:`read_table_records` one at a time, read a batch of rows at a time."""
    table = open_table(path, fmt)
    for batch in table.iter(batch_size=batch_size):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            yield dict(zip(columns, values))


def _check_parquet(files: list[str]) -> None:
    import pyarrow
    import pyarrow.parquet as pq

    for file in files:
        try:
            pq.read_metadata(file)
        except (pyarrow.ArrowException, OSError) as exc:
            raise DataError(
                f"not a readable Parquet file ({str(exc).splitlines()[0]}); write it again, "
                "e.g. with pandas.DataFrame.to_parquet or datasets.Dataset.to_parquet",
                path=file,
            ) from None


def _parquet_files(path: str) -> list[str]:
    p = Path(path)
    files = sorted(str(f) for f in p.glob("*.parquet")) if p.is_dir() else sorted(glob.glob(path))
    if not files:
        raise DataError(
            "no .parquet file found (a file, a glob like data/train-*.parquet, or a folder of shards)",
            path=path,
        )
    return files


def _hub(spec: str):
    """``hf://org/name?split=train&config=x`` through ``datasets.load_dataset`` (network)."""
    import datasets

    from deltatune.models.bundled import _hub_offline_reason

    parts = urlsplit(spec)
    name = (parts.netloc + parts.path).strip("/")
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"split", "config"}
    if not name or unknown:
        raise DataError(
            f"a hub dataset is hf://org/name with optional ?split=...&config=...; "
            f"{'unknown ' + ', '.join(sorted(unknown)) if unknown else 'no name given'}",
            path=spec,
        )
    offline = _hub_offline_reason(name)
    if offline:
        raise DataError(
            f"the Hugging Face Hub cannot be reached ({offline}), so hub datasets cannot be read. "
            "Use a local file instead: .jsonl, .json, .csv, .tsv, .parquet, or a folder written by "
            "Dataset.save_to_disk (the team's datasets are in ../shared/data)",
            path=spec,
        )
    try:
        return datasets.load_dataset(name, query.get("config"), split=query.get("split", "train"))
    except Exception as exc:  # noqa: BLE001 - the hub's errors come in many types
        raise DataError(
            f"could not load the hub dataset '{name}': {str(exc).splitlines()[0][:200]}", path=spec
        ) from None
