"""``train.int8_base`` on CPU: LoRA's training speed and quality with the frozen base layers' matmuls in
int8, beside fp32 and the hand-tuned PEFT + Trainer reference, back to back in one run.

For each dataset (``sweep.py``'s rows and config: MiniLM, batch 16, max_length 128, fp32, seed 42,
``train.epochs: auto``) deltatune trains ``method: lora`` with ``train.int8_base`` off, ``backward`` and
``on``, and ``sweep_peft.py`` trains the PEFT configuration its grid selected on that dataset; each run is
its own process, one after another, so the machine's drift hits them alike. The table gives training
tokens/s (non-padding tokens / training seconds, evaluations off the clock), its ratio to PEFT's, peak
RSS (deltatune's own ``peak_rss_mb``), and the validation and held-out test scores (accuracy on SST-2,
macro-F1 elsewhere).

Usage:
    .venv/bin/python benchmarks/int8.py                                  # Medical Abstracts
    .venv/bin/python benchmarks/int8.py --step-times 128,32              # step times only (2 min)
    .venv/bin/python benchmarks/int8.py --datasets medical,sst2,legal_binary --workdir /tmp/int8 --reuse
Results: a markdown table on stdout and benchmarks/results/int8.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import sweep  # noqa: E402  (the datasets and the deltatune runner)
import sweep_peft  # noqa: E402  (the PEFT reference)

SETTINGS = {"fp32 (off)": "off", "int8 backward": "backward", "int8 on": "on"}
RESULTS_JSON = HERE / "results" / "int8.json"


def peft_selected(dataset: str) -> str:
    """The PEFT configuration that validation selected on ``dataset`` in sweep_peft.py's last run."""
    results = json.loads((HERE / "results" / "sweep_peft.json").read_text())["results"]
    return next(r["config"] for r in results if r["dataset"] == dataset and r.get("selected"))


def run_dataset(work: Path, dataset: str, files: dict, reuse: bool) -> list[dict]:
    base = sweep.dataset_config(dataset, files)
    rows = []
    for label, value in SETTINGS.items():
        r = sweep.run_one(work, dataset, "lora", {"train.int8_base": value}, base, reuse=reuse)
        if "error" not in r:
            summary = json.loads(
                (work / f"{dataset}-lora-{sweep.config_tag(r['overrides'])}" / "summary.json").read_text()
            )
            r["peak_rss_mb"] = summary.get("peak_rss_mb")
        rows.append({**r, "contender": f"deltatune lora, {label}"})
    name = peft_selected(dataset)
    data = base["data"]
    r = sweep_peft.run_one(work, dataset, name, data, reuse)
    rows.append({**r, "contender": f"PEFT + Trainer ({name})"})
    return rows


def step_times(lengths: list[int], batch: int = 16, steps: int = 6) -> str:
    """Training step time of the bundled MiniLM with deltatune's LoRA defaults (dropout as in the checkpoint)
    on random tokens, each setting twice in turn, the best of the two kept."""
    import torch

    from deltatune.methods.lora.model import apply_lora
    from deltatune.methods.lora.options import LoraOptions
    from deltatune.methods.registry import ModelContext
    from deltatune.models.bundled import bundled_model_path
    from deltatune.models.loading import load_for_classification
    from deltatune.training.int8 import use_int8_linears

    path = bundled_model_path("minilm-l6")
    out = ["| tokens a row | " + " | ".join(SETTINGS) + " |", "|---:|" + "---:|" * len(SETTINGS)]
    for length in lengths:
        ids = torch.randint(1000, 20000, (batch, length), generator=torch.Generator().manual_seed(0))
        labels = torch.arange(batch) % 5
        best: dict[str, float] = {}
        for _ in range(2):
            for label, mode in SETTINGS.items():
                model = load_for_classification(path, 5)[0]
                apply_lora(
                    model,
                    LoraOptions(),
                    ModelContext(base_model=path, task_type="SEQ_CLS", head_modules=["classifier"]),
                )
                if mode != "off":
                    use_int8_linears(model, mode)
                model.train()
                opt = torch.optim.AdamW(
                    [p for p in model.parameters() if p.requires_grad], lr=1e-3, foreach=True
                )
                for i in range(steps + 2):  # two warm-up steps
                    if i == 2:
                        start = time.perf_counter()
                    model(input_ids=ids, labels=labels).loss.backward()
                    opt.step()
                    opt.zero_grad()
                seconds = (time.perf_counter() - start) / steps
                best[label] = min(best.get(label, seconds), seconds)
        base = best[next(iter(SETTINGS))]
        out.append(
            f"| {length} | "
            + " | ".join(f"{1000 * t:,.0f} ms ({base / t:.2f}x)" for t in best.values())
            + " |"
        )
    return "\n".join(out)


def table(rows: list[dict]) -> str:
    out = [
        "| dataset | contender | tokens/s | vs PEFT | peak RSS | validation | test |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        group = [r for r in rows if r["dataset"] == dataset]
        peft = next((r.get("tokens_per_s") for r in group if r["contender"].startswith("PEFT")), None)
        for r in group:
            if "error" in r:
                out.append(f"| {dataset} | {r['contender']} | error: {r['error']} | | | | |")
                continue
            ratio = f"{r['tokens_per_s'] / peft:.2f}x" if peft else "-"
            rss = f"{r['peak_rss_mb']:,.0f} MB" if r.get("peak_rss_mb") else "-"
            out.append(
                f"| {dataset} | {r['contender']} | {r['tokens_per_s']:,.0f} | {ratio} | {rss} "
                f"| {r['validation']:.4f} | {r['test']:.4f} |"
            )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="medical")
    p.add_argument("--workdir", help="keep data, runs and logs here (default: a temp dir)")
    p.add_argument("--reuse", action="store_true", help="with --workdir: keep runs already there")
    p.add_argument(
        "--step-times",
        metavar="LENGTHS",
        help="instead: time training steps at these row lengths "
        "(comma list, e.g. 128,32) with each setting, no PEFT, no data",
    )
    args = p.parse_args()
    if args.step_times:
        print(step_times([int(n) for n in args.step_times.split(",")]))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="deltatune-int8-"))
    work.mkdir(parents=True, exist_ok=True)
    files = sweep.write_domain_files(work)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    rows = [r for d in args.datasets.split(",") for r in run_dataset(work, d, files, args.reuse)]
    print(table(rows))
    RESULTS_JSON.parent.mkdir(exist_ok=True)
    RESULTS_JSON.write_text(
        json.dumps(
            {"started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "results": rows}, indent=1
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
