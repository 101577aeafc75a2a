"""The run directory: created once, config written first, a finished run never overwritten."""

from __future__ import annotations

import os
import shutil
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
    # RANK from the launcher, not accelerate's PartialState: creating that singleton here, before
    # the Accelerator, would fix the distributed mode too early (CPU runs would not use gloo).
    if os.environ.get("RANK", "0") == "0":
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
    cfg.output_dir = str(run_dir)
    if cfg.train.resume and (run_dir / "config.yaml").is_file():
        _check_same_config(cfg, run_dir)
    elif run_dir.exists():  # unfinished or --overwrite: start clean, keep nothing stale
        for stale in ("metrics.jsonl", FINISHED_MARKER):
            (run_dir / stale).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(dump_config(cfg), run_dir / "config.yaml")
    return RunInfo(dir=run_dir, config=cfg)


def _check_same_config(cfg: Config, run_dir: Path) -> None:
    """Resuming with a different config would silently mix two runs: refuse, naming the keys."""
    import yaml

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    now = cfg.model_dump(mode="json")
    diffs = [f"{section}.{key}" for section in now if isinstance(now[section], dict)
             for key in now[section]
             if section != "train" or key not in ("resume", "progress")
             if saved.get(section, {}).get(key) != now[section][key]]
    if diffs:
        raise UserError(f"--resume: the config differs from the one in {run_dir}/config.yaml "
                        f"({', '.join(diffs)}); resume with the same config or start a new run")
