"""``compare.html``: the comparison's table, verdict and plots on one self-contained page; and
:func:`write_compare_reports`, which writes it with ``compare.json`` and ``compare.md``."""

from __future__ import annotations

from pathlib import Path

from deltatune.compare.report import (
    cells,
    chip_class,
    error_of,
    headers,
    markdown,
    method_notes,
    subtitle,
    table_note,
)
from deltatune.io import write_json_atomic, write_text_atomic
from deltatune.reports import plots
from deltatune.reports.html import render


def _methods(result: dict) -> list[dict]:
    return [r for r in result["rows"] if not r.get("baseline")]


def _ok(result: dict) -> list[dict]:
    return [r for r in _methods(result) if r["status"] != "failed"]


def table_rows(result: dict, palette: dict[str, str]) -> list[dict]:
    """Each row's cells with the classes the page styles: best quality bold, change green or red."""
    metric, up = result["metric"], result["greater_is_better"]
    view = []
    for row in result["rows"]:
        err = error_of(row)
        item = {
            "name": row["name"],
            "color": palette.get(row["name"], plots.BASE_COLOR),
            "error": err,
            "cls": "baseline" if row.get("baseline") else "failed" if err else "",
        }
        if not err:
            item["cells"] = [{**c, "cls": ""} for c in cells(row, result)]
            if (row.get("labels") or {}).get("quality") == "best":
                item["cells"][0]["cls"] = "best"
            change = ((row.get("change") or {}).get(metric) or {}).get("abs")
            if change is not None and change != 0:
                item["cells"][1]["cls"] = "up" if (change > 0) == up else "down"
            item["chips"] = [
                {"key": k, "text": f"{k} {v}", "cls": chip_class(v)}
                for k, v in (row.get("labels") or {}).items()
            ]
        view.append(item)
    return view


def _plot_quality(result: dict, palette) -> dict | None:
    metric = result["metric"]
    points = [
        {
            "name": r["name"],
            "params": max(r["trainable"], 1),
            "mean": r["quality"][metric]["mean"],
            "std": r["quality"][metric]["std"],
        }
        for r in _ok(result)
        if r.get("trainable") is not None and (r["quality"].get(metric) or {}).get("mean") is not None
    ]
    if not points:
        return None
    base = (result["rows"][0]["quality"].get(metric) or {}).get("mean")
    return {
        "id": "plot-quality",
        "svg": plots.quality_vs_params(points, metric, base, result["greater_is_better"], palette),
        "caption": f"Validation {metric} (mean, bars = std over seeds) against the number of trained "
        "parameters; the dashed line is the untuned base model.",
    }


def _plot_resources(result: dict, palette) -> dict | None:
    rows = _ok(result)
    if not rows:
        return None
    names = [r["name"] for r in rows]
    return {
        "id": "plot-resources",
        "wide": True,
        "svg": plots.resources(
            names,
            [r.get("peak_train_memory_mb") for r in rows],
            [r.get("train_tokens_per_s") for r in rows],
            palette,
        ),
        "caption": "Peak memory of each training run and its training throughput (real tokens per second).",
    }


def _plot_latency(result: dict, palette) -> dict | None:
    rows = [result["rows"][0], *_ok(result)]
    rows = [r for r in rows if r.get("latency_ms")]
    if not rows:
        return None
    names, series = [r["name"] for r in rows], {}
    for b in [str(x) for x in (result.get("bench") or {}).get("batch_sizes") or []]:
        series[f"Latency at batch {b}"] = [_best_latency(r, b) for r in rows]
    if not series:
        return None
    return {
        "id": "plot-latency",
        "wide": True,
        "svg": plots.latency(names, series, palette),
        "caption": "Median forward-pass latency (merged weights where the method merges; less is better).",
    }


def _best_latency(row: dict, b: str) -> float | None:
    lat = row.get("latency_ms") or {}
    for variant in ("merged", "tuned", "base"):
        if b in (lat.get(variant) or {}):
            return lat[variant][b]
    return None


def _plot_losses(result: dict, palette) -> dict | None:
    curves = {
        r["name"]: {seed: c["loss"] for seed, c in (r.get("curves") or {}).items()} for r in _ok(result)
    }
    if not any(points for seeds in curves.values() for points in seeds.values()):
        return None
    return {
        "id": "plot-loss",
        "svg": plots.loss_curves(curves, palette),
        "caption": "Training loss per logged step "
        "(metrics.jsonl of each run; first seed solid, others faint).",
    }


def compare_html(result: dict) -> str:
    palette = plots.colors([r["name"] for r in _methods(result)])
    figures = [f(result, palette) for f in (_plot_quality, _plot_losses, _plot_resources, _plot_latency)]
    runs = "\n".join(
        f"{r['name']} seed {run['seed']}: {run['status']} in {run['seconds']:.0f} s -> {run['run_dir']}"
        + (f" ({run['error']})" if run.get("error") else "")
        for r in _methods(result)
        for run in r.get("runs", [])
    )
    return render(
        "compare.html.j2",
        title=f"deltatune compare: {result['task']} on {result['model']}",
        subtitle=subtitle(result),
        verdict=result["verdict"],
        headers=["method", *headers(result), "labels"],
        rows=table_rows(result, palette),
        table_note=table_note(result),
        plots=[f for f in figures if f],
        findings=result.get("findings") or [],
        method_notes=method_notes(result),
        label_rules=result.get("label_rules", []),
        runs_text=runs,
    )


def write_compare_reports(out_dir: Path, result: dict) -> None:
    write_json_atomic(result, out_dir / "compare.json")
    write_text_atomic(markdown(result), out_dir / "compare.md")
    write_text_atomic(compare_html(result), out_dir / "compare.html")
