"""Text-generation metrics: ROUGE-L, BLEU, exact match (rouge_score and sacrebleu do the arithmetic).

Every function takes ``predictions`` and ``references`` as equally long lists of strings, one
reference per prediction.
"""

from __future__ import annotations

import re

from deltatune.metrics.registry import metrics_of, register_metric

_TRAILING_PUNCTUATION = ".!?"


@register_metric("rouge_l", kind="text")
def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 over the pairs, in [0, 1] (Porter stemming on, as in most SFT papers).

    ROUGE-L F1 = 2 P R / (P + R), with P = LCS / len(prediction) and R = LCS / len(reference), LCS the
    longest common subsequence of words (Lin, 2004, https://aclanthology.org/W04-1013/).
    """
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return float(sum(scores) / len(scores))


@register_metric("bleu", kind="text")
def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU as sacrebleu computes it by default (13a tokenizer, exp smoothing), 0 to 100.

    BLEU = BP * exp(mean_n log p_n), n = 1..4, p_n the clipped n-gram precision over the corpus and BP
    the brevity penalty (Papineni et al., 2002; Post, 2018, https://aclanthology.org/W18-6319/).
    """
    import sacrebleu

    _check_pairs(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


@register_metric("exact_match", kind="text")
def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of predictions equal to their reference after :func:`normalize_answer`, in [0, 1]."""
    _check_pairs(predictions, references)
    hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references))
    return hits / len(predictions)


def normalize_answer(text: str) -> str:
    """Lowercase, collapse whitespace, strip, drop trailing ``.``, ``!`` and ``?``.

    ``"  The  Answer is 42. "`` -> ``"the answer is 42"``.
    """
    text = re.sub(r"\s+", " ", text).strip().lower()
    return text.rstrip(_TRAILING_PUNCTUATION).rstrip()


@register_metric("mean_words", kind="text")
def mean_words(predictions: list[str], references: list[str]) -> float:
    """Mean length of the predictions in whitespace-separated words, which shows answers that ramble
    or stop too early."""
    _check_pairs(predictions, references)
    return sum(len(p.split()) for p in predictions) / len(predictions)


def text_generation_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Every registered text metric: ``rouge_l`` (0-1), ``bleu`` (0-100), ``exact_match`` (0-1),
    ``mean_words``, then any a user or plugin registered (:mod:`deltatune.metrics`)."""
    _check_pairs(predictions, references)
    return {m.name: float(m.fn(predictions, references)) for m in metrics_of("text")}


def _check_pairs(predictions: list[str], references: list[str]) -> None:
    if len(predictions) == 0:
        raise ValueError(
            "no predictions to score: text metrics need at least one (prediction, reference) pair"
        )
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references: "
            "pass exactly one reference string per prediction"
        )


__all__ = ["bleu", "exact_match", "mean_words", "normalize_answer", "rouge_l", "text_generation_metrics"]
