"""Helpers shared by the benchmark scripts (run as `python benchmarks/<name>.py`)."""

from __future__ import annotations

import json
import os
import subprocess
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


def spawn_way(
    cmd: list[str],
    way: str,
    work: Path,
    reuse: bool = False,
    same: dict | None = None,
    failed: dict | None = None,
    env: dict | None = None,
) -> dict:
    """Run one benchmark way in a fresh child (``cmd``) writing ``work/<way>.out`` and ``.log``; its
    JSON result line plus the whole child's peak RSS (os.wait4) and wall time. With ``reuse``, an earlier
    successful result in ``work`` is returned instead (marked ``reused_from``) when its values of ``same``
    match. ``failed``: extra keys of the result when the child printed none; ``env``: extra variables."""
    out_path, log = work / f"{way}.out", work / f"{way}.log"
    if reuse and (earlier := result_line(out_path, way, keep_errors=False)) is not None:
        if all(earlier.get(k) == v for k, v in (same or {}).items()):
            print(
                f"reusing {way} from {out_path} (measured {time.ctime(out_path.stat().st_mtime)})", flush=True
            )
            return dict(earlier, reused_from=str(out_path))
        print(f"not reusing {way} from {out_path}: measured with other sizes", flush=True)
    print(f"$ {' '.join(cmd)}\n  (log: {log})", flush=True)
    busy = cpu_busy_fraction()  # timings assume an otherwise idle machine
    if busy > 0.25:
        print(
            f"  warning: CPUs {100 * busy:.0f}% busy before start (other processes?); "
            "tok/s may be understated"
        )
    env = dict(
        os.environ,
        TQDM_DISABLE="1",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        **(env or {}),
    )
    with open(out_path, "w") as out, open(log, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # tell Popen it has been reaped
    result = result_line(out_path, way)
    if result is None:
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:] or ["no output"]
        result = {
            "way": way,
            **(failed or {}),
            "error": f"child exited {proc.returncode} without a result: {tail[0][:300]}",
        }
    result.update(
        process_peak_rss_mb=usage.ru_maxrss / 1024,
        process_wall_s=time.perf_counter() - t0,
        exit_code=proc.returncode,
    )
    if "error" in result:
        print(f"  FAILED: {result['error']}\n  (traceback in {log})", flush=True)
    else:  # the parent's measurements, kept with the child's line for --reuse
        with open(out_path, "a") as out:
            out.write(json.dumps(result) + "\n")
    return result


def write_json(path: Path, payload: dict) -> None:
    """Atomic: write a temp file next to ``path``, then rename over it."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def ways_and_workdir(parser, args, all_ways, default_ways, prefix: str) -> tuple[list[str], Path]:
    """The ways a parent runs (``--ways``, checked) and its work folder (``--workdir`` or a temp dir)."""
    import tempfile

    ways = args.ways.split(",") if args.ways else list(default_ways)
    unknown = [w for w in ways if w not in all_ways]
    if unknown:
        parser.error(f"unknown way(s) {', '.join(unknown)}; choose from {', '.join(all_ways)}")
    if getattr(args, "reuse", False) and not args.workdir:
        parser.error("--reuse needs --workdir (the folder of the earlier run)")
    work = Path(args.workdir or tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    return ways, work


def tidy_workdir(args, work: Path, results: list[dict]) -> None:
    """Remove a temporary work folder, unless a way failed (then its logs are kept and named)."""
    import shutil

    if args.workdir:
        return
    if any("error" in r for r in results):
        print(f"\nlogs of the failed ways kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def record_failure(result: dict, error: Exception) -> None:
    """A child way failed: its traceback to stderr (the log), one line of it in the result."""
    import traceback

    traceback.print_exc()
    result["error"] = f"{type(error).__name__}: {error}".strip()[:500]


def exit_with(result: dict) -> None:
    """A child way's end: its one JSON result line on stdout; exit status 1 if it failed."""
    import sys

    print(json.dumps(result), flush=True)
    sys.exit(1 if "error" in result else 0)
