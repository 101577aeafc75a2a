"""``deltatune bench RUN_DIR``: inference latency, throughput and peak memory of a trained run, as
trained, merged (methods that can fold into the base weights) and, with ``baseline``, of the untuned
base model; see :mod:`deltatune.inference.efficiency` for how each number is measured."""

from __future__ import annotations

import gc
from pathlib import Path

from deltatune.errors import UserError
from deltatune.inference.efficiency import OtherLoad, bench_model
from deltatune.io import read_json
from deltatune.runs.directory import FINISHED_MARKER
from deltatune.runs.loaded import finished_run_config, load_run

DEFAULT_BATCH_SIZES = (1, 16)


def typical_seq_len(run_dir: str | Path) -> int:
    """The mean number of real tokens per training example of a finished run (from its summary),
    within [8, data.max_length]: the input length the bench uses unless told otherwise."""
    run_dir = Path(run_dir)
    cfg = finished_run_config(run_dir)
    summary = read_json(run_dir / FINISHED_MARKER, "run summary")
    t = cfg.train
    examples = max(1, int(summary.get("steps", 0)) * t.batch_size * t.grad_accum)
    mean = float(summary.get("train_tokens", 0)) / examples
    return int(min(max(round(mean), 8), cfg.data.max_length or 512))


def check_bench_args(batch_sizes, seq_len, warmup: int, repeats: int) -> None:
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise UserError(f"--batch-sizes: give positive integers like 1,16 (got {batch_sizes})")
    if seq_len is not None and seq_len < 1:
        raise UserError(f"--seq-len: must be 1 or more (got {seq_len})")
    if warmup < 0 or repeats < 1:
        raise UserError(f"--warmup must be 0 or more and --repeats 1 or more (got {warmup}, {repeats})")


def bench_run(
    run_dir: str | Path,
    seq_len: int | None = None,
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES,
    warmup: int = 2,
    repeats: int = 10,
    baseline: bool = False,
    merged: bool = True,
) -> dict:
    """Latency (median of ``repeats`` after ``warmup``), throughput and peak memory per batch size,
    for the tuned model (``variants["tuned"]``), merged (``"merged"``, mergeable methods) and the
    untuned base model (``"base"``, with ``baseline``); ``other_cpu_share``: how much of the machine
    other processes used meanwhile (timings above 20% are flagged as unreliable)."""
    with OtherLoad() as load:
        result = _bench(run_dir, seq_len, batch_sizes, warmup, repeats, baseline, merged)
    return {**result, "other_cpu_share": load.share}


def _bench(run_dir, seq_len, batch_sizes, warmup, repeats, baseline, merged) -> dict:
    check_bench_args(batch_sizes, seq_len, warmup, repeats)
    run = load_run(run_dir)
    seq_len = seq_len or typical_seq_len(run_dir)
    kw = {"seq_len": seq_len, "batch_sizes": tuple(batch_sizes), "warmup": warmup, "repeats": repeats}
    variants = {"tuned": bench_model(run.model, run.tokenizer, **kw)}
    if merged and run.method.merge is not None:
        variants["merged"] = bench_model(run.method.merge(run.model), run.tokenizer, **kw)
    del run
    gc.collect()
    if baseline:
        base = load_run(run_dir, untuned=True)
        variants["base"] = bench_model(base.model, base.tokenizer, **kw)
    kind = next(iter(variants.values()))[0]
    note = (
        "peak allocated CUDA memory"
        if kind["memory_kind"] == "cuda_allocated"
        else "peak resident memory of the process (model included)"
        + ("" if kind["memory_exact"] else ", lifetime peak: an upper bound on this system")
    )
    return {
        "name": str(run_dir),
        "seq_len": seq_len,
        "batch_sizes": list(batch_sizes),
        "warmup": warmup,
        "repeats": repeats,
        "memory_note": note,
        "variants": variants,
    }
