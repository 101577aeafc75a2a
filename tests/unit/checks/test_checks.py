"""Pre-flight checks: each one fed data (or a config) that must trigger it and data that must not;
`deltatune check` and the fast checks of `train`; the overfitting warning and early stopping."""

import json

import pytest

from deltatune.checks import run_checks
from deltatune.cli import main
from deltatune.config import load_config
from deltatune.models import make_tiny_model_dir

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()


def sentence(i: int, n: int = 5) -> str:
    """A distinct sentence per i (no two share more than a few words)."""
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] + str(i) for k in range(n))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_tiny_model_dir("bert", tmp_path_factory.mktemp("m") / "bert", task="classify")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_tiny_model_dir("llama", tmp_path_factory.mktemp("m") / "llama", task="causal_lm")


def balanced(n=20, offset=0):
    return [{"text": sentence(i + offset), "label": "pos" if i % 2 else "neg"} for i in range(n)]


def checks(tmp_path, bert, train, val=None, *overrides):
    opts = [f"model.name={bert}", f"data.train={write_jsonl(tmp_path / 'train.jsonl', train)}", *overrides]
    if val is not None:
        opts.append(f"data.validation={write_jsonl(tmp_path / 'val.jsonl', val)}")
    report = run_checks(load_config(None, opts), slow=False)
    return {f.check: f for f in report.findings}, report


def test_clean_data_triggers_nothing(tmp_path, bert):
    found, report = checks(tmp_path, bert, balanced(), balanced(10, offset=100))
    assert found == {}, found
    assert {
        "imbalance",
        "metric",
        "duplicates",
        "leakage",
        "truncation",
        "validation",
        "learning_rate",
    } <= set(report.ran)


def test_imbalance_and_the_metric(tmp_path, bert):
    skewed = [{"text": sentence(i), "label": "neg" if i < 3 else "pos"} for i in range(30)]
    found, _ = checks(tmp_path, bert, skewed, balanced(10, offset=100))  # class_weights: auto weighs them
    assert found["imbalance"].severity == "info" and "9.0x" in found["imbalance"].evidence
    assert "class_weights: none" in found["imbalance"].fix
    assert "metric" not in found  # the default metric switches to macro-F1 by itself
    found, _ = checks(tmp_path, bert, skewed, balanced(10, offset=100), "classify.class_weights=none")
    assert found["imbalance"].severity == "warning" and "9.0x" in found["imbalance"].evidence
    assert "class_weights" in found["imbalance"].fix and "f1_macro" in found["imbalance"].fix
    found, _ = checks(tmp_path, bert, skewed, balanced(10, offset=100), "train.metric_for_best=accuracy")
    assert "metric" in found and "f1_macro" in found["metric"].fix
    found, _ = checks(tmp_path, bert, skewed, balanced(10, offset=100), "classify.class_weights=balanced")
    assert "imbalance" not in found  # already handled


def test_exact_and_near_duplicates(tmp_path, bert):
    rows = balanced()
    found, _ = checks(
        tmp_path, bert, rows + [dict(rows[3], text=rows[3]["text"].upper() + " !")], balanced(10, offset=100)
    )
    assert "duplicates" in found and "1 of 21 training rows repeat" in found["duplicates"].evidence
    long = " ".join(sentence(500, 12).split())
    near = rows + [
        {"text": long, "label": "pos"},
        {"text": long.replace("alpha", "omega") + " extra", "label": "pos"},
    ]
    found, _ = checks(tmp_path, bert, near, balanced(10, offset=100))
    assert "near-duplicates" in found["duplicates"].evidence
    conflict = rows + [dict(rows[0], label="pos" if rows[0]["label"] == "neg" else "neg")]
    found, _ = checks(tmp_path, bert, conflict, balanced(10, offset=100))
    assert "different label" in found["duplicates"].evidence


def test_leakage(tmp_path, bert):
    train, val = balanced(), balanced(10, offset=100)
    found, _ = checks(tmp_path, bert, train, val[:8] + train[:2])
    assert "leakage" in found and "2 of 10 validation rows" in found["leakage"].evidence


def test_truncation(tmp_path, bert):
    rows = balanced() + [{"text": sentence(900, 60), "label": "pos"} for _ in range(1)]
    found, _ = checks(tmp_path, bert, rows, balanced(10, offset=100), "data.max_length=32")
    assert "truncation" in found and "1 of 21 train examples" in found["truncation"].evidence
    assert "data.max_length" in found["truncation"].fix
    found, _ = checks(tmp_path, bert, rows, balanced(10, offset=100), "data.max_length=512")
    assert "truncation" not in found


def test_no_validation_and_learning_rate(tmp_path, bert):
    found, _ = checks(tmp_path, bert, balanced(), None, "train.learning_rate=0.5")
    assert "validation" in found and "data.validation_split" in found["validation"].fix
    assert "learning_rate" in found and "500x" in found["learning_rate"].evidence
    found, _ = checks(tmp_path, bert, balanced(), None, "method.name=full", "train.learning_rate=2e-5")
    assert "learning_rate" not in found


def test_sft_template_without_trained_tokens(tmp_path, llama):
    rows = [{"instruction": sentence(i), "output": sentence(i + 50)} for i in range(12)]
    data = tmp_path / "sft.json"
    data.write_text(json.dumps(rows))
    base = ["task=sft", f"model.name={llama}", f"data.train={data}", "data.validation_split=0.25"]
    found = {f.check: f for f in run_checks(load_config(None, base), slow=False).findings}
    assert "no_trained_tokens" not in found
    no_answers = (
        "{% for m in messages %}{% if m.role != 'assistant' %}{{ m.content }}\n{% endif %}{% endfor %}"
    )
    found = [
        f
        for f in run_checks(load_config(None, [*base, f"data.template={no_answers}"]), slow=False).findings
        if f.check == "no_trained_tokens"
    ]
    assert [f.severity for f in found] == ["error", "warning"]  # train: nothing would train; validation
    assert "9 of 9 train examples" in found[0].evidence and "3 of 3 validation" in found[1].evidence


def test_memory_probe(tmp_path, bert):
    cfg = load_config(
        None,
        [
            f"model.name={bert}",
            f"data.train={write_jsonl(tmp_path / 't.jsonl', balanced())}",
            "train.batch_size=8",
        ],
    )
    report = run_checks(cfg, slow=True, memory_limit_mb=1e6)
    assert "memory" in report.ran and not [f for f in report.findings if f.check == "memory"]
    assert any(n.startswith("memory: one optimizer step") for n in report.notes)
    report = run_checks(cfg, slow=True, memory_limit_mb=50)
    (mem,) = [f for f in report.findings if f.check == "memory"]
    assert (
        mem.severity == "error" and "of 50 MB usable" in mem.evidence and "gradient_checkpointing" in mem.fix
    )


def test_check_command_and_train_prints_findings(tmp_path, bert, capsys):
    train = write_jsonl(tmp_path / "t.jsonl", balanced() + balanced()[:5])
    args = [f"model.name={bert}", f"data.train={train}"]
    assert main(["check", *args, "--fast"]) == 0
    out = capsys.readouterr().out
    assert "WARNING Duplicate training rows" in out and "fix:" in out and "checks run:" in out
    assert main(["check", *args, "--fast", "--strict"]) == 1
    capsys.readouterr()
    assert main(["check", *args, "--memory-mb", "-1"]) == 2
    assert (
        main(
            ["train", *args, "train.max_steps=1", "train.progress=false", "--output-dir", str(tmp_path / "r")]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "check warning: Duplicate training rows" in err and "check warning: No validation data" in err


# ----------------------------------------------------------------------------- during training


class _Writer:
    def __init__(self):
        self.records = []

    def write(self, record):
        self.records.append(record)


def test_overfitting_warning_and_early_stopping_rules():
    from deltatune.config import TrainConfig
    from deltatune.results import LoopResult
    from deltatune.training.loop import _Watch

    watch, res, writer = (
        _Watch(TrainConfig(metric_for_best="loss", greater_is_better=False, early_stopping=3)),
        LoopResult(),
        _Writer(),
    )
    # validation loss 1.0, 0.8 (best), 0.9, 1.1, 1.3 while training loss keeps falling
    for step, (val, train) in enumerate([(1.0, 2.0), (0.8, 1.5), (0.9, 1.0), (1.1, 0.6), (1.3, 0.3)], 1):
        watch.loss, watch.units = train * 10, 10
        res.steps, res.last_eval = step, {"loss": val}
        if res.best_metric is None or val < res.best_metric:
            res.best_metric, res.best_step = val, step
        watch.after_evaluation(res, writer)
        if watch.stopped:
            break
    events = [r["event"] for r in writer.records]
    assert events == ["overfitting", "early_stop"] and res.steps == 5
    assert "from 0.8000 (step 2) to 1.1000 (step 4)" in writer.records[0]["message"]
    calm = _Watch(TrainConfig(metric_for_best="loss", greater_is_better=False))
    res2 = LoopResult()
    for step, val in enumerate([1.0, 0.9, 0.8, 0.7], 1):
        calm.loss, calm.units = 1.0, 1
        res2.steps, res2.last_eval, res2.best_metric, res2.best_step = step, {"loss": val}, val, step
        calm.after_evaluation(res2, writer)
    assert not calm.stopped and not calm.warned


def test_early_stopping_stops_a_run(tmp_path, bert, one_thread):
    train, val = balanced(32), balanced(10, offset=100)
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                f"model.name={bert}",
                f"data.train={write_jsonl(tmp_path / 't.jsonl', train)}",
                f"data.validation={write_jsonl(tmp_path / 'v.jsonl', val)}",
                "train.batch_size=4",
                "train.epochs=3",
                "train.eval_every=1",
                "train.early_stopping=2",
                "train.learning_rate=1e-7",
                "train.progress=false",
                "--no-check",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    stop = [x for x in lines if x.get("event") == "early_stop"]
    assert stop and summary["steps"] == stop[0]["step"] < 24
    assert summary["steps"] - summary["best_step"] == 2


def test_large_data_is_checked_from_streamed_columns_with_the_same_findings(tmp_path, bert, monkeypatch):
    """Data on the token-cache route is checked from a cached columnar table (texts memory-mapped), and
    every finding is the one the in-memory route gives."""
    monkeypatch.setenv("DELTATUNE_HOME", str(tmp_path / "home"))
    rows = [{"text": sentence(i), "label": "neg" if i < 8 else "pos"} for i in range(60)]
    rows += [
        dict(rows[3], text=rows[3]["text"].upper() + " !"),
        dict(rows[20], label="neg"),
    ]  # exact, conflict
    long = " ".join(sentence(500, 12).split())
    rows += [
        {"text": long, "label": "pos"},
        {"text": long.replace("alpha", "omega") + " extra", "label": "pos"},
    ]
    rows += [{"text": sentence(900, 60), "label": "pos"}]
    val = balanced(10, offset=100) + [rows[5], {"text": long + " more", "label": "pos"}]
    opts = ["data.max_length=32", "train.metric_for_best=accuracy", "data.test_split=0.2"]

    def findings(cache):
        found, report = checks(tmp_path, bert, rows, val, *opts, f"data.cache={cache}")
        return {k: (f.severity, f.title, f.evidence, f.fix) for k, f in found.items()}, report

    in_memory, _ = findings("false")
    streamed, report = findings("true")
    assert {"imbalance", "metric", "duplicates", "leakage", "truncation"} <= set(in_memory)
    assert streamed == in_memory
    assert list((tmp_path / "home" / "tokens").glob("tokens-*")), "the streamed route was not taken"
    assert "examples read: " in " ".join(report.notes)
    again, _ = findings("true")  # a second run reads the cached table
    assert again == in_memory
    # one pass: training reads the very tables the checks built, tokenizing nothing again
    from deltatune.data.token_cache import TokenCache
    from deltatune.models.loading import load_tokenizer
    from deltatune.tasks.classify.tokens import ClassificationInputs

    cfg = load_config(
        None,
        [
            f"model.name={bert}",
            f"data.train={tmp_path / 'train.jsonl'}",
            f"data.validation={tmp_path / 'val.jsonl'}",
            *opts,
            "data.cache=true",
        ],
    )
    data = ClassificationInputs(cfg.data, cfg.train.seed, TokenCache())
    data.features(load_tokenizer(str(bert)), cfg.data.max_length)
    assert data.streamed and data.cache.built == 0


def test_normalise_takes_the_fast_path_for_ascii_with_the_same_result():
    import re

    from deltatune.data.views import normalise

    slow = lambda t: " ".join(re.sub(r"[\W_]+", " ", t.lower()).split())  # noqa: E731
    texts = [f"a{chr(c)}B  c" for c in range(128)] + ["Naïve CAFÉ_bar!!", "  ", "x__y", "Ünïcödé-text"]
    assert [normalise(t) for t in texts] == [slow(t) for t in texts]


def test_a_budget_too_small_for_prompt_tuning_is_warned(tmp_path, bert):
    from deltatune.methods.registry import get_method

    assert get_method("prompt_tuning").min_steps > 5
    assert get_method("lora").min_steps == 0 and get_method("prefix_tuning").min_steps == 0
    for method, warned in (("prompt_tuning", True), ("prefix_tuning", False), ("lora", False)):
        found, report = checks(
            tmp_path,
            bert,
            balanced(),
            balanced(10, offset=100),
            f"method.name={method}",
            "train.batch_size=4",
        )
        assert "budget" in report.ran and ("budget" in found) == warned, method
    found, _ = checks(tmp_path, bert, balanced(), None, "method.name=prompt_tuning", "train.batch_size=4")
    assert (
        "25 optimizer steps are planned (20 training examples, batch 4, 5 epochs, by train.epochs auto)"
        in found["budget"].evidence
    )
    found, _ = checks(
        tmp_path, bert, balanced(), None, "method.name=prompt_tuning", "train.batch_size=4", "train.epochs=1"
    )
    assert (
        "5 optimizer steps are planned (20 training examples, batch 4, 1 epoch)" in found["budget"].evidence
    )


def test_a_few_duplicates_under_the_warning_share_are_info_not_a_crash(tmp_path, bert):
    rows = balanced(150)  # 1 repeat in 151 rows is under DUPLICATE_SHARE: info, and no copy disagrees
    found, _ = checks(tmp_path, bert, rows + [dict(rows[3])], balanced(10, offset=1000))
    assert (
        found["duplicates"].severity == "info"
        and "1 of 151 training rows repeat" in found["duplicates"].evidence
    )
    flipped = [dict(r, label="pos" if r["label"] == "neg" else "neg") for r in rows[:2]]  # 2 copies disagree
    found, _ = checks(tmp_path, bert, balanced(250) + flipped, balanced(10, offset=1000))
    assert (
        found["duplicates"].severity == "warning"
        and "2 duplicates carry a different label" in found["duplicates"].evidence
    )
