"""What the data checks see of a task's data: per split, each example's text (as compared for
duplicates and leakage), its labels, its length in tokens before ``max_length``, and how many of its
tokens the loss trains on. A task provides this through ``TaskSpec.inspect``; the builders for the
tasks shipped with deltatune are here (they read the data exactly as training does, and load only the
tokenizer)."""

from __future__ import annotations

from dataclasses import dataclass, field

from deltatune.losses.lm import IGNORE_INDEX


@dataclass
class Item:
    text: str
    line: int | None = None
    labels: tuple[str, ...] | None = None    # class names (classification); None elsewhere
    tokens: int = 0                           # length before max_length
    trained: int | None = None                # tokens trained after the length policy (None: n/a)


@dataclass
class DataView:
    splits: dict[str, list[Item]]
    max_length: int
    files: dict[str, str] = field(default_factory=dict)   # split -> where it comes from
    policy: str = "truncate"                  # what happens to longer examples: truncate | drop | windows
    model_positions: int | None = None        # longest input the model takes, when known


def view_for(cfg) -> DataView | None:
    from deltatune.tasks import get_task

    inspect = getattr(get_task(cfg.task), "inspect", None)
    return inspect(cfg) if inspect is not None else None


def _tokenizer(cfg):
    from deltatune.models.loading import load_tokenizer

    return load_tokenizer(cfg.model.name)


def _files(d) -> dict[str, str]:
    out = {"train": d.train}
    if d.validation:
        out["validation"] = d.validation
    elif d.validation_split:
        out["validation"] = f"the {d.validation_split:g} split of {d.train}"
    if d.test or getattr(d, "test_split", None):
        out["test"] = d.test or f"the {d.test_split:g} split of {d.train}"
    return out


def classify_view(cfg) -> DataView:
    """Classification examples as the recipe reads them (same splits and sample)."""
    from deltatune.data.classify import load_classification_data

    d = cfg.data
    multi = getattr(d, "multi_label", False)
    extra = {"test_split": getattr(d, "test_split", None)} if hasattr(d, "test_split") else {}
    if multi:
        extra["label_separator"] = d.label_separator
    data = load_classification_data(d.train, d.validation, d.test, d.validation_split, d.text_field,
                                    d.text_pair_field, d.label_field, d.label_names, cfg.train.seed,
                                    d.max_train_samples, fmt=d.format, **extra)
    tok, names = _tokenizer(cfg), list(data.labels.names)
    splits = {}
    for split, examples in (("train", data.train), ("validation", data.validation), ("test", data.test)):
        if not examples:
            continue
        pairs = [e.text_pair for e in examples] if examples[0].text_pair is not None else None
        lengths = [len(ids) for ids in tok([e.text for e in examples], pairs, truncation=False)["input_ids"]]
        splits[split] = [Item(e.text + (f" || {e.text_pair}" if e.text_pair is not None else ""), e.line,
                              _names(e.label, names), n) for e, n in zip(examples, lengths)]
    return DataView(splits, d.max_length, _files(d), "windows" if getattr(d, "windows", None) else "truncate",
                    _positions(cfg))


def _names(label, names: list[str]) -> tuple[str, ...] | None:
    if label is None:
        return None
    return tuple(names[i] for i in label) if isinstance(label, tuple) else (names[label],)


def _positions(cfg) -> int | None:
    try:
        from transformers import AutoConfig

        from deltatune.models.loading import resolve_model_path

        mc = AutoConfig.from_pretrained(resolve_model_path(cfg.model.name))
        return getattr(mc, "max_position_embeddings", None) or getattr(mc, "n_positions", None)
    except Exception:  # noqa: BLE001 - a hint only; the run itself checks max_length against the model
        return None


def sft_view(cfg) -> DataView:
    """Instruction examples rendered with the run's template: text, length, trained tokens."""
    from deltatune.data.conversations import load_splits
    from deltatune.data.sft import encode_segments, template_for

    d = cfg.data
    splits = load_splits(d, cfg.train.seed)
    tok = _tokenizer(cfg)
    template = template_for(d, tok, splits["train"])
    out = {}
    for split, convs in splits.items():
        items = []
        for conv in convs:
            segments = template.segments(conv)
            ids, labels = encode_segments(tok, segments)
            kept = labels[:d.max_length] if d.truncation == "truncate" or len(ids) <= d.max_length else []
            items.append(Item(_content(conv.messages), conv.line, None, len(ids),
                              sum(x != IGNORE_INDEX for x in kept)))
        out[split] = items
    return DataView(out, d.max_length, _files(d), d.truncation, _positions(cfg))


def _content(messages: list[dict]) -> str:
    """The words of a conversation without its template (what makes two examples the same)."""
    return "\n".join(str(m.get("content", "")) for m in messages)


def pairs_view(cfg) -> DataView:
    """Preference pairs: prompt + both answers as text; length of the longer sequence; scored tokens
    of the shorter-scored answer."""
    from deltatune.data.preference import encode_pairs, load_pair_splits
    from deltatune.data.sft import template_for

    d = cfg.data
    splits, _ = load_pair_splits(d, cfg.train.seed)
    tok = _tokenizer(cfg)
    template = template_for(d, tok, [])
    out = {}
    for split, pairs in splits.items():
        texts = {p.line: f"{_content(p.prompt)}\n{p.chosen}\n{p.rejected}" for p in pairs}
        full, _ = encode_pairs(pairs, template, tok, None)
        cut = {f["line"]: f for f in encode_pairs(pairs, template, tok, d.max_length, d.truncation)[0]}
        items = []
        for f in full:
            kept = cut.get(f["line"])
            trained = 0 if kept is None else min(sum(x != IGNORE_INDEX for x in kept[f"{s}_labels"])
                                                 for s in ("chosen", "rejected"))
            items.append(Item(texts[f["line"]], f["line"], None, max(len(f["chosen_ids"]), len(f["rejected_ids"])), trained))
        out[split] = items
    return DataView(out, d.max_length, _files(d), d.truncation, _positions(cfg))
