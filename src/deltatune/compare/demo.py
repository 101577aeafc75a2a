"""`deltatune demo`: fine-tuning methods compared side by side on the bundled MiniLM with the shipped
SST-2 sample, ending with the comparison table and the HTML report.

Budget (2 CPU cores, a few minutes in all): 2,000 training sentences, one epoch, one seed, the 872
SST-2 dev sentences for quality; the methods that fit that budget: full fine-tuning (the reference),
LoRA, IA3, BitFit and prompt tuning. DoRA, bottleneck adapters and prefix tuning cost about as much as
LoRA each; add them with ``--methods`` (or run ``deltatune compare`` on ``configs/sst2_lora.yaml``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from deltatune.config import validate_config

DEMO_METHODS = ("full", "lora", "ia3", "bitfit", "prompt_tuning")
DEMO_SAMPLES = 2000
DEMO_SEED = 42


def demo_data_dir() -> Path:
    return Path(str(resources.files("deltatune") / "demo_data"))


def demo_config(output_dir: str | None = None, train_samples: int | None = None) -> dict:
    data = demo_data_dir()
    return {
        "task": "classify",
        "model": {"name": "minilm-l6"},
        "data": {
            "train": str(data / "sst2_train_sample.tsv"),
            "validation": str(data / "sst2_dev.tsv"),
            "text_field": "sentence",
            "label_field": "label",
            "label_names": ["negative", "positive"],
            "max_train_samples": train_samples,
        },
        "method": {"name": "lora"},
        "train": {"epochs": 1, "seed": DEMO_SEED},
        "output_dir": output_dir,
    }


def run_demo(
    output_dir: str | None = None, train_samples: int | None = None, methods: list[str] | None = None
) -> dict:
    """Compare ``methods`` on the demo data; a second call with the same arguments reuses the runs."""
    from deltatune.compare.report import summary_text
    from deltatune.compare.runner import compare

    samples = train_samples or DEMO_SAMPLES
    methods = list(methods or DEMO_METHODS)
    cfg = validate_config(demo_config(None, samples), source="demo config")
    out = Path(output_dir or "runs/demo")
    print(
        f"deltatune demo: {', '.join(methods)} compared on the bundled MiniLM (all-MiniLM-L6-v2), SST-2\n"
        f"  training: {samples} sentences of the shipped sample, 1 epoch, each method its own learning rate\n"
        f"  quality: SST-2 dev (872 sentences); untuned base model as the baseline row\n"
        f"  output: {out} (run it again to reuse finished runs)\n",
        flush=True,
    )
    result = compare(cfg, methods, [DEMO_SEED], out, bench={"batch_sizes": [1, 16]}, config_path=None)
    print(f"\n{summary_text(result)}")
    best = next((r for r in result["rows"] if (r.get("labels") or {}).get("quality") == "best"), None)
    print(f"\n  report (open in a browser): {out / 'compare.html'}\n  table: {out / 'compare.md'}")
    if best:
        run = best["runs"][0]["run_dir"]
        print(f'  try the best run:  deltatune predict {run} "a gorgeous, witty, seductive movie."')
    return result
