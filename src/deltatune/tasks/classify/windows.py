"""Long documents as overlapping windows (``data.windows``), and classification features.

A document longer than ``data.max_length`` tokens is cut into windows of ``data.max_length`` tokens
(special tokens included), each starting ``stride`` text tokens after the previous one, the last one
ending at the document's last token::

    text tokens   t0 t1 t2 ... t299           (data.max_length 128, BERT: 126 text tokens + [CLS] [SEP])
    window 0      [CLS] t0   .. t125  [SEP]
    window 1      [CLS] t64  .. t189  [SEP]    stride 64: overlap 62
    window 2      [CLS] t128 .. t253  [SEP]
    window 3      [CLS] t192 .. t299  [SEP]    the last window may be shorter

Every token is in at least one window, and no window is longer than the model can read, whatever
the document's length. A document that fits is one window, token for token the truncated input of
the plain path. Training uses every window (or the first ``max_train_windows``) as an example with the
document's label; evaluation and prediction aggregate the window logits per document
(:func:`deltatune.tasks.classify.evaluate.aggregate_windows`). The tokenizer does the cutting
(``return_overflowing_tokens`` with ``stride`` = overlap), so special tokens come from its own
post-processor, whatever the architecture.
"""

from __future__ import annotations

from deltatune.errors import ConfigError
from deltatune.tasks.classify.examples import Example, tokenize
from deltatune.tasks.classify.multilabel import multi_hot
from deltatune.tasks.classify.options import Windows


def text_tokens_per_window(tokenizer, max_length: int) -> int:
    """Text tokens in one window: ``max_length`` minus the special tokens the tokenizer adds."""
    return max_length - tokenizer.num_special_tokens_to_add(pair=False)


def resolve_stride(windows: Windows, tokenizer, max_length: int) -> int:
    """The stride (filled in when None: half a window), or a ConfigError when it would skip tokens."""
    room = text_tokens_per_window(tokenizer, max_length)
    if room < 1:
        raise ConfigError(
            f"data.max_length: {max_length} leaves no room for text in a window after the "
            f"tokenizer's special tokens; raise data.max_length"
        )
    if windows.stride is None:
        windows.stride = max(room // 2, 1)
    if windows.stride > room:
        raise ConfigError(
            f"data.windows.stride: {windows.stride} is more than the {room} text tokens of a "
            f"window (data.max_length {max_length} minus special tokens), so the tokens "
            f"between windows would never be read; set stride to {room} or less"
        )
    return windows.stride


def window_features(
    tokenizer, examples: list[Example], max_length: int, stride: int, max_windows: int | None = None
) -> list[dict]:
    """One feature per window (``input_ids``, ``token_type_ids`` where the tokenizer makes them,
    ``label``, ``doc`` = the example's index), documents in order, windows in order within each."""
    overlap = text_tokens_per_window(tokenizer, max_length) - stride
    enc = tokenizer(
        [e.text for e in examples],
        truncation=True,
        max_length=max_length,
        stride=overlap,
        return_overflowing_tokens=True,
    )
    feats, per_doc = [], {}
    for k, doc in enumerate(enc["overflow_to_sample_mapping"]):
        per_doc[doc] = per_doc.get(doc, 0) + 1
        if max_windows is not None and per_doc[doc] > max_windows:
            continue
        f = {"input_ids": enc["input_ids"][k], "label": examples[doc].label, "doc": doc}
        if "token_type_ids" in enc:
            f["token_type_ids"] = enc["token_type_ids"][k]
        feats.append(f)
    return feats


def encode_examples(
    tokenizer,
    examples: list[Example],
    max_length: int,
    windows: Windows | None = None,
    num_labels: int | None = None,
    training: bool = False,
) -> list[dict]:
    """Features of classification examples: truncated (no ``windows``) or windowed; multi-label
    class-id tuples become (C,) 0/1 targets (``num_labels`` = C)."""
    if windows is None:
        feats = tokenize(tokenizer, examples, max_length)
    else:
        stride = resolve_stride(windows, tokenizer, max_length)
        feats = window_features(
            tokenizer, examples, max_length, stride, windows.max_train_windows if training else None
        )
    for f in feats:
        if isinstance(f["label"], tuple):
            f["label"] = multi_hot(f["label"], num_labels)
    return feats


def document_count(feats: list[dict]) -> int:
    """Documents behind ``feats`` (windows of one document count once)."""
    return len({f["doc"] for f in feats}) if feats and "doc" in feats[0] else len(feats)
