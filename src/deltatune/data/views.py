"""What the data checks see of a task's data: per split, each example's text (as compared for
duplicates and leakage), its labels, its length in tokens before ``max_length``, and how many of its
tokens the loss trains on. A task provides this through ``TaskSpec.inspect``; the builders for the
tasks shipped with deltatune are here (they read the data exactly as training does, and load only the
tokenizer).

The checks read columns (:class:`Rows`): a hash of each normalised text, its line, length, label and
trained tokens, a few dozen bytes a row, and texts one at a time. Small data is read into
:class:`Item` objects and turned into columns; a classification file large enough for the token cache
is streamed once, chunk by chunk, into the cached Arrow table training reads (texts included, memory-mapped),
so the checks of a million-row file hold tens of megabytes, and a second run reads the table back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from deltatune.data.text_keys import normalise, text_key  # noqa: F401 - the checks import them from here


@dataclass
class Item:
    text: str
    line: int | None = None
    labels: tuple[str, ...] | None = None  # class names (classification); None elsewhere
    tokens: int = 0  # length before max_length
    trained: int | None = None  # tokens trained after the length policy (None: n/a)


class Rows:
    """One split's examples as columns: ``keys`` (:func:`text_key`), ``lines`` (-1: none),
    ``tokens`` (length before max_length), ``labels`` (codes into ``label_sets``, -1: none; None when
    the task has no labels), ``trained`` (tokens the loss trains on; None when not applicable), and
    the text of row ``i`` from :meth:`text`."""

    def __init__(
        self,
        keys,
        lines,
        tokens,
        text: Callable[[int], str],
        labels=None,
        label_sets: list[tuple[str, ...]] | None = None,
        trained=None,
    ):
        self.keys = np.asarray(keys, dtype=np.int64)
        self.lines = np.asarray(lines, dtype=np.int64)
        self.tokens = np.asarray(tokens, dtype=np.int64)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.label_sets = list(label_sets or [])
        self.trained = None if trained is None else np.asarray(trained, dtype=np.int64)
        self._text = text

    def __len__(self) -> int:
        return len(self.keys)

    def text(self, i) -> str:
        return self._text(int(i))

    def where(self, i) -> str:
        line = int(self.lines[i])
        return f"line {line}" if line >= 0 else "a row"

    def label_names(self, i) -> tuple[str, ...] | None:
        if self.labels is None or self.labels[i] < 0:
            return None
        return self.label_sets[int(self.labels[i])]

    @classmethod
    def from_items(cls, items: list[Item]) -> "Rows":
        sets: dict[tuple[str, ...], int] = {}
        codes = [-1 if x.labels is None else sets.setdefault(x.labels, len(sets)) for x in items]
        labelled = any(x.labels is not None for x in items)
        trained = [-1 if x.trained is None else x.trained for x in items]
        return cls(
            [text_key(x.text) for x in items],
            [-1 if x.line is None else x.line for x in items],
            [x.tokens for x in items],
            lambda i: items[i].text,
            codes if labelled else None,
            list(sets),
            trained if any(x.trained is not None for x in items) else None,
        )


@dataclass
class DataView:
    splits: dict[str, Rows]  # lists of Items are turned into Rows
    max_length: int
    files: dict[str, str] = field(default_factory=dict)  # split -> where it comes from
    policy: str = "truncate"  # what happens to longer examples: truncate | drop | windows
    model_positions: int | None = None  # longest input the model takes, when known

    def __post_init__(self):
        self.splits = {s: r if isinstance(r, Rows) else Rows.from_items(r) for s, r in self.splits.items()}


def view_for(cfg) -> DataView | None:
    from deltatune.tasks import get_task

    inspect = getattr(get_task(cfg.task), "inspect", None)
    return inspect(cfg) if inspect is not None else None


def view_tokenizer(cfg):
    from deltatune.models.loading import load_tokenizer

    return load_tokenizer(cfg.model.name)


def data_files(d) -> dict[str, str]:
    out = {"train": d.train}
    if d.validation:
        out["validation"] = d.validation
    elif d.validation_split:
        out["validation"] = f"the {d.validation_split:g} split of {d.train}"
    if d.test or getattr(d, "test_split", None):
        out["test"] = d.test or f"the {d.test_split:g} split of {d.train}"
    return out


def model_positions(cfg) -> int | None:
    try:
        from transformers import AutoConfig

        from deltatune.models.loading import resolve_model_path

        mc = AutoConfig.from_pretrained(resolve_model_path(cfg.model.name))
        return getattr(mc, "max_position_embeddings", None) or getattr(mc, "n_positions", None)
    except Exception:  # noqa: BLE001 - a hint only; the run itself checks max_length against the model
        return None


def message_text(messages: list[dict]) -> str:
    """The words of a conversation without its template (what makes two examples the same)."""
    return "\n".join(str(m.get("content", "")) for m in messages)
