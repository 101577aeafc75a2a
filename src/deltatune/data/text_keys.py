"""What "the same text" means for the data checks: a normalised form and a 64-bit key of it. Kept in
the data layer because the token cache stores the key beside each row's tokens."""

from __future__ import annotations

import hashlib
import re

_NON_WORD = re.compile(r"[\W_]+")
_ASCII_NON_WORD = {c: " " for c in range(128) if not chr(c).isalnum()}  # what [\W_] matches in ASCII


def normalise(text: str) -> str:
    """Lower case, punctuation and repeated spaces removed: what "the same text" means here (ASCII
    text through ``str.translate``, the same result as the regular expression, faster)."""
    if text.isascii():
        return " ".join(text.lower().translate(_ASCII_NON_WORD).split())
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def text_key(text: str) -> int:
    """A signed 64-bit hash of the normalised text (two rows with the same key are duplicates)."""
    return int.from_bytes(
        hashlib.blake2b(normalise(text).encode(), digest_size=8).digest(), "little", signed=True
    )
