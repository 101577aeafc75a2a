"""``eval_report.md`` of an SFT run: base vs tuned metrics and a side-by-side sample table."""

from __future__ import annotations

from deltatune.reports.writers import cell

METRICS = (
    ("loss", "held-out loss"),
    ("perplexity", "perplexity"),
    ("rouge_l", "ROUGE-L"),
    ("bleu", "BLEU"),
    ("exact_match", "exact match"),
    ("mean_words", "answer words"),
)


def sft_markdown(report: dict, result, cfg) -> str:
    p = report["trainable_parameters"]
    lines = [
        f"# deltatune SFT: {report['method']} on {report['model']}",
        "",
        f"- **template**: {report['template']}",
        f"- **trainable**: {p['trainable']:,} / {p['total']:,} ({p['percent']:.3f}%)",
        f"- **train**: {result.steps} steps, {result.train_tokens:,} tokens, "
        f"{result.tokens_per_s:.1f} tokens/s, peak memory {result.peak_memory_mb:.0f} MB",
    ]
    for split, s in report["data"].items():
        lines.append(
            f"- **{split} data**: {s['examples']} examples, {s['truncated']} truncated, "
            f"{s['dropped_too_long']} dropped as too long, {s['dropped_no_target']} without "
            f"response tokens (max_length {cfg.data.max_length})"
        )
    sides = [s for s in ("base", "tuned") if s in report]
    if sides:
        lines += [
            "",
            "## Validation",
            "",
            "| metric | " + " | ".join("base (untuned)" if s == "base" else "tuned" for s in sides) + " |",
            "|---" * (len(sides) + 1) + "|",
        ]
        for key, name in METRICS:
            if all(key in report[s] for s in sides):
                lines.append(f"| {name} | " + " | ".join(f"{report[s][key]:.4f}" for s in sides) + " |")
        n = len(report.get("samples", []))
        if n:
            lines.append(
                f"\nROUGE-L, BLEU and exact match on {n} validation examples "
                f"(greedy={not cfg.generate.do_sample}, max {cfg.generate.max_new_tokens} new tokens)."
            )
    if "test" in report:
        lines += [
            "",
            f"Test: loss {report['test']['loss']:.4f}, perplexity {report['test']['perplexity']:.4f}",
        ]
    samples = report.get("samples", [])[:8]
    if samples and all("answers" in report[s] for s in sides):
        lines += [
            "",
            "## Samples",
            "",
            "| prompt | reference | " + " | ".join("base" if s == "base" else "tuned" for s in sides) + " |",
            "|---|---|" + "---|" * len(sides),
        ]
        for i, sample in enumerate(samples):
            lines.append(
                f"| {cell(sample['prompt'])} | {cell(sample['reference'])} | "
                + " | ".join(cell(report[s]["answers"][i]) for s in sides)
                + " |"
            )
    return "\n".join(lines) + "\n"
