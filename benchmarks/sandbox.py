"""What the sandbox costs: samples per second through it vs a plain subprocess per sample, one run.

Protocol
--------
Data: the MBPP test split (task ids 11-510) of /work/shared/data/mbpp/mbpp.jsonl; each sample is the
reference solution's test program (``code_metrics.mbpp_program``: setup, reference code, the 3 asserts,
a done marker), so every sample passes and does the same work in both ways.

Ways, each with the same number of concurrent samples (``--workers``, default: all cores) from a
thread pool, over all 500 programs, in this order, once:
  plain    ``subprocess.run([sys.executable, "-c", src], capture_output=True, timeout=10)`` per sample:
           how tutorials run generated code in its own process (no limits, no isolation).
  sandbox  ``sandbox.run_many(programs, SandboxLimits(), workers)``: the launcher, the namespaces this
           machine allows, a separate uid, rlimits, the temp dir and the capped output per sample.
The sandbox's one-time capability probe runs before the clock starts.

Measures: wall time for all samples and samples/s; the ratio is sandbox time / plain time. Both must
pass every sample, else the table says how many failed.

Usage:
    .venv/bin/python benchmarks/sandbox.py
    .venv/bin/python benchmarks/sandbox.py --workers 1 --limit 100
Results: a markdown table on stdout. Timings assume an otherwise idle machine (a warning says when the
CPUs were busy before the start).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_busy_fraction  # noqa: E402

from deltatune.codeeval.programs import load_mbpp, mbpp_preamble, mbpp_program  # noqa: E402
from deltatune.codeeval.sandbox import SandboxLimits, run_many, sandbox_capabilities  # noqa: E402

MBPP = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mbpp" / "mbpp.jsonl"


def plain(programs: list[str], workers: int) -> int:
    """Run each program with a bare ``python -c``; return how many passed (exit status 0)."""

    def one(source: str) -> bool:
        return subprocess.run([sys.executable, "-c", source], capture_output=True, timeout=10).returncode == 0

    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(one, programs))


def sandboxed(programs: list[str], workers: int) -> int:
    return sum(v.passed for v in run_many(programs, SandboxLimits(), workers))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="concurrent samples (default: cores)")
    p.add_argument("--limit", type=int, default=None, help="only the first N programs (smoke test)")
    args = p.parse_args()
    if not MBPP.is_file():
        sys.exit(f"no MBPP data at {MBPP}: put mbpp.jsonl there (see /work/shared/data/README.md)")
    tasks = load_mbpp(MBPP, "test")[: args.limit]
    programs = [mbpp_program(t["code"], t, mbpp_preamble(t)) for t in tasks]
    caps = sandbox_capabilities()  # the one-time probe, outside the timing
    if (busy := cpu_busy_fraction()) > 0.2:
        print(f"warning: CPUs {busy:.0%} busy before the start; timings will be slower", file=sys.stderr)
    rows = []
    for name, run in (("plain subprocess (`python -c`)", plain), ("deltatune sandbox", sandboxed)):
        start = time.perf_counter()
        passed = run(programs, args.workers)
        rows.append((name, time.perf_counter() - start, passed))
    base = rows[0][1]
    print(
        f"\nMBPP test split reference programs: {len(programs)} samples, {args.workers} concurrent, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"sandbox protections: {', '.join(caps.active())}\n")
    print("| way | wall s | samples/s | ms/sample/worker | passed | time vs plain |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, seconds, passed in rows:
        print(
            f"| {name} | {seconds:.1f} | {len(programs) / seconds:.1f} | "
            f"{1000 * seconds * args.workers / len(programs):.0f} | {passed}/{len(programs)} | "
            f"{seconds / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
