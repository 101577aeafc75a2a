"""Evaluating a causal LM on instruction data: held-out response loss and perplexity, and the
generation metrics (ROUGE-L, BLEU, exact match) of its answers."""

from __future__ import annotations

import math

import torch

from deltatune.data.batching import sft_collate
from deltatune.data.conversations import Conversation, read_conversations
from deltatune.data.masks import encode_conversations, prompt_ids
from deltatune.data.templates import Template
from deltatune.losses.lm import causal_lm_batch_loss


@torch.no_grad()
def heldout_loss(model, feats: list[dict], pad_id: int, batch_size: int = 8) -> dict:
    """Token-mean response loss and perplexity over ``feats`` (sorted by length: little padding)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(feats, key=lambda f: len(f["input_ids"]))
    total, units = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = {k: v.to(device) for k, v in sft_collate(order[start : start + batch_size], pad_id).items()}
        out = causal_lm_batch_loss(model, batch)
        total, units = total + float(out.loss), units + out.units
    model.train(was_training)
    mean = total / max(units, 1)
    return {"loss": round(mean, 6), "perplexity": round(math.exp(min(mean, 50)), 4), "target_tokens": units}


def generation_samples(convs: list[Conversation], n: int) -> list[Conversation]:
    """The first ``n`` examples that have a prompt (plain-text rows have none)."""
    return [c for c in convs if c.prompt_messages][:n]


def generate_answers(
    model, tokenizer, template: Template, convs: list[Conversation], settings, seed: int = 0
) -> list[str]:
    from deltatune.inference.generation import generate_texts

    ids = [prompt_ids(tokenizer, template, c.prompt_messages) for c in convs]
    return generate_texts(model, tokenizer, ids, settings, seed=seed)


def evaluate_model(model, tokenizer, template, feats, samples, settings, seed) -> dict:
    """Held-out loss/perplexity, plus generation metrics on ``samples`` (if any)."""
    from deltatune.metrics.text import text_generation_metrics

    out = heldout_loss(model, feats, tokenizer.pad_token_id)
    if samples:
        answers = generate_answers(model, tokenizer, template, samples, settings, seed)
        out.update(text_generation_metrics(answers, [c.reference for c in samples]))
        out["answers"] = answers
    return out


def evaluate_file(run, data_path: str, samples: int | None = None) -> dict:
    """Held-out loss, perplexity and generation metrics of a trained run on a file."""
    convs = read_conversations(data_path, run.cfg.data)
    template = run.template()
    feats, _ = encode_conversations(
        convs, template, run.tokenizer, run.cfg.data.max_length, run.cfg.data.truncation
    )
    n = run.cfg.generate.eval_samples if samples is None else samples
    out = evaluate_model(
        run.model,
        run.tokenizer,
        template,
        feats,
        generation_samples(convs, n),
        run.cfg.generate,
        run.cfg.train.seed,
    )
    out.pop("answers", None)
    return out
