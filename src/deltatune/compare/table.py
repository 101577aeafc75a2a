"""The comparison table: one row per method (mean ± std over seeds) plus the untuned base model,
built from the files the runs wrote (``summary.json``, ``eval_report.json``, ``metrics.jsonl``) and the
inference bench results; qualitative labels derived from the measured numbers (:func:`add_labels`).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from deltatune.io import read_json
from deltatune.reports.facts import read_curves, scalars, tuned_section


def stats(values: list[float]) -> dict:
    """mean, sample std (0 for one value), n and the values."""
    if not values:
        return {"mean": None, "std": None, "n": 0, "values": []}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values), "values": values}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def _run_facts(entry: dict, metric: str) -> dict:
    """What one finished run contributes: its summary, base and tuned metrics, curves, saved size."""
    from deltatune.methods.registry import get_method

    run_dir = Path(entry["run_dir"])
    summary = read_json(run_dir / "summary.json", "run summary")
    report = read_json(run_dir / "eval_report.json", "evaluation report")
    return {
        "seed": entry["seed"],
        "run_dir": str(run_dir),
        "summary": summary,
        "base": scalars(report.get("base")),
        "tuned": scalars(tuned_section(report)),
        "curves": read_curves(run_dir, metric),
        "saved_bytes": dir_bytes(run_dir / get_method(entry["method"]).saved_dir),
    }


def pick_metrics(info: dict, facts: list[dict]) -> list[str]:
    """Quality metrics every finished run reports for base and tuned: the selection metric first,
    then the task's checkpoint metrics, then the rest."""
    if not facts:
        return [info["metric"]]
    common = set(facts[0]["tuned"]) & set(facts[0]["base"])
    for f in facts[1:]:
        common &= set(f["tuned"])
    order = [info["metric"], *info.get("best_metrics", [])]
    return [m for m in dict.fromkeys(order) if m in common] + sorted(common - set(order))


def _mean_of(facts: list[dict], key: str) -> float | None:
    values = [f["summary"].get(key) for f in facts if isinstance(f["summary"].get(key), (int, float))]
    return statistics.fmean(values) if values else None


def latency_summary(bench: dict | None) -> dict:
    """``{variant: {batch_size: median ms}}`` and the batched peak memory of a bench result."""
    if not bench:
        return {}
    variants = {
        v: {str(r["batch_size"]): r["latency_ms"] for r in rows} for v, rows in bench["variants"].items()
    }
    peak = max((r["peak_memory_mb"] for rows in bench["variants"].values() for r in rows), default=None)
    fastest = {
        v: {str(r["batch_size"]): r["latency_ms_min"] for r in rows} for v, rows in bench["variants"].items()
    }
    return {
        "latency_ms": variants,
        "latency_min_ms": fastest,
        "inference_peak_mb": peak,
        "throughput": {
            v: {str(r["batch_size"]): r["examples_per_s"] for r in rows}
            for v, rows in bench["variants"].items()
        },
    }


def method_row(
    label: str,
    entries: list[dict],
    outcomes: list[dict],
    info: dict,
    metrics: list[str],
    facts: list[dict],
    base_means: dict,
) -> dict:
    """One method's row: measured numbers (means over its finished seeds) and per-seed outcomes."""
    failed = [o for o in outcomes if o["status"] == "failed"]
    row = {
        "name": label,
        "method": entries[0]["method"],
        "options": entries[0]["options"],
        "learning_rate": entries[0]["learning_rate"],
        "lr_source": entries[0]["lr_source"],
        "status": "failed" if not facts else "partial" if failed else "ok",
        "errors": _errors(failed),
        "runs": [
            {
                "seed": o["seed"],
                "status": o["status"],
                "run_dir": e["run_dir"],
                "seconds": o["seconds"],
                **({"error": o["error"]} if o.get("error") else {}),
            }
            for e, o in zip(entries, outcomes)
        ],
    }
    bench = next((o.get("bench") for o in outcomes if o.get("bench")), None)
    row["bench_error"] = next((o["bench_error"] for o in outcomes if o.get("bench_error")), None)
    if not facts:
        return row
    params = facts[0]["summary"]["trainable_parameters"]
    row.update(
        trainable=params["trainable"],
        total=params["total"],
        trainable_percent=params["percent"],
        saved_bytes=facts[0]["saved_bytes"],
        peak_train_memory_mb=_mean_of(facts, "peak_rss_mb"),
        train_seconds=_mean_of(facts, "train_seconds"),
        train_tokens_per_s=_mean_of(facts, "train_tokens_per_s"),
        steps=facts[0]["summary"].get("steps"),
        **latency_summary(bench),
    )
    row["quality"] = {m: stats([f["tuned"][m] for f in facts if m in f["tuned"]]) for m in metrics}
    row["change"] = {m: _change(row["quality"][m]["mean"], base_means.get(m)) for m in metrics}
    row["curves"] = {str(f["seed"]): f["curves"] for f in facts}
    row["warnings"] = [e.get("message", e["event"]) for f in facts for e in f["curves"]["events"]]
    return row


def _errors(failed: list[dict]) -> list[str]:
    """One line per distinct error, naming the seeds that hit it."""
    by_error: dict[str, list[str]] = {}
    for o in failed:
        by_error.setdefault(o["error"], []).append(str(o["seed"]))
    return [
        f"seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}: {error}"
        for error, seeds in by_error.items()
    ]


def _change(tuned: float | None, base: float | None) -> dict:
    if tuned is None or base is None:
        return {"abs": None, "rel": None}
    return {"abs": tuned - base, "rel": (tuned - base) / abs(base) if base else None}


def baseline_row(facts: list[dict], metrics: list[str], base_bench: dict | None) -> dict:
    """The untuned base model: its quality per seed (each seed's runs share one base), no training."""
    by_seed = {}
    for f in facts:
        by_seed.setdefault(f["seed"], f["base"])
    quality = {m: stats([b[m] for b in by_seed.values() if m in b]) for m in metrics}
    return {
        "name": "base (untuned)",
        "baseline": True,
        "status": "ok" if facts else "failed",
        "trainable": 0,
        "trainable_percent": 0.0,
        "saved_bytes": 0,
        "quality": quality,
        "errors": [],
        **latency_summary(base_bench),
    }


def build_comparison(
    out_dir: Path, info: dict, entries: list[dict], outcomes: list[dict], findings: list[dict]
) -> dict:
    """Everything ``compare.json`` holds."""
    from deltatune.compare.labels import add_labels, verdict

    facts_by = {}
    for entry, outcome in zip(entries, outcomes):
        if outcome["status"] != "failed":
            try:
                facts_by.setdefault(entry["label"], []).append(_run_facts(entry, info["metric"]))
            except Exception as exc:  # noqa: BLE001 - a damaged run becomes a failed seed, not a crash
                outcome.update(status="failed", error=f"its results cannot be read ({exc})")
    all_facts = [f for fs in facts_by.values() for f in fs]
    metrics = pick_metrics(info, all_facts)
    base_path = out_dir / "bench" / "base.json"
    base_bench = read_json(base_path, "bench cache")["result"] if base_path.is_file() else None
    base = baseline_row(all_facts, metrics, base_bench)
    base_means = {m: s["mean"] for m, s in base["quality"].items()}
    rows = [base]
    for label in dict.fromkeys(e["label"] for e in entries):
        pairs = [(e, o) for e, o in zip(entries, outcomes) if e["label"] == label]
        rows.append(
            method_row(
                label,
                [e for e, _ in pairs],
                [o for _, o in pairs],
                info,
                metrics,
                facts_by.get(label, []),
                base_means,
            )
        )
    shares = [o["bench"].get("other_cpu_share") for o in outcomes if o.get("bench")]
    busy = max((x for x in shares if x is not None), default=None)
    result = {
        **info,
        "metrics": metrics,
        "rows": rows,
        "findings": findings,
        "bench_other_cpu_share": busy,
        "bench_conditions": (base_bench or {}).get("seq_len")
        and {k: base_bench[k] for k in ("seq_len", "batch_sizes", "warmup", "repeats", "memory_note")},
    }
    add_labels(result)
    result["verdict"] = verdict(result)
    return result
