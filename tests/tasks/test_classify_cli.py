"""Classification end to end through the real CLI on a tiny model: train -> eval -> predict,
reload, PEFT loading, error messages."""

import json

import pytest
import torch
import yaml

from deltatune.cli import main
from deltatune.models import make_tiny_model_dir

POS = [
    "a great film",
    "wonderful acting",
    "i loved it",
    "superb and moving",
    "a joy to watch",
    "brilliant story",
    "funny and warm",
    "truly excellent",
]
NEG = [
    "a dull mess",
    "terrible acting",
    "i hated it",
    "boring and long",
    "a waste of time",
    "awful story",
    "flat and cold",
    "truly bad",
]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_model_dir("bert", tmp_path_factory.mktemp("m") / "bert", task="classify")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def files(tmp_path):
    train = [{"text": t, "label": "pos"} for t in POS * 4] + [{"text": t, "label": "neg"} for t in NEG * 4]
    val = [{"text": t, "label": "pos"} for t in POS] + [{"text": t, "label": "neg"} for t in NEG]
    return write_jsonl(tmp_path / "train.jsonl", train), write_jsonl(tmp_path / "val.jsonl", val)


def train_args(tiny_bert, files, out, *extra):
    train, val = files
    return [
        "train",
        f"model.name={tiny_bert}",
        f"data.train={train}",
        f"data.validation={val}",
        "train.epochs=6",
        "train.batch_size=8",
        "train.learning_rate=5e-3",
        "train.progress=false",
        "train.precision=fp32",
        "--output-dir",
        str(out),
        *extra,
    ]


def test_train_eval_predict_round_trip(tiny_bert, files, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_bert, files, out, "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "eval_report.json",
        "eval_report.md",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "labels.json",
    ):
        assert (out / name).is_file(), name
    report = json.loads((out / "eval_report.json").read_text())
    assert report["labels"] == ["neg", "pos"]
    assert report["validation"]["accuracy"] >= 0.75  # learnable toy task
    assert report["validation"]["confusion_matrix"]["labels"] == ["neg", "pos"]
    assert "| neg |" in (out / "eval_report.md").read_text()
    assert summary["train_tokens_per_s"] > 0

    assert main(["eval", str(out), "--data", str(files[1]), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == pytest.approx(report["validation"]["accuracy"])

    assert main(["predict", str(out), "wonderful acting", "terrible acting", "--json"]) == 0
    preds = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["label"] for p in preds] == ["pos", "neg"]
    assert all(0.5 <= p["probability"] <= 1 for p in preds)

    # a finished run is never overwritten silently
    assert main(train_args(tiny_bert, files, out)) == 2
    assert "already holds a finished run" in capsys.readouterr().err


def test_adapter_loads_in_peft_with_same_logits(tiny_bert, files, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification

    from deltatune.runs.loaded import load_run

    out = tmp_path / "run"
    assert main(train_args(tiny_bert, files, out, "train.epochs=1")) == 0
    run = load_run(out)
    ours, tokenizer = run.model, run.tokenizer
    batch = tokenizer(["a great film", "truly bad and long"], padding=True, return_tensors="pt")
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    pm = peft.PeftModel.from_pretrained(base, out / "adapter")
    pm.eval()
    with torch.no_grad():
        assert torch.allclose(ours(**batch).logits, pm(**batch).logits, atol=1e-5)


def test_full_finetune_saves_a_plain_hf_model(tiny_bert, files, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from deltatune.runs.loaded import load_run

    out = tmp_path / "full"
    assert main(train_args(tiny_bert, files, out, "method.name=full", "train.epochs=1")) == 0
    hf = AutoModelForSequenceClassification.from_pretrained(out / "model")
    run = load_run(out)
    ours, tokenizer, _labels = run.model, run.tokenizer, run.extras["labels"]
    assert hf.config.id2label == {0: "neg", 1: "pos"}
    batch = tokenizer(["a great film"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(ours(**batch).logits, hf(**batch).logits, atol=1e-6)


def test_user_errors_are_one_line(tiny_bert, files, tmp_path, capsys):
    train, val = files
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "label": "pos"}\n{"text": "broken", "label": \n')
    assert (
        main(["train", f"model.name={tiny_bert}", f"data.train={bad}", "--output-dir", str(tmp_path / "x")])
        == 2
    )
    err = capsys.readouterr().err
    assert "bad.jsonl, line 2" in err and "Traceback" not in err

    unseen = write_jsonl(tmp_path / "v2.jsonl", [{"text": "meh", "label": "neutral"}])
    assert (
        main(
            [
                "train",
                f"model.name={tiny_bert}",
                f"data.train={train}",
                f"data.validation={unseen}",
                "--output-dir",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )
    assert "never seen in training" in capsys.readouterr().err

    assert main(["train", "train.learnig_rate=1"]) == 2
    assert "did you mean `learning_rate`" in capsys.readouterr().err

    assert (
        main(
            [
                "train",
                f"model.name={tiny_bert}",
                f"data.train={train}",
                "method.target_modules=[q_proj]",
                "--output-dir",
                str(tmp_path / "z"),
            ]
        )
        == 2
    )
    assert "query" in capsys.readouterr().err

    assert main(["predict", str(tmp_path / "nowhere"), "hello"]) == 2
    assert "is not a deltatune run" in capsys.readouterr().err


def test_train_help_documents_keys(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "train.learning_rate" in out and "data.text_field" in out


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_merge_equals_unmerged(tiny_bert, files, tmp_path, method):
    from transformers import AutoModelForSequenceClassification

    from deltatune.runs.loaded import load_run

    out = tmp_path / "run"
    assert main(train_args(tiny_bert, files, out, f"method.name={method}", "train.epochs=2")) == 0
    assert main(["merge", str(out), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    run = load_run(out)
    ours, tokenizer = run.model, run.tokenizer
    batch = tokenizer(["a great film", "truly bad and long"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(ours(**batch).logits, merged(**batch).logits, atol=1e-5)


def test_merge_refuses_unmergeable(tiny_bert, files, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_bert, files, out, "method.name=adapters", "train.epochs=1")) == 0
    assert main(["merge", str(out), "--out", str(tmp_path / "m")]) == 2
    assert "cannot be merged" in capsys.readouterr().err


def test_methods_lists_every_method_with_its_trainable_share(tiny_bert, capsys):
    from deltatune.methods.registry import available

    assert main(["methods", "--model", str(tiny_bert)]) == 0
    out = capsys.readouterr().out
    for name in available():
        assert name in out
    assert "100.000%" in out  # full fine-tuning trains everything


def test_methods_lists_the_lora_variants_as_rows(tiny_bert, capsys):
    assert main(["methods", "--model", str(tiny_bert)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    for variant, option in (
        ("dora", "use_dora: True"),
        ("rslora", "use_rslora: True"),
        ("loraplus", "loraplus_lr_ratio: 16"),
    ):
        assert option in rows[variant] and "%" in rows[variant]
    dora, lora = (int(rows[k].split()[1].replace(",", "")) for k in ("dora", "lora"))
    assert dora > lora  # DoRA adds a magnitude vector per adapted layer


def test_epochs_auto_trains_more_passes_when_one_pass_is_few_steps(tiny_bert, files, tmp_path, capsys):
    from deltatune.tasks.classify.options import AUTO_MIN_STEPS
    from deltatune.training.loop import AUTO_MAX_EPOCHS, planned_epochs

    assert planned_epochs("auto", 63, 200) == 4 and planned_epochs("auto", 250, 200) == 1
    assert planned_epochs("auto", 1, 200) == AUTO_MAX_EPOCHS and planned_epochs("auto", 63, 0) == 1
    assert planned_epochs(2.5, 63, 200) == 2.5
    out = tmp_path / "run"  # 64 rows at batch 8: 8 steps a pass, far under AUTO_MIN_STEPS
    assert main(train_args(tiny_bert, files, out, "train.epochs=auto", "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert AUTO_MIN_STEPS > 8 * AUTO_MAX_EPOCHS
    assert summary["epochs"] == AUTO_MAX_EPOCHS and summary["steps"] == 8 * AUTO_MAX_EPOCHS
    assert (
        yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == "auto"
    )  # as asked; summary: what ran
    assert main(train_args(tiny_bert, files, tmp_path / "one", "train.epochs=1", "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] == 1 and summary["steps"] == 8
    assert (
        main(
            train_args(
                tiny_bert, files, tmp_path / "capped", "train.epochs=auto", "train.max_steps=3", "--json"
            )
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] is None and summary["steps"] == 3  # max_steps sets the length, not passes


def test_one_pass_classifier_evaluates_several_times_and_keeps_the_best(tiny_bert, files, tmp_path, capsys):
    from deltatune.tasks.classify.options import AUTO_EVALS
    from deltatune.training.loop import eval_interval

    assert (
        eval_interval(250, 250, AUTO_EVALS) == 63 and eval_interval(63, 252, AUTO_EVALS) == 63
    )  # auto's 4 passes
    assert eval_interval(500, 500, 1) == 500 and eval_interval(8, 8, 4) == 2 and eval_interval(1, 1, 4) == 1

    def eval_steps(out):
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [r["step"] for r in rows if any(k.startswith("eval/") for k in r)]

    out = tmp_path / "run"  # 64 rows at batch 8, one pass: 8 steps, evaluated every 2
    assert main(train_args(tiny_bert, files, out, "train.epochs=1", "--json")) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert eval_steps(out) == [2, 4, 6, 8]
    assert "evaluating every 2 optimizer steps (4 times in the run)" in captured.err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    scores = {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}
    best = max(scores.values())  # the first evaluation reaching the best score is kept, and restored
    assert (
        summary["best_step"] == min(s for s, v in scores.items() if v == best) and summary["eval_every"] == 2
    )
    assert summary["best_metric"] == pytest.approx(best) == summary["validation_accuracy"]
    assert (
        main(
            train_args(tiny_bert, files, tmp_path / "once", "train.epochs=1", "train.eval_every=8", "--json")
        )
        == 0
    )
    capsys.readouterr()
    assert eval_steps(tmp_path / "once") == [8]  # an explicit train.eval_every is obeyed
