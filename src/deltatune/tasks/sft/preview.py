"""``deltatune preview CONFIG``: show SFT examples exactly as the model will see them.

A wrong template or loss mask trains silently for hours. The preview renders a few examples from the
token ids themselves (so what you read is what is trained), trained tokens highlighted, plus length
statistics and how many examples ``max_length`` truncates or drops. Only the tokenizer is loaded.
"""

from __future__ import annotations

from deltatune.config import Config
from deltatune.data.preview import CLOSE, OPEN, render_tokens
from deltatune.losses.lm import IGNORE_INDEX


def preview(cfg: Config, examples: int = 3, color: bool = False) -> str:
    """The preview text for ``cfg`` (a config with task: sft)."""
    from deltatune.data.conversations import load_splits
    from deltatune.data.masks import apply_max_length, encode_segments
    from deltatune.data.templates import template_for
    from deltatune.errors import ConfigError
    from deltatune.models.loading import load_tokenizer
    from deltatune.tasks.sft.packing import length_stats, pack

    if not hasattr(cfg.data, "layout"):
        raise ConfigError(f"task: preview shows instruction (SFT-style) data; task {cfg.task} has none")
    d = cfg.data
    splits = load_splits(d, cfg.train.seed)
    tokenizer = load_tokenizer(cfg.model.name)
    template = template_for(d, tokenizer, splits["train"])
    convs = splits["train"]
    lines = [
        f"model {cfg.model.name}; template {template.name}; layout {d.layout}; "
        f"max_length {d.max_length} ({d.truncation}); packing {d.packing}",
        "trained tokens are "
        + ("green" if color else f"between {OPEN} and {CLOSE}")
        + "; everything else is context only",
        "",
    ]
    for k, conv in enumerate(convs[:examples]):
        segments = template.segments(conv)
        ids, labels = encode_segments(tokenizer, segments)
        exact = tokenizer.decode(ids) == "".join(t for t, _ in segments)
        n_trained = sum(x != IGNORE_INDEX for x in labels)
        cut = (
            ""
            if len(ids) <= d.max_length
            else f"; truncated to {d.max_length}"
            if d.truncation == "truncate"
            else "; DROPPED from training (longer than max_length)"
        )
        lines += [
            f"── example {k + 1} (line {conv.line}): {len(ids)} tokens, {n_trained} trained{cut}"
            + ("" if exact else "; WARNING: decoding the ids does not give the rendered text"),
            render_tokens(tokenizer, ids[: d.max_length], labels[: d.max_length], color),
            "",
        ]
    for split, split_convs in splits.items():
        full = [
            dict(zip(("input_ids", "labels"), encode_segments(tokenizer, template.segments(c))))
            for c in split_convs
        ]  # uncut; then the same length policy as training
        lengths = [len(f["input_ids"]) for f in full]
        trained = sum(sum(x != IGNORE_INDEX for x in f["labels"]) for f in full)
        feats, stats = apply_max_length(full, d.max_length, d.truncation)
        ls = length_stats(lengths)
        lines.append(
            f"{split}: {stats.examples} examples; tokens per example min {ls.get('min')} "
            f"median {ls.get('median')} mean {ls.get('mean')} p95 {ls.get('p95')} max {ls.get('max')}; "
            f"{trained / max(sum(lengths), 1):.0%} of tokens trained"
        )
        over = sum(n > d.max_length for n in lengths)
        lines.append(
            f"  max_length {d.max_length}: {over} longer ({stats.truncated} truncated, "
            f"{stats.dropped_too_long} dropped); {stats.dropped_no_target} left without "
            f"response tokens and dropped; {stats.kept} kept"
        )
        if d.packing and split == "train":
            rows = pack(feats, d.max_length, cfg.train.seed)
            fill = sum(len(r["input_ids"]) for r in rows) / max(len(rows) * d.max_length, 1)
            lines.append(
                f"  packing: {len(feats)} examples in {len(rows)} rows of {d.max_length} "
                f"tokens ({fill:.0%} filled)"
            )
    return "\n".join(lines)
