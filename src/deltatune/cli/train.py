"""``deltatune train`` and ``deltatune preview``: a config in, a run (or a look at its data) out."""

from __future__ import annotations

import argparse
import json
import os
import sys

from deltatune.errors import UserError


def _cmd_train(args) -> int:
    from deltatune.config import load_config
    from deltatune.runs import run_config

    overrides = list(args.overrides)
    if args.config and "=" in args.config and not os.path.exists(args.config):
        args.config, overrides = None, [args.config, *overrides]  # no file, only overrides
    cfg = load_config(args.config, overrides)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    if args.resume:
        cfg.train.resume = True
    summary = run_config(
        cfg, overwrite=args.overwrite, allow_data_change=args.allow_data_change, preflight=not args.no_check
    )
    if summary.get("task"):  # the main process reports; other processes of a distributed run return {}
        print(json.dumps(summary, indent=2) if args.json else _summary_text(summary))
    return 0


def _summary_text(summary: dict) -> str:
    from deltatune.tasks import get_task

    keys = (*get_task(summary["task"]).summary_keys, "train_tokens_per_s", "peak_rss_mb", "train_seconds")
    parts = [f"{k}={summary[k]:.4g}" for k in keys if isinstance(summary.get(k), (int, float))]
    return f"run finished: {summary.get('run_dir', '')}\n  " + "  ".join(parts)


def _cmd_preview(args) -> int:
    from deltatune.config import load_config
    from deltatune.tasks import available_tasks, get_task

    cfg = load_config(args.config, list(args.overrides))
    task = get_task(cfg.task)
    if task.preview is None:
        able = ", ".join(sorted(n for n, t in available_tasks().items() if t.preview))
        raise UserError(
            f"{args.config}: preview shows templated data as the model sees it, for tasks "
            f"{able}; this config has task: {cfg.task}"
        )
    color = sys.stdout.isatty() if args.color == "auto" else args.color == "always"
    print(task.preview(cfg, args.examples, color))
    return 0


def add_train(sub) -> None:
    from deltatune.config.reference import config_reference
    from deltatune.tasks import available_tasks

    tasks = ", ".join(sorted(available_tasks()))
    t = sub.add_parser(
        "train",
        help="train from a YAML config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train from a YAML config; any key can be overridden as "
        "dotted.key=value (e.g. train.learning_rate=3e-4 method.r=8). "
        f"Tasks: {tasks} (see `deltatune tasks`).",
        epilog="config keys (section.key = default):\n"
        + config_reference()
        + "\n\nmethod options: see `deltatune methods` and the README.",
    )
    t.add_argument("config", nargs="?", help="YAML config file")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    t.add_argument("--output-dir", help="run directory (overrides output_dir)")
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --output-dir (the old one stays until the new one finishes)",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest complete checkpoint in the run directory",
    )
    t.add_argument(
        "--allow-data-change",
        action="store_true",
        help="with --resume: accept data files whose content changed since the checkpoint",
    )
    t.add_argument("--json", action="store_true", help="print the run summary as JSON")
    t.add_argument("--no-check", action="store_true", help="skip the fast pre-flight checks of the data")
    t.set_defaults(func=_cmd_train)


def add_preview(sub) -> None:
    pv = sub.add_parser(
        "preview",
        help="sft dry run: show examples as the model sees them, "
        "trained tokens highlighted, with length statistics",
    )
    pv.add_argument("config", help="YAML config (task: sft)")
    pv.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    pv.add_argument("--examples", type=int, default=3, help="examples to render")
    pv.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="highlight with colour (default: when printing to a terminal)",
    )
    pv.set_defaults(func=_cmd_preview)
