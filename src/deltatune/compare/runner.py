"""``deltatune compare CONFIG --methods ...``: the same task, data and budget trained with several
methods (and seeds), measured side by side, with the untuned base model as the baseline row.

Each (method, seed) is an ordinary run (:func:`deltatune.runs.run_config`) in
``DIR/runs/<method>-seed<k>``, so the run-directory rules apply: a finished run whose config and data
are unchanged is reused, a killed one resumes from its checkpoint, a changed one trains again. Every
run trains in its own child process (``isolate``): its peak memory is its own, and a crash or an
out-of-memory kill is reported in its row while the other methods go on. The first seed's run of each
method is then benchmarked for inference (:mod:`deltatune.runs.bench`); results are cached in
``DIR/bench/``. :mod:`deltatune.compare.table` turns the run directories into the table,
:mod:`deltatune.compare.report` into ``compare.json``, ``compare.md`` and ``compare.html``.

Hyperparameters: every method trains with the config's data, task and ``train`` settings (epochs, batch,
schedule) and its own default learning rate (``MethodSpec.default_lr``; where each comes from is in
docs/methods.md). A ``train.learning_rate`` set in the config applies to the config's own method only.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from deltatune.config import Config
from deltatune.errors import UserError
from deltatune.io import write_json_atomic
from deltatune.log import log
from deltatune.methods.registry import get_method, resolve_method

PLAN_FILE = "compare-plan.json"
DEFAULT_METHODS = ("full", "lora", "dora", "adapters", "prompt_tuning", "prefix_tuning", "ia3", "bitfit")


@dataclass
class Entry:
    """One (method, seed) run of a comparison."""

    label: str  # what the table calls it: a method or a variant name (dora)
    method: str  # the registered method
    options: dict  # method options (the variant's, or the config's own for its method)
    seed: int
    run_dir: str
    learning_rate: float
    lr_source: str  # "method default" or "config"


def parse_list(text: str, what: str) -> list[str]:
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    if not items:
        raise UserError(
            f"--{what}: give a comma-separated list, e.g. --{what} "
            + ("lora,ia3,bitfit" if what == "methods" else "0,1,2")
        )
    return items


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in parse_list(text, "seeds")]
    except ValueError:
        raise UserError(
            f"--seeds: give integers separated by commas, e.g. --seeds 0,1,2 (got {text!r})"
        ) from None
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds: {text!r} repeats a seed; each seed once")
    return seeds


def plan_compare(cfg: Config, methods: list[str], seeds: list[int], out_dir: Path) -> list[Entry]:
    """The runs to compare, seed-major (a whole first-seed comparison exists before the second seed)."""
    if len(set(methods)) != len(methods):
        raise UserError(f"--methods: {','.join(methods)} names a method twice; each once")
    user_lr = cfg.train.learning_rate != get_method(cfg.method.name).lr_for(cfg.task)
    entries = []
    for seed in seeds:
        for label in methods:
            try:
                spec, variant = resolve_method(label)
            except UserError as exc:
                raise UserError(f"--methods: {exc}") from None
            own = spec.name == cfg.method.name
            options = {**(cfg.method.model_dump() if own else {"name": spec.name}), **variant}
            lr = cfg.train.learning_rate if own and user_lr else spec.lr_for(cfg.task)
            entries.append(
                Entry(
                    label,
                    spec.name,
                    options,
                    seed,
                    str(out_dir / "runs" / f"{label}-seed{seed}"),
                    lr,
                    "config" if own and user_lr else "method default",
                )
            )
    return entries


def entry_config(cfg: Config, entry: Entry) -> dict:
    """The config of one run: the compared config with the method, seed, learning rate and run
    directory swapped in."""
    raw = cfg.model_dump(mode="json")
    raw["method"] = dict(entry.options)
    raw["train"].update(seed=entry.seed, learning_rate=entry.learning_rate, progress=False, resume=False)
    raw["output_dir"] = entry.run_dir
    return raw


def check_output_dir(out_dir: Path) -> None:
    """A comparison writes only into a new or empty directory, or one an earlier comparison made."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--output-dir {out_dir} is a file; choose a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / PLAN_FILE).is_file():
        raise UserError(
            f"--output-dir {out_dir} exists and holds no earlier comparison ({PLAN_FILE}); "
            "choose a new or empty directory (deltatune never writes into other files)"
        )


def default_output_dir(config_path: str | None, cfg: Config) -> Path:
    """``runs/compare-<config name>``: the same command run again finds (and reuses) its runs."""
    stem = Path(config_path).stem if config_path else f"{cfg.task}-{Path(cfg.model.name).name}"
    return Path("runs") / f"compare-{stem}"


def compare(
    cfg: Config,
    methods: list[str],
    seeds: list[int] | tuple[int, ...] = (0,),
    output_dir: str | Path | None = None,
    isolate: bool = True,
    bench: dict | None = None,
    checks: bool = True,
    config_path: str | None = None,
) -> dict:
    """Train every method (x seed), bench each method, and write ``compare.json``, ``compare.md`` and
    ``compare.html`` into ``output_dir``; returns the comparison (what compare.json holds).

    ``bench``: inference bench settings (``batch_sizes``, ``seq_len``, ``warmup``, ``repeats``), or
    ``{"skip": True}``. ``isolate=False`` runs everything in this process (faster to start; peak
    memory is then reset between runs but shares the process)."""
    from deltatune.compare.html import write_compare_reports
    from deltatune.compare.table import build_comparison

    out = Path(output_dir) if output_dir else default_output_dir(config_path, cfg)
    seeds = list(seeds)
    entries = plan_compare(cfg, list(methods), seeds, out)
    check_output_dir(out)
    settings = _bench_settings(bench)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        {
            "config": config_path,
            "methods": list(methods),
            "seeds": seeds,
            "entries": [asdict(e) for e in entries],
        },
        out / PLAN_FILE,
    )
    findings = _preflight(cfg) if checks else []
    outcomes = []
    for i, entry in enumerate(entries, 1):
        use_bench = settings is not None and entry.seed == seeds[0]
        outcomes.append(_run_one(cfg, entry, out, settings if use_bench else None, isolate))
        _report(i, len(entries), outcomes[-1])
    result = build_comparison(
        out,
        _describe(cfg, config_path, methods, seeds, settings),
        [asdict(e) for e in entries],
        outcomes,
        findings,
    )
    result["output_dir"] = str(out)
    write_compare_reports(out, result)
    failed = [r for r in result["rows"][1:] if r["status"] == "failed"]
    if failed and len(failed) == len(result["rows"]) - 1:
        raise UserError(
            f"every method failed (details in {out / 'compare.md'}); the first: "
            f"{failed[0]['name']}: {failed[0]['errors'][0] if failed[0]['errors'] else 'no result'}"
        )
    return result


def _bench_settings(bench: dict | None) -> dict | None:
    bench = dict(bench or {})
    if bench.pop("skip", False):
        return None
    from deltatune.runs.bench import DEFAULT_BATCH_SIZES, check_bench_args

    settings = {
        "batch_sizes": list(bench.pop("batch_sizes", DEFAULT_BATCH_SIZES)),
        "seq_len": bench.pop("seq_len", None),
        "warmup": bench.pop("warmup", 2),
        "repeats": bench.pop("repeats", 10),
    }
    if bench:
        raise UserError(
            f"bench settings: unknown {', '.join(bench)}; known: batch_sizes, seq_len, warmup, repeats"
        )
    check_bench_args(settings["batch_sizes"], settings["seq_len"], settings["warmup"], settings["repeats"])
    return settings


def _run_one(cfg: Config, entry: Entry, out: Path, settings: dict | None, isolate: bool) -> dict:
    from deltatune.compare.isolate import run_isolated
    from deltatune.compare.work import work

    raw = entry_config(cfg, entry)
    bench = (
        (str(out / "bench" / f"{entry.label}.json"), str(out / "bench" / "base.json"), settings)
        if settings is not None
        else None
    )
    log_path = out / "logs" / f"{entry.label}-seed{entry.seed}.log"
    log(f"compare: {entry.label} (seed {entry.seed}, lr {entry.learning_rate:g}) -> {entry.run_dir}")
    start = time.perf_counter()
    if isolate:
        ok, result = run_isolated("deltatune.compare.work:work", (raw, bench), log_path)
    else:
        ok, result = _in_process(work, raw, bench)
    outcome = {
        "label": entry.label,
        "seed": entry.seed,
        "seconds": round(time.perf_counter() - start, 1),
        "log": str(log_path) if isolate else None,
    }
    return {**outcome, **result} if ok else {**outcome, "status": "failed", "error": result}


def _in_process(work, raw: dict, bench) -> tuple[bool, object]:
    """Run ``work`` here, its peak memory measured from now on, an error caught as a failed row."""
    import torch

    from deltatune.inference.efficiency import reset_peak_rss

    reset_peak_rss()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    try:
        return True, work(raw, bench)
    except UserError as exc:
        return False, str(exc)
    except Exception as exc:  # noqa: BLE001 - one method's bug or OOM must not stop the others
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _report(i: int, n: int, outcome: dict) -> None:
    what = f"compare {i}/{n}: {outcome['label']} seed {outcome['seed']}"
    if outcome["status"] == "failed":
        log(f"{what}: FAILED after {outcome['seconds']:.0f} s: {outcome['error']}")
    else:
        log(
            f"{what}: {outcome['status']} ({outcome['seconds']:.0f} s)"
            + (f"; bench failed: {outcome['bench_error']}" if outcome.get("bench_error") else "")
        )


def _preflight(cfg: Config) -> list[dict]:
    """The fast pre-flight checks of the compared config, once (every method shares the data)."""
    from deltatune.checks import run_checks

    try:
        return [f.as_dict() for f in run_checks(cfg, slow=False)]
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - advice only: a bug here must not stop the comparison
        log(f"pre-flight checks skipped ({type(exc).__name__}: {exc})")
        return []


def _describe(cfg: Config, config_path: str | None, methods, seeds, settings) -> dict:
    from deltatune.tasks import get_task

    spec = get_task(cfg.task)
    return {
        "task": cfg.task,
        "model": cfg.model.name,
        "config": config_path,
        "methods": list(methods),
        "seeds": list(seeds),
        "metric": cfg.train.metric_for_best,
        "greater_is_better": bool(cfg.train.greater_is_better),
        "best_metrics": list(spec.best_metrics or ()),
        "lower_is_better": list(spec.lower_is_better),
        "data": cfg.data.files(),
        "train": {k: getattr(cfg.train, k) for k in ("epochs", "max_steps", "batch_size", "grad_accum")},
        "bench": settings,
    }
