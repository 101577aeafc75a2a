"""Token ids shown as text, trained spans marked: what ``deltatune preview`` prints for every task."""

from __future__ import annotations

from deltatune.losses.lm import IGNORE_INDEX

GREEN, DIM, RESET = "\033[1;32m", "\033[2m", "\033[0m"
OPEN, CLOSE = "«", "»"  # marks trained text when colour is off


def render_tokens(tokenizer, ids: list[int], labels: list[int], color: bool) -> str:
    """The decoded example with trained spans in green (or between « and »), masked text dimmed."""
    out, i = [], 0
    while i < len(ids):
        trained = labels[i] != IGNORE_INDEX
        j = i
        while j < len(ids) and (labels[j] != IGNORE_INDEX) == trained:
            j += 1
        text = tokenizer.decode(ids[i:j])
        if color:
            out.append(f"{GREEN if trained else DIM}{text}{RESET}")
        else:
            out.append(f"{OPEN}{text}{CLOSE}" if trained else text)
        i = j
    return "".join(out)
