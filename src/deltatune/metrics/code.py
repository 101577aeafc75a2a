"""Execution metrics of generated code: pass@k (unbiased) per task and averaged."""

from __future__ import annotations


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from ``n`` samples of which ``c`` passed.

    pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k / i), the probability that at least
    one of k samples drawn without replacement from the n passes. The product form avoids the huge
    binomials (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", Fig. 3,
    https://arxiv.org/abs/2107.03374).
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}: c counts the passing samples")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got n={n}, k={k}: sample at least k completions")
    if n - c < k:
        return 1.0  # every k-subset holds a passing sample
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def mean_pass_at_k(results_per_task, k: int) -> float:
    """Mean of :func:`pass_at_k` over tasks.

    ``results_per_task``: one sequence per task (or a dict task -> sequence) of its samples' results,
    each a bool or anything with a ``passed`` attribute (a sandbox verdict).
    """
    tasks = list(results_per_task.values() if isinstance(results_per_task, dict) else results_per_task)
    if not tasks:
        raise ValueError("mean_pass_at_k needs at least one task")
    scores = []
    for samples in tasks:
        passed = [bool(getattr(s, "passed", s)) for s in samples]
        scores.append(pass_at_k(len(passed), sum(passed), k))
    return sum(scores) / len(scores)
