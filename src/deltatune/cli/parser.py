"""The argument parser: one subcommand per command, each added by its command group's module."""

from __future__ import annotations

import argparse

from deltatune.cli.generate import add_generation
from deltatune.cli.info import add_listings
from deltatune.cli.measure import add_measure_commands
from deltatune.cli.train import add_preview, add_train
from deltatune.cli.use import add_post_run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deltatune", description="Fine-tune pretrained transformers.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train(sub)
    add_post_run(sub)
    add_preview(sub)
    add_generation(sub)
    add_listings(sub)
    add_measure_commands(sub)
    return p


def parse(argv: list[str] | None):
    parser = build_parser()
    # Overrides may come after options (`train c.yaml --output-dir d a.b=1`): collect the leftovers.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "generate" and not any(x.startswith("-") for x in extra):
        args.prompts, extra = [*args.prompts, *extra], []  # prompts after options
    if extra:
        if args.command not in ("train", "preview", "compare", "check") or any(
            x.startswith("-") or "=" not in x for x in extra
        ):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return args
