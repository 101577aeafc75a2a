"""Helpers shared by the benchmark scripts (run as `python benchmarks/<name>.py`)."""

from __future__ import annotations

import json
import time
from pathlib import Path


def cpu_busy_fraction(interval: float = 1.0) -> float:
    """Fraction of all CPUs busy over `interval` seconds, from /proc/stat (0.0 where unavailable)."""
    def sample():
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait
    try:
        (t0, i0), _ = sample(), time.sleep(interval)
        t1, i1 = sample()
    except OSError:
        return 0.0
    return 1 - (i1 - i0) / max(t1 - t0, 1)


def result_line(out_path: Path, way: str, keep_errors: bool = True) -> dict | None:
    """The last JSON line of a child's output file that reports ``way`` (None if there is none, or if it
    reports an error and ``keep_errors`` is false)."""
    if not out_path.is_file():
        return None
    for line in reversed(out_path.read_text(errors="replace").splitlines()):
        try:
            candidate = json.loads(line)
        except ValueError:
            continue
        if isinstance(candidate, dict) and candidate.get("way") == way:
            return candidate if keep_errors or "error" not in candidate else None
    return None
