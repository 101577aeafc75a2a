"""What one comparison run does, in its own process: train (or reuse, or resume) the run, then bench
it for inference. Results are cached so that running ``deltatune compare`` again redoes nothing that
is still valid: a finished run is reused while its config and data files are unchanged, a bench
while the run's ``summary.json`` and the bench settings are unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

from deltatune.config import Config, validate_config
from deltatune.errors import UserError
from deltatune.io import read_json, write_json_atomic
from deltatune.log import log
from deltatune.runs.directory import FINISHED_MARKER, RUN_MARKER, run_state


def config_differences(cfg: Config, run_dir: Path) -> list[str]:
    """Config keys where ``cfg`` differs from a finished run's ``config.yaml`` (keys that cannot change
    the result, like the progress bar, excluded)."""
    import yaml

    from deltatune.tasks import get_task

    saved = yaml.safe_load((run_dir / RUN_MARKER).read_text(encoding="utf-8")) or {}
    now = cfg.model_dump(mode="json")
    resolve = get_task(cfg.task).resolved
    settled = (
        resolve(cfg, run_dir) if resolve else {}
    )  # "auto" options as this run's model and data settle them
    skip = {"train.resume", "train.progress"} | ({"data.max_length"} if cfg._max_length_is_default else set())
    diffs = [
        f"{s}.{k}"
        for s in now
        if isinstance(now[s], dict)
        for k in now[s]
        if f"{s}.{k}" not in skip and (saved.get(s) or {}).get(k) != settled.get(f"{s}.{k}", now[s][k])
    ]
    return diffs + [
        k for k in now if not isinstance(now[k], dict) and k != "output_dir" and saved.get(k) != now[k]
    ]


def why_not_reusable(cfg: Config, run_dir: Path) -> str | None:
    """None when the finished run in ``run_dir`` can be reused, else why it must train again."""
    from deltatune.runs.directory import check_data_unchanged
    from deltatune.runs.skeleton import data_fingerprints

    try:
        diffs = config_differences(cfg, run_dir)
    except (OSError, ValueError) as exc:
        return f"its config.yaml cannot be read ({exc})"
    if diffs:
        return f"config changed ({', '.join(diffs[:4])})"
    if cfg.train.eval_every is None:  # the task's evaluations a run (auto_evals; 1 before it was recorded)
        from deltatune.tasks import get_task

        done, now = read_json(run_dir / "summary.json").get("auto_evals", 1), get_task(cfg.task).auto_evals
        if done != now:
            return f"it evaluated at least {done} time(s) a run, and {cfg.task} now evaluates at least {now}"
    try:
        check_data_unchanged(run_dir, data_fingerprints(cfg), allow_change=False)
    except UserError:
        return "data files changed"
    return None


def train_entry(raw: dict) -> str:
    """Train, reuse or resume one comparison run; returns which happened."""
    from deltatune.runs import run_config

    cfg = validate_config(raw, source=f"comparison run {raw['output_dir']}")
    run_dir = Path(cfg.output_dir)
    state, overwrite, status = run_state(run_dir), False, "trained"
    if state == "finished":
        why = why_not_reusable(cfg, run_dir)
        if why is None:
            return "reused"
        log(f"{run_dir}: {why}; training it again")
        overwrite, status = True, "retrained"
    elif state in ("unfinished", "started"):
        cfg.train.resume, status = True, "resumed"
    run_config(cfg, overwrite=overwrite)
    return status


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _cached(path: Path, key: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        found = read_json(path, "bench cache")
    except UserError:
        return None
    return found.get("result") if found.get("key") == key else None


def bench_entry(run_dir: str, cache: str, base_cache: str, settings: dict) -> dict:
    """Inference bench of a finished run: tuned, merged (methods that merge) and the untuned base model
    measured right after them in the same process, so that the method's overhead is a ratio of two
    measurements taken under the same conditions. The first base measurement also becomes the
    baseline row (``base_cache``)."""
    from deltatune.runs.bench import bench_run, typical_seq_len
    from deltatune.runs.loaded import finished_run_config

    settings = {**settings, "seq_len": settings.get("seq_len") or typical_seq_len(run_dir)}
    key = {"summary": _sha(Path(run_dir) / FINISHED_MARKER), **settings}
    result = _cached(Path(cache), key)
    if result is None:
        result = bench_run(run_dir, baseline=True, **settings)
        write_json_atomic({"key": key, "result": result}, Path(cache))
    cfg = finished_run_config(Path(run_dir))
    base_key = {"task": cfg.task, "model": cfg.model.name, **settings}
    if _cached(Path(base_cache), base_key) is None:
        write_json_atomic(
            {"key": base_key, "result": {**result, "variants": {"base": result["variants"]["base"]}}},
            Path(base_cache),
        )
    return result


def work(raw: dict, bench: tuple | None) -> dict:
    """One child process's job: train the run, then (when ``bench`` is given) bench it."""
    out = {"status": train_entry(raw)}
    if bench is not None:
        try:
            out["bench"] = bench_entry(raw["output_dir"], *bench)
        except UserError as exc:
            out["bench_error"] = str(exc)
    return out
