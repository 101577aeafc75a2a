"""Code generation judged by running the code: SmolLM2 before and after code SFT, on MBPP and HumanEval.

Protocol
--------
Model: the bundled SmolLM2-135M-Instruct (fp32). Tuned model: ``configs/sft_code_alpaca.yaml`` (LoRA r 16 on
all linear layers, a seeded sample of 480 Code Alpaca rows, one epoch), trained here into ``WORK/sft``.
Benchmarks: MBPP test split (task ids 11-510, 500 tasks; instruct prompt with the three asserts, answer in a
```python block) and HumanEval (164 problems). SmolLM2-Instruct is a chat model and continues a bare function
prompt badly, so HumanEval is asked in the instruct format by default (``--humaneval-format completion``
for the completion format of Chen et al. 2021); the table says which ran.

Evaluations, for the base model and then the tuned one (``deltatune.runs.services.evaluate_code``):
  greedy   pass@1, one greedy answer per task, on the whole MBPP test split and all of HumanEval
  sampled  pass@1 and pass@5 from n=10 answers per task sampled at temperature 0.8, top-p 0.95, seed 0,
           on a seeded subset (``--sampled-tasks``, default 40 tasks of each benchmark, seed 0)
Each answer has at most 512 new tokens (an instruct answer stops when its first ```python block closes;
greedy runs generate 8 prompts at a time, sampled runs one task's 10 answers at a time);
every sample runs in deltatune's sandbox (10 s wall clock each, all cores in parallel). Metrics: pass@k
(unbiased estimator), execution rate (ran without an error other than a failing assert), BLEU against the
reference solution. Every evaluation's full report (each sample, its verdict, failing tasks, solutions
side by side) is written to ``WORK/<model>-<benchmark>-<decoding>/code_eval_<benchmark>.{json,md}``.

Usage:
    .venv/bin/python benchmarks/code.py                   # everything (hours on 2 CPU cores; see README)
    .venv/bin/python benchmarks/code.py --quick           # a handful of tasks, tiny budgets: a smoke test
    .venv/bin/python benchmarks/code.py --run-dir runs/code-sft   # evaluate an SFT run trained before
Results: a markdown table on stdout and benchmarks/results/code.json (a --quick run writes it only to a
path given with --json). Timings assume an otherwise idle machine (a warning says when it was not).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_busy_fraction  # noqa: E402

from deltatune.codeeval.evaluate import CodeEvalSettings  # noqa: E402
from deltatune.codeeval.report import write_code_reports  # noqa: E402
from deltatune.io import write_json_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT.parent / "shared" / "data"
CONFIG = ROOT / "configs" / "sft_code_alpaca.yaml"
RESULTS_JSON = HERE / "results" / "code.json"
MODEL = "smollm2-135m-instruct"
QUICK_SFT = [
    "data.max_train_samples=16",
    "data.validation_split=0.005",
    "train.max_steps=2",
    "generate.eval_samples=0",
]


def plan(args) -> list[tuple[str, dict]]:
    """(label, CodeEvalSettings keywords) of each evaluation, run for the base and the tuned model."""
    files = {
        "mbpp": str(DATA / "mbpp" / "mbpp.jsonl"),
        "humaneval": str(DATA / "humaneval" / "HumanEval.jsonl"),
    }
    fmt = {"mbpp": None, "humaneval": args.humaneval_format}
    budget = {"max_new_tokens": 48 if args.quick else 512}
    greedy_limit = 3 if args.quick else args.limit
    sampled_limit = 2 if args.quick else args.sampled_tasks
    out = []
    for bench in ("mbpp", "humaneval"):
        common = {"benchmark": bench, "data_path": files[bench], "prompt_format": fmt[bench], **budget}
        out.append((f"{bench} greedy", {**common, "limit": greedy_limit}))
        out.append(
            (
                f"{bench} n=10 T=0.8",
                {
                    **common,
                    "limit": sampled_limit,
                    "samples": 10,
                    "temperature": 0.8,
                    "k": (1, 5),
                    "batch_size": 10,
                },
            )
        )
    return out


def evaluate(
    model: str, run_dir: str | None, label: str, kwargs: dict, work: Path, reuse: bool, rescore: bool = False
) -> dict:
    """One evaluation; a finished report of the same evaluation in ``work`` is reused when ``reuse``
    (``rescore``: its saved answers are judged again by the current code extraction and sandbox,
    without generating them again)."""
    from deltatune.runs.services import evaluate_code

    settings = CodeEvalSettings(**kwargs)
    folder = work / f"{model}-{label.replace(' ', '-').replace('=', '')}"
    saved = folder / f"code_eval_{settings.benchmark}.json"
    report = json.loads(saved.read_text()) if reuse and saved.is_file() else None
    if report and not same_evaluation(report["header"], settings, run_dir or MODEL):
        report = None
    reused = report is not None
    if report is not None and rescore:
        report = rescored(report, settings, run_dir or MODEL)
        write_code_reports(report, folder)
    if report is None:
        start = time.perf_counter()
        report = evaluate_code(run_dir=run_dir, model_name=None if run_dir else MODEL, settings=settings)
        report["seconds"] = round(time.perf_counter() - start, 1)  # kept for a later reuse
        write_code_reports(report, folder)
    seconds = report.get("seconds", 0.0)
    h, m = report["header"], report["metrics"]
    row = {
        "model": model,
        "evaluation": label,
        "benchmark": h["benchmark"],
        "prompt_format": h["prompt_format"],
        "decoding": h["decoding"],
        "tasks": m["tasks"],
        "selection": h["selection"],
        "samples_per_task": h["samples_per_task"],
        "metrics": {k: v for k, v in m.items()},
        "seconds": round(seconds, 1),
        "timing": report["timing"],
        "report": str(folder),
        "failing_first": report["failing"][:5],
    }
    print(
        f"  {model:<5} {label:<22} "
        + "  ".join(f"{k}={v:.3f}" for k, v in m.items() if k.startswith("pass@"))
        + f"  exec={m['execution_rate']:.3f}  bleu={m['bleu']:.1f}  "
        f"({seconds:.0f} s{', reused' if reused else ''})",
        flush=True,
    )
    return row


def rescored(report: dict, settings: CodeEvalSettings, model_name: str) -> dict:
    """``report``'s saved answers judged again (extraction, programs, sandbox) by the current code."""
    from deltatune.codeeval.evaluate import run_code_eval

    answers = {t["task_id"]: [s["answer"] for s in t["samples"]] for t in report["tasks"]}
    header = report["header"]
    # reports written before the header had its own field name the template inside the prompt text
    template = header.get("template") or header["prompt"].rsplit(", ", 1)[-1].split(" template]")[0]
    new = run_code_eval(
        lambda prompts, _: [answers[p.task_id] for p in prompts], settings, model_name, template
    )
    new["seconds"], new["rescored"] = report.get("seconds", 0.0), True  # generation time of the saved answers
    return new


def same_evaluation(header: dict, settings: CodeEvalSettings, model: str) -> bool:
    want = {
        "model": model,
        "data": str(settings.path),
        "prompt_format": settings.format,
        "decoding": settings.decoding(),
        "samples_per_task": settings.samples,
        "max_new_tokens": settings.max_new_tokens,
        "k": list(settings.pass_ks),
    }
    return all(header.get(k) == v for k, v in want.items()) and header.get("selection", "").startswith(
        f"a seeded sample of {settings.limit} " if settings.limit else "the whole"
    )


def train(args, work: Path) -> tuple[str, dict, bool]:
    """The code SFT run (or the one given with --run-dir): its directory, summary, and whether it was
    reused (a finished run in WORK/sft from an earlier invocation, unless --fresh)."""
    if args.run_dir:
        return args.run_dir, json.loads((Path(args.run_dir) / "summary.json").read_text()), True
    if not args.fresh and (work / "sft" / "summary.json").is_file():
        print(f"  SFT: reusing the finished run {work / 'sft'} (--fresh trains again)", flush=True)
        return str(work / "sft"), json.loads((work / "sft" / "summary.json").read_text()), True
    from deltatune.config import load_config
    from deltatune.runs import run_config

    overrides = [f"output_dir={work / 'sft'}", "train.progress=false"] + (QUICK_SFT if args.quick else [])
    start = time.perf_counter()
    summary = run_config(load_config(CONFIG, overrides), overwrite=True)
    print(f"  SFT {CONFIG.name}: {time.perf_counter() - start:.0f} s", flush=True)
    return str(work / "sft"), summary, False


def print_table(rows: list[dict]) -> None:
    print(
        "\n| model | benchmark | prompt | decoding | tasks "
        "| pass@1 | pass@5 | execution rate | BLEU | seconds |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        m = r["metrics"]
        p5 = f"{m['pass@5']:.3f}" if "pass@5" in m else ""
        decoding = "greedy" if r["decoding"] == "greedy" else r["evaluation"].split(" ", 1)[1]
        print(
            f"| {r['model']} | {r['benchmark']} | {r['prompt_format']} | {decoding} | {r['tasks']} | "
            f"{m['pass@1']:.3f} | {p5} | {m['execution_rate']:.3f} | {m['bleu']:.1f} | {r['seconds']:.0f} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="3 tasks greedy, 2 tasks x 10 samples, 48 new tokens, "
        "2 SFT steps on 16 rows: checks the whole pipeline in a few minutes",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="greedy runs on a seeded sample of N tasks "
        "(default: the whole MBPP test split and all of HumanEval)",
    )
    p.add_argument(
        "--sampled-tasks", type=int, default=40, help="tasks in the seeded subset of the n=10 runs"
    )
    p.add_argument("--humaneval-format", choices=("instruct", "completion"), default="instruct")
    p.add_argument("--run-dir", help="a finished code SFT run to evaluate instead of training one")
    p.add_argument(
        "--work", type=Path, default=ROOT / "runs" / "bench-code", help="run and reports directory"
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="redo everything (default: an evaluation or SFT run "
        "finished in --work by an earlier, interrupted invocation is reused)",
    )
    p.add_argument(
        "--rescore",
        action="store_true",
        help="judge the answers saved in --work again with the "
        "current code extraction and sandbox (no generation; the SFT run is reused)",
    )
    p.add_argument(
        "--json",
        type=Path,
        help=f"results file (default {RESULTS_JSON.relative_to(ROOT)}; "
        "a --quick run writes one only when given)",
    )
    args = p.parse_args()
    if not (DATA / "mbpp" / "mbpp.jsonl").is_file():
        sys.exit(f"no MBPP data at {DATA}: see /work/shared/data/README.md")
    if (busy := cpu_busy_fraction()) > 0.2:
        print(f"warning: CPUs {busy:.0%} busy before the start; timings will be slower", file=sys.stderr)
    started, rows = time.strftime("%Y-%m-%dT%H:%M:%S"), []
    evaluations = plan(args)
    for label, kwargs in evaluations:
        rows.append(
            evaluate("base", None, label, kwargs, args.work, reuse=not args.fresh, rescore=args.rescore)
        )
    run_dir, summary, reused = train(args, args.work)
    for label, kwargs in evaluations:
        rows.append(evaluate("tuned", run_dir, label, kwargs, args.work, reuse=reused, rescore=args.rescore))
    print_table(rows)
    path = args.json or (None if args.quick else RESULTS_JSON)
    if path is None:
        print("\n--quick run: results not written (pass --json PATH to keep them)")
        return
    sft = {
        k: summary.get(k)
        for k in (
            "train_seconds",
            "train_tokens_per_s",
            "peak_rss_mb",
            "base_loss",
            "tuned_loss",
            "base_rouge_l",
            "tuned_rouge_l",
            "base_bleu",
            "tuned_bleu",
        )
    }
    write_json_atomic(
        {
            "benchmark": "code",
            "started": started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "quick": args.quick,
            "model": MODEL,
            "config": str(CONFIG.relative_to(ROOT)),
            "sft": sft,
            "sft_run": run_dir,
            "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
            "results": rows,
        },
        path,
    )
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
