"""Helpers shared by test modules (prompt_prefix)."""

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from deltatune.methods.prefix_tuning import PREFIX_TUNING
from deltatune.methods.prefix_tuning.options import PrefixOptions
from deltatune.methods.prompt_tuning import PROMPT_TUNING
from deltatune.methods.prompt_tuning.options import PromptOptions
from deltatune.methods.registry import ModelContext
from deltatune.models.tiny import tiny_config

N = 3  # virtual tokens


HEADS = {"bert": ["classifier"], "llama": ["score"], "gpt2": ["score"]}


SPECS = {"prompt": (PROMPT_TUNING, PromptOptions), "prefix": (PREFIX_TUNING, PrefixOptions)}


def tiny(kind, task="SEQ_CLS", attn="sdpa"):
    torch.manual_seed(0)
    cfg = tiny_config(kind, vocab_size=100)
    if task == "SEQ_CLS":
        cfg.num_labels = 2
        return AutoModelForSequenceClassification.from_config(cfg, attn_implementation=attn)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)


def ctx(kind, task):
    return ModelContext("tiny", task, HEADS[kind] if task == "SEQ_CLS" else [])


def adapt(method, kind, task="SEQ_CLS", placement="after_cls", **opts):
    model = tiny(kind, task)
    spec, options = SPECS[method]
    if method == "prompt":
        opts["placement"] = placement
    opts = options(num_virtual_tokens=N, **opts)
    spec.apply(model, opts, ctx(kind, task))
    return model, opts


def batch(kind, task="SEQ_CLS", padded=True):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    if padded:  # right padding, as deltatune's collate does
        mask[0, 5:] = 0
        ids[0, 5:] = tiny_config(kind).pad_token_id
    out = {"input_ids": ids, "attention_mask": mask}
    if kind == "bert":
        out["token_type_ids"] = torch.zeros_like(ids)
    out["labels"] = torch.tensor([0, 1, 1]) if task == "SEQ_CLS" else ids.masked_fill(mask == 0, -100)
    return out


def randomize(model):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in x.items() if k != "labels"}).logits
