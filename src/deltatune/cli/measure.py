"""The measuring commands: ``compare`` (methods side by side), ``bench`` (inference latency, throughput,
memory of a run), ``check`` (pre-flight checks of a config) and ``eval --baseline``. Their flags and
shells live here so that ``cli.py`` stays a list of thin shells; nothing here names a task."""

from __future__ import annotations

import json
import os

from deltatune.errors import UserError


def _config(args):
    from deltatune.config import load_config

    overrides = list(args.overrides)
    if args.config and "=" in args.config and not os.path.exists(args.config):
        args.config, overrides = None, [args.config, *overrides]  # no file, only overrides
    return load_config(args.config, overrides)


def _ints(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(
            f"{flag}: give integers separated by commas, e.g. {flag} 1,16 (got {text!r})"
        ) from None


def cmd_compare(args) -> int:
    from deltatune.compare.report import summary_text
    from deltatune.compare.runner import compare, parse_list, parse_seeds

    methods, seeds = parse_list(args.methods, "methods"), parse_seeds(args.seeds)
    cfg = _config(args)
    bench = (
        {"skip": True}
        if args.no_bench
        else {
            k: v
            for k, v in {
                "batch_sizes": _ints(args.batch_sizes, "--batch-sizes"),
                "seq_len": args.seq_len,
                "repeats": args.repeats,
            }.items()
            if v is not None
        }
    )
    result = compare(
        cfg,
        methods,
        seeds,
        args.output_dir,
        isolate=not args.in_process,
        bench=bench,
        config_path=args.config,
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    out = result["output_dir"]
    print(f"\n{summary_text(result)}\n\nreport: {out}/compare.html (also compare.md, compare.json)")
    return 0


def cmd_bench(args) -> int:
    from deltatune.inference.efficiency import format_bench
    from deltatune.runs.bench import DEFAULT_BATCH_SIZES, bench_run

    result = bench_run(
        args.run_dir,
        seq_len=args.seq_len,
        batch_sizes=tuple(_ints(args.batch_sizes, "--batch-sizes") or DEFAULT_BATCH_SIZES),
        warmup=args.warmup,
        repeats=args.repeats,
        baseline=args.baseline,
    )
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0


def cmd_check(args) -> int:
    from deltatune.checks import format_report, run_checks

    if args.memory_mb is not None and args.memory_mb <= 0:
        raise UserError(f"--memory-mb: must be a positive number of megabytes (got {args.memory_mb})")
    report = run_checks(_config(args), slow=not args.fast, memory_limit_mb=args.memory_mb)
    if args.json:
        print(
            json.dumps(
                {
                    "findings": [f.as_dict() for f in report.findings],
                    "ran": report.ran,
                    "notes": report.notes,
                },
                indent=2,
            )
        )
    else:
        print(format_report(report))
    return 1 if args.strict and any(f.severity in ("error", "warning") for f in report.findings) else 0


def cmd_eval_baseline(args) -> int:
    from deltatune.runs.baseline import evaluate_with_baseline, format_change

    result = evaluate_with_baseline(args.run_dir, args.adapter, args.model, args.data, samples=args.samples)
    print(
        json.dumps(result, indent=2)
        if args.json
        else format_change(
            result, f"evaluation of {args.run_dir or args.adapter} on {args.data}: untuned base vs tuned"
        )
    )
    return 0


def _config_args(parser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config file (or only key=value overrides)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def add_measure_commands(sub) -> None:
    from deltatune.compare.runner import DEFAULT_METHODS

    c = sub.add_parser(
        "compare",
        help="train several methods on the same config and compare them "
        "(quality, parameters, memory, speed) in compare.html",
    )
    _config_args(c)
    c.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated methods or variants (default {','.join(DEFAULT_METHODS)})",
    )
    c.add_argument(
        "--seeds", default="0", help="comma-separated seeds; quality is mean ± std over them (default 0)"
    )
    c.add_argument(
        "--output-dir",
        help="comparison directory (default runs/compare-<config name>); run the "
        "same command again to reuse finished runs",
    )
    c.add_argument("--no-bench", action="store_true", help="skip the inference latency bench")
    c.add_argument("--batch-sizes", help="bench batch sizes (default 1,16)")
    c.add_argument("--seq-len", type=int, help="bench input length (default: the mean training example)")
    c.add_argument("--repeats", type=int, help="timed passes per measurement (default 10)")
    c.add_argument(
        "--in-process",
        action="store_true",
        help="train in this process instead of one child process per run (faster start, shared memory peak)",
    )
    c.add_argument("--json", action="store_true", help="print compare.json on stdout")
    c.set_defaults(func=cmd_compare)

    b = sub.add_parser("bench", help="inference latency, throughput and peak memory of a trained run")
    b.add_argument("run_dir", help="a trained run directory")
    b.add_argument("--batch-sizes", help="comma-separated batch sizes (default 1,16)")
    b.add_argument("--seq-len", type=int, help="input length in tokens (default: the mean training example)")
    b.add_argument("--warmup", type=int, default=2, help="untimed passes first (default 2)")
    b.add_argument(
        "--repeats", type=int, default=10, help="timed passes; the median is reported (default 10)"
    )
    b.add_argument("--baseline", action="store_true", help="also bench the untuned base model")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)

    k = sub.add_parser(
        "check", help="pre-flight checks of a config's data and settings, with evidence and fixes"
    )
    _config_args(k)
    k.add_argument(
        "--fast", action="store_true", help="skip the memory probe (it loads the model and runs one step)"
    )
    k.add_argument("--memory-mb", type=float, help="memory to plan for (default: what this machine has free)")
    k.add_argument("--strict", action="store_true", help="exit status 1 when a warning or error is found")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_check)
