"""Helpers shared by test modules (lora)."""

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
)

from deltatune.methods.lora.model import lora_layers


def tiny(kind):
    torch.manual_seed(0)
    if kind == "bert":
        cfg = BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            num_labels=3,
        )
        return BertForSequenceClassification(cfg), ["classifier"]
    if kind == "llama":
        cfg = LlamaConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            num_labels=3,
            pad_token_id=0,
        )
        return LlamaForSequenceClassification(cfg), ["score"]
    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, num_labels=3, pad_token_id=0)
    return GPT2ForSequenceClassification(cfg), ["score"]


def randomize_b(model):
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)
