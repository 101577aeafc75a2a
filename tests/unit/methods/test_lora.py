"""LoRA: formula, merge/unmerge/disable, targets, and equivalence with PEFT's LoRA."""

import copy

import pytest
import torch

from deltatune.errors import ConfigError
from deltatune.methods.lora.model import (
    LoraLinear,
    apply_lora,
    lora_layers,
    merge_lora,
    set_lora_enabled,
    unmerge_lora,
)
from deltatune.methods.lora.options import LoraOptions
from deltatune.methods.registry import ModelContext, trainable_report
from deltatune.models.targets import find_targets
from helpers.lora import randomize_b, tiny
from helpers.tiny import inputs


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
    expected = sum(4 * (layer.lora_A.in_features + layer.lora_B.out_features) for layer in layers.values())
    expected += sum(p.numel() for h in heads for p in model.get_submodule(h).parameters())
    assert trainable_report(model)["trainable"] == expected


def test_default_targets_per_architecture():
    bert, _ = tiny("bert")
    leaves = {n.rsplit(".", 1)[-1] for n in find_targets(bert, "auto")}
    assert leaves == {"query", "key", "value", "dense"}
    llama, _ = tiny("llama")
    assert {n.rsplit(".", 1)[-1] for n in find_targets(llama, "auto")} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    gpt2, _ = tiny("gpt2")
    assert {n.rsplit(".", 1)[-1] for n in find_targets(gpt2, "auto")} == {"c_attn", "c_proj", "c_fc"}
    # heads are never targets, even with all-linear
    assert not any(n.startswith("score") for n in find_targets(llama, "all-linear"))
    # regex over full names
    assert find_targets(bert, r".*layer\.0\.attention\.self\.query") == [
        "bert.encoder.layer.0.attention.self.query"
    ]


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
