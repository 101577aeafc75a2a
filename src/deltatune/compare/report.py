"""A comparison as text: the cells of its table, ``compare.md`` (the table and the verdict) and the
plain-text table ``deltatune compare`` prints. ``compare.html`` is :mod:`.compare_html`."""

from __future__ import annotations

import json

from deltatune.compare.labels import fmt_quality

GOOD = {"tiny", "small", "low", "fast", "none", "none once merged", "best", "on par"}
BAD = {"large", "high", "slow", "large once merged", "lower", "no gain"}


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _num(v, fmt: str) -> str:
    return "n/a" if v is None else fmt.format(v)


def batch_sizes(result: dict) -> list[str]:
    return [str(b) for b in ((result.get("bench") or {}).get("batch_sizes") or [])]


def _latency(row: dict, b: str) -> dict:
    """Merged latency first where the method merges (what serving would use), unmerged as the note."""
    lat = row.get("latency_ms") or {}
    main = (lat.get("tuned") or lat.get("base") or {}).get(b)
    merged = (lat.get("merged") or {}).get(b)
    if main is None:
        return {"text": "n/a", "sub": ""}
    if merged is None:
        return {"text": f"{main:.1f} ms", "sub": ""}
    return {"text": f"{merged:.1f} ms merged", "sub": f"{main:.1f} ms unmerged"}


def _change(row: dict, metric: str) -> str:
    c = (row.get("change") or {}).get(metric) or {}
    if c.get("abs") is None:
        return "—" if row.get("baseline") else "n/a"
    rel = f" ({c['rel']:+.1%})" if c.get("rel") is not None else ""
    return f"{c['abs']:+.3f}{rel}"


def extra_metrics(result: dict) -> list[str]:
    return result["metrics"][1:2]


def headers(result: dict) -> list[str]:
    return [
        result["metric"],
        "change vs base",
        *extra_metrics(result),
        "trainable parameters",
        "saved size",
        "training peak memory",
        "training time",
    ] + [f"latency batch {b}" for b in batch_sizes(result)]


def cells(row: dict, result: dict) -> list[dict]:
    """The row's cells after the name, as {text, sub} (sub: a second, smaller line)."""
    base = bool(row.get("baseline"))
    q = row.get("quality") or {}
    pct = row.get("trainable_percent")
    trainable = "0" if base else "n/a" if row.get("trainable") is None else f"{row['trainable']:,}"
    mem, secs, tps = row.get("peak_train_memory_mb"), row.get("train_seconds"), row.get("train_tokens_per_s")
    texts = [
        fmt_quality(q.get(result["metric"])),
        _change(row, result["metric"]),
        *[fmt_quality(q.get(m)) for m in extra_metrics(result)],
    ]
    out = [{"text": t, "sub": ""} for t in texts]
    out.append({"text": trainable, "sub": "" if base or pct is None else f"{pct:.3g}% of the model"})
    out += [
        {"text": t, "sub": ""}
        for t in (
            "—" if base else fmt_bytes(row.get("saved_bytes")),
            "—" if base else _num(mem, "{:,.0f} MB"),
        )
    ]
    out.append(
        {
            "text": "—" if base else _num(secs, "{:,.1f} s"),
            "sub": "" if base or tps is None else f"{tps:,.0f} tokens/s",
        }
    )
    return out + [_latency(row, b) for b in batch_sizes(result)]


def flat(cell: dict) -> str:
    return cell["text"] + (f" ({cell['sub']})" if cell["sub"] else "")


def labels_text(row: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in (row.get("labels") or {}).items())


def error_of(row: dict) -> str | None:
    if row["status"] == "failed":
        return "; ".join(row.get("errors") or []) or "no result (see the run's log)"
    return None


def markdown(result: dict) -> str:
    head = ["method", *headers(result), "labels"]
    lines = [
        f"# deltatune compare: {result['task']} on {result['model']}",
        "",
        subtitle(result),
        "",
        "## At a glance",
        "",
        *[f"- {v}" for v in result["verdict"]],
        "",
        "## Methods side by side",
        "",
        "| " + " | ".join(head) + " |",
        "|---" * len(head) + "|",
    ]
    for row in result["rows"]:
        err = error_of(row)
        body = (
            ["**failed**: " + err.replace("|", "\\|")] + [""] * (len(head) - 2)
            if err
            else [flat(c) for c in cells(row, result)] + [labels_text(row)]
        )
        lines.append(f"| {row['name']} | " + " | ".join(body) + " |")
    lines += [
        "",
        table_note(result),
        "",
        "## Notes",
        "",
        *[f"- {n}" for n in method_notes(result)],
        "",
        "Labels:",
        "",
        *[f"- {r}" for r in result.get("label_rules", [])],
    ]
    for f in result.get("findings") or []:
        lines += ["", f"**Check: {f['title']}** {f['evidence']} Fix: {f['fix']}"]
    return "\n".join(lines) + "\n"


def text_table(result: dict) -> str:
    """The table for a terminal: aligned columns, failures on their own line."""
    head = ["method", *headers(result)]
    body = [[r["name"], *[flat(c) for c in cells(r, result)]] for r in result["rows"] if not error_of(r)]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = [
        "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(line, widths)))
        for line in [head, *body]
    ]
    lines += [f"{r['name']}: FAILED: {error_of(r)}" for r in result["rows"] if error_of(r)]
    return "\n".join(lines)


def auto_passes(task: str | None) -> str:
    from deltatune.errors import ConfigError
    from deltatune.tasks import get_task

    try:
        min_steps = get_task(task).auto_min_steps if task else 0
    except ConfigError:  # a task no longer registered: say what auto does in general
        return "one pass, more on small data"
    return f"one pass, more while a pass is under {min_steps} steps" if min_steps else "one pass"


def subtitle(result: dict) -> str:
    t = result.get("train") or {}
    epochs = t.get("epochs")
    budget = (
        f"{t.get('max_steps')} steps"
        if t.get("max_steps")
        else f"{epochs:g} epoch{'' if epochs == 1 else 's'}"
        if isinstance(epochs, (int, float))
        else f"epochs auto ({auto_passes(result.get('task'))})"
        if epochs == "auto"
        else ""
    )
    seeds = result["seeds"]
    data = ", ".join(f"{k.removeprefix('data.')} {v}" for k, v in result["data"].items())
    return (
        f"Config {result.get('config') or '(given in code)'}; data: {data}; "
        f"same budget for every method: {budget}, batch {t.get('batch_size')} x {t.get('grad_accum')}; "
        f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))}); "
        "quality on the validation data."
    )


def table_note(result: dict) -> str:
    bc = result.get("bench_conditions") or {}
    lat = (
        f"Latency: median of {bc['repeats']} forward passes after {bc['warmup']} warm-up passes on "
        f"{bc['seq_len']}-token inputs, at batch sizes {', '.join(map(str, bc['batch_sizes']))}; "
        "'merged' = the adapter folded into the base weights. "
        if bc
        else "Inference was not benched. "
    )
    memory = (
        "CUDA memory allocated"
        if "CUDA" in str(bc.get("memory_note"))
        else "resident memory of the run process"
    )
    return (
        lat + "Quality: mean ± standard deviation over seeds (a single seed shows no ±); change vs base = "
        "tuned mean − untuned base mean (relative in brackets). Train peak memory = peak "
        f"{memory}; saved size = the adapter (or, for full fine-tuning, the whole model) on disk."
    )


def method_notes(result: dict) -> list[str]:
    notes = []
    for row in result["rows"]:
        if row.get("baseline"):
            continue
        opts = {k: v for k, v in (row.get("options") or {}).items() if k != "name"}
        notes.append(
            f"{row['name']}: method {row['method']}"
            + (f" {json.dumps(opts)}" if opts else "")
            + f", learning rate {row['learning_rate']:g} ({row['lr_source']})"
            + (f"; warnings: {'; '.join(row['warnings'])}" if row.get("warnings") else "")
            + (f"; bench failed: {row['bench_error']}" if row.get("bench_error") else "")
        )
    return notes


def chip_class(value: str) -> str:
    return (
        "good"
        if value in GOOD
        else "bad"
        if value in BAD
        else "warn"
        if value in ("medium", "small overhead")
        else ""
    )


def summary_text(result: dict) -> str:
    """What ``deltatune compare`` and ``deltatune demo`` print: the table, the verdict, the checks'
    findings."""
    lines = [text_table(result), "", *[f"- {v}" for v in result["verdict"]]]
    lines += [
        f"- data check ({f['severity']}): {f['title']}: {f['evidence'][:160]}"
        for f in result.get("findings") or []
    ]
    return "\n".join(lines)
