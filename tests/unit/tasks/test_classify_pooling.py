"""classify.pooling: a mean-pooled head reads the mean of the real tokens (padding and batch do not
change it, prompt tuning's virtual tokens are counted), only models with a BERT-style pooler take it,
and a run's choice (in config.yaml) is honoured when the run is loaded again."""

import json

import pytest
import torch
import yaml

from deltatune.cli import main
from deltatune.errors import ConfigError
from deltatune.models import make_tiny_model_dir
from deltatune.tasks.classify.pooling import install_pooling, mean_pool


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    return {
        "bert": make_tiny_model_dir("bert", root / "bert", task="classify"),
        "llama": make_tiny_model_dir("llama", root / "llama", task="classify"),
    }


def _classifier(path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path).eval()


def test_mean_pooling_reads_the_mean_of_the_real_tokens(models):
    model = _classifier(models["bert"])
    install_pooling(model, "mean")
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        pooler = model.base_model.pooler
        expected = model.classifier(pooler.activation(pooler.dense(mean_pool(hidden, mask))))
        torch.testing.assert_close(logits, expected)
        alone = model(input_ids=ids[1:, :3], attention_mask=mask[1:, :3]).logits  # no padding, batch of one
        torch.testing.assert_close(alone, logits[1:], atol=1e-6, rtol=1e-5)
        cls = _classifier(models["bert"])(input_ids=ids, attention_mask=mask).logits
        assert not torch.allclose(cls, logits)  # it is not the [CLS] pooler any more
    assert "bert.pooler.dense.weight" in model.state_dict()  # same parameter names for PEFT and checkpoints


def test_mean_pooling_with_prompt_tuning_ignores_padding(models):
    from deltatune.methods.registry import ModelContext, get_method

    model = _classifier(models["bert"])
    install_pooling(model, "mean")
    spec = get_method("prompt_tuning")
    spec.apply(
        model,
        spec.options(name="prompt_tuning", num_virtual_tokens=3),
        ModelContext("x", "SEQ_CLS", ["classifier"]),
    )
    model.eval()
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        both = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=ids[1:, :3], attention_mask=mask[1:, :3]).logits
    torch.testing.assert_close(alone, both[1:], atol=1e-6, rtol=1e-5)


def test_mean_needs_a_bert_style_pooler(models):
    with pytest.raises(ConfigError, match="classify.pooling: mean needs a BERT-style encoder"):
        install_pooling(_classifier(models["llama"]), "mean")
    model = _classifier(models["bert"])
    install_pooling(model, "cls")  # the default changes nothing
    assert type(model.base_model.pooler).__name__ == "BertPooler"


def test_a_run_records_its_pooling_and_eval_reloads_it(models, tmp_path, capsys):
    rows = [{"text": f"{w} item {i}", "label": w} for i in range(24) for w in ("good", "bad")]
    data, val = tmp_path / "d.jsonl", tmp_path / "v.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:36]))
    val.write_text("".join(json.dumps(r) + "\n" for r in rows[36:]))
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                f"model.name={models['bert']}",
                f"data.train={data}",
                f"data.validation={val}",
                "classify.pooling=mean",
                "train.batch_size=8",
                "train.progress=false",
                "train.precision=fp32",
                "--output-dir",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert yaml.safe_load((out / "config.yaml").read_text())["classify"]["pooling"] == "mean"
    assert main(["eval", str(out), "--data", str(val), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(summary["validation_accuracy"])
    from deltatune.runs.loaded import load_run
    from deltatune.tasks.classify.pooling import MeanPooler

    assert isinstance(load_run(out).model.base_model.pooler, MeanPooler)


def _as_sentence_transformer(path, **modes):
    """Add the sentence-transformers files that name the checkpoint's pooling."""
    (path / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **modes}))


def test_auto_pooling_follows_the_checkpoint(models, tmp_path):
    import shutil

    from deltatune.models.bundled import resolve_model_path
    from deltatune.tasks.classify.pooling import checkpoint_pooling, resolve_pooling

    plain = models["bert"]
    assert checkpoint_pooling(plain) is None and resolve_pooling("auto", _classifier(plain), plain) == "cls"
    st = shutil.copytree(plain, tmp_path / "st")
    _as_sentence_transformer(st, pooling_mode_mean_tokens=True, pooling_mode_cls_token=False)
    assert checkpoint_pooling(st) == "mean" and resolve_pooling("auto", _classifier(st), st) == "mean"
    assert resolve_pooling("cls", _classifier(st), st) == "cls"  # a choice is kept
    _as_sentence_transformer(st, pooling_mode_mean_tokens=True, pooling_mode_max_tokens=True)
    assert checkpoint_pooling(st) is None  # a mix deltatune cannot reproduce: cls
    _as_sentence_transformer(st, pooling_mode_cls_token=True)
    assert checkpoint_pooling(st) == "cls"
    (st / "1_Pooling" / "config.json").write_text("{not json")
    assert checkpoint_pooling(st) is None
    llama = shutil.copytree(models["llama"], tmp_path / "llama")
    _as_sentence_transformer(llama, pooling_mode_mean_tokens=True)  # no BERT pooler to feed: cls
    assert resolve_pooling("auto", _classifier(llama), llama) == "cls"
    assert checkpoint_pooling(resolve_model_path("minilm-l6")) == "mean"  # the bundled MiniLM


def test_auto_pooling_is_recorded_as_what_ran(models, tmp_path, capsys):
    import shutil

    st = shutil.copytree(models["bert"], tmp_path / "st")
    _as_sentence_transformer(st, pooling_mode_mean_tokens=True)
    rows = [{"text": f"{w} item {i}", "label": w} for i in range(8) for w in ("good", "bad")]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for model, want in ((st, "mean"), (models["bert"], "cls")):
        out = tmp_path / f"run-{want}"
        assert (
            main(
                [
                    "train",
                    f"model.name={model}",
                    f"data.train={data}",
                    "train.max_steps=1",
                    "train.progress=false",
                    "train.precision=fp32",
                    "--output-dir",
                    str(out),
                ]
            )
            == 0
        )
        assert yaml.safe_load((out / "config.yaml").read_text())["classify"]["pooling"] == want
    # a mean-pooled LoRA run in PEFT: the same logits once the base pools the same way (README)
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification

    from deltatune.runs.loaded import load_run

    run = load_run(tmp_path / "run-mean")
    batch = run.tokenizer(["good item 3", "bad item and more words"], padding=True, return_tensors="pt")
    base = AutoModelForSequenceClassification.from_pretrained(st, num_labels=2)
    plain = peft.PeftModel.from_pretrained(base, tmp_path / "run-mean" / "adapter").eval()
    with torch.no_grad():
        ours, theirs = run.model(**batch).logits, plain(**batch).logits
        assert not torch.allclose(ours, theirs, atol=1e-4)  # [CLS] pooling: not what was trained
        install_pooling(plain.get_base_model(), "mean")
        torch.testing.assert_close(plain(**batch).logits, ours, atol=1e-5, rtol=1e-5)
    # the adapter folder alone: pools as recorded beside it;
    # a PEFT adapter without the record pools as PEFT does
    from deltatune.runs.loaded import load_adapter

    alone = load_adapter(tmp_path / "run-mean" / "adapter", str(st), command="eval")
    assert alone.cfg.classify.pooling == "mean"
    with torch.no_grad():
        torch.testing.assert_close(alone.model(**batch).logits, ours, atol=1e-5, rtol=1e-5)
    peft_made = shutil.copytree(tmp_path / "run-mean" / "adapter", tmp_path / "peft-made")
    (peft_made / "deltatune_pooling.json").unlink()
    assert load_adapter(peft_made, str(st), command="eval").cfg.classify.pooling == "cls"


def test_reuse_settles_auto_options_as_the_run_did(models, tmp_path):
    """compare/demo reuse a finished run when `auto` would settle as it did (same model, same labels)."""
    from deltatune.config import load_config
    from deltatune.tasks.classify.options import resolved

    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(None, ["model.name=minilm-l6"])
    assert resolved(cfg, run) == {
        "classify.pooling": "mean",
        "classify.class_weights": "unknown",
    }  # no report
    (run / "eval_report.json").write_text(json.dumps({"label_counts": {"fair": 50, "unfair": 5}}))
    assert resolved(cfg, run)["classify.class_weights"] == {"fair": 0.55, "unfair": 5.5}
    (run / "eval_report.json").write_text(json.dumps({"label_counts": {"fair": 5, "unfair": 4}}))
    assert resolved(cfg, run)["classify.class_weights"] == "none"
    plain = load_config(
        None, [f"model.name={models['bert']}", "classify.pooling=cls", "classify.class_weights=none"]
    )
    assert resolved(plain, run) == {}  # nothing left to settle
    assert resolved(load_config(None, [f"model.name={models['bert']}"]), run)["classify.pooling"] == "cls"
