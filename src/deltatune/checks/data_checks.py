"""Checks that read the examples (a :class:`~deltatune.checks.views.DataView`): label balance and
the metric that selects checkpoints, duplicates, train/validation overlap, truncation, examples
without trained tokens."""

from __future__ import annotations

import re
from collections import Counter

from deltatune.checks.findings import CheckReport, Finding
from deltatune.checks.views import DataView, Item

IMBALANCE_RATIO = 3.0
"""Largest/smallest class count from which labels count as imbalanced (the classify task switches
its default selection metric to macro-F1 at the same ratio, :mod:`deltatune.data.labels`)."""
NEAR_SIMILARITY = 0.9    # TF-IDF cosine (word 1-2-grams) from which two rows are near-duplicates
NEAR_LIMIT = 20000       # rows compared for near-duplicates (a seeded sample beyond that)
DUPLICATE_SHARE = 0.01   # duplicates above this share of the rows are a warning, else info


def normalise(text: str) -> str:
    """Lower case, punctuation and repeated spaces removed: what "the same text" means here."""
    return " ".join(re.sub(r"[\W_]+", " ", text.lower()).split())


def _quote(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _where(item: Item) -> str:
    return f"line {item.line}" if item.line is not None else "a row"


def label_counts(items: list[Item]) -> Counter:
    return Counter(name for item in items for name in (item.labels or ()))


def imbalance(cfg, view: DataView) -> Finding | None:
    counts = label_counts(view.splits.get("train", []))
    if len(counts) < 2:
        return None
    (big, n_big), (small, n_small) = counts.most_common()[0], counts.most_common()[-1]
    ratio = n_big / max(n_small, 1)
    opts = cfg.task_options()
    handled = getattr(opts, "class_weights", None) or getattr(opts, "loss", "") in ("focal", "binary_focal")
    if ratio < IMBALANCE_RATIO or handled:
        return None
    total = sum(counts.values())
    shown = ", ".join(f"{k} {v} ({v / total:.0%})" for k, v in counts.most_common(6))
    return Finding("imbalance", "warning", "Imbalanced classes",
                   f"training labels: {shown}; '{big}' is {ratio:.1f}x as frequent as '{small}', so a model can "
                   f"score {n_big / total:.0%} accuracy by always answering '{big}'",
                   "weight the loss by class (classify.class_weights: balanced, or classify.loss: focal) and judge "
                   "the run by macro-F1 (train.metric_for_best: f1_macro), which counts every class equally")


def metric(cfg, view: DataView) -> Finding | None:
    counts = label_counts(view.splits.get("train", []))
    if len(counts) < 2 or cfg.train.metric_for_best not in ("accuracy", "f1_micro", "precision_micro", "recall_micro"):
        return None
    ratio = counts.most_common()[0][1] / max(counts.most_common()[-1][1], 1)
    if ratio < IMBALANCE_RATIO or getattr(cfg, "_metric_is_default", False):
        return None  # a default metric switches to macro-F1 by itself on imbalanced labels
    return Finding("metric", "warning", f"{cfg.train.metric_for_best} selects checkpoints on imbalanced labels",
                   f"train.metric_for_best is {cfg.train.metric_for_best} while the largest class is {ratio:.1f}x the "
                   "smallest: the 'best' checkpoint can be one that ignores the small classes",
                   "set train.metric_for_best: f1_macro (or recall_macro when missing a rare class is costly)")


def _near_pairs(a: list[str], b: list[str] | None = None) -> list[tuple[int, int, float]]:
    """(i, j, cosine) of rows at least :data:`NEAR_SIMILARITY` alike (``b``: rows of ``a`` against ``b``).
    Terms in more than 5% of the rows (at least 50) are left out of the vectors: near-duplicates share
    their rare words, and the product of the vectors stays sparse (0.5 s for 8,000 sentences)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if not a or (b is not None and not b):
        return []
    corpus = a + (b or [])
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w+\b",
                          max_df=max(50, int(0.05 * len(corpus))))
    try:
        x = vec.fit_transform(corpus)
    except ValueError:  # no words at all (empty texts)
        return []
    left, right = x[:len(a)], x[len(a):] if b is not None else x[:len(a)]
    s = (left @ right.T).tocoo()
    keep = (s.data >= NEAR_SIMILARITY) & ((s.row < s.col) if b is None else True)
    return list(zip(s.row[keep].tolist(), s.col[keep].tolist(), s.data[keep].tolist()))


def _sample(items: list[Item]) -> list[Item]:
    if len(items) <= NEAR_LIMIT:
        return items
    import random

    return random.Random(0).sample(items, NEAR_LIMIT)


def duplicates(cfg, view: DataView) -> Finding | None:
    items = view.splits.get("train", [])
    first: dict[str, Item] = {}
    exact, conflicts = [], []
    for item in items:
        key = normalise(item.text)
        if key in first:
            exact.append((first[key], item))
            if item.labels is not None and item.labels != first[key].labels:
                conflicts.append((first[key], item))
        else:
            first[key] = item
    pool = _sample(list(first.values()))
    near = [(pool[i], pool[j]) for i, j, _ in _near_pairs([normalise(x.text) for x in pool])]
    if not exact and not near:
        return None
    share = (len(exact) + len(near)) / max(len(items), 1)
    evidence = [f"{len(exact)} of {len(items)} training rows repeat an earlier row (same text after lower-casing "
                "and removing punctuation)" + (f", e.g. {_where(exact[0][1])} = {_where(exact[0][0])}: "
                                               f"{_quote(exact[0][0].text)}" if exact else "")]
    if near:
        a, b = near[0]
        evidence.append(f"{len(near)} more pairs are near-duplicates (TF-IDF cosine >= {NEAR_SIMILARITY}"
                        f"{f', among {NEAR_LIMIT} sampled rows' if len(first) > NEAR_LIMIT else ''}), e.g. "
                        f"{_where(a)} {_quote(a.text)} and {_where(b)} {_quote(b.text)}")
    if conflicts:
        a, b = conflicts[0]
        one = len(conflicts) == 1
        evidence.append(f"{len(conflicts)} duplicate{' carries' if one else 's carry'} a different label than "
                        f"{'its' if one else 'their'} first copy "
                        f"({_where(a)} '{'/'.join(a.labels)}' vs {_where(b)} '{'/'.join(b.labels)}')")
    return Finding("duplicates", "warning" if share >= DUPLICATE_SHARE or conflicts else "info",
                   "Duplicate training rows", "; ".join(evidence),
                   "remove repeated rows (they weigh those examples several times and, when a copy lands in "
                   "validation, inflate the score); resolve rows whose copies disagree on the label")


def leakage(cfg, view: DataView) -> list[Finding]:
    train = view.splits.get("train", [])
    keys = {normalise(x.text) for x in train}
    pool = _sample(train)
    out = []
    for split in ("validation", "test"):
        items = view.splits.get(split) or []
        exact = [x for x in items if normalise(x.text) in keys]
        rest = [x for x in items if normalise(x.text) not in keys]
        near = {i: pool[j] for i, j, _ in _near_pairs([normalise(x.text) for x in rest],
                                                      [normalise(x.text) for x in pool])}
        if not exact and not near:
            continue
        n = len(exact) + len(near)
        example = (f"{_where(exact[0])} {_quote(exact[0].text)}" if exact else
                   f"{_where(rest[next(iter(near))])} {_quote(rest[next(iter(near))].text)} ~ "
                   f"train {_where(next(iter(near.values())))}")
        out.append(Finding("leakage", "warning" if n / len(items) >= DUPLICATE_SHARE else "info",
                           f"{split.title()} rows also in the training data",
                           f"{n} of {len(items)} {split} rows ({view.files.get(split, split)}; {n / len(items):.1%}: "
                           f"{len(exact)} exact, {len(near)} near-duplicate) also appear in train, e.g. {example}; "
                           f"the {split} score then partly measures memorisation",
                           f"remove those rows from the training file (or from {split}) so that {split} measures "
                           "generalisation"))
    return out


def truncation(cfg, view: DataView) -> list[Finding]:
    if view.policy == "windows":
        return []  # long documents are read in overlapping windows, nothing is cut
    out = []
    for split, items in view.splits.items():
        over = [x for x in items if x.tokens > view.max_length]
        if not over:
            continue
        lost = sum(x.tokens - view.max_length for x in over)
        total = sum(x.tokens for x in items)
        longest = max(x.tokens for x in over)
        verb = "drops" if view.policy == "drop" else "truncates"
        p99 = sorted(x.tokens for x in items)[int(0.99 * (len(items) - 1))]
        limit = min(p99, view.model_positions or p99)
        share = sum(x.tokens <= limit for x in items) / len(items)
        room = ", the most the model takes" if limit == view.model_positions else ""
        fix = (f"raise data.max_length to {limit}{room} (covers {share:.0%} of {split} examples); longer "
               "inputs cost more memory and time per example")
        if "windows" in type(cfg.data).model_fields:
            fix += ", or read long documents in overlapping windows (data.windows: {stride: 64})"
        out.append(Finding("truncation", "warning" if len(over) / len(items) >= 0.01 else "info",
                           f"max_length {verb} {split} examples",
                           f"{len(over)} of {len(items)} {split} examples ({len(over) / len(items):.1%}) are longer "
                           f"than data.max_length {view.max_length} (longest {longest} tokens, e.g. {_where(over[0])}); "
                           f"{lost:,} of {total:,} tokens ({lost / max(total, 1):.1%}) are "
                           f"{'dropped' if view.policy == 'drop' else 'cut off'}", fix))
    return out


def no_trained_tokens(cfg, view: DataView) -> list[Finding]:
    out = []
    for split, items in view.splits.items():
        empty = [x for x in items if x.trained == 0]
        if not empty:
            continue
        cut = [x for x in empty if x.tokens > view.max_length]
        template = len(empty) - len(cut)
        causes = []
        if template:
            causes.append(f"{template} because the template gives them no trained (answer) token at all")
        if cut:
            causes.append(f"{len(cut)} because max_length {view.max_length} cuts their answers off")
        every = len(empty) == len(items)
        out.append(Finding("no_trained_tokens", "error" if every and split == "train" else "warning",
                           "No trained tokens" + (" in any example" if every else f" in some {split} examples"),
                           f"{len(empty)} of {len(items)} {split} examples have no token the loss trains on "
                           f"({'; '.join(causes)}), e.g. {_where(empty[0])}: {_quote(empty[0].text, 100)}; "
                           "they are dropped" + ("; nothing would train" if every and split == "train" else ""),
                           "make the template render the answers (check data.layout, data.fields and "
                           "data.template; `deltatune preview CONFIG` marks the trained tokens)"
                           + ("; raise data.max_length" if cut else "")))
    return out


def run(cfg, view: DataView, report: CheckReport) -> list[Finding]:
    found = []
    labelled = any(x.labels for x in view.splits.get("train", []))
    if labelled:
        report.ran += ["imbalance", "metric"]
        found += [f for f in (imbalance(cfg, view), metric(cfg, view)) if f]
    report.ran += ["duplicates", "leakage", "truncation"]
    found += [f for f in (duplicates(cfg, view),) if f] + leakage(cfg, view) + truncation(cfg, view)
    if any(x.trained is not None for items in view.splits.values() for x in items):
        report.ran.append("no_trained_tokens")
        found += no_trained_tokens(cfg, view)
    counts = {s: len(v) for s, v in view.splits.items()}
    report.notes.append("examples read: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return found
