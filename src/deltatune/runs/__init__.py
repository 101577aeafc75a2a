"""Runs: the shared training skeleton, the run directory's life, and trained runs loaded back.

- :mod:`.skeleton`: :func:`train_run`, the one way every task trains;
- :mod:`.directory`: where a run writes, without ever losing an earlier result;
- :mod:`.loaded`: :func:`load_run` / :func:`load_adapter` rebuild a trained model;
- :mod:`.services`: evaluate, predict, generate with and merge a trained model;
- :mod:`.bench`: inference latency, throughput and memory of a trained run;
- :mod:`.compare`: several methods (and seeds) trained and measured side by side.
"""

from __future__ import annotations


def run_config(
    cfg, overwrite: bool = False, allow_data_change: bool = False, preflight: bool = False
) -> dict:
    """Train the run ``cfg`` describes (any task); returns its summary. ``preflight``: log the findings
    of the fast pre-flight checks first (``deltatune train`` does)."""
    from deltatune.runs.skeleton import train_run

    return train_run(cfg, overwrite=overwrite, allow_data_change=allow_data_change, preflight=preflight)
