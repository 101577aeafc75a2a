"""Domain classification (issue 15): class-weighted and focal losses for imbalanced labels, long
documents by sliding windows, multi-label classification; tiny random models, through the real CLI
where a run is involved."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml

from deltatune.cli import main
from deltatune.config import load_config
from deltatune.errors import ConfigError, DataError
from deltatune.losses.classification import (
    balanced_class_weights,
    binary_cross_entropy_sum,
    binary_focal_sum,
    cross_entropy_sum,
    focal_sum,
    resolve_class_weights,
)
from deltatune.models import load_tokenizer, make_tiny_model_dir
from deltatune.tasks.classify.evaluate import Scorer, aggregate_windows
from deltatune.tasks.classify.examples import Example, load_classification_data, stratified_split
from deltatune.tasks.classify.windows import Windows, encode_examples, window_features

WORDS = "the patient heart tumor nerve liver pain blood cell brain stomach lung".split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {k: make_tiny_model_dir("bert", root / f"bert{k}", task="classify", num_labels=k) for k in (2, 3)}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def long_text(n_words: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (n_words,), generator=g))


def cli(*argv) -> int:
    return main([str(a) for a in argv])


COMMON = (
    "train.batch_size=8",
    "train.learning_rate=5e-3",
    "train.progress=false",
    "train.precision=fp32",
    "train.checkpoint_every=1000",
)


# ----------------------------------------------------------------------------- losses


def test_focal_with_gamma_zero_is_cross_entropy_and_weights_scale_examples():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 2, 1, 0])
    w = torch.tensor([0.5, 2.0, 1.5])
    assert torch.allclose(focal_sum(logits, labels, gamma=0.0), cross_entropy_sum(logits, labels))
    manual = sum(w[y] * -torch.log_softmax(z, -1)[y] for z, y in zip(logits, labels))
    assert torch.allclose(cross_entropy_sum(logits, labels, w), manual)
    assert torch.allclose(focal_sum(logits, labels, w, gamma=0.0), manual)
    assert focal_sum(logits, labels, gamma=2.0) < cross_entropy_sum(
        logits, labels
    )  # easy examples count less
    targets = (torch.rand(6, 3, generator=g) > 0.5).float()
    assert torch.allclose(
        binary_focal_sum(logits, targets, w, gamma=0.0), binary_cross_entropy_sum(logits, targets, w)
    )
    ref = torch.nn.BCEWithLogitsLoss(pos_weight=w)(logits, targets)  # mean over all elements
    assert torch.allclose(binary_cross_entropy_sum(logits, targets, w) / 6, ref)


def test_class_weights_balanced_explicit_and_wrong():
    counts = [633, 299, 385, 610, 961]  # Medical Abstracts
    w = balanced_class_weights(counts)
    assert sum(c * x for c, x in zip(counts, w)) / sum(counts) == pytest.approx(1.0)  # mean weight 1
    assert w[1] > w[0] > w[4]
    names, values = ["neoplasms", "digestive"], [1, 2]
    assert resolve_class_weights("balanced", names, values, [3, 1], 4, multi_label=True) == [0.333333, 3.0]
    assert resolve_class_weights({"digestive": 3, 1: 0.5}, names, values, [3, 1], 4, False) == [0.5, 3.0]
    assert resolve_class_weights([1, 2], names, values, [3, 1], 4, False) == [1.0, 2.0]
    with pytest.raises(ConfigError, match="no label 'digestiv'; did you mean 'digestive'"):
        resolve_class_weights({"digestiv": 2}, names, values, [3, 1], 4, False)
    with pytest.raises(ConfigError, match="3 weights for 2 labels"):
        resolve_class_weights([1, 2, 3], names, values, [3, 1], 4, False)
    # auto: balanced from 5x on, single-label only; none: unweighted
    assert resolve_class_weights("auto", names, values, [5, 1], 6, False) == [0.6, 3.0]
    assert resolve_class_weights("auto", names, values, [49, 10], 59, False) is None  # 4.9x
    assert resolve_class_weights("auto", names, values, [5, 1], 6, multi_label=True) is None
    assert resolve_class_weights("none", names, values, [3, 1], 4, False) is None


def test_thresholds_tuned_globally_or_per_label():
    from deltatune.metrics.classification import tune_thresholds

    y = [[1, 0], [1, 0], [0, 1], [0, 0], [0, 1]]
    probs = [
        [0.9, 0.2],
        [0.7, 0.1],
        [0.6, 0.35],
        [0.2, 0.05],
        [0.1, 0.3],
    ]  # label 0 splits at 0.7, label 1 at 0.3
    per = tune_thresholds(y, probs, per_label=True)
    assert 0.6 < per[0] <= 0.7 and 0.1 < per[1] <= 0.3
    assert tune_thresholds(y, probs, per_label=False)[0] == tune_thresholds(y, probs, per_label=False)[1]
    assert tune_thresholds([[0], [0]], [[0.2], [0.9]], per_label=True) == [0.5]  # no positives: keep 0.5


# ----------------------------------------------------------------------------- data


def test_stratified_test_split_then_validation_split(tmp_path):
    rows = [{"text": f"t{i}", "label": "a" if i % 5 else "b"} for i in range(200)]  # 160 a, 40 b
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    data = load_classification_data(path, test_split=0.2, validation_split=0.25, seed=3)
    count = lambda exs, k: sum(e.label == k for e in exs)  # noqa: E731
    assert (count(data.test, 0), count(data.test, 1)) == (32, 8)
    assert (count(data.validation, 0), count(data.validation, 1)) == (32, 8)
    again = load_classification_data(path, test_split=0.2, seed=99)  # the test rows never depend on the seed
    assert [e.line for e in again.test] == [e.line for e in data.test]
    with pytest.raises(ConfigError, match="data.test and data.test_split"):
        load_classification_data(path, test_path=path, test_split=0.2)


def test_multi_label_rows_lists_and_delimited_strings(tmp_path):
    rows = [{"text": "a", "tags": ["ltd", "ter"]}, {"text": "b", "tags": []}, {"text": "c", "tags": ["ch"]}]
    data = load_classification_data(
        write_jsonl(tmp_path / "l.jsonl", rows), label_field="tags", label_separator=","
    )
    assert data.labels.names == ["ch", "ltd", "ter"] and [e.label for e in data.train] == [(1, 2), (), (0,)]
    csv = tmp_path / "l.csv"
    csv.write_text('text,tags\na,"ltd, ter"\nb,\nc,ch\n')
    assert [
        e.label for e in load_classification_data(csv, label_field="tags", label_separator=",").train
    ] == [(1, 2), (), (0,)]
    bad = write_jsonl(tmp_path / "v.jsonl", [{"text": "x", "tags": ["ltd"]}, {"text": "y", "tags": ["law"]}])
    with pytest.raises(DataError, match=r"v.jsonl, line 2, field 'tags': label 'law' was never seen"):
        load_classification_data(
            write_jsonl(tmp_path / "l.jsonl", rows), bad, label_field="tags", label_separator=","
        )
    null = write_jsonl(tmp_path / "n.jsonl", [{"text": "x", "tags": None}])
    with pytest.raises(
        DataError, match=r"n.jsonl, line 1, field 'tags': expected the row's labels as a list"
    ):
        load_classification_data(null, label_field="tags", label_separator=",")
    exs = [Example("t", None, lab, i) for i, lab in enumerate([(0,)] * 30 + [()] * 60 + [(0, 1)] * 10)]
    _, held = stratified_split(exs, 0.1, seed=0)  # stratified by label set
    assert sorted(e.label for e in held) == [()] * 6 + [(0,)] * 3 + [(0, 1)]


# ----------------------------------------------------------------------------- windows


def test_windows_cover_every_token_in_order(tiny):
    tok = load_tokenizer(tiny[2])
    doc = Example(long_text(700), None, 1, 1)
    full = tok(doc.text, add_special_tokens=False)["input_ids"]
    for max_length, stride in ((64, 31), (64, 62), (128, 64), (32, 1)):
        feats = window_features(tok, [doc], max_length, stride)
        room = max_length - 2
        assert all(len(f["input_ids"]) <= max_length and f["doc"] == 0 and f["label"] == 1 for f in feats)
        texts = [f["input_ids"][1:-1] for f in feats]  # [CLS] ... [SEP]
        for k, ids in enumerate(texts):
            assert ids == full[k * stride : k * stride + room]
        assert (len(feats) - 1) * stride + len(texts[-1]) == len(full)  # the last window ends at the end
        assert len(feats) == 1 + -(-(len(full) - room) // stride)
    assert len(window_features(tok, [doc], 64, 31, max_windows=3)) == 3


def test_aggregate_windows():
    logits = torch.tensor([[1.0, 5.0], [3.0, -1.0], [2.0, 2.0], [0.0, 7.0]])
    docs = [0, 0, 1, 0]
    assert torch.equal(aggregate_windows(logits, docs, "mean"), torch.tensor([[4 / 3, 11 / 3], [2.0, 2.0]]))
    assert torch.equal(aggregate_windows(logits, docs, "max"), torch.tensor([[3.0, 7.0], [2.0, 2.0]]))
    assert torch.equal(aggregate_windows(logits, docs, "first"), torch.tensor([[1.0, 5.0], [2.0, 2.0]]))


@pytest.mark.parametrize("aggregate", ["mean", "max", "first"])
def test_one_window_equals_the_plain_path_bit_for_bit(tiny, aggregate, one_thread):
    from transformers import AutoModelForSequenceClassification

    tok = load_tokenizer(tiny[3])
    model = AutoModelForSequenceClassification.from_pretrained(tiny[3]).eval()
    docs = [Example(long_text(n, seed=n), None, n % 3, n) for n in (3, 40, 12, 90, 7, 60)]
    plain = encode_examples(tok, docs, 128)
    windowed = encode_examples(tok, docs, 128, Windows(stride=50, aggregate=aggregate))
    assert len(windowed) == len(docs)  # every document fits one window
    scorer = Scorer(["a", "b", "c"], aggregate=aggregate)
    assert torch.equal(scorer.probs(model, plain, 0), scorer.probs(model, windowed, 0))


# ----------------------------------------------------------------------------- runs through the CLI


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    """3 classes, 24/8/4 training rows (ratio 6): words of the class in the text."""
    d = tmp_path_factory.mktemp("imb")

    def make(lab, n, s):
        return [{"text": f"{WORDS[lab]} {long_text(6, s + i)}", "label": f"c{lab}"} for i in range(n)]

    train = make(0, 24, 0) + make(1, 8, 100) + make(2, 4, 200)
    return write_jsonl(d / "train.jsonl", train), write_jsonl(
        d / "val.jsonl", make(0, 4, 300) + make(1, 4, 400) + make(2, 4, 500)
    )


def test_weighted_run_records_weights_selects_on_macro_f1_and_reports_recall(
    tiny, imbalanced, tmp_path, capsys
):
    out = tmp_path / "run"
    train, val = imbalanced
    assert (
        cli(
            "train",
            f"model.name={tiny[3]}",
            f"data.train={train}",
            f"data.validation={val}",
            f"data.test={val}",
            "classify.class_weights=balanced",
            "classify.loss=focal",
            "classify.gamma=1.0",
            "train.epochs=3",
            *COMMON,
            "--output-dir",
            out,
        )
        == 0
    )
    err = capsys.readouterr().err
    assert (
        "best checkpoint by f1_macro (training labels are imbalanced: largest/smallest class 6.00 >= 1.5)"
        in err
    )
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    weights = {"c0": round(36 / 72, 6), "c1": 1.5, "c2": 3.0}  # n / (C * n_c)
    assert cfg["classify"]["class_weights"] == weights and cfg["classify"]["loss"] == "focal"
    assert cfg["train"]["metric_for_best"] == "f1_macro"
    report = json.loads((out / "eval_report.json").read_text())
    assert report["class_weights"] == weights and report["selection"]["metric"] == "f1_macro"
    assert set(report["test"]["per_class"]["c2"]) == {"precision", "recall", "f1", "support"}
    md = (out / "eval_report.md").read_text()
    assert "per-class recall on validation: base -> tuned" in md and "recall base->tuned: c0 " in md
    assert "confusion matrix" in md and "class weights" in md
    assert load_config(out / "config.yaml").classify.class_weights == weights  # reloads as it ran
    # a user's metric is kept (and said so); the default class_weights (auto) weighs these labels (6x)
    assert (
        cli(
            "train",
            f"model.name={tiny[3]}",
            f"data.train={train}",
            f"data.validation={val}",
            "train.max_steps=1",
            "train.metric_for_best=accuracy",
            *COMMON,
            "--output-dir",
            tmp_path / "r2",
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "best checkpoint by accuracy (set in the config)" in err and "(auto: imbalanced labels" in err
    assert (
        yaml.safe_load((tmp_path / "r2" / "config.yaml").read_text())["classify"]["class_weights"] == weights
    )
    assert (
        cli(
            "train",
            f"model.name={tiny[3]}",
            f"data.train={train}",
            f"data.validation={val}",
            "train.max_steps=1",
            "classify.class_weights=none",
            *COMMON,
            "--output-dir",
            tmp_path / "r3",
        )
        == 0
    )
    assert (
        yaml.safe_load((tmp_path / "r3" / "config.yaml").read_text())["classify"]["class_weights"] == "none"
    )


def test_long_document_gets_one_prediction_past_the_position_limit(tiny, imbalanced, tmp_path, capsys):
    out = tmp_path / "win"
    train, val = imbalanced
    assert (
        cli(
            "train",
            f"model.name={tiny[3]}",
            f"data.train={train}",
            f"data.validation={val}",
            "data.max_length=16",
            "data.windows={stride: 6, aggregate: max, max_train_windows: 2}",
            "train.max_steps=2",
            *COMMON,
            "--output-dir",
            out,
        )
        == 0
    )
    capsys.readouterr()
    text = long_text(2000)  # ~2000 tokens: 4x the tiny model's 512 positions
    assert cli("predict", out, text, "a short one", "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and rows[0]["text"] == text and rows[0]["label"] in ("c0", "c1", "c2")
    assert cli("eval", out, "--data", val, "--json") == 0
    assert json.loads(capsys.readouterr().out)["n"] == 12  # one score per document, not per window
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["windows"]["stride"] == 6


@pytest.fixture(scope="module")
def legal(tmp_path_factory):
    """Multi-label rows: 'ltd' when 'liver' is in the text, 'ter' when 'brain' is; most rows neither."""
    d = tmp_path_factory.mktemp("ml")

    def rows(n, seed):
        out = []
        for i in range(n):
            words = [w for w in long_text(6, seed + i).split() if w not in ("liver", "brain")]
            cats = ["ltd"] * (i % 3 == 0) + ["ter"] * (i % 4 == 0)
            words += ["liver"] * (i % 3 == 0) + ["brain"] * (i % 4 == 0)
            out.append({"text": " ".join(words), "cats": cats})
        return out

    return write_jsonl(d / "train.jsonl", rows(48, 0)), write_jsonl(d / "val.jsonl", rows(16, 1000))


def test_multi_label_run_thresholds_predict_and_hf_peft_interop(tiny, legal, tmp_path, capsys):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification

    from deltatune.runs.loaded import load_run

    train, val = legal
    out = tmp_path / "ml"
    assert (
        cli(
            "train",
            f"model.name={tiny[2]}",
            f"data.train={train}",
            f"data.validation={val}",
            f"data.test={val}",
            "data.label_field=cats",
            "data.multi_label=true",
            "classify.class_weights=balanced",
            "classify.threshold=per_label",
            "train.epochs=2",
            *COMMON,
            "--output-dir",
            out,
        )
        == 0
    )
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["classify"]["loss"] == "binary_cross_entropy"
    assert cfg["classify"]["class_weights"] == {"ltd": 2.0, "ter": 3.0}  # pos_weight = negatives / positives
    saved = json.loads((out / "labels.json").read_text())
    assert saved["multi_label"] is True and len(saved["thresholds"]) == 2
    report = json.loads((out / "eval_report.json").read_text())
    for key in ("f1_micro", "f1_macro", "f1_samples", "accuracy"):
        assert 0 <= report["test"][key] <= 1
    assert report["test"]["thresholds"] == dict(zip(["ltd", "ter"], saved["thresholds"]))
    assert {"tp", "fp", "fn"} <= set(report["test"]["per_class"]["ltd"])
    assert "| ltd |" in (out / "eval_report.md").read_text()
    capsys.readouterr()
    assert cli("predict", out, "the liver and brain", "the heart", "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for row in rows:
        chosen = [n for n, t in zip(["ltd", "ter"], saved["thresholds"]) if row["probabilities"][n] >= t]
        assert row["labels"] == chosen and set(row["probabilities"]) == {"ltd", "ter"}
    assert cli("eval", out, "--data", val, "--json") == 0
    assert json.loads(capsys.readouterr().out)["f1_macro"] == pytest.approx(report["test"]["f1_macro"])

    run = load_run(out)
    batch = run.tokenizer(["the liver and brain", "the heart"], padding=True, return_tensors="pt")
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny[2], num_labels=2, problem_type="multi_label_classification"
    )
    pm = peft.PeftModel.from_pretrained(base, out / "adapter").eval()
    targets = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    with torch.no_grad():
        ours, theirs = run.model(**batch).logits, pm(**batch, labels=targets)
    assert torch.allclose(ours, theirs.logits, atol=1e-5)
    # transformers' multi-label loss is our unweighted binary cross-entropy (mean over the batch)
    assert torch.allclose(theirs.loss, binary_cross_entropy_sum(ours, targets) / 2, atol=1e-5)


def test_multi_label_full_finetune_saves_problem_type(tiny, legal, tmp_path):
    from transformers import AutoModelForSequenceClassification

    train, val = legal
    out = tmp_path / "full"
    assert (
        cli(
            "train",
            f"model.name={tiny[2]}",
            f"data.train={train}",
            f"data.validation={val}",
            "data.label_field=cats",
            "data.multi_label=true",
            "classify.threshold=0.4",
            "method.name=full",
            "train.max_steps=1",
            *COMMON,
            "--output-dir",
            out,
        )
        == 0
    )
    hf = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert hf.config.problem_type == "multi_label_classification" and hf.config.id2label == {
        0: "ltd",
        1: "ter",
    }
    assert json.loads((out / "labels.json").read_text())["thresholds"] == [0.4, 0.4]


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            ["data.multi_label=true", "classify.loss=focal"],
            "classify.loss: focal does not fit data.multi_label: true; "
            "use binary_cross_entropy or binary_focal",
        ),
        (["classify.threshold=0.3"], "classify.threshold: for multi-label runs only"),
        (
            ["data.multi_label=true", "classify.threshold=tuned"],
            "classify.threshold: tuned is tuned on validation data",
        ),
        (["data.windows={max_length: 128}"], "set data.max_length: 128 and remove data.windows.max_length"),
        (["classify.class_weights={c0: 0}"], "weights must be positive"),
        (["train.metric_for_best=f1_samples"], "train.metric_for_best: for multi-label runs only"),
    ],
)
def test_config_mistakes_are_one_clear_error(override, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(None, ["data.train=t.jsonl", *override])


def test_data_mistakes_are_one_clear_error(tiny, imbalanced, tmp_path, capsys):
    train, val = imbalanced
    base = ("train", f"model.name={tiny[3]}", f"data.train={train}", "train.max_steps=1", *COMMON)
    assert cli(*base, "classify.class_weights={c9: 2}", "--output-dir", tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert "classify.class_weights: no label 'c9'" in err and "c0, c1, c2" in err and "Traceback" not in err
    assert cli(*base, "data.max_length=16", "data.windows={stride: 20}", "--output-dir", tmp_path / "b") == 2
    assert "data.windows.stride: 20 is more than the 14 text tokens of a window" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
