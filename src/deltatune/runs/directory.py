"""The run directory's life: what may be written where, so that no command ever loses a result.

Rules (checked before any model is loaded or any file is touched):

* a directory holding a finished run (``summary.json``) is replaced only with ``--overwrite``;
* a directory holding an unfinished run (a killed one, with checkpoints) is continued with
  ``--resume`` or replaced with ``--overwrite``, never silently restarted;
* a non-empty directory that is not a deltatune run is never written into;
* a new run into an existing directory trains in a staging directory next to it
  (``.<name>.new``) and replaces the old one only when it has finished: a run that fails or is
  killed leaves the old directory byte for byte as it was;
* writability is checked before training (a read-only checkpoints/ folder found after the last
  step would lose the run).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from deltatune.config import Config, dump_config
from deltatune.errors import UserError
from deltatune.io import read_json, write_text_atomic
from deltatune.log import log
from deltatune.training.checkpoint import list_checkpoints

FINISHED_MARKER = "summary.json"
RUN_MARKER = "config.yaml"


def default_run_dir(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.task}-{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_state(path: Path) -> str:
    """missing | empty | foreign (not a run) | started (nothing to resume) | unfinished | finished."""
    if not path.exists():
        return "missing"
    if not path.is_dir():
        return "foreign"
    if not any(path.iterdir()):
        return "empty"
    if not (path / RUN_MARKER).is_file():
        return "foreign"
    if (path / FINISHED_MARKER).is_file():
        return "finished"
    return "unfinished" if list_checkpoints(path / "checkpoints") else "started"


def last_checkpoint_step(path: Path) -> int | None:
    found = list_checkpoints(path / "checkpoints")
    return found[-1][0] if found else None


@dataclass
class RunPlan:
    """Where a training run writes (``work``) and where its result ends up (``target``)."""

    target: Path
    work: Path
    resume: bool

    @property
    def staged(self) -> bool:
        return self.work != self.target

    @property
    def dir(self) -> Path:
        return self.work


def prepare_run_dir(cfg: Config, overwrite: bool = False) -> RunPlan:
    """Plan, check and open the run directory of ``cfg`` in one call (for Python callers)."""
    plan = plan_run(cfg, overwrite)
    if plan.resume:
        check_same_config(cfg, plan.target)
    open_run(plan, cfg)
    return plan


def plan_run(cfg: Config, overwrite: bool = False) -> RunPlan:
    """Decide where the run of ``cfg`` writes, refusing anything that could lose a result."""
    target = Path(cfg.output_dir) if cfg.output_dir else default_run_dir(cfg)
    cfg.output_dir = str(target)
    state, resume = run_state(target), cfg.train.resume
    where = f"--output-dir {target}"
    if state == "foreign":
        raise UserError(
            f"{where} exists and is not a deltatune run directory (no {RUN_MARKER}); "
            "choose a new or empty directory (deltatune never writes into other files)"
        )
    if resume and overwrite:
        raise UserError(
            "--resume and --overwrite both given: choose one (--resume continues the "
            "killed run, --overwrite starts it again)"
        )
    if state == "finished" and not overwrite:
        raise UserError(
            f"{target} already holds a finished run; choose another --output-dir "
            "or pass --overwrite to replace it" + ("; there is nothing to resume" if resume else "")
        )
    if state == "unfinished" and not (resume or overwrite):
        raise UserError(
            f"{target} holds an unfinished run (checkpoints up to step "
            f"{last_checkpoint_step(target)}, no summary.json): pass --resume to continue "
            "it, or --overwrite to start it again"
        )
    if resume and state in ("missing", "empty"):
        log(
            f"--resume: nothing to resume in {target} "
            f"({'no such directory' if state == 'missing' else 'empty'}); "
            "starting a fresh run"
        )
        resume = cfg.train.resume = False
    if resume and state == "started":
        log(f"--resume: {target} has no checkpoint yet; the run starts again from step 0")
    if resume:
        return RunPlan(target, target, resume=True)
    if state in ("missing", "empty"):
        return RunPlan(target, target, resume=False)
    return RunPlan(target, target.parent / f".{target.name}.new", resume=False)


def open_run(plan: RunPlan, cfg: Config) -> Path:
    """Create the work directory, write ``config.yaml``, and prove every folder the run will write
    is writable (before any training). Only the main process writes."""
    if os.environ.get("RANK", "0") != "0":
        return plan.work
    if plan.staged and plan.work.exists():
        shutil.rmtree(plan.work)  # left by a killed earlier attempt; never holds a finished run
    try:
        plan.work.mkdir(parents=True, exist_ok=True)
        for folder in (plan.work, plan.work / "checkpoints"):
            folder.mkdir(exist_ok=True)
            probe = folder / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
    except OSError as exc:
        raise UserError(
            f"cannot write the run directory {plan.target}: {exc.strerror} "
            f"({exc.filename}); choose a writable --output-dir"
        ) from None
    if not plan.resume:
        write_text_atomic(dump_config(cfg), plan.work / RUN_MARKER)
    return plan.work


def finish_run(plan: RunPlan) -> None:
    """Put a finished staged run in place of the target (the old directory goes last)."""
    if not plan.staged or os.environ.get("RANK", "0") != "0":
        return
    trash = plan.target.parent / f".{plan.target.name}.old-{os.getpid()}"
    if plan.target.exists():
        plan.target.rename(trash)
    plan.work.rename(plan.target)
    shutil.rmtree(trash, ignore_errors=True)


def abandon_run(plan: RunPlan) -> None:
    """A staged run that failed: remove its staging directory (the target was never touched)."""
    if plan.staged and os.environ.get("RANK", "0") == "0":
        shutil.rmtree(plan.work, ignore_errors=True)


def check_same_config(cfg: Config, run_dir: Path) -> None:
    """Resuming with a different config would silently mix two runs: refuse, naming the keys."""
    import yaml

    try:
        saved = yaml.safe_load((run_dir / RUN_MARKER).read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise UserError(
            f"{run_dir / RUN_MARKER}: damaged ({str(exc).splitlines()[0]}); the run cannot "
            "be resumed; start it again with --overwrite"
        ) from None
    now = cfg.model_dump(mode="json")
    diffs = [
        f"{section}.{key}"
        for section in now
        if isinstance(now[section], dict)
        for key in now[section]
        if section != "train" or key not in ("resume", "progress")
        if not isinstance(saved.get(section), dict) or saved[section].get(key) != now[section][key]
    ]
    diffs += [
        key
        for key in now
        if not isinstance(now[key], dict) and key != "output_dir" and saved.get(key) != now[key]
    ]
    if diffs:
        raise UserError(
            f"--resume: the config differs from the one in {run_dir}/{RUN_MARKER} "
            f"({', '.join(diffs)}); resume with the same config or start a new run"
        )


def check_data_unchanged(run_dir: Path, fingerprints: dict, allow_change: bool) -> None:
    """Refuse to resume on data files whose content changed since the checkpoint was written."""
    found = list_checkpoints(run_dir / "checkpoints")
    if not found:
        return
    state = read_json(found[-1][1] / "state.json", "checkpoint state")
    saved = (state.get("run_state") or {}).get("data_fingerprints") or {}
    changed = [key for key, fp in fingerprints.items() if key in saved and saved[key] != fp]
    if changed and not allow_change:
        raise UserError(
            f"--resume: the content of {', '.join(changed)} changed since the checkpoint "
            f"at step {found[-1][0]} was written; the resumed run would train on other data "
            "than it started with. Restore the file, start again with --overwrite, or pass "
            "--allow-data-change if the change is intended"
        )
    if changed:
        log(f"--allow-data-change: {', '.join(changed)} changed since the checkpoint; resuming anyway")
