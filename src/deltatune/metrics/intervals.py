"""Confidence intervals of measured rates (pure functions)."""

from __future__ import annotations

import math

Z_95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def pairwise_accuracy_ci(correct: list[bool], z: float = Z_95) -> tuple[float, float, float]:
    """Accuracy of n pairwise judgements with its Wilson score interval (95% by default):

        ``(p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)``

    Wilson (1927), https://doi.org/10.1080/01621459.1927.10502953; recommended over the normal
    (Wald) interval and less conservative than exact Clopper–Pearson by Newcombe (1998),
    https://doi.org/10.1002/(SICI)1097-0258(19980430)17:8<857::AID-SIM777>3.0.CO;2-E.
    Stays inside [0, 1] and is not empty at 0 or n successes. Returns (accuracy, low, high).
    """
    n = len(correct)
    if n == 0:
        raise ValueError("pairwise_accuracy_ci needs at least one pair")
    p = sum(bool(c) for c in correct) / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)
