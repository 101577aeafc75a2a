"""Packing several SFT examples into one row (``data.packing``), and the length statistics the preview
prints."""

from __future__ import annotations

import random
from typing import Sequence


def pack(feats: Sequence[dict], max_length: int, seed: int = 0) -> list[dict]:
    """Pack examples into rows of at most ``max_length`` tokens (first fit, longest first, after a
    seeded shuffle). Each row keeps ``lengths``, so positions restart per example."""
    order = list(range(len(feats)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -len(feats[i]["input_ids"]))
    rows: list[dict] = []
    room: list[int] = []
    for i in order:
        n = len(feats[i]["input_ids"])
        slot = next((r for r, free in enumerate(room) if free >= n), None)
        if slot is None:
            rows.append({"input_ids": [], "labels": [], "lengths": []})
            room.append(max_length)
            slot = len(rows) - 1
        row = rows[slot]
        row["input_ids"] += feats[i]["input_ids"]
        row["labels"] += feats[i]["labels"]
        row["lengths"].append(n)
        room[slot] -= n
    random.Random(seed + 1).shuffle(rows)
    return rows


def length_stats(lengths: Sequence[int]) -> dict:
    if not lengths:
        return {"count": 0}
    s = sorted(lengths)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return {
        "count": len(s),
        "min": s[0],
        "mean": round(sum(s) / len(s), 1),
        "median": pick(0.5),
        "p95": pick(0.95),
        "max": s[-1],
    }
