"""Evaluation reports: ``eval_report.json`` (machine) and ``eval_report.md`` (people)."""

from __future__ import annotations

from pathlib import Path

from deltatune.io import write_json_atomic, write_text_atomic


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def classification_markdown(title: str, sections: dict[str, dict], extra: dict | None = None) -> str:
    """Markdown for one or more evaluated splits: headline metrics, per-class table, confusion matrix."""
    lines = [f"# {title}", ""]
    for key, value in (extra or {}).items():
        lines.append(f"- **{key}**: {value}")
    if extra:
        lines.append("")
    headline = ["accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "n"]
    lines += ["| split | " + " | ".join(headline) + " |", "|---" * (len(headline) + 1) + "|"]
    for split, rep in sections.items():
        lines.append(f"| {split} | " + " | ".join(_fmt(rep.get(k, "")) for k in headline) + " |")
    for split, rep in sections.items():
        lines += [
            "",
            f"## {split}: per class",
            "",
            "| label | precision | recall | f1 | support |",
            "|---|---|---|---|---|",
        ]
        for name, s in rep["per_class"].items():
            lines.append(
                f"| {name} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | {s['support']} |"
            )
        cm = rep["confusion_matrix"]
        lines += [
            "",
            f"## {split}: confusion matrix (rows = true, columns = predicted)",
            "",
            "| true \\ pred | " + " | ".join(cm["labels"]) + " |",
            "|---" * (len(cm["labels"]) + 1) + "|",
        ]
        for name, row in zip(cm["labels"], cm["matrix"]):
            lines.append(f"| {name} | " + " | ".join(str(x) for x in row) + " |")
    return "\n".join(lines) + "\n"


def scalar_line(report: dict, title: str = "") -> str:
    """``key=value`` pairs of a flat report on one line (what ``deltatune eval`` prints)."""
    return "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in report.items())


def write_reports(run_dir: Path, report: dict, markdown: str, stem: str = "eval_report") -> None:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>.html`` (plots of ``metrics.jsonl`` and of the report;
    a failure to draw them is logged, never the end of a finished run)."""
    write_json_atomic(report, run_dir / f"{stem}.json")
    write_text_atomic(markdown, run_dir / f"{stem}.md")
    try:
        from deltatune.reports.run_html import run_html

        write_text_atomic(run_html(run_dir, report), run_dir / f"{stem}.html")
    except Exception as exc:  # noqa: BLE001 - the report is advice; the trained run must not be lost
        from deltatune.log import log

        log(f"{stem}.html not written ({type(exc).__name__}: {exc}); the .json and .md reports are complete")


def cell(text: str, limit: int = 300) -> str:
    """Text for one markdown table cell: newlines shown as ⏎, pipes escaped, cut at ``limit``."""
    text = " ".join(text.replace("\r", "").replace("\n", " ⏎ ").split())
    if len(text) > limit:
        text = text[:limit] + " …"
    return text.replace("|", "\\|")
