"""What ``deltatune check`` sees of SFT data: each conversation rendered with the run's template, its
length and its trained tokens (see :mod:`deltatune.data.views`)."""

from __future__ import annotations

import time

from deltatune.data.views import (
    DataView,
    Item,
    Rows,
    data_files,
    message_text,
    model_positions,
    view_tokenizer,
)
from deltatune.log import log
from deltatune.losses.lm import IGNORE_INDEX


def sft_view(cfg) -> DataView:
    """Instruction examples rendered with the run's template: text, length, trained tokens (from the
    token cache's table where training streams the data, :func:`_streamed_sft_view`)."""
    from deltatune.data.conversations import load_splits
    from deltatune.data.masks import encode_segments
    from deltatune.data.templates import template_for
    from deltatune.tasks.sft.tokens import sft_cache_route

    d = cfg.data
    if sft_cache_route(d):
        view = _streamed_sft_view(cfg)
        if view is not None:
            return view
    splits = load_splits(d, cfg.train.seed)
    tok = view_tokenizer(cfg)
    template = template_for(d, tok, splits["train"])
    out = {}
    for split, convs in splits.items():
        items = []
        for conv in convs:
            segments = template.segments(conv)
            ids, labels = encode_segments(tok, segments)
            kept = labels[: d.max_length] if d.truncation == "truncate" or len(ids) <= d.max_length else []
            items.append(
                Item(
                    message_text(conv.messages),
                    conv.line,
                    None,
                    len(ids),
                    sum(x != IGNORE_INDEX for x in kept),
                )
            )
        out[split] = items
    return DataView(out, d.max_length, data_files(d), d.truncation, model_positions(cfg))


def _streamed_sft_view(cfg) -> DataView | None:
    """The SFT view from the cached tables training reads (built here when missing: one streamed pass
    per file); None when the data must be read in memory (the in-memory view then raises any error)."""
    from deltatune.data.templates import make_template
    from deltatune.data.token_cache import TokenCache
    from deltatune.errors import ConfigError, DataError
    from deltatune.tasks.sft.tokens import first_is_raw, sft_tables

    d, start, cache = cfg.data, time.perf_counter(), TokenCache()
    try:
        tok = view_tokenizer(cfg)
        tables = sft_tables(
            d, cfg.train.seed, tok, make_template(d.template, tok, raw_data=first_is_raw(d)), cache
        )
    except (DataError, ConfigError, OSError):
        return None
    splits = {}
    for split, (table, pos) in tables.items():
        cols = {c: table.column(c).to_numpy()[pos] for c in ("key", "line", "tokens", "trained")}
        text = table.column("text")
        splits[split] = Rows(
            cols["key"],
            cols["line"],
            cols["tokens"],
            lambda i, text=text, pos=pos: text[int(pos[i])].as_py(),
            trained=cols["trained"],
        )
    log(
        f"token cache {cache.root}: {cache.built} entries built for the checks, the rest reused; "
        f"data read and tokenized in {time.perf_counter() - start:.1f} s"
    )
    return DataView(splits, d.max_length, data_files(d), d.truncation, model_positions(cfg))
