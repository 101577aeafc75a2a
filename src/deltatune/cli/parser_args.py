"""Arguments several commands share."""

from __future__ import annotations


def target_args(parser, what: str = "a trained run directory") -> None:
    parser.add_argument("run_dir", nargs="?", help=f"{what} (or --adapter DIR)")
    parser.add_argument("--adapter", help="an adapter trained elsewhere (PEFT format) instead of a run")
    parser.add_argument(
        "--model", help="with --adapter: its base model (default: the one its adapter_config.json names)"
    )
