"""Reports of a code evaluation (:func:`deltatune.codeeval.evaluate.run_code_eval`): markdown for
people, a few lines for the terminal, and the json + md pair written next to a run."""

from __future__ import annotations

from pathlib import Path

from deltatune.io import write_json_atomic, write_text_atomic

FAILING_SHOWN = 25


def headline(report: dict) -> str:
    """``pass@1=0.1200  pass@5=...  execution_rate=...  bleu=...`` on one line."""
    m = report["metrics"]
    keys = [k for k in m if k.startswith("pass@")] + ["execution_rate", "bleu"]
    return "  ".join(f"{k}={m[k]:.4f}" for k in keys) + f"  tasks={m['tasks']}  samples={m['samples']}"


def code_text(report: dict) -> str:
    """What ``deltatune eval --code`` prints: settings, metrics, the first failing tasks."""
    h, m = report["header"], report["metrics"]
    lines = [
        f"{h['benchmark']} ({h['split']}; {h['tasks']} tasks: {h['selection']}) - {h['model']}",
        f"  prompt format: {h['prompt_format']}; {h['decoding']}; {h['samples_per_task']} sample(s) "
        f"per task, at most {h['max_new_tokens']} new tokens",
        "  " + headline(report),
        f"  verdicts: {', '.join(f'{k} {v}' for k, v in sorted(m['verdicts'].items()))}; "
        f"generation {report['timing']['generation_s']:.0f} s, sandbox {report['timing']['sandbox_s']:.0f} s",
    ]
    if report["failing"]:
        lines.append(f"  failing tasks ({len(report['failing'])}), first error each:")
        lines += [f"    {f['task_id']}: {_one_line(f['error'])}" for f in report["failing"][:10]]
        if len(report["failing"]) > 10:
            lines.append(f"    ... {len(report['failing']) - 10} more in the json report")
    return "\n".join(lines)


def code_markdown(report: dict) -> str:
    """The whole report as markdown: settings, metrics, failing tasks, solutions side by side."""
    h, m = report["header"], report["metrics"]
    lines = [
        f"# Code evaluation: {h['benchmark']}",
        "",
        f"- **model**: {h['model']}",
        f"- **data**: {h['data']} ({h['split']})",
        f"- **tasks**: {h['tasks']} ({h['selection']})",
        f"- **prompt format**: {h['prompt_format']}",
        f"- **decoding**: {h['decoding']}; "
        f"{h['samples_per_task']} sample(s) per task; at most {h['max_new_tokens']} new tokens",
        f"- **sandbox**: {h['sandbox']['timeout_s']:g} s per sample; "
        f"{', '.join(h['sandbox']['protections'])}",
        "",
        "Prompt:",
        "",
        "````",
        h["prompt"],
        "````",
        "",
        "| "
        + " | ".join(k for k in m if k.startswith("pass@"))
        + " | execution rate | BLEU | tasks solved |",
        "|---" * (len([k for k in m if k.startswith("pass@")]) + 3) + "|",
        "| "
        + " | ".join(f"{m[k]:.4f}" for k in m if k.startswith("pass@"))
        + f" | {m['execution_rate']:.4f} | {m['bleu']:.2f} | {m['tasks_solved']}/{m['tasks']} |",
        "",
        f"Verdicts of all {m['samples']} samples: "
        + ", ".join(f"{k} {v}" for k, v in sorted(m["verdicts"].items()))
        + ".",
        "",
    ]
    lines += _failing_table(report["failing"])
    lines += _side_by_side(report["examples"])
    return "\n".join(lines) + "\n"


def _failing_table(failing: list[dict]) -> list[str]:
    if not failing:
        return ["No failing task.", ""]
    lines = [
        f"## Failing tasks ({len(failing)})",
        "",
        "| task | first sample | error | all samples |",
        "|---|---|---|---|",
    ]
    for f in failing[:FAILING_SHOWN]:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(f["statuses"].items()))
        lines.append(f"| {f['task_id']} | {f['status']} | {_cell(f['error'])} | {counts} |")
    if len(failing) > FAILING_SHOWN:
        lines.append(f"\n... and {len(failing) - FAILING_SHOWN} more (all in the json report).")
    return lines + [""]


def _side_by_side(examples: list[dict]) -> list[str]:
    lines = ["## Generated solutions next to the reference", ""]
    for e in examples:
        verdict = e["status"] + (f": {_one_line(e['error'])}" if e["error"] else "")
        lines += [
            f"### {e['task_id']} ({verdict})",
            "",
            _quote(e["task"]),
            "",
            "<table><tr><th>generated (first sample)</th><th>reference</th></tr><tr><td>",
            "",
            "```python",
            _code(e["generated"]),
            "```",
            "",
            "</td><td>",
            "",
            "```python",
            _code(e["reference"]),
            "```",
            "",
            "</td></tr></table>",
            "",
        ]
    return lines


def write_code_reports(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """``code_eval_<benchmark>.json`` and ``.md`` in ``out_dir`` (atomic writes)."""
    out_dir = Path(out_dir)
    stem = out_dir / f"code_eval_{report['header']['benchmark']}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    write_json_atomic(report, json_path)
    write_text_atomic(code_markdown(report), md_path)
    return json_path, md_path


def _code(text: str) -> str:
    return "\n".join(line.rstrip() for line in str(text).strip("\r\n").splitlines())  # MBPP has CRLFs


def _one_line(text: str, width: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _cell(text: str) -> str:
    return _one_line(text).replace("|", "\\|")


def _quote(text: str) -> str:
    """A task's text as a quote, or (a HumanEval prompt: code) as a python block."""
    lines = str(text).strip("\n").splitlines()
    if any(line.lstrip().startswith("def ") for line in lines):
        return "\n".join(["```python", *lines, "```"])
    return "\n".join("> " + line for line in lines[:20])
