"""Checks that read the examples (a :class:`~deltatune.data.views.DataView`): label balance and
the metric that selects checkpoints, duplicates, train/validation overlap, truncation, examples
without trained tokens."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np

from deltatune.checks.findings import CheckReport, Finding
from deltatune.data.views import DataView, Rows, normalise
from deltatune.losses.classification import auto_weighting

IMBALANCE_RATIO = 3.0
"""Largest/smallest class count from which labels count as imbalanced (a warning, or an info line when
``classify.class_weights: auto`` weighs them, from :data:`AUTO_WEIGHT_RATIO` on)."""
NEAR_SIMILARITY = 0.9  # TF-IDF cosine (word 1-2-grams) from which two rows are near-duplicates
NEAR_LIMIT = 20000  # rows compared for near-duplicates (a seeded sample beyond that)
DUPLICATE_SHARE = 0.01  # duplicates above this share of the rows are a warning, else info


def _quote(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "…")


def label_counts(rows: Rows | None) -> Counter:
    """Rows per class name (a multi-label row counts once for each of its classes)."""
    if rows is None or rows.labels is None:
        return Counter()
    per_set = np.bincount(rows.labels[rows.labels >= 0], minlength=len(rows.label_sets)).tolist()
    counts: Counter = Counter()
    for names, n in zip(rows.label_sets, per_set):
        for name in names:
            counts[name] += n
    return +counts


def imbalance(cfg, view: DataView) -> Finding | None:
    counts = label_counts(view.splits.get("train"))
    if len(counts) < 2:
        return None
    (big, n_big), (small, n_small) = counts.most_common()[0], counts.most_common()[-1]
    ratio = n_big / max(n_small, 1)
    opts = cfg.task_options()
    weights = getattr(opts, "class_weights", None)
    auto = weights == "auto" and auto_weighting(
        list(counts.values()), getattr(cfg.data, "multi_label", False)
    )
    handled = weights not in (None, "none", "auto") or getattr(opts, "loss", "") in ("focal", "binary_focal")
    if ratio < IMBALANCE_RATIO or handled:
        return None
    total = sum(counts.values())
    shown = ", ".join(f"{k} {v} ({v / total:.0%})" for k, v in counts.most_common(6))
    evidence = (
        f"training labels: {shown}; '{big}' is {ratio:.1f}x as frequent as '{small}', so a model can "
        f"score {n_big / total:.0%} accuracy by always answering '{big}'"
    )
    if auto:
        return Finding(
            "imbalance",
            "info",
            "Imbalanced classes: the loss is weighted by class",
            f"{evidence}; classify.class_weights: auto weighs each class n/(C*n_c)",
            "nothing to do; classify.class_weights: none trains unweighted, or give your own weights",
        )
    return Finding(
        "imbalance",
        "warning",
        "Imbalanced classes",
        evidence,
        "weight the loss by class (classify.class_weights: balanced, or classify.loss: focal) and judge "
        "the run by macro-F1 (train.metric_for_best: f1_macro), which counts every class equally",
    )


def metric(cfg, view: DataView) -> Finding | None:
    counts = label_counts(view.splits.get("train"))
    if len(counts) < 2 or cfg.train.metric_for_best not in (
        "accuracy",
        "f1_micro",
        "precision_micro",
        "recall_micro",
    ):
        return None
    ratio = counts.most_common()[0][1] / max(counts.most_common()[-1][1], 1)
    if ratio < IMBALANCE_RATIO or getattr(cfg, "_metric_is_default", False):
        return None  # a default metric switches to macro-F1 by itself on imbalanced labels
    return Finding(
        "metric",
        "warning",
        f"{cfg.train.metric_for_best} selects checkpoints on imbalanced labels",
        f"train.metric_for_best is {cfg.train.metric_for_best} while the largest class is {ratio:.1f}x the "
        "smallest: the 'best' checkpoint can be one that ignores the small classes",
        "set train.metric_for_best: f1_macro (or recall_macro when missing a rare class is costly)",
    )


NEAR_BLOCK = 2000  # rows compared at a time


def _near_pairs(a: list[str], b: list[str] | None = None) -> list[tuple[int, int, float]]:
    """(i, j, cosine) of rows at least :data:`NEAR_SIMILARITY` alike (``b``: rows of ``a`` against ``b``).
    Terms in more than 5% of the rows (at least 50) are left out of the vectors: near-duplicates share
    their rare words, and the product of the vectors stays sparse (0.5 s for 8,000 sentences)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if not a or (b is not None and not b):
        return []
    corpus = a + (b or [])
    vec = TfidfVectorizer(
        ngram_range=(1, 2),
        sublinear_tf=True,
        token_pattern=r"(?u)\b\w+\b",
        max_df=max(50, int(0.05 * len(corpus))),
    )
    try:
        x = vec.fit_transform(corpus)
    except ValueError:  # no words at all (empty texts)
        return []
    left, right = x[: len(a)], (x[len(a) :] if b is not None else x[: len(a)]).T.tocsc()
    out = []
    for start in range(0, len(a), NEAR_BLOCK):  # in blocks of rows: the product's memory stays small
        s = (left[start : start + NEAR_BLOCK] @ right).tocoo()
        row = s.row + start
        keep = (s.data >= NEAR_SIMILARITY) & ((row < s.col) if b is None else True)
        out += zip(row[keep].tolist(), s.col[keep].tolist(), s.data[keep].tolist())
    return out


def _sample(positions) -> list[int]:
    """All ``positions`` (a sequence of ints: list, range or array), or a seeded sample of
    :data:`NEAR_LIMIT` of them."""
    if len(positions) <= NEAR_LIMIT:
        return [int(p) for p in positions]
    return [int(positions[i]) for i in random.Random(0).sample(range(len(positions)), NEAR_LIMIT)]


def _first_copies(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every row the position of the first row with its key, and the first rows in file order."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)], np.sort(first)


def duplicates(cfg, view: DataView) -> Finding | None:
    rows = view.splits.get("train")
    if rows is None or not len(rows):
        return None
    first_of, firsts = _first_copies(rows.keys)
    exact = np.nonzero(first_of != np.arange(len(rows)))[0]  # rows repeating an earlier row, in file order
    conflicts = []
    if rows.labels is not None:
        differ = (rows.labels[exact] >= 0) & (rows.labels[exact] != rows.labels[first_of[exact]])
        conflicts = exact[differ]
    pool = _sample(firsts)
    near = [(pool[i], pool[j]) for i, j, _ in _near_pairs([normalise(rows.text(k)) for k in pool])]
    if not len(exact) and not near:
        return None
    share = (len(exact) + len(near)) / len(rows)
    e = int(exact[0]) if len(exact) else None
    evidence = [
        f"{len(exact)} of {len(rows)} training rows repeat an earlier row (same text after lower-casing "
        "and removing punctuation)"
        + (
            f", e.g. {rows.where(e)} = {rows.where(first_of[e])}: {_quote(rows.text(first_of[e]))}"
            if e is not None
            else ""
        )
    ]
    if near:
        a, b = near[0]
        evidence.append(
            f"{len(near)} more pairs are near-duplicates (TF-IDF cosine >= {NEAR_SIMILARITY}"
            f"{f', among {NEAR_LIMIT} sampled rows' if len(firsts) > NEAR_LIMIT else ''}), e.g. "
            f"{rows.where(a)} {_quote(rows.text(a))} and {rows.where(b)} {_quote(rows.text(b))}"
        )
    if len(conflicts):
        b = int(conflicts[0])
        a = int(first_of[b])
        one = len(conflicts) == 1
        evidence.append(
            f"{len(conflicts)} duplicate{' carries' if one else 's carry'} a different label than "
            f"{'its' if one else 'their'} first copy ({rows.where(a)} '{'/'.join(rows.label_names(a))}' "
            f"vs {rows.where(b)} '{'/'.join(rows.label_names(b))}')"
        )
    return Finding(
        "duplicates",
        "warning" if share >= DUPLICATE_SHARE or len(conflicts) else "info",
        "Duplicate training rows",
        "; ".join(evidence),
        "remove repeated rows (they weigh those examples several times and, when a copy lands in "
        "validation, inflate the score); resolve rows whose copies disagree on the label",
    )


def leakage(cfg, view: DataView) -> list[Finding]:
    train = view.splits.get("train")
    if train is None or not len(train):
        return []
    keys = np.unique(train.keys)
    pool = _sample(range(len(train)))
    pool_texts = None
    out = []
    for split in ("validation", "test"):
        rows = view.splits.get(split)
        if rows is None or not len(rows):
            continue
        seen = np.isin(rows.keys, keys)
        exact, rest = np.nonzero(seen)[0], _sample(np.nonzero(~seen)[0])
        if rest and pool_texts is None:
            pool_texts = [normalise(train.text(k)) for k in pool]
        near = {
            rest[i]: pool[j] for i, j, _ in _near_pairs([normalise(rows.text(k)) for k in rest], pool_texts)
        }
        if not len(exact) and not near:
            continue
        n = len(exact) + len(near)
        if len(exact):
            example = f"{rows.where(exact[0])} {_quote(rows.text(exact[0]))}"
        else:
            i, j = next(iter(near.items()))
            example = f"{rows.where(i)} {_quote(rows.text(i))} ~ train {train.where(j)}"
        sampled = (
            f", near-duplicates among {NEAR_LIMIT} sampled rows"
            if len(rows) - len(exact) > NEAR_LIMIT
            else ""
        )
        out.append(
            Finding(
                "leakage",
                "warning" if n / len(rows) >= DUPLICATE_SHARE else "info",
                f"{split.title()} rows also in the training data",
                f"{n} of {len(rows)} {split} rows ({view.files.get(split, split)}; {n / len(rows):.1%}: "
                f"{len(exact)} exact, {len(near)} near-duplicate{sampled}) also appear in train, e.g. "
                f"{example}; the {split} score then partly measures memorisation",
                f"remove those rows from the training file (or from {split}) so that {split} measures "
                "generalisation",
            )
        )
    return out


def truncation(cfg, view: DataView) -> list[Finding]:
    if view.policy == "windows":
        return []  # long documents are read in overlapping windows, nothing is cut
    out = []
    for split, rows in view.splits.items():
        tokens = rows.tokens
        over = tokens > view.max_length
        n_over = int(over.sum())
        if not n_over:
            continue
        lost = int((tokens[over] - view.max_length).sum())
        total = int(tokens.sum())
        longest = int(tokens[over].max())
        verb = "drops" if view.policy == "drop" else "truncates"
        p99 = int(np.sort(tokens)[int(0.99 * (len(rows) - 1))])
        limit = min(p99, view.model_positions or p99)
        share = float((tokens <= limit).mean())
        room = ", the most the model takes" if limit == view.model_positions else ""
        fix = (
            f"raise data.max_length to {limit}{room} (covers {share:.0%} of {split} examples); longer "
            "inputs cost more memory and time per example"
        )
        if "windows" in type(cfg.data).model_fields:
            fix += ", or read long documents in overlapping windows (data.windows: {stride: 64})"
        out.append(
            Finding(
                "truncation",
                "warning" if n_over / len(rows) >= 0.01 else "info",
                f"max_length {verb} {split} examples",
                f"{n_over} of {len(rows)} {split} examples ({n_over / len(rows):.1%}) are longer "
                f"than data.max_length {view.max_length} (longest {longest} tokens, e.g. "
                f"{rows.where(int(np.argmax(over)))}); {lost:,} of {total:,} tokens "
                f"({lost / max(total, 1):.1%}) are "
                f"{'dropped' if view.policy == 'drop' else 'cut off'}",
                fix,
            )
        )
    return out


def no_trained_tokens(cfg, view: DataView) -> list[Finding]:
    out = []
    for split, rows in view.splits.items():
        if rows.trained is None:
            continue
        empty = np.nonzero(rows.trained == 0)[0]
        if not len(empty):
            continue
        cut = int((rows.tokens[empty] > view.max_length).sum())
        template = len(empty) - cut
        causes = []
        if template:
            causes.append(f"{template} because the template gives them no trained (answer) token at all")
        if cut:
            causes.append(f"{cut} because max_length {view.max_length} cuts their answers off")
        every = len(empty) == len(rows)
        out.append(
            Finding(
                "no_trained_tokens",
                "error" if every and split == "train" else "warning",
                "No trained tokens" + (" in any example" if every else f" in some {split} examples"),
                f"{len(empty)} of {len(rows)} {split} examples have no token the loss trains on "
                f"({'; '.join(causes)}), e.g. {rows.where(empty[0])}: {_quote(rows.text(empty[0]), 100)}; "
                "they are dropped" + ("; nothing would train" if every and split == "train" else ""),
                "make the template render the answers (check data.layout, data.fields and "
                "data.template; `deltatune preview CONFIG` marks the trained tokens)"
                + ("; raise data.max_length" if cut else ""),
            )
        )
    return out


def budget(cfg, view: DataView) -> Finding | None:
    """A run planned with fewer optimizer steps than its method needs to move (``MethodSpec.min_steps``)."""
    import math

    from deltatune.methods.registry import get_method
    from deltatune.tasks import get_task
    from deltatune.training.loop import planned_epochs, steps_per_epoch

    spec, t, train = get_method(cfg.method.name), cfg.train, view.splits.get("train")
    if not spec.min_steps or train is None or not len(train):
        return None
    per_epoch = steps_per_epoch(math.ceil(len(train) / t.batch_size), t.grad_accum)
    epochs = planned_epochs(t.epochs, per_epoch, get_task(cfg.task).auto_min_steps)
    steps = t.max_steps or math.ceil(per_epoch * epochs)
    if steps >= spec.min_steps:
        return None
    return Finding(
        "budget",
        "warning",
        f"Too few steps for {spec.name}",
        f"{steps} optimizer steps are planned ({len(train)} training examples, batch {t.batch_size}"
        f"{f' x {t.grad_accum}' if t.grad_accum > 1 else ''}, "
        f"{f'max_steps {t.max_steps}' if t.max_steps else f'{epochs:g} epoch' + 's' * (epochs != 1)}"
        f"{', by train.epochs auto' if t.epochs == 'auto' and not t.max_steps else ''}); "
        f"{spec.name} was measured to need about "
        f"{spec.min_steps} to move well away from the untuned model (README, defaults sweep)",
        f"train longer (train.epochs or more data, to {spec.min_steps}+ steps), or pick a method that "
        "learns in fewer steps (lora)",
    )


def run(cfg, view: DataView, report: CheckReport) -> list[Finding]:
    found = []
    train = view.splits.get("train")
    if train is not None and train.labels is not None and (train.labels >= 0).any():
        report.ran += ["imbalance", "metric"]
        found += [f for f in (imbalance(cfg, view), metric(cfg, view)) if f]
    report.ran += ["duplicates", "leakage", "truncation"]
    found += [f for f in (duplicates(cfg, view),) if f] + leakage(cfg, view) + truncation(cfg, view)
    if any(rows.trained is not None for rows in view.splits.values()):
        report.ran.append("no_trained_tokens")
        found += no_trained_tokens(cfg, view)
    report.ran.append("budget")
    found += [f for f in (budget(cfg, view),) if f]
    counts = {s: len(v) for s, v in view.splits.items()}
    report.notes.append("examples read: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return found
