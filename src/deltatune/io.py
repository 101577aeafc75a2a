"""Files in and out, safely: atomic writers and readers that turn a damaged file into one message.

Writers go through a temporary file in the same directory and ``os.replace`` it over the target, so a
crash or a full disk never leaves a half-written config, report or adapter. Readers name the file and
say how to fix it instead of raising a library's traceback (a truncated safetensors file, a config
that is not YAML, a JSON file that is not JSON). Only safetensors are read for tensors: never pickle.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from deltatune.errors import UserError


def _atomic_target(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise UserError(
            f"cannot write {path}: {exc.strerror}; check that {path.parent} is "
            "writable and the disk is not full"
        ) from None
    os.close(fd)
    return tmp


def _replace_or_clean(tmp: str, path: Path) -> None:
    try:
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_safetensors_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write a safetensors file via a temp name + rename: a crash never leaves a half file."""
    from safetensors.torch import save_file

    tmp = _atomic_target(path)
    try:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp, metadata={"format": "pt"}
        )
    except BaseException:
        os.unlink(tmp)
        raise
    _replace_or_clean(tmp, path)


def write_text_atomic(text: str, path: Path) -> None:
    tmp = _atomic_target(path)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
    except BaseException:
        os.unlink(tmp)
        raise
    _replace_or_clean(tmp, path)


def write_json_atomic(obj: Any, path: Path) -> None:
    write_text_atomic(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)


def load_safetensors(path: Path | str, what: str = "weights") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a missing, truncated or corrupt file is a UserError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found ({what})")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(
            f"{path}: cannot read the {what}: the file is damaged or not a safetensors "
            f"file ({str(exc).splitlines()[0][:120]}); re-create it (train again, or "
            "copy it again from where it came from)"
        ) from None


def read_json(path: Path | str, what: str = "file") -> Any:
    """A JSON file's content; a missing or malformed file is a UserError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found ({what})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: the {what} is damaged (not valid JSON: {exc}); re-create it") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what}: {exc.strerror}") from None


def file_fingerprint(path: Path | str) -> dict[str, Any]:
    """``{"sha256": ..., "bytes": ...}`` of a file (or of every file under a directory, in order)."""
    import hashlib

    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    size = 0
    for file in files:
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
    return {"sha256": digest.hexdigest(), "bytes": size}
