"""What "the same text" means for the data checks: a normalised form and a 64-bit key of it. Kept in
the data layer because the token cache stores the key beside each row's tokens."""

from __future__ import annotations

import hashlib
import re

_NON_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    """Lower case, punctuation and repeated spaces removed: what "the same text" means here."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def text_key(text: str) -> int:
    """A signed 64-bit hash of the normalised text (two rows with the same key are duplicates)."""
    return int.from_bytes(hashlib.blake2b(normalise(text).encode(), digest_size=8).digest(), "little", signed=True)
