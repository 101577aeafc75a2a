"""What a finished run's reports say: its tuned validation section, its scalar metrics, its curves
from ``metrics.jsonl`` (read by the run page, ``eval --baseline`` and ``compare``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

SKIP_METRICS = ("n", "target_tokens", "examples")


def tuned_section(report: dict) -> dict | None:
    """The tuned model's validation results in an ``eval_report.json`` (``tuned``; classifiers call
    it ``validation``)."""
    section = report.get("tuned", report.get("validation"))
    return section if isinstance(section, dict) else None


def scalars(section: dict | None) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in (section or {}).items()
        if isinstance(v, (int, float))
        and not isinstance(v, bool)
        and k not in SKIP_METRICS
        and "_ci_" not in k
        and math.isfinite(float(v))
    }


def read_curves(run_dir: Path, metric: str) -> dict:
    """Training loss per logged step, the validation ``metric`` per evaluation, warnings (events), and for
    RL runs the rollouts' mean score and KL per logged step."""
    out = {"loss": [], "eval": [], "events": [], "rollouts": []}
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("event") in ("overfitting", "early_stop"):
            out["events"].append(rec)
        elif "event" not in rec and isinstance(rec.get("loss"), (int, float)):
            out["loss"].append([rec["step"], rec["loss"]])
            if isinstance(rec.get("score_mean"), (int, float)) and isinstance(rec.get("kl"), (int, float)):
                out["rollouts"].append([rec["step"], rec["score_mean"], rec["kl"]])  # RL runs
        elif isinstance(rec.get(f"eval/{metric}"), (int, float)):
            out["eval"].append([rec["step"], rec[f"eval/{metric}"]])
    return out
