"""Evaluating an RL policy on held-out prompts: its greedy answers scored by the run's reward, the win
rate over the base model's answers, and a few answers side by side."""

from __future__ import annotations

from deltatune.data.masks import prompt_ids
from deltatune.inference.generation import generate_texts


def score_answers(
    model, tokenizer, template, prompts: list[list[dict]], reward, settings, seed: int = 0
) -> dict:
    """Greedy answers to ``prompts`` and their rewards: ``{"answers", "scores", "score", "words"}``."""
    ids = [prompt_ids(tokenizer, template, p) for p in prompts]
    answers = generate_texts(model, tokenizer, ids, settings, seed=seed)
    scores = reward(prompts, answers)
    return {
        "score": sum(scores) / max(len(scores), 1),
        "words": sum(len(a.split()) for a in answers) / max(len(answers), 1),
        "answers": answers,
        "scores": scores,
    }


def win_rate(tuned: list[float], base: list[float]) -> float:
    """Share of prompts where the tuned answer scores higher than the base answer (ties count half)."""
    wins = sum(1.0 if t > b else 0.5 if t == b else 0.0 for t, b in zip(tuned, base))
    return wins / max(len(tuned), 1)


def rl_markdown(report: dict, prompts: list[list[dict]], title: str, extra: dict, samples: int = 6) -> str:
    from deltatune.reports.writers import cell

    sides = [s for s in ("base", "tuned") if s in report]
    lines = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in extra.items()] + [""]
    if sides:
        lines += [
            "| | " + " | ".join(sides) + " |",
            "|---" * (len(sides) + 1) + "|",
            "| mean reward (greedy, held-out prompts) | "
            + " | ".join(f"{report[s]['score']:.4f}" for s in sides)
            + " |",
            "| answer words | " + " | ".join(f"{report[s]['words']:.1f}" for s in sides) + " |",
        ]
        if "win_rate" in report.get("tuned", {}):
            lines.append(
                f"\nWin rate of tuned over base answers (by the reward): {report['tuned']['win_rate']:.3f}"
            )
    if len(sides) == 2:
        lines += [
            "",
            "## Answers",
            "",
            "| prompt | base | reward | tuned | reward |",
            "|---|---|---|---|---|",
        ]
        for i, prompt in enumerate(prompts[:samples]):
            b, t = report["base"], report["tuned"]
            lines.append(
                f"| {cell(prompt[-1]['content'], 150)} | {cell(b['answers'][i], 200)} | {b['scores'][i]:.3f} "
                f"| {cell(t['answers'][i], 200)} | {t['scores'][i]:.3f} |"
            )
    return "\n".join(lines) + "\n"
