"""The run directory: created once, config written first, a finished run never overwritten."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from deltatune.config import Config, dump_config
from deltatune.errors import UserError
from deltatune.methods.saving import write_text_atomic

FINISHED_MARKER = "summary.json"


def log(message: str) -> None:
    """Status lines go to stderr so `--json` output on stdout stays machine-readable."""
    from accelerate.state import PartialState

    if PartialState().is_main_process:
        print(f"[deltatune] {message}", file=sys.stderr, flush=True)


@dataclass
class RunInfo:
    dir: Path
    config: Config


def default_run_dir(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.task}-{cfg.method['name']}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(cfg: Config, overwrite: bool = False) -> RunInfo:
    """Create the run directory and write the resolved ``config.yaml`` into it.

    A directory holding a finished run (it has ``summary.json``) is refused unless ``overwrite``.
    """
    run_dir = Path(cfg.output_dir) if cfg.output_dir else default_run_dir(cfg)
    if (run_dir / FINISHED_MARKER).exists() and not overwrite:
        raise UserError(f"{run_dir} already holds a finished run; choose another --output-dir "
                        "or pass --overwrite to replace it")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--output-dir {run_dir} exists and is not a directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.jsonl", FINISHED_MARKER):  # only reached for unfinished or --overwrite
        (run_dir / stale).unlink(missing_ok=True)
    cfg.output_dir = str(run_dir)
    write_text_atomic(dump_config(cfg), run_dir / "config.yaml")
    return RunInfo(dir=run_dir, config=cfg)
