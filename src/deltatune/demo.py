"""`deltatune demo`: LoRA on the bundled MiniLM with a shipped SST-2 sample, base vs tuned."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from deltatune.config import validate_config
from deltatune.runs import run_config


def demo_data_dir() -> Path:
    return Path(str(resources.files("deltatune") / "demo_data"))


def demo_config(output_dir: str | None = None, train_samples: int | None = None) -> dict:
    data = demo_data_dir()
    return {
        "task": "classify",
        "model": {"name": "minilm-l6"},
        "data": {"train": str(data / "sst2_train_sample.tsv"), "validation": str(data / "sst2_dev.tsv"),
                 "text_field": "sentence", "label_field": "label",
                 "label_names": ["negative", "positive"], "max_train_samples": train_samples},
        "method": {"name": "lora"},
        "train": {"epochs": 1, "seed": 42},
        "output_dir": output_dir or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}",
    }


def run_demo(output_dir: str | None = None, train_samples: int | None = None) -> dict:
    cfg = validate_config(demo_config(output_dir, train_samples), source="demo config")
    print("deltatune demo: LoRA on the bundled MiniLM (all-MiniLM-L6-v2), SST-2 sentiment\n"
          f"  training sentences: {train_samples or 8000} (shipped sample), evaluation: SST-2 dev (872)\n")
    import json

    summary = run_config(cfg)
    run_dir = Path(summary["run_dir"])
    report = json.loads((run_dir / "eval_report.json").read_text())
    params = report["trainable_parameters"]
    base, tuned = report["base"], report["validation"]
    print("\n                      untuned base   LoRA-tuned")
    for key in ("accuracy", "f1_macro", "precision_macro", "recall_macro"):
        print(f"  {key:<20}{base[key]:>12.4f}{tuned[key]:>13.4f}")
    print(f"\n  trainable parameters  {params['trainable']:,} of {params['total']:,} "
          f"({params['percent']:.2f}%)")
    print(f"  training              {summary['train_seconds']:.0f} s, "
          f"{summary['train_tokens_per_s']:.0f} tokens/s, peak memory {summary['peak_rss_mb']:.0f} MB")
    print(f"\n  adapter (PEFT format): {run_dir / 'adapter'}")
    print(f"  report:                {run_dir / 'eval_report.md'}")
    print(f"  try it:  deltatune predict {run_dir} \"a gorgeous, witty, seductive movie.\"")
    return summary
