"""train.int8_base: frozen linear layers' training matmuls in int8, checked against float."""

import json

import pytest
import torch
import torch.nn as nn

from deltatune.cli import main
from deltatune.errors import ConfigError
from deltatune.methods.lora.model import apply_lora, lora_layers, merge_lora
from deltatune.methods.lora.options import LoraOptions
from deltatune.methods.registry import ModelContext
from deltatune.training.int8 import (
    Int8TrainLinear,
    int8_base_blocker,
    int8_matmul_available,
    restore_float_linears,
    setup_int8_base,
    use_int8_linears,
)

pytestmark = pytest.mark.skipif(not int8_matmul_available(), reason="this torch has no CPU torch._int_mm")


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_forward_and_input_gradient_match_float_and_the_bias_still_learns():
    torch.manual_seed(0)
    lin = nn.Linear(48, 40)
    lin.weight.requires_grad_(False)  # frozen weight, trainable bias (BitFit)
    x = torch.randn(3, 5, 48, requires_grad=True)
    g = torch.randn(3, 5, 40)
    ref_out = lin(x)
    ref_out.backward(g)
    ref_dx, ref_db = x.grad.clone(), lin.bias.grad.clone()
    x.grad, lin.bias.grad = None, None

    layer = Int8TrainLinear(lin)
    assert layer.weight is lin.weight and layer.bias is lin.bias
    out = layer(x)
    out.backward(g)
    assert 0 < rel(out, ref_out) < 0.02  # int8, so close but not equal
    assert 0 < rel(x.grad, ref_dx) < 0.02
    assert torch.allclose(lin.bias.grad, ref_db)  # the bias is added in float: its gradient is exact
    assert lin.weight.grad is None

    layer.eval()  # evaluation runs the float weights, bit for bit
    assert torch.equal(layer(x), lin(x))
    layer.train()
    with torch.no_grad():  # so does anything without a gradient (reference models, generation)
        assert torch.equal(layer(x), lin(x))


def test_backward_mode_keeps_the_forward_exact_and_quantizes_the_input_gradient():
    torch.manual_seed(0)
    lin = nn.Linear(48, 40).requires_grad_(False)
    x = torch.randn(6, 48, requires_grad=True)
    g = torch.randn(6, 40)
    ref_out = lin(x)
    ref_out.backward(g)
    ref_dx, x.grad = x.grad.clone(), None
    out = Int8TrainLinear(lin, "backward")(x)
    out.backward(g)
    assert torch.allclose(out, ref_out, atol=1e-6)  # the loss the optimizer sees is the float model's
    assert 0 < rel(x.grad, ref_dx) < 0.02


def test_trainable_weight_or_changed_weight_is_never_stale():
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    layer = Int8TrainLinear(lin)
    x = torch.randn(4, 16, requires_grad=True)
    layer(x).sum().backward()  # a trainable weight takes the float path and gets its gradient
    assert lin.weight.grad is not None
    lin.weight.requires_grad_(False)
    before = layer(x).detach()
    with torch.no_grad():
        lin.weight.mul_(2)  # changed in place (a LoRA merge does this): the int8 copies are remade
    assert rel(layer(x).detach() - lin.bias, 2 * (before - lin.bias)) < 0.02


def test_lora_model_swaps_only_frozen_linears_and_restores_them(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            num_labels=3,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )
    apply_lora(
        model, LoraOptions(), ModelContext(base_model="x", task_type="SEQ_CLS", head_modules=["classifier"])
    )
    ids = torch.randint(1, 100, (4, 9))
    model.train()
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.normal_(0, 0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    float_loss = model(input_ids=ids, labels=torch.tensor([0, 1, 2, 0])).loss
    float_grads = torch.autograd.grad(float_loss, [p for p in model.parameters() if p.requires_grad])

    assert use_int8_linears(model) == 6 * 2 + 1  # q, k, v, o, up, down per layer, and the pooler
    assert not any(type(m) is Int8TrainLinear for m in (model.classifier,)), "the trained head stays float"
    assert all(type(layer.base_layer) is Int8TrainLinear for layer in lora_layers(model).values())
    assert model.state_dict().keys() == state.keys()
    int8_loss = model(input_ids=ids, labels=torch.tensor([0, 1, 2, 0])).loss
    int8_grads = torch.autograd.grad(int8_loss, [p for p in model.parameters() if p.requires_grad])
    assert abs(int8_loss.item() - float_loss.item()) < 0.01
    for a, b in zip(int8_grads, float_grads):
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99

    assert restore_float_linears(model) == 13
    assert not any(isinstance(m, Int8TrainLinear) for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the same weights
    query = model.bert.encoder.layer[0].attention.self.query
    merge_lora(model)  # the plain layers merge as before
    assert type(query.base_layer) is nn.Linear
    assert torch.allclose(
        query.base_layer.weight,
        state["bert.encoder.layer.0.attention.self.query.base_layer.weight"] + query.delta_weight(),
    )


def test_settings_and_where_the_int8_path_cannot_run(monkeypatch):
    import platform

    import deltatune.training.int8 as int8

    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert "only on x86 CPUs with AVX2/AVX512 (this is aarch64" in int8.int8_fast_cpu()
    monkeypatch.undo()
    slow = nn.Sequential(nn.Linear(4, 4).requires_grad_(False))
    monkeypatch.setattr(int8, "int8_fast_cpu", lambda: "not measured here")  # e.g. ARM: auto stays off
    assert setup_int8_base(slow, "auto", "backward", "cpu", "no") == "off"
    assert setup_int8_base(slow, "backward", "off", "cpu", "no") == "backward"  # asked for: it runs
    monkeypatch.setattr(int8, "int8_fast_cpu", lambda: None)  # an x86 AVX2 CPU like the one measured
    model = nn.Sequential(nn.Linear(4, 4))
    model[0].weight.requires_grad_(False)
    assert setup_int8_base(model, "off", "on", "cpu", "no") == "off"
    assert setup_int8_base(model, "auto", "off", "cpu", "no") == "off"  # auto, but not measured here
    assert (
        setup_int8_base(model, "auto", "backward", "cuda", "no") == "off"
    )  # auto quietly stays off on a GPU
    assert type(model[0]) is nn.Linear
    with pytest.raises(
        ConfigError, match="train.int8_base: on, but it runs on CPU only and this run is on cuda"
    ):
        setup_int8_base(model, "on", "off", "cuda", "no")
    with pytest.raises(ConfigError, match=r"computes in bf16 \(train.precision\)"):
        setup_int8_base(model, "backward", "off", "cpu", "bf16")
    assert "bfloat16 (model.dtype)" in int8_base_blocker("cpu", "no", torch.bfloat16)
    assert setup_int8_base(model, "auto", "backward", "cpu", "no", compiled=True) == "off"
    with pytest.raises(
        ConfigError, match="train.compile is on"
    ):  # torch.compile cannot trace the int8 layers
        setup_int8_base(model, "on", "off", "cpu", "no", compiled=True)
    assert setup_int8_base(model, "auto", "backward", "cpu", "no") == "backward"
    assert type(model[0]) is Int8TrainLinear and model[0].mode == "backward"
    full = nn.Sequential(nn.Linear(4, 4))  # every weight trains: nothing to run in int8
    assert setup_int8_base(full, "auto", "on", "cpu", "no") == "off"
    with pytest.raises(ConfigError, match="no frozen linear layer"):
        setup_int8_base(full, "on", "off", "cpu", "no")


def test_cli_lora_classifier_trains_in_int8_and_saves_a_float_adapter(tmp_path, capsys, monkeypatch):
    import deltatune.training.int8 as int8
    from deltatune.models import make_tiny_model_dir

    monkeypatch.setattr(int8, "int8_fast_cpu", lambda: None)  # as on the x86 AVX2 CPU measured

    model_dir = make_tiny_model_dir("bert", tmp_path / "bert", task="classify")
    rows = [
        {"text": t, "label": lab}
        for t, lab in [
            ("a great film", "pos"),
            ("i loved it", "pos"),
            ("a dull mess", "neg"),
            ("i hated it", "neg"),
        ]
        * 8
    ]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [
        "train",
        f"model.name={model_dir}",
        f"data.train={train}",
        f"data.validation={train}",
        "train.epochs=4",
        "train.batch_size=8",
        "train.learning_rate=5e-3",
        "train.progress=false",
        "train.precision=fp32",
        "--json",
    ]
    assert main([*args, "--output-dir", str(tmp_path / "auto")]) == 0
    captured = capsys.readouterr()
    auto = json.loads(captured.out)
    assert (
        auto["int8_base"] == "backward"
        and "run their training input-gradient matmuls in int8" in captured.err
    )
    assert auto["validation_accuracy"] == 1.0  # a learnable toy task still learns
    for value, mode in (("off", "off"), ("false", "off"), ("on", "on")):  # YAML's on/off/false are booleans
        assert main([*args, f"train.int8_base={value}", "--output-dir", str(tmp_path / value)]) == 0
        assert json.loads(capsys.readouterr().out)["int8_base"] == mode
    assert main([*args, "method.name=full", "--output-dir", str(tmp_path / "full")]) == 0  # auto: off
    assert json.loads(capsys.readouterr().out)["int8_base"] == "off"
    assert (
        main([*args, "method.name=full", "train.int8_base=on", "--output-dir", str(tmp_path / "full-on")])
        == 2
    )
    assert "train.int8_base: on, but the model has no frozen linear layer" in capsys.readouterr().err
    assert main([*args, "train.int8_base=fast", "--output-dir", str(tmp_path / "bad")]) == 2
    assert "train.int8_base" in capsys.readouterr().err
    assert (
        main([*args, "train.int8_base=on", "train.compile=true", "--output-dir", str(tmp_path / "bad")]) == 2
    )
    assert "train.int8_base: on and train.compile: true do not combine" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before anything was written

    from peft import PeftModel  # the saved adapter is an ordinary float PEFT adapter
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "auto" / "adapter")
    assert not any(isinstance(m, Int8TrainLinear) for m in peft_model.modules())
