"""``deltatune eval RUN_DIR --baseline``: the trained model and the untuned base model evaluated on the
same file, and the change (absolute and relative) of every metric both report."""

from __future__ import annotations

import gc

from deltatune.runs.loaded import load_target


def evaluate_with_baseline(
    run_dir: str | None,
    adapter: str | None,
    model_name: str | None,
    data_path: str,
    samples: int | None = None,
) -> dict:
    """``{"tuned": report, "base": report, "change": {metric: {base, tuned, abs, rel, better}}}``."""
    from deltatune.runs.services import evaluate

    run = load_target(run_dir, adapter, model_name, command="eval")
    tuned = evaluate(run, data_path, samples=samples)
    lower = set(run.task.lower_is_better)
    del run
    gc.collect()
    base = evaluate(
        load_target(run_dir, adapter, model_name, command="eval", untuned=True), data_path, samples=samples
    )
    return {"tuned": tuned, "base": base, "change": change_table(base, tuned, lower)}


def change_table(base: dict, tuned: dict, lower_is_better: set[str]) -> dict:
    from deltatune.reports.facts import SKIP_METRICS

    out = {}
    for key, t in tuned.items():
        b = base.get(key)
        if key in SKIP_METRICS:
            continue
        if (
            isinstance(t, bool)
            or isinstance(b, bool)
            or not isinstance(t, (int, float))
            or not isinstance(b, (int, float))
        ):
            continue
        diff = t - b
        out[key] = {
            "base": b,
            "tuned": t,
            "abs": diff,
            "rel": diff / abs(b) if b else None,
            "better": None if diff == 0 else (diff < 0) == (key in lower_is_better),
        }
    return out


def format_change(result: dict, title: str) -> str:
    lines = [
        f"# {title}",
        "",
        "| metric | base (untuned) | tuned | change | relative |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, c in result["change"].items():
        rel = f"{c['rel']:+.1%}" if c["rel"] is not None else "n/a"
        mark = "" if c["better"] is None else " (better)" if c["better"] else " (worse)"
        lines.append(f"| {key} | {c['base']:.4f} | {c['tuned']:.4f} | {c['abs']:+.4f}{mark} | {rel} |")
    return "\n".join(lines) + "\n"
