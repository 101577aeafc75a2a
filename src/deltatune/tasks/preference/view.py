"""What ``deltatune check`` sees of preference pairs: prompt and both answers as one text, and the
longer answer's length (see :mod:`deltatune.data.views`)."""

from __future__ import annotations

from deltatune.data.views import DataView, Item, data_files, message_text, model_positions, view_tokenizer
from deltatune.losses.lm import IGNORE_INDEX


def pairs_view(cfg) -> DataView:
    """Preference pairs: prompt + both answers as text; length of the longer sequence; scored tokens
    of the shorter-scored answer."""
    from deltatune.data.pairs import load_pair_splits
    from deltatune.data.templates import template_for
    from deltatune.tasks.preference.pairs import encode_pairs

    d = cfg.data
    splits, _ = load_pair_splits(d, cfg.train.seed)
    tok = view_tokenizer(cfg)
    template = template_for(d, tok, [])
    out = {}
    for split, pairs in splits.items():
        texts = {p.line: f"{message_text(p.prompt)}\n{p.chosen}\n{p.rejected}" for p in pairs}
        full, _ = encode_pairs(pairs, template, tok, None)
        cut = {f["line"]: f for f in encode_pairs(pairs, template, tok, d.max_length, d.truncation)[0]}
        items = []
        for f in full:
            kept = cut.get(f["line"])
            trained = (
                0
                if kept is None
                else min(sum(x != IGNORE_INDEX for x in kept[f"{s}_labels"]) for s in ("chosen", "rejected"))
            )
            items.append(
                Item(
                    texts[f["line"]],
                    f["line"],
                    None,
                    max(len(f["chosen_ids"]), len(f["rejected_ids"])),
                    trained,
                )
            )
        out[split] = items
    return DataView(out, d.max_length, data_files(d), d.truncation, model_positions(cfg))
