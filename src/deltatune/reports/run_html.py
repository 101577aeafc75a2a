"""``eval_report.html`` of one run, from its ``eval_report.json`` content and ``metrics.jsonl``: base vs
tuned metrics with the change, the loss curve, and whatever the report holds beyond scalars (a
confusion matrix, per-class scores, generation samples side by side). Nothing here names a task: the
page shows the sections the task's report has."""

from __future__ import annotations

from pathlib import Path

from deltatune.reports import plots
from deltatune.reports.facts import read_curves, scalars, tuned_section
from deltatune.reports.html import render

SAMPLE_LIMIT = 12


def _metric(run_dir: Path) -> str | None:
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        return (cfg.get("train") or {}).get("metric_for_best")
    except (OSError, yaml.YAMLError):
        return None


def metrics_table(report: dict) -> dict | None:
    """Scalar metrics, one row each: base (untuned), tuned, change (absolute and relative), test."""
    base, tuned, test = (
        scalars(report.get("base")),
        scalars(tuned_section(report)),
        scalars(report.get("test")),
    )
    keys = list(dict.fromkeys([*tuned, *test]))
    if not keys:
        return None
    headers = [
        "metric",
        *(["base (untuned)"] if base else []),
        "tuned",
        *(["change"] if base else []),
        *(["test"] if test else []),
    ]
    rows = []
    for k in keys:
        row = [k] + ([_f(base.get(k))] if base else []) + [_f(tuned.get(k))]
        if base:
            row.append(_delta(base.get(k), tuned.get(k)))
        rows.append(row + ([_f(test.get(k))] if test else []))
    return {"id": "metrics-table", "title": "Validation metrics", "headers": headers, "rows": rows}


def _f(v) -> str:
    return "" if v is None else f"{v:.4f}"


def _delta(base: float | None, tuned: float | None) -> str:
    if base is None or tuned is None:
        return ""
    rel = f" ({(tuned - base) / abs(base):+.1%})" if base else ""
    return f"{tuned - base:+.4f}{rel}"


def samples_table(report: dict) -> dict | None:
    """Generation samples side by side (prompt, reference, base answer, tuned answer)."""
    samples = report.get("samples") or []
    sides = [
        (name, sec)
        for name, sec in (("base", report.get("base")), ("tuned", tuned_section(report)))
        if isinstance(sec, dict) and isinstance(sec.get("answers"), list)
    ]
    if not samples or not sides:
        return None
    rows = [
        [
            s.get("prompt", ""),
            s.get("reference") or "",
            *[sec["answers"][i] if i < len(sec["answers"]) else "" for _, sec in sides],
        ]
        for i, s in enumerate(samples[:SAMPLE_LIMIT])
    ]
    return {
        "id": "samples-table",
        "title": f"Generation samples (first {len(rows)})",
        "wrap": True,
        "headers": ["prompt", "reference", *[n for n, _ in sides]],
        "rows": rows,
    }


def per_class_table(section: dict | None, title: str) -> dict | None:
    per = (section or {}).get("per_class")
    if not isinstance(per, dict) or not per:
        return None
    rows = [
        [name, *(f"{s.get(k, 0):.4f}" for k in ("precision", "recall", "f1")), str(s.get("support", ""))]
        for name, s in per.items()
        if isinstance(s, dict)
    ]
    return {
        "id": "per-class-table",
        "title": title,
        "headers": ["label", "precision", "recall", "f1", "support"],
        "rows": rows,
    }


def _plots(run_dir: Path, report: dict) -> list[dict]:
    out = []
    metric = _metric(run_dir)
    curves = read_curves(run_dir, metric or "")
    if curves["loss"]:
        out.append(
            {
                "id": "plot-loss",
                "svg": plots.run_curves(curves["loss"], curves["eval"], metric or ""),
                "caption": "Training loss per logged step"
                + (f"; validation {metric} per evaluation" if curves["eval"] else ""),
            }
        )
    if curves["rollouts"]:
        out.append(
            {
                "id": "plot-rollouts",
                "svg": plots.score_and_kl(curves["rollouts"]),
                "caption": "Mean score and KL to the reference of the rollouts, per logged step",
            }
        )
    for name, section in (("validation (tuned)", tuned_section(report)), ("test", report.get("test"))):
        cm = (section or {}).get("confusion_matrix")
        if isinstance(cm, dict) and cm.get("matrix"):
            out.append(
                {
                    "id": "plot-confusion"
                    if not out or "confusion" not in out[-1]["id"]
                    else "plot-confusion-test",
                    "svg": plots.confusion_matrix(cm["labels"], cm["matrix"], f"Confusion matrix, {name}"),
                    "caption": "Rows: true label; columns: predicted label; cells: number of examples.",
                }
            )
    return out


def run_html(run_dir: Path, report: dict) -> str:
    s = report.get("summary") or {}
    p = report.get("trainable_parameters") or {}
    facts = []
    if p:
        facts.append(f"trainable parameters: {p['trainable']:,} of {p['total']:,} ({p['percent']:.3f}%)")
    if s:
        facts.append(
            f"training: {s.get('steps')} steps in {s.get('train_seconds', 0):.1f} s, "
            f"{s.get('train_tokens_per_s', 0):,.0f} tokens/s, peak memory {s.get('peak_rss_mb', 0):,.0f} MB; "
            f"best step {s.get('best_step')}"
        )
    warnings = [e.get("message", e["event"]) for e in read_curves(run_dir, "")["events"]]
    tables = [
        t
        for t in (
            metrics_table(report),
            per_class_table(tuned_section(report), "Per class (tuned, validation)"),
            samples_table(report),
        )
        if t
    ]
    return render(
        "run.html.j2",
        title=f"deltatune {report.get('task', '')}: {report.get('method', '')} on {report.get('model', '')}",
        subtitle="Base (untuned) = the model before training, evaluated on the same validation data.",
        facts=facts,
        warnings=warnings,
        tables=tables,
        plots=_plots(run_dir, report),
    )
