"""Adding a metric is one function and one registration: metrics registered from this test file reach the
text-generation metrics, a classifier's reports and the choice of the best checkpoint."""

import json

import pytest
import yaml

from deltatune.cli import main
from deltatune.metrics import METRICS, register_metric
from deltatune.metrics.text import text_generation_metrics
from deltatune.models import make_tiny_model_dir


@pytest.fixture()
def registered():
    names = []

    def add(name, kind, fn, greater_is_better=True):
        register_metric(name, kind, greater_is_better)(fn)
        names.append(name)

    yield add
    for name in names:
        METRICS.unregister(name)


def test_a_registered_text_metric_joins_the_generation_metrics(registered):
    registered(
        "ends_with_period", "text", lambda preds, refs: sum(p.endswith(".") for p in preds) / len(preds)
    )
    out = text_generation_metrics(["It is blue.", "red"], ["blue", "red"])
    assert list(out)[:4] == ["rouge_l", "bleu", "exact_match", "mean_words"]
    assert out["ends_with_period"] == 0.5 and out["exact_match"] == 0.5


def test_a_registered_text_metric_is_gone_after_unregister():
    assert "ends_with_period" not in text_generation_metrics(["a"], ["a"])


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="metric kind 'image'"):
        register_metric("x", "image")


def test_a_registered_classification_metric_is_reported_and_selects_the_best_checkpoint(
    registered, tmp_path, capsys
):
    def error_rate(y_true, y_pred):
        return sum(t != p for t, p in zip(y_true, y_pred)) / len(y_true)

    registered("error_rate", "classification", error_rate, greater_is_better=False)
    model = make_tiny_model_dir("bert", tmp_path / "bert", task="classify")
    rows = [{"text": t, "label": lab} for t, lab in [("good film", "pos"), ("bad film", "neg")] * 8]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                f"model.name={model}",
                f"data.train={data}",
                f"data.validation={data}",
                "train.max_steps=4",
                "train.eval_every=2",
                "train.batch_size=8",
                "train.progress=false",
                "train.precision=fp32",
                "train.metric_for_best=error_rate",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["train"]["metric_for_best"] == "error_rate" and cfg["train"]["greater_is_better"] is False
    report = json.loads((out / "eval_report.json").read_text())
    assert report["validation"]["error_rate"] == pytest.approx(1 - report["validation"]["accuracy"])
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    errors = [e["eval/error_rate"] for e in evals if "eval/error_rate" in e]
    summary = json.loads((out / "summary.json").read_text())
    assert len(errors) == 2 and summary["best_metric"] == pytest.approx(min(errors))


def test_an_unregistered_metric_cannot_select_the_best_checkpoint(tmp_path, capsys):
    assert main(["train", "data.train=x.jsonl", "train.metric_for_best=error_rate"]) == 2
    assert "train.metric_for_best" in capsys.readouterr().err
