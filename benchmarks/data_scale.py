"""Data at scale (issue 18): classification on SST-2 sentences repeated to 10k / 100k / 400k / 1M rows,
tokenized once into the token cache, beside Hugging Face ``datasets`` used directly.

Protocol
--------
Data: the 67,349 sentences of /work/shared/data/sst2/train.tsv (``sentence<TAB>label``, quoting off),
repeated in file order to N rows, written once per N to a TSV.

deltatune: ``python -m deltatune train CONFIG`` with the bundled MiniLM (``minilm-l6``), method lora,
``train.max_steps: 2``, batch 32, max_length 128, no validation, ``data.cache: true``, and
``DELTATUNE_HOME`` a fresh folder of this benchmark (so the token cache starts empty). Each N runs twice:
*cold* (empty cache: read, validate, tokenize, write the cache) and *warm* (the same command again).
``--memory-route`` adds ``data.cache: false`` runs (every row in Python objects: the route before the
token cache) for the sizes it lists.

datasets: ``load_dataset("csv", delimiter="\\t", quoting=QUOTE_NONE)`` + ``map(batched=True)`` of the same
tokenizer (``tokenizer(batch["sentence"], truncation=True, max_length=128)``), cache in a fresh folder.

Measures, each way in a fresh child process: peak RSS (``ru_maxrss`` from ``os.wait4``: the child and
the children it waited for) and wall time of the whole command; for deltatune also "data s", the times
its log reports for reading, validating and tokenizing (or loading the cache), summed over the
pre-flight checks and training (one streamed pass builds the table both read), and for datasets the
time of load + map. Tokenization throughput = rows / those seconds.

SFT (``--sft``): synthetic instruction rows (JSON Lines, ``{"instruction": "Continue the review: <SST-2
sentence i>", "output": <sentence i+1>}``), ``deltatune train`` of the bundled SmolLM2-135M-Instruct with
LoRA and its chat template, 2 steps, batch 8, max_length 128, no generation samples; cold and warm through
the token cache (``data.cache: true``), and the in-memory route (``data.cache: false``) for the sizes
``--memory-route`` lists. The goal: peak memory bounded as rows grow.

Usage:
    .venv/bin/python benchmarks/data_scale.py                 # 10k, 100k, 400k, 1M
    .venv/bin/python benchmarks/data_scale.py --quick         # 2k and 20k: a smoke run
    .venv/bin/python benchmarks/data_scale.py --sft 20000,200000,2000000 --memory-route 20000,200000
        # SFT rows
Results: a markdown table on stdout and benchmarks/results/data_scale.json (data_scale_<sizes>[_no_check].json
for a --sizes subset or --no-check).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_busy_fraction  # noqa: E402

HERE = Path(__file__).resolve().parent
SST2 = HERE.parent.parent / "shared" / "data" / "sst2" / "train.tsv"
RESULTS_JSON = HERE / "results" / "data_scale.json"
MAX_LENGTH = 128
DATA_LINE = re.compile(r"data read and tokenized in ([0-9.]+) s")


def write_rows(n: int, path: Path) -> None:
    with open(SST2, newline="", encoding="utf-8") as f:
        rows = [
            (r["sentence"], r["label"]) for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("sentence\tlabel\n")
        for i in range(n):
            sentence, label = rows[i % len(rows)]
            f.write(f"{sentence}\t{label}\n")


def write_sft_rows(n: int, path: Path) -> None:
    """Synthetic instruction data: ``{"instruction": sentence i, "output": sentence i+1}`` over the SST-2
    sentences in file order (JSON Lines), so every row is a real sentence pair of ordinary length."""
    with open(SST2, newline="", encoding="utf-8") as f:
        sentences = [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            a, b = sentences[i % len(sentences)], sentences[(i + 1) % len(sentences)]
            f.write(json.dumps({"instruction": f"Continue the review: {a}", "output": b}) + "\n")


def sft_run(n: int, data: Path, work: Path, label: str, cache: bool) -> dict:
    """``deltatune train`` of SmolLM2-135M-Instruct (LoRA, its chat template) for 2 steps on ``n`` rows."""
    config = work / f"sft-config-{n}-{label}.yaml"
    config.write_text(
        json.dumps(
            {
                "task": "sft",
                "model": {"name": "smollm2-135m-instruct"},
                "method": {"name": "lora"},
                "data": {"train": str(data), "max_length": MAX_LENGTH, "cache": cache},
                "generate": {"eval_samples": 0},
                "train": {
                    "max_steps": 2,
                    "batch_size": 8,
                    "progress": False,
                    "seed": 42,
                    "precision": "fp32",
                },
            }
        )
    )
    out, log = work / f"sft-run-{n}-{label}", work / f"sft-log-{n}-{label}.txt"
    env = {**os.environ, "DELTATUNE_HOME": str(work / "home")}
    print(f"$ deltatune train sft ({n:,} rows, {label})", flush=True)
    result = run_child(
        [sys.executable, "-m", "deltatune", "train", str(config), "--output-dir", str(out)], log, env
    )
    found = DATA_LINE.findall(log.read_text(errors="replace"))
    result["data_s"] = round(sum(map(float, found)), 2) if found else None
    return {"way": f"deltatune sft {label}", "rows": n, **result}


def run_child(cmd: list[str], log: Path, env: dict) -> dict:
    """Run ``cmd`` in a fresh child (output to ``log``): its peak RSS (MB, wait4) and wall seconds."""
    busy = cpu_busy_fraction(0.5)
    if busy > 0.25:
        print(
            f"  warning: CPUs {100 * busy:.0f}% busy before start (other processes?); times may be overstated"
        )
    with open(log, "w") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-30:])
        raise SystemExit(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024), "wall_s": round(wall, 2)}


def deltatune_run(n: int, tsv: Path, work: Path, label: str, cache: bool, no_check: bool = False) -> dict:
    config = work / f"config-{n}-{label}.yaml"
    config.write_text(
        json.dumps(
            {
                "task": "classify",
                "model": {"name": "minilm-l6"},
                "method": {"name": "lora"},
                "data": {
                    "train": str(tsv),
                    "text_field": "sentence",
                    "max_length": MAX_LENGTH,
                    "cache": cache,
                },
                "train": {"max_steps": 2, "batch_size": 32, "progress": False, "seed": 42},
            }
        )
    )
    out, log = work / f"run-{n}-{label}", work / f"log-{n}-{label}.txt"
    env = {**os.environ, "DELTATUNE_HOME": str(work / "home")}
    cmd = [sys.executable, "-m", "deltatune", "train", str(config), "--output-dir", str(out)] + [
        "--no-check"
    ] * no_check
    print(f"$ deltatune train ({n:,} rows, {label})", flush=True)
    result = run_child(cmd, log, env)
    found = DATA_LINE.findall(log.read_text(errors="replace"))
    result["data_s"] = round(sum(map(float, found)), 2) if found else None  # the checks' pass and training's
    return {"way": f"deltatune {label}", "rows": n, **result}


def datasets_child(tsv: Path, cache_dir: Path, out_json: Path) -> None:
    import datasets
    from transformers import AutoTokenizer

    from deltatune.models.bundled import resolve_model_path

    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(resolve_model_path("minilm-l6"))
    t0 = time.perf_counter()
    ds = datasets.load_dataset(
        "csv",
        data_files=str(tsv),
        delimiter="\t",
        quoting=csv.QUOTE_NONE,
        split="train",
        cache_dir=str(cache_dir),
    )
    ds = ds.map(
        lambda b: tok(b["sentence"], truncation=True, max_length=MAX_LENGTH),
        batched=True,
        remove_columns=["sentence"],
    )
    out_json.write_text(json.dumps({"data_s": round(time.perf_counter() - t0, 2), "rows": len(ds)}))


def datasets_run(n: int, tsv: Path, work: Path) -> dict:
    out_json, log = work / f"datasets-{n}.json", work / f"log-{n}-datasets.txt"
    cmd = [
        sys.executable,
        __file__,
        "--datasets-child",
        str(tsv),
        "--cache-dir",
        str(work / f"hf-{n}"),
        "--json",
        str(out_json),
    ]
    print(f"$ datasets load_dataset + map ({n:,} rows)", flush=True)
    result = run_child(cmd, log, dict(os.environ))
    return {
        "way": "datasets load+map",
        "rows": n,
        **result,
        "data_s": json.loads(out_json.read_text())["data_s"],
    }


def table(results: list[dict]) -> str:
    lines = [
        "| rows | way | peak RSS MB | wall s | data s | rows/s (data) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        rate = f"{r['rows'] / r['data_s']:,.0f}" if r.get("data_s") else "-"
        lines.append(
            f"| {r['rows']:,} | {r['way']} | {r['peak_rss_mb']:,} | {r['wall_s']:.1f} | "
            f"{r['data_s'] if r.get('data_s') is not None else '-'} | {rate} |"
        )
    return "\n".join(lines)


def ratios(results: list[dict], sizes: list[int]) -> list[str]:
    """The issue's goals, from the measured rows."""
    get = {(r["rows"], r["way"]): r for r in results}
    small, big = sizes[0], sizes[-1]
    out = []
    for label in ("cold", "warm"):
        a, b = get.get((small, f"deltatune {label}")), get.get((big, f"deltatune {label}"))
        if a and b:
            extra = b["peak_rss_mb"] - a["peak_rss_mb"]
            out.append(
                f"peak RSS {big:,} rows ({label}) - {small:,} rows ({label}) = {extra:+,} MB "
                f"(goal <= +300 MB: {'met' if extra <= 300 else 'NOT met'})"
            )
    for n in sizes:
        cold, warm, hf = (get.get((n, w)) for w in ("deltatune cold", "deltatune warm", "datasets load+map"))
        if cold and hf and cold.get("data_s"):
            speed = hf["data_s"] / cold["data_s"]
            out.append(
                f"{n:,} rows: tokenization throughput deltatune cold / datasets = {speed:.2f}x "
                f"(goal >= 1: {'met' if speed >= 1 else 'NOT met'})"
            )
        if cold and warm:
            data = (
                f"{cold['data_s'] / warm['data_s']:.1f}x"
                if cold.get("data_s") and warm.get("data_s")
                else "-"
            )
            out.append(
                f"{n:,} rows: warm vs cold start, whole command {cold['wall_s'] / warm['wall_s']:.1f}x, "
                f"data step {data} (goal for 400,000 rows: >= 10x)"
            )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2,000 and 20,000 rows only (a smoke run)")
    p.add_argument("--sizes", help="comma-separated row counts (default 10000,100000,400000,1000000)")
    p.add_argument("--memory-route", default="", help="comma-separated sizes also run with data.cache: false")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="pass --no-check (skip the pre-flight data checks) to deltatune train",
    )
    p.add_argument(
        "--sft",
        help="comma-separated row counts of an SFT run instead (synthetic instruction rows, "
        "SmolLM2-135M-Instruct): cold and warm through the token cache",
    )
    p.add_argument("--workdir", help="keep data, configs, logs, runs and caches here (default: a temp dir)")
    p.add_argument("--datasets-child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.datasets_child:
        datasets_child(args.datasets_child, args.cache_dir, args.json)
        return
    if args.sft:
        sft_main(
            [int(x) for x in args.sft.split(",")], [int(x) for x in args.memory_route.split(",") if x], args
        )
        return
    sizes = [
        int(s)
        for s in (args.sizes or ("2000,20000" if args.quick else "10000,100000,400000,1000000")).split(",")
    ]
    memory = [int(s) for s in args.memory_route.split(",") if s]
    tmp, work = workdir(args, "deltatune-data-scale-")
    results = []
    for n in sizes:
        tsv = work / f"sst2-{n}.tsv"
        write_rows(n, tsv)
        for label, cache in [("cold", True), ("warm", True)] + [("in memory", False)] * (n in memory):
            results.append(deltatune_run(n, tsv, work, label, cache, args.no_check))
        results.append(datasets_run(n, tsv, work))
        tsv.unlink()
    print()
    print(table(results))
    print()
    print("\n".join(f"- {line}" for line in ratios(results, sizes)))
    if not args.quick:
        # a subset of sizes (or --no-check) gets its own file, so it never overwrites the full run
        suffix = ("" if args.sizes is None else "_" + "_".join(map(str, sizes))) + (
            "_no_check" if args.no_check else ""
        )
        path = RESULTS_JSON.with_name(f"data_scale{suffix}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "no_check": args.no_check,
                    "results": results,
                    "ratios": ratios(results, sizes),
                },
                indent=2,
            )
            + "\n"
        )
        print(f"wrote {path}")


def workdir(args, prefix: str):
    """``(temporary directory or None, the folder to work in)``: ``--workdir`` or a fresh temporary one."""
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix=prefix)
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    return tmp, work


def sft_main(sizes: list[int], memory: list[int], args) -> None:
    tmp, work = workdir(args, "deltatune-data-scale-sft-")
    results = []
    for n in sizes:
        data = work / f"sft-{n}.jsonl"
        write_sft_rows(n, data)
        for label, cache in [("cold", True), ("warm", True)] + [("in memory", False)] * (n in memory):
            results.append(sft_run(n, data, work, label, cache))
        data.unlink()
    print()
    print(table(results))
    get = {(r["rows"], r["way"]): r for r in results}
    lines = []
    for label in ("cold", "warm"):
        a, b = get.get((sizes[0], f"deltatune sft {label}")), get.get((sizes[-1], f"deltatune sft {label}"))
        if a and b and a is not b:
            lines.append(
                f"sft peak RSS {sizes[-1]:,} rows ({label}) - {sizes[0]:,} rows = "
                f"{b['peak_rss_mb'] - a['peak_rss_mb']:+,} MB"
            )
    print("\n".join(f"- {line}" for line in lines))
    path = RESULTS_JSON.with_name("data_scale_sft_" + "_".join(map(str, sizes)) + ".json")
    path.write_text(
        json.dumps(
            {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "results": results, "ratios": lines}, indent=2
        )
        + "\n"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
