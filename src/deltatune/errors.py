"""User-facing errors: one clear message, no traceback.

Anything a user can cause (bad config, bad data, missing file, unknown model) raises
:class:`UserError`; the CLI prints its message and exits with status 2.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by user input; the message says where (file, line, key) and how to fix it."""


class ConfigError(UserError):
    """Invalid configuration: names the key and the fix."""


class DataError(UserError):
    """Invalid data: names the file, line and field."""

    def __init__(
        self, message: str, *, path: str | None = None, line: int | None = None, field: str | None = None
    ):
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += f", {_unit(where)} {line}"
            if field is not None:
                where += f", field '{field}'"
            where += ": "
        super().__init__(where + message)
        self.path, self.line, self.field = path, line, field


def _unit(path: str) -> str:
    """ "row" for columnar sources (Parquet, Arrow, hub datasets), which have no lines; else "line"."""
    import os

    columnar = path.startswith("hf://") or path.endswith((".parquet", ".arrow")) or "*" in path
    return "row" if columnar or os.path.isdir(path) else "line"


def suggest_key(name: str, names: list[str] | tuple[str, ...]) -> str:
    """'; did you mean `x`?' for a close match, else the list of valid names."""
    import difflib

    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else f"; valid keys: {', '.join(names)}"
