"""LoRA against Hugging Face PEFT: same outputs and gradients, PEFT-saved adapters load here."""

import copy

import pytest
import torch

from deltatune.methods.lora.model import apply_lora, lora_layers
from deltatune.methods.lora.options import LoraOptions
from deltatune.methods.registry import ModelContext
from helpers.lora import randomize_b, tiny
from helpers.tiny import inputs


@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2"])
def test_same_outputs_and_gradients_as_peft(kind):
    peft = pytest.importorskip("peft")
    model, heads = tiny(kind)
    reference = copy.deepcopy(model)
    apply_lora(model, LoraOptions(r=4, alpha=8, dropout=0.0), ModelContext("x", "SEQ_CLS", heads))
    randomize_b(model)
    targets = sorted({n.rsplit(".", 1)[-1] for n in lora_layers(model)})
    pm = peft.get_peft_model(
        reference,
        peft.LoraConfig(
            r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            target_modules=targets,
            task_type="SEQ_CLS",
            fan_in_fan_out=(kind == "gpt2"),
        ),
    )
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
    peft_grads = {
        name.replace("base_model.model.", "").replace(".default", ""): p.grad
        for name, p in pm.named_parameters()
        if ".lora_" in name
    }
    for name, p in ours.items():
        if ".lora_" in name:
            assert torch.allclose(p.grad, peft_grads[name], atol=1e-5), name


@pytest.mark.parametrize("kind,rslora", [("bert", False), ("gpt2", True)])
def test_peft_saved_lora_loads_into_deltatune(kind, rslora, tmp_path):
    peft = pytest.importorskip("peft")
    from deltatune.methods.lora.model import load_lora, options_from_peft

    model, heads = tiny(kind)
    ours = copy.deepcopy(model)
    targets = ["query", "value"] if kind == "bert" else ["c_attn"]
    pm = peft.get_peft_model(
        model,
        peft.LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=targets,
            task_type="SEQ_CLS",
            use_rslora=rslora,
            fan_in_fan_out=(kind == "gpt2"),
        ),
    )
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
