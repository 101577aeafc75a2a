"""``eval_report.md`` of classification runs: single-label (accuracy, F1, per class, confusion matrix)
or multi-label (micro / macro / samples F1, per label with its decision threshold), plus the lines
the domain work asks for: per-class recall of the untuned base beside the tuned model, and notes
(class weights, the loss, why a metric selected the best checkpoint)."""

from __future__ import annotations

from deltatune.reports.writers import classification_markdown

MULTI_HEADLINE = ("f1_micro", "f1_macro", "f1_samples", "accuracy", "precision_macro", "recall_macro", "n")


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def multilabel_markdown(title: str, sections: dict[str, dict], extra: dict | None = None) -> str:
    """Headline table (``accuracy`` = exact label-set match) and one per-label table per split."""
    lines = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in (extra or {}).items()]
    lines += [""] if extra else []
    lines += ["| split | " + " | ".join(MULTI_HEADLINE) + " |", "|---" * (len(MULTI_HEADLINE) + 1) + "|"]
    lines += [
        f"| {split} | " + " | ".join(_fmt(rep.get(k, "")) for k in MULTI_HEADLINE) + " |"
        for split, rep in sections.items()
    ]
    for split, rep in sections.items():
        thresholds = rep.get("thresholds", {})
        lines += [
            "",
            f"## {split}: per label",
            "",
            "| label | precision | recall | f1 | support | tp | fp | fn | threshold |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, s in rep["per_class"].items():
            lines.append(
                f"| {name} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | "
                f"{s['support']} | {s['tp']} | {s['fp']} | {s['fn']} | {thresholds.get(name, '')} |"
            )
    return "\n".join(lines) + "\n"


def recall_table(base: dict, tuned: dict, split: str = "validation") -> str:
    """Per-class recall of the untuned base and the tuned model on the same split."""
    lines = [
        f"## per-class recall on {split}: base -> tuned",
        "",
        "| label | base | tuned | change |",
        "|---|---|---|---|",
    ]
    for name, s in tuned["per_class"].items():
        b = base["per_class"].get(name, {}).get("recall", 0.0)
        lines.append(f"| {name} | {b:.4f} | {s['recall']:.4f} | {s['recall'] - b:+.4f} |")
    line = ", ".join(
        f"{name} {base['per_class'][name]['recall']:.2f}->{s['recall']:.2f}"
        for name, s in tuned["per_class"].items()
        if name in base["per_class"]
    )
    return "\n".join(lines + ["", f"recall base->tuned: {line}"]) + "\n"


def classify_markdown(
    title: str, sections: dict[str, dict], extra: dict | None = None, notes: dict | None = None
) -> str:
    """The whole report: ``sections`` by split (``base (untuned)``, ``validation``, ``test``, or one
    ``data``), ``extra`` key lines at the top, ``notes`` as a closing list."""
    multi = any("f1_micro" in rep for rep in sections.values())
    text = (multilabel_markdown if multi else classification_markdown)(title, sections, extra)
    base, tuned = sections.get("base (untuned)"), sections.get("validation")
    if base and tuned:
        text += "\n" + recall_table(base, tuned)
    if notes:
        text += "\n## run notes\n\n" + "".join(f"- **{k}**: {v}\n" for k, v in notes.items())
    return text


def run_markdown(report: dict, result) -> str:
    """``eval_report.md`` of a training run from its ``eval_report.json`` content and loop result."""
    p, sel = report["trainable_parameters"], report.get("selection") or {}
    sections = {
        **({"base (untuned)": report["base"]} if "base" in report else {}),
        **{s: report[s] for s in ("validation", "test") if s in report},
    }
    loss = report.get("loss", "cross_entropy")
    notes = {
        "loss": loss + (f" (gamma {report.get('gamma')})" if "focal" in loss else ""),
        "class weights": report.get("class_weights") or "none",
        "label counts (train)": report.get("label_counts"),
        "best checkpoint by": f"{sel.get('metric')} ({sel.get('reason')})",
        **({"windows": report["windows"]} if report.get("windows") else {}),
    }
    extra = {
        "trainable": f"{p['trainable']:,} / {p['total']:,} ({p['percent']:.3f}%)",
        "train tokens/s": f"{result.tokens_per_s:.0f}",
        "peak memory MB": result.peak_memory_mb,
    }
    return classify_markdown(
        f"deltatune classification: {report['method']} on {report['model']}", sections, extra, notes
    )
