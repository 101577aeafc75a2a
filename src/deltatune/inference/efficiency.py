"""Inference efficiency measured properly: latency (warm-up, then the median of repeats), throughput
and peak memory, at several batch sizes.

Timing rules (why each one):

* warm-up passes first: the first calls allocate buffers, pick kernels and fill caches, and would
  otherwise count as slow outliers;
* the **median** of ``repeats`` timed passes (not the mean): a shared machine's scheduler hiccups
  inflate a mean, the median of 10+ passes is stable to a few percent here;
* on CUDA every timed pass is bracketed by ``torch.cuda.synchronize()`` (kernels run asynchronously);
* inputs are random token ids of a fixed length: a forward pass costs the same whatever the tokens
  say, so the length (``seq_len``) is what matters; the caller picks a typical one.

Peak memory: on CUDA the peak allocated memory inside the block; on Linux CPUs the process's peak
resident set size with the kernel's high-water mark reset at the start of the block
(``/proc/self/clear_refs``), so the number belongs to the block and not to what ran before it;
elsewhere the lifetime peak (an upper bound, flagged ``exact: false``).
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import dataclass

import torch

BUSY_SHARE = 0.2
"""Above this share of the CPUs used by other processes, timings are flagged as unreliable."""


def _cuda() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def current_rss_mb() -> float:
    """Resident memory of this process now (MB), or 0 where /proc is not available."""
    return _proc_status("VmRSS")


def _proc_status(key: str) -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass
class PeakMemory:
    """``with PeakMemory() as pm: ...`` then ``pm.peak_mb`` (the block's peak) and ``pm.start_mb``."""

    start_mb: float = 0.0
    peak_mb: float = 0.0
    exact: bool = True
    kind: str = "rss"

    def __enter__(self) -> "PeakMemory":
        if _cuda():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.kind, self.start_mb = "cuda_allocated", torch.cuda.memory_allocated() / 2**20
        else:
            self.exact = reset_peak_rss()
            self.start_mb = current_rss_mb()
        return self

    def __exit__(self, *exc) -> None:
        if self.kind == "cuda_allocated":
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.peak_mb = _proc_status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.peak_mb, self.start_mb = round(self.peak_mb, 1), round(self.start_mb, 1)


def _busy_seconds() -> float | None:
    """CPU seconds all processes of the machine have been busy since boot (Linux), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """``with OtherLoad() as load: ...`` then ``load.share``: the share of the machine's CPU time that
    *other* processes used during the block (0 = the machine was ours; None where unknown). Timings
    taken while it is high are not to be trusted: other work steals the cores (and PyTorch's threads
    wait for each other)."""

    share: float | None = None

    def __enter__(self) -> "OtherLoad":
        self.start, self.busy, self.own = time.perf_counter(), _busy_seconds(), sum(os.times()[:2])
        return self

    def __exit__(self, *exc) -> None:
        busy = _busy_seconds()
        if busy is None or self.busy is None:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        others = busy - self.busy - (sum(os.times()[:2]) - self.own)
        self.share = round(min(max(others / (elapsed * (os.cpu_count() or 1)), 0.0), 1.0), 3)


def _sync() -> None:
    if _cuda():
        torch.cuda.synchronize()


def random_inputs(vocab_size: int, batch_size: int, seq_len: int, device, avoid: set[int]) -> dict:
    """Token ids drawn (seeded) from the vocabulary, avoiding special tokens; full attention mask."""
    g = torch.Generator().manual_seed(batch_size * 1009 + seq_len)
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=g)
    for special in avoid:  # a pad or end token in the middle of a row would not be a typical input
        ids[ids == special] = (special + 1) % vocab_size
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


@torch.inference_mode()
def time_forward(model, inputs: dict, warmup: int = 2, repeats: int = 10) -> list[float]:
    """Seconds per forward pass, ``repeats`` of them, after ``warmup`` untimed passes."""
    for _ in range(warmup):
        model(**inputs)
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        model(**inputs)
        _sync()
        times.append(time.perf_counter() - start)
    return times


def bench_model(
    model, tokenizer, seq_len: int, batch_sizes: tuple[int, ...] = (1, 16), warmup: int = 2, repeats: int = 10
) -> list[dict]:
    """One row per batch size: median latency (ms), spread, examples/s, tokens/s, peak memory (MB)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    vocab = int(getattr(model.config, "vocab_size", 0) or len(tokenizer))
    avoid = {int(i) for i in (tokenizer.all_special_ids or []) if i is not None and i < vocab}
    rows = []
    for bs in batch_sizes:
        inputs = random_inputs(vocab, bs, seq_len, device, avoid)
        with PeakMemory() as pm:
            times = time_forward(model, inputs, warmup, repeats)
        median = statistics.median(times)
        rows.append(
            {
                "batch_size": bs,
                "seq_len": seq_len,
                "latency_ms": round(1000 * median, 3),
                "latency_ms_min": round(1000 * min(times), 3),
                "latency_ms_max": round(1000 * max(times), 3),
                "examples_per_s": round(bs / median, 2),
                "tokens_per_s": round(bs * seq_len / median, 1),
                "peak_memory_mb": pm.peak_mb,
                "memory_exact": pm.exact,
                "memory_kind": pm.kind,
                "warmup": warmup,
                "repeats": repeats,
            }
        )
    model.train(was_training)
    return rows


def format_bench(result: dict) -> str:
    """The text ``deltatune bench`` prints: one line per (variant, batch size)."""
    busy = result.get("other_cpu_share")
    lines = [
        f"{result['name']}: forward passes on {result['seq_len']}-token inputs "
        f"({result['warmup']} warm-up, median of {result['repeats']}); memory: {result['memory_note']}",
        *(
            [
                f"warning: other processes used {busy:.0%} of the CPUs meanwhile; "
                "these timings are not reliable"
            ]
            if busy and busy > BUSY_SHARE
            else []
        ),
        f"{'variant':<12}{'batch':>6}{'latency ms':>12}{'min-max ms':>18}{'examples/s':>12}"
        f"{'tokens/s':>11}{'peak MB':>9}",
    ]
    for variant, rows in result["variants"].items():
        for r in rows:
            spread = f"{r['latency_ms_min']:.1f}-{r['latency_ms_max']:.1f}"
            lines.append(
                f"{variant:<12}{r['batch_size']:>6}{r['latency_ms']:>12.2f}{spread:>18}"
                f"{r['examples_per_s']:>12.1f}{r['tokens_per_s']:>11.0f}{r['peak_memory_mb']:>9.0f}"
            )
    return "\n".join(lines)
