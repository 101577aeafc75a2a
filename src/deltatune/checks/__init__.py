"""Pre-flight checks: read the actual data and config of a run and say, with evidence and a fix,
what is likely to waste the run or mislead its numbers (``deltatune check CONFIG``; ``train`` runs
the fast ones first).

Checks (each in :mod:`.data_checks`, :mod:`.config_checks` or :mod:`.probe`):

================  ====  =======================================================================
check             fast  finds
================  ====  =======================================================================
imbalance         yes   one class far more frequent than another (ratio >= 3:1)
metric            yes   accuracy selecting checkpoints on imbalanced labels
duplicates        yes   exact and near-duplicate training rows (same text after normalisation,
                        or TF-IDF cosine >= 0.9), and duplicates with different labels
leakage           yes   validation/test rows that also appear (exactly or nearly) in train
truncation        yes   examples longer than ``data.max_length`` (how many, how many tokens lost)
validation        yes   no validation data (no best checkpoint, no early stopping, no base vs tuned)
learning_rate     yes   a learning rate more than 10x away from the method's default
no_trained_tokens yes   SFT/preference examples whose template leaves no token to train on
memory            no    a batch whose measured step (the heaviest batch, one real optimizer step)
                        would not fit in the memory available
================  ====  =======================================================================

Data checks need the task to describe its examples (``TaskSpec.inspect``); tasks without it get the
config checks only.
"""

from __future__ import annotations

from deltatune.checks.findings import CheckReport, Finding

__all__ = ["CheckReport", "Finding", "format_report", "run_checks"]


def run_checks(cfg, slow: bool = True, memory_limit_mb: float | None = None) -> CheckReport:
    """All checks of ``cfg`` (``slow=False``: without the probe step that loads the model)."""
    from deltatune.checks import config_checks, data_checks
    from deltatune.data.views import view_for

    report = CheckReport()
    report.findings += config_checks.run(cfg, report)
    view = view_for(cfg)
    if view is None:
        report.notes.append(
            f"task {cfg.task} does not describe its examples for data checks; config checks only"
        )
    else:
        report.findings += data_checks.run(cfg, view, report)
    if slow:
        from deltatune.checks.probe import probe_memory

        report.findings += probe_memory(cfg, report, memory_limit_mb)
    order = {"error": 0, "warning": 1, "info": 2}
    report.findings.sort(key=lambda f: order.get(f.severity, 3))
    return report


def format_report(report: CheckReport, verbose: bool = True) -> str:
    """Findings for a terminal: severity, title, evidence, fix; then what ran."""
    lines = []
    for f in report.findings:
        lines += [f"{f.severity.upper():<8}{f.title}", f"        {f.evidence}", f"        fix: {f.fix}", ""]
    if verbose:
        lines += [f"note: {n}" for n in report.notes]
        lines.append(
            f"checks run: {', '.join(report.ran)}; "
            f"{len(report.findings) or 'no'} finding{'' if len(report.findings) == 1 else 's'}"
        )
    return "\n".join(lines).strip()
