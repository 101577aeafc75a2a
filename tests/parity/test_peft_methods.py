"""Methods against Hugging Face PEFT: saved adapters round-trip both ways with the same outputs; DoRA and IA3
equal PEFT's."""

import pytest
import torch

from deltatune.methods.ia3.model import ia3_layers
from deltatune.methods.ia3.model import options_from_peft as ia3_options_from_peft
from deltatune.methods.lora import LORA
from deltatune.methods.lora.model import options_from_peft as lora_options_from_peft
from deltatune.methods.lora.options import LoraOptions
from deltatune.methods.registry import ModelContext
from helpers.methods import R, adapted, perturb, tiny
from helpers.tiny import inputs


def _peft_config(peft, name, kind):
    if name == "ia3":
        return peft.IA3Config(task_type="SEQ_CLS")
    targets = {
        "bert": ["query", "value", "dense"],
        "llama": ["q_proj", "v_proj", "down_proj"],
        "gpt2": ["c_attn", "c_proj"],
    }[kind]
    return peft.LoraConfig(
        r=R,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=targets,
        use_dora=True,
        task_type="SEQ_CLS",
        fan_in_fan_out=(kind == "gpt2"),
    )


@pytest.mark.parametrize("name", ["ia3", "dora"])
@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2"])
def test_peft_round_trips(name, kind, tmp_path):
    peft = pytest.importorskip("peft")
    # deltatune-saved -> peft.PeftModel.from_pretrained
    model, spec, opts, ctx = adapted(name, kind)
    perturb(model, ("ia3_l", "lora_B", "lora_magnitude_vector", "score.", "classifier."))
    spec.save(model, opts, ctx, tmp_path / "ours")
    pm = peft.PeftModel.from_pretrained(tiny(kind)[0], tmp_path / "ours")
    model.eval(), pm.eval()
    with torch.no_grad():
        assert torch.allclose(pm(**inputs()).logits, model(**inputs()).logits, atol=1e-5)
    # PEFT-saved -> deltatune
    pm = peft.get_peft_model(tiny(kind)[0], _peft_config(peft, name, kind))
    perturb(pm, ("ia3_l", "lora_B", "lora_magnitude_vector", "modules_to_save"))
    pm.save_pretrained(tmp_path / "peft")
    fresh, heads = tiny(kind)
    from_peft = ia3_options_from_peft if name == "ia3" else lora_options_from_peft
    spec.apply(fresh, from_peft(tmp_path / "peft"), ModelContext("tiny", "SEQ_CLS", heads))
    spec.load(fresh, tmp_path / "peft")
    fresh.eval(), pm.eval()
    with torch.no_grad():
        assert torch.allclose(fresh(**inputs()).logits, pm(**inputs()).logits, atol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_dora_outputs_and_gradients_equal_peft(kind, dropout):
    peft = pytest.importorskip("peft")
    model, heads = tiny(kind)
    pm = peft.get_peft_model(tiny(kind)[0], _peft_config(peft, "dora", kind))
    targets = pm.peft_config["default"].target_modules
    opts = LoraOptions(r=R, alpha=8, dropout=dropout, target_modules=sorted(targets), use_dora=True)
    LORA.apply(model, opts, ModelContext("x", "SEQ_CLS", heads))
    for layer in pm.modules():
        if hasattr(layer, "lora_dropout") and dropout:
            layer.lora_dropout["default"] = torch.nn.Dropout(dropout)
    perturb(model)
    ours = dict(model.named_parameters())

    def key(peft_name):
        return (
            peft_name.replace("base_model.model.", "")
            .replace(".default", "")
            .replace("lora_magnitude_vector.weight", "lora_magnitude_vector")
        )

    with torch.no_grad():
        for name, p in pm.named_parameters():
            if ".lora_" in name:
                p.copy_(ours[key(name)])
    model.train(), pm.train()  # training path: dropout on, norm detached
    torch.manual_seed(5)
    out_ours = model(**inputs()).logits
    torch.manual_seed(5)
    out_peft = pm(**inputs()).logits
    assert torch.allclose(out_ours, out_peft, atol=1e-5)
    out_ours.pow(2).sum().backward()
    out_peft.pow(2).sum().backward()
    peft_grads = {key(n): p.grad for n, p in pm.named_parameters() if ".lora_" in n}
    assert any(".lora_magnitude_vector" in n for n in peft_grads)
    for n, p in ours.items():
        if ".lora_" in n:
            assert torch.allclose(p.grad, peft_grads[n], atol=1e-5), n


def test_ia3_defaults_match_peft():
    peft = pytest.importorskip("peft")
    for kind in ("bert", "llama", "gpt2"):
        model, *_ = adapted("ia3", kind)
        pm = peft.get_peft_model(tiny(kind)[0], peft.IA3Config(task_type="SEQ_CLS"))
        theirs = {
            n.replace("base_model.model.", ""): m.is_feedforward
            for n, m in pm.named_modules()
            if hasattr(m, "ia3_l")
        }
        assert {n: m.is_feedforward for n, m in ia3_layers(model).items()} == theirs
