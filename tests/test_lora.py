"""LoRA: formula, merge/unmerge/disable, targets, and equivalence with PEFT's LoRA."""

import copy

import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config,
                          GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification)

from deltatune.errors import ConfigError
from deltatune.methods.lora import (LoraLinear, LoraOptions, apply_lora, lora_layers, merge_lora,
                                    set_lora_enabled, unmerge_lora)
from deltatune.methods.registry import ModelContext, trainable_report
from deltatune.models.targets import find_targets

from _tiny import inputs  # tests/ is on sys.path under pytest


def tiny(kind):
    torch.manual_seed(0)
    if kind == "bert":
        cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, num_labels=3)
        return BertForSequenceClassification(cfg), ["classifier"]
    if kind == "llama":
        cfg = LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=64, num_labels=3, pad_token_id=0)
        return LlamaForSequenceClassification(cfg), ["score"]
    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, num_labels=3, pad_token_id=0)
    return GPT2ForSequenceClassification(cfg), ["score"]


def randomize_b(model):
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)


@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2"])
def test_lora_starts_as_identity_and_counts_parameters(kind):
    model, heads = tiny(kind)
    model.eval()
    before = model(**inputs()).logits
    opts = LoraOptions(r=4, alpha=8, dropout=0.0)
    apply_lora(model, opts, ModelContext("x", "SEQ_CLS", heads))
    assert torch.allclose(model(**inputs()).logits, before, atol=1e-6)
    layers = lora_layers(model)
    assert layers, "no layer wrapped"
    expected = sum(4 * (l.lora_A.in_features + l.lora_B.out_features) for l in layers.values())
    expected += sum(p.numel() for h in heads for p in model.get_submodule(h).parameters())
    assert trainable_report(model)["trainable"] == expected


def test_default_targets_per_architecture():
    bert, _ = tiny("bert")
    leaves = {n.rsplit(".", 1)[-1] for n in find_targets(bert, "auto")}
    assert leaves == {"query", "key", "value", "dense"}
    llama, _ = tiny("llama")
    assert {n.rsplit(".", 1)[-1] for n in find_targets(llama, "auto")} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    gpt2, _ = tiny("gpt2")
    assert {n.rsplit(".", 1)[-1] for n in find_targets(gpt2, "auto")} == {"c_attn", "c_proj", "c_fc"}
    # heads are never targets, even with all-linear
    assert not any(n.startswith("score") for n in find_targets(llama, "all-linear"))
    # regex over full names
    assert find_targets(bert, r".*layer\.0\.attention\.self\.query") == [
        "bert.encoder.layer.0.attention.self.query"]


def test_no_match_lists_existing_names():
    bert, _ = tiny("bert")
    with pytest.raises(ConfigError) as err:
        find_targets(bert, ["q_proj"])
    assert "query" in str(err.value) and "q_proj" in str(err.value)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_merge_unmerge_disable(kind):
    model, heads = tiny(kind)
    model.eval()
    base_out = model(**inputs()).logits
    apply_lora(model, LoraOptions(r=4, alpha=8, dropout=0.0), ModelContext("x", "SEQ_CLS", heads))
    randomize_b(model)
    adapted = model(**inputs()).logits
    assert not torch.allclose(adapted, base_out, atol=1e-4)
    merge_lora(model)
    assert torch.allclose(model(**inputs()).logits, adapted, atol=1e-5)
    unmerge_lora(model)
    assert torch.allclose(model(**inputs()).logits, adapted, atol=1e-5)
    set_lora_enabled(model, False)
    assert torch.allclose(model(**inputs()).logits, base_out, atol=1e-5)
    set_lora_enabled(model, True)
    assert torch.allclose(model(**inputs()).logits, adapted, atol=1e-5)


def test_lora_formula_on_one_layer():
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5)
    layer = LoraLinear(copy.deepcopy(base), r=2, alpha=6, dropout=0.0)
    torch.nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(4, 6)
    expected = base(x) + (6 / 2) * x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    assert torch.allclose(layer(x), expected, atol=1e-6)
    rs = LoraLinear(copy.deepcopy(base), r=4, alpha=8, dropout=0.0, use_rslora=True)
    assert rs.scaling == pytest.approx(8 / 2)


@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2"])
def test_same_outputs_and_gradients_as_peft(kind):
    peft = pytest.importorskip("peft")
    model, heads = tiny(kind)
    reference = copy.deepcopy(model)
    apply_lora(model, LoraOptions(r=4, alpha=8, dropout=0.0), ModelContext("x", "SEQ_CLS", heads))
    randomize_b(model)
    targets = sorted({n.rsplit(".", 1)[-1] for n in lora_layers(model)})
    pm = peft.get_peft_model(reference, peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, task_type="SEQ_CLS",
        fan_in_fan_out=(kind == "gpt2")))
    ours = dict(model.named_parameters())
    with torch.no_grad():  # copy our adapter weights into PEFT's modules
        for name, p in pm.named_parameters():
            if ".lora_" in name:
                key = name.replace("base_model.model.", "").replace(".default", "")
                p.copy_(ours[key])
    model.eval()
    pm.eval()
    x = inputs()
    out_ours, out_peft = model(**x).logits, pm(**x).logits
    assert torch.allclose(out_ours, out_peft, atol=1e-5)
    out_ours.sum().backward()
    out_peft.sum().backward()
    peft_grads = {name.replace("base_model.model.", "").replace(".default", ""): p.grad
                  for name, p in pm.named_parameters() if ".lora_" in name}
    for name, p in ours.items():
        if ".lora_" in name:
            assert torch.allclose(p.grad, peft_grads[name], atol=1e-5), name


@pytest.mark.parametrize("kind,rslora", [("bert", False), ("gpt2", True)])
def test_peft_saved_lora_loads_into_deltatune(kind, rslora, tmp_path):
    peft = pytest.importorskip("peft")
    from deltatune.methods.lora import load_lora, options_from_peft

    model, heads = tiny(kind)
    ours = copy.deepcopy(model)
    targets = ["query", "value"] if kind == "bert" else ["c_attn"]
    pm = peft.get_peft_model(model, peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=targets, task_type="SEQ_CLS", use_rslora=rslora,
        fan_in_fan_out=(kind == "gpt2")))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    pm.save_pretrained(tmp_path)
    opts = options_from_peft(tmp_path)
    assert opts.use_rslora == rslora and opts.r == 4
    apply_lora(ours, opts, ModelContext("x", "SEQ_CLS", heads))
    load_lora(ours, tmp_path)
    pm.eval()
    ours.eval()
    with torch.no_grad():
        assert torch.allclose(ours(**inputs()).logits, pm(**inputs()).logits, atol=1e-5)
