"""Helpers shared by test modules (methods)."""

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
)

from deltatune.methods.adapters import ADAPTERS
from deltatune.methods.adapters.options import AdaptersOptions
from deltatune.methods.bitfit import BITFIT
from deltatune.methods.bitfit.options import BitFitOptions
from deltatune.methods.ia3 import IA3
from deltatune.methods.ia3.options import IA3Options
from deltatune.methods.lora import LORA
from deltatune.methods.lora.options import LoraOptions
from deltatune.methods.registry import ModelContext

H, L, FF, R = 32, 2, 64, 4  # tiny() sizes; R = LoRA rank used here


def tiny(kind):
    """A random 2-layer model (same seed -> same weights) and its head module names."""
    torch.manual_seed(0)
    if kind == "bert":
        return BertForSequenceClassification(
            BertConfig(
                vocab_size=100,
                hidden_size=H,
                num_hidden_layers=L,
                num_attention_heads=4,
                intermediate_size=FF,
                num_labels=3,
            )
        ), ["classifier"]
    if kind == "llama":
        return LlamaForSequenceClassification(
            LlamaConfig(
                vocab_size=100,
                hidden_size=H,
                num_hidden_layers=L,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=FF,
                num_labels=3,
                pad_token_id=0,
            )
        ), ["score"]
    return GPT2ForSequenceClassification(
        GPT2Config(
            vocab_size=100,
            n_embd=H,
            n_layer=L,
            n_head=4,
            num_labels=3,
            pad_token_id=0,
            bos_token_id=0,
            eos_token_id=0,
        )
    ), ["score"]


def method(name):
    """(spec, options) for a method name used in this file."""
    if name == "ia3":
        return IA3, IA3Options()
    if name == "bitfit":
        return BITFIT, BitFitOptions()
    if name in ("houlsby", "pfeiffer"):
        return ADAPTERS, AdaptersOptions(variant=name)
    return LORA, LoraOptions(r=R, alpha=8, dropout=0.0, use_dora=True)


def adapted(name, kind):
    model, heads = tiny(kind)
    spec, opts = method(name)
    ctx = ModelContext("tiny", "SEQ_CLS", heads)
    spec.apply(model, opts, ctx)
    return model, spec, opts, ctx


def perturb(model, names_with=("ia3_l", "lora_B", "lora_magnitude_vector", "adapter.up")):
    """Move adapter weights away from their identity init so tests see a real update."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name for s in names_with):
                noise = torch.randn(p.shape, generator=g) * 0.1
                p.copy_(p * (1 + noise) if "ia3" in name or "magnitude" in name else p + noise)
