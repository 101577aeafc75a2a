"""``deltatune eval --code mbpp|humaneval``: generated code judged by running it. The flags and the
command live here so that ``cli.py`` stays a list of thin shells; nothing here names a task."""

from __future__ import annotations

import json

from deltatune.errors import UserError

# flag -> (attribute, default); the defaults are None so that a flag given without --code is noticed
_CODE_FLAGS = {
    "--prompt-format": "prompt_format",
    "--temperature": "temperature",
    "--k": "k",
    "--limit": "limit",
    "--tasks": "tasks",
    "--seed": "seed",
    "--max-new-tokens": "max_new_tokens",
    "--template": "template",
    "--timeout": "timeout",
    "--out": "out",
}


def add_code_eval_args(parser) -> None:
    g = parser.add_argument_group(
        "code generation judged by running the code",
        "deltatune eval RUN_DIR --code mbpp | --model NAME --code humaneval | --adapter DIR --model NAME "
        "--code mbpp. --data is then the benchmark's .jsonl (default ../shared/data/...), --samples the "
        "answers per task (default 1: greedy) and --json prints the whole report.",
    )
    g.add_argument(
        "--code",
        metavar="BENCHMARK",
        help="mbpp (test split, ids 11-510) or humaneval: generate "
        "code, run it in the sandbox, report pass@k, execution rate, BLEU and the failing tasks",
    )
    g.add_argument(
        "--prompt-format",
        dest="prompt_format",
        help="mbpp: instruct; humaneval: completion "
        "(default: the model continues the function) or instruct (for chat models)",
    )
    g.add_argument(
        "--temperature",
        type=float,
        help="sampling temperature (default: greedy for --samples 1, 0.8 for more)",
    )
    g.add_argument(
        "--k", help="k of pass@k, comma-separated, each <= --samples (default 1,5,10 up to --samples)"
    )
    g.add_argument("--limit", type=int, help="a seeded sample of this many tasks (default: all)")
    g.add_argument("--tasks", help="task ids, e.g. 11-60 or 11-20,35 (HumanEval: 0-163)")
    g.add_argument("--seed", type=int, help="seed of the --limit sample and of sampling (default 0)")
    g.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, help="longest answer (default 512)")
    g.add_argument(
        "--template",
        help="auto, chat, alpaca, raw or a Jinja template for instruct prompts (default: the run's, or auto)",
    )
    g.add_argument("--timeout", type=float, help="seconds per sample in the sandbox (default 10)")
    g.add_argument(
        "--out",
        help="directory for code_eval_<benchmark>.json/.md (default: the run directory; "
        "none for --model or --adapter)",
    )


def check_data_eval(args) -> None:
    """``deltatune eval`` without --code: --data is needed and the code flags do not apply."""
    stray = [flag for flag, attr in _CODE_FLAGS.items() if getattr(args, attr, None) is not None]
    if stray:
        raise UserError(
            f"eval: {', '.join(stray)} only apply with --code mbpp|humaneval (generated code judged "
            "by running it); add --code, or drop them to evaluate on --data"
        )
    if args.data is None:
        raise UserError(
            "eval: give --data FILE (laid out like the run's training data), or --code "
            "mbpp|humaneval to judge generated code by running it"
        )


def settings_from_args(args):
    """:class:`CodeEvalSettings` from the flags (checked before any model loads)."""
    from deltatune.codeeval.evaluate import CodeEvalSettings

    values = {
        "benchmark": args.code,
        "prompt_format": args.prompt_format,
        "samples": args.samples or 1,
        "temperature": args.temperature,
        "k": _parse_k(args.k),
        "limit": args.limit,
        "tasks": args.tasks,
        "data_path": args.data,
    }
    for attr, key in (("seed", "seed"), ("max_new_tokens", "max_new_tokens"), ("timeout", "timeout_s")):
        if getattr(args, attr) is not None:
            values[key] = getattr(args, attr)
    return CodeEvalSettings(**values)


def _parse_k(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        ks = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        ks = ()
    if not ks:
        raise UserError(f"--k {text}: write integers separated by commas, e.g. --k 1,5")
    return ks


def cmd_code_eval(args) -> int:
    from deltatune.codeeval.report import code_text, write_code_reports
    from deltatune.runs.services import evaluate_code

    if args.samples is not None and args.samples < 1:
        raise UserError(
            f"--samples: with --code, the answers per task must be 1 or more (got {args.samples})"
        )
    settings = settings_from_args(args)
    report = evaluate_code(args.run_dir, args.model, args.adapter, settings, template=args.template)
    out = args.out or (args.run_dir if not args.adapter else None)
    written = write_code_reports(report, out) if out else None
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    print(code_text(report))
    print(
        f"  report: {written[0]} and {written[1].name}"
        if written
        else "  (pass --out DIR to keep the report: json with every sample, markdown side by side)"
    )
    return 0
