"""Run logging: ``metrics.jsonl`` lines, a progress bar, peak memory."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` (flushed, so a crash keeps the log),
    and forwards numeric values to Accelerate's trackers (TensorBoard, W&B, MLflow) when asked."""

    def __init__(self, path: Path, enabled: bool = True, accelerator=None):
        self.path, self.enabled, self.accelerator = path, enabled, accelerator
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop the lines of steps after ``step`` and earlier end records (a resumed run redoes
        those steps and writes them again), so a resumed log reads like an uninterrupted one."""
        if not self.enabled or not self.path.is_file():
            return
        from deltatune.io import write_text_atomic

        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
            if record.get("event") == "end" or record.get("step", 0) > step:
                continue
            kept.append(line + "\n")
        write_text_atomic("".join(kept), self.path)

    def write(self, record: dict) -> None:
        if self.accelerator is not None and "step" in record:
            numbers = {
                k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step", "time")
            }
            self.accelerator.log(numbers, step=int(record["step"]))
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


class Progress:
    """tqdm bar over optimizer steps showing loss, learning rate and training tokens/s; tqdm
    gives the ETA."""

    def __init__(self, total: int, enabled: bool = True):
        self.bar = tqdm(
            total=total, disable=not enabled, unit="step", dynamic_ncols=True, file=sys.stderr, desc="train"
        )
        self.tokens, self.start = 0, time.perf_counter()
        self.extra: dict[str, str] = {}

    def update(self, loss: float, lr: float, tokens: int) -> None:
        self.tokens += tokens
        rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix(
            loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:.0f}", **self.extra, refresh=False
        )
        self.bar.update(1)

    def note(self, metrics: dict[str, float]) -> None:
        key = next(iter(metrics), None)
        if key is not None:
            self.extra = {f"val_{key}": f"{metrics[key]:.4f}"}

    def close(self) -> None:
        self.bar.close()


def peak_memory_mb() -> float:
    """Peak memory of this process: max allocated on CUDA, else the peak resident set size."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def log(message: str) -> None:
    """Status lines go to stderr so `--json` output on stdout stays machine-readable."""
    import os

    # RANK from the launcher, not accelerate's PartialState: creating that singleton here, before
    # the Accelerator, would fix the distributed mode too early (CPU runs would not use gloo).
    if os.environ.get("RANK", "0") == "0":
        print(f"[deltatune] {message}", file=sys.stderr, flush=True)
