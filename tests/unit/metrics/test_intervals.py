"""Confidence intervals: the Wilson interval of a pairwise accuracy at known values and at the edges."""

import math

import pytest

from deltatune.metrics.intervals import pairwise_accuracy_ci


@pytest.mark.parametrize(
    "k, n, low, high",
    [
        # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score interval)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        (8, 10, 0.4902, 0.9433),
        (10, 10, 0.7225, 1.0),
    ],
)
def test_pairwise_accuracy_ci_known_values(k, n, low, high):
    acc, lo, hi = pairwise_accuracy_ci([True] * k + [False] * (n - k))
    assert acc == pytest.approx(k / n)
    assert (round(lo, 4), round(hi, 4)) == (low, high)


def test_pairwise_accuracy_ci_edge_cases():
    with pytest.raises(ValueError):
        pairwise_accuracy_ci([])
    acc, lo, hi = pairwise_accuracy_ci([True, False] * 500)
    assert acc == 0.5 and lo == pytest.approx(0.5 - 1.96 * math.sqrt(0.25 / 1000), abs=1e-3)
