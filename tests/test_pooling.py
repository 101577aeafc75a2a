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
from deltatune.models.pooling import install_pooling, mean_pool


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    return {"bert": make_tiny_model_dir("bert", root / "bert", task="classify"),
            "llama": make_tiny_model_dir("llama", root / "llama", task="classify")}


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
    spec.apply(model, spec.options(name="prompt_tuning", num_virtual_tokens=3), ModelContext("x", "SEQ_CLS", ["classifier"]))
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
    assert main(["train", f"model.name={models['bert']}", f"data.train={data}", f"data.validation={val}",
                 "classify.pooling=mean", "train.batch_size=8", "train.progress=false", "train.precision=fp32", "--output-dir", str(out),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert yaml.safe_load((out / "config.yaml").read_text())["classify"]["pooling"] == "mean"
    assert main(["eval", str(out), "--data", str(val), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(summary["validation_accuracy"])
    from deltatune.models.pooling import MeanPooler
    from deltatune.runs.loaded import load_run

    assert isinstance(load_run(out).model.base_model.pooler, MeanPooler)
