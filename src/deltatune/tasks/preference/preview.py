"""``deltatune preview`` of preference data (reward, dpo): both sequences of a pair as the model sees
them, the scored answer tokens marked."""

from __future__ import annotations

from deltatune.config import Config
from deltatune.data.preview import CLOSE, OPEN, render_tokens
from deltatune.losses.lm import IGNORE_INDEX


def preview_pairs(cfg: Config, examples: int = 3, color: bool = False) -> str:
    """The preview of preference data (reward, dpo): each pair's chosen and rejected sequence as the
    model sees them, the answer tokens (the ones scored) highlighted, then per split what the
    template and ``max_length`` did (pairs skipped, prompts and answers truncated, dropped)."""
    from deltatune.data.pairs import load_pair_splits
    from deltatune.data.templates import template_for
    from deltatune.models.loading import load_tokenizer
    from deltatune.tasks.preference.pairs import encode_pairs

    d = cfg.data
    splits, stats = load_pair_splits(d, cfg.train.seed)
    tokenizer = load_tokenizer(cfg.model.name)
    template = template_for(d, tokenizer, [])
    feats = {
        split: encode_pairs(pairs, template, tokenizer, d.max_length, d.truncation, stats.get(split))[0]
        for split, pairs in splits.items()
    }
    lines = [
        f"model {cfg.model.name}; template {template.name}; layout {d.layout}; max_length {d.max_length} "
        f"({d.truncation})",
        "scored answer tokens are " + ("green" if color else f"between {OPEN} and {CLOSE}"),
        "",
    ]
    for k, f in enumerate(feats["train"][:examples]):
        for side in ("chosen", "rejected"):
            ids, labels = f[f"{side}_ids"], f[f"{side}_labels"]
            lines += [
                f"── pair {k + 1} (line {f['line']}), {side}: {len(ids)} tokens, "
                f"{sum(x != IGNORE_INDEX for x in labels)} scored",
                render_tokens(tokenizer, ids, labels, color),
                "",
            ]
    for split, s in stats.items():
        lines.append(
            f"{split}: {s.rows} rows, {s.kept} pairs kept; {s.skipped_prompt_mismatch} without a shared "
            f"prompt skipped (lines {', '.join(map(str, s.skipped_lines[:10]))}); {s.prompt_truncated} "
            f"prompts and {s.answer_truncated} answers truncated, {s.dropped_too_long} dropped as too long, "
            f"{s.dropped_no_answer} without answer tokens"
        )
    return "\n".join(lines)
