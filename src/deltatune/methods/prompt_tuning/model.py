"""Prompt tuning: a trained soft prompt read before the input (Lester et al. 2021,
https://arxiv.org/abs/2104.08691).

The frozen model reads ``n`` trainable vectors ``P`` (n x hidden) next to the embedded tokens ``x``::

    decoders (and placement=start):  [P_1 .. P_n, x_1 .. x_T]            PEFT's layout
    encoders, placement=after_cls:   [x_CLS, P_1 .. P_n, x_2 .. x_T]      the pooler still reads [CLS]

Only ``P`` (n x hidden values) and a classification head train. Init ``random`` (normal with the
embedding table's std), ``vocab`` (embeddings of ``n`` random vocabulary ids; RNG seeded by the run's
``train.seed``) or ``text`` (embeddings of ``init_text``'s tokens, repeated/cut to ``n``).

How it hooks in: a forward pre-hook and a forward hook on the backbone (``model.base_model``).

* The pre-hook embeds ``input_ids``, inserts ``P`` and widens ``attention_mask``, ``token_type_ids``
  (zeros) and ``position_ids`` (if passed: the virtual tokens take the next positions, later tokens
  move up by ``n``, as when the model counts positions itself).
* The forward hook removes the ``n`` virtual positions from the backbone's hidden states, so the task
  head sees exactly the caller's ``T`` positions: LM logits line up with ``input_ids`` and ``labels``
  (no -100 padding needed), and decoder classifiers still find the last real token from ``input_ids``.
* ``model.generate`` works unchanged: the prompt goes in at the first step (empty KV cache); later
  steps find it in the cache, so the hook only widens the attention mask and shifts positions by ``n``.

The model object stays the same (``apply`` adapts in place). Files use PEFT's layout:
``prompt_embeddings`` (n x hidden) plus the head under ``base_model.<head>.*`` (PEFT's prompt-learning
models wrap the base model directly, so there is no ``.model`` in these names).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
from transformers.utils import ModelOutput

from deltatune.errors import ConfigError, UserError
from deltatune.io import load_safetensors, save_safetensors_atomic, write_json_atomic
from deltatune.methods.prompt_tuning.options import PromptOptions
from deltatune.methods.registry import ModelContext
from deltatune.methods.saving import set_trainable_heads
from deltatune.methods.switch import insertion_off
from deltatune.methods.virtual_tokens import (
    backbone_of,
    bound_kwargs,
    cached_length,
    input_length,
    load_prompt_learning_state,
    parameter_name,
    prompt_learning_head_state,
    read_adapter_config,
)
from deltatune.models.loading import is_encoder

_PEFT_INIT = {"random": "RANDOM", "vocab": "SAMPLE_VOCAB", "text": "TEXT"}


# ----------------------------------------------------------------------------- shared helpers
# (also used by prefix tuning, which hooks the same backbone call)


# ----------------------------------------------------------------------------- the soft prompt


def _insert(x: torch.Tensor, new: torch.Tensor, at: int) -> torch.Tensor:
    """Insert ``new`` (B, n, ...) into ``x`` (B, T, ...) before position ``at`` (dim 1)."""
    return torch.cat([x[:, :at], new.to(x.dtype), x[:, at:]], dim=1)


class SoftPrompt(nn.Module):
    """The trained prompt ``P`` (n x hidden, float32) and the hooks that insert it at index ``at``."""

    def __init__(self, prompt: torch.Tensor, at: int):
        super().__init__()
        self.prompt = nn.Parameter(prompt.detach().float().clone())
        self.at = at
        self.enabled = True
        self._inserted = False  # did the current backbone call insert the prompt?

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt.shape[0]

    def adapter_params(self) -> list[nn.Parameter]:
        return [self.prompt]

    def pre_hook(self, backbone: nn.Module, args: tuple, kwargs: dict):
        self._inserted = False
        if not self.enabled:
            return None
        kw = bound_kwargs(backbone, args, kwargs)
        mask = kw.get("attention_mask")
        if mask is not None and mask.ndim != 2:
            raise UserError(
                "prompt tuning needs a 2D attention_mask (batch x tokens); 4D masks and "
                "static KV caches are not supported"
            )
        n, at = self.num_virtual_tokens, self.at
        past = cached_length(kw)
        if past:  # a later generation step: the prompt is already in the cache
            if mask is not None and mask.shape[1] == past + input_length(kw) - n:
                kw["attention_mask"] = _insert(mask, mask.new_ones(mask.shape[0], n), 0)
            if kw.get("position_ids") is not None:
                kw["position_ids"] = kw["position_ids"] + n
            return (), kw
        embeds = kw.pop("inputs_embeds", None)
        ids = kw.pop("input_ids", None)
        if embeds is None:
            embeds = backbone.get_input_embeddings()(ids)
        batch = embeds.shape[0]
        kw["inputs_embeds"] = _insert(embeds, self.prompt.unsqueeze(0).expand(batch, -1, -1), at)
        if mask is not None:
            kw["attention_mask"] = _insert(mask, mask.new_ones(batch, n), at)
        if kw.get("token_type_ids") is not None:
            types = kw["token_type_ids"]
            kw["token_type_ids"] = _insert(types, types.new_zeros(types.shape[0], n), at)
        if kw.get("position_ids") is not None:
            pos = kw["position_ids"]
            start = pos[:, at - 1 : at] + 1 if at else torch.zeros_like(pos[:, :1])
            virtual = start + torch.arange(n, device=pos.device, dtype=pos.dtype)
            kw["position_ids"] = torch.cat([pos[:, :at], virtual, pos[:, at:] + n], dim=1)
        self._inserted = True
        return (), kw

    def post_hook(self, backbone: nn.Module, args: tuple, output):
        if not self._inserted:
            return output
        self._inserted = False
        n, at = self.num_virtual_tokens, self.at

        def strip(h: torch.Tensor) -> torch.Tensor:
            return torch.cat([h[:, :at], h[:, at + n :]], dim=1)

        if isinstance(output, ModelOutput):
            output.last_hidden_state = strip(output.last_hidden_state)
            if output.get("hidden_states") is not None:
                output.hidden_states = tuple(strip(h) for h in output.hidden_states)
            return output
        return (strip(output[0]), *output[1:])


def soft_prompt_of(model: nn.Module) -> SoftPrompt | None:
    return getattr(getattr(model, "base_model", model), "soft_prompt", None)


def set_prompt_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch the soft prompt off (plain base model) or on again."""
    prompt = soft_prompt_of(model)
    if prompt is None:
        raise ValueError("this model has no soft prompt (apply prompt tuning first)")
    prompt.enabled = enabled


def _initial_prompt(embedding: nn.Embedding, opts: PromptOptions, ctx: ModelContext) -> torch.Tensor:
    weight = embedding.weight.detach()
    n = opts.num_virtual_tokens
    if opts.init == "random":
        return torch.randn(n, weight.shape[1]) * weight.float().std().item()
    if opts.init == "vocab":
        ids = torch.randint(0, weight.shape[0], (n,))
    else:
        from deltatune.models import load_tokenizer

        ids = load_tokenizer(ctx.base_model)(opts.init_text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"method.init_text: {opts.init_text!r} gives no tokens")
        ids = torch.tensor((ids * math.ceil(n / len(ids)))[:n])
    return weight[ids.to(weight.device)].float().cpu()


def apply_prompt_tuning(model: nn.Module, opts: PromptOptions, ctx: ModelContext) -> nn.Module:
    """Freeze the model, hook a soft prompt into its backbone, make the task head trainable.

    Adapts ``model`` in place and returns it. Trainable: ``n x hidden`` (+ the head).
    """
    backbone = backbone_of(model)
    if hasattr(backbone, "soft_prompt"):
        raise ValueError("prompt tuning is already applied to this model")
    model.requires_grad_(False)
    embedding = model.get_input_embeddings()
    at = 1 if opts.placement == "after_cls" and is_encoder(model.config) else 0
    prompt = SoftPrompt(_initial_prompt(embedding, opts, ctx), at).to(embedding.weight.device)
    backbone.soft_prompt = prompt
    backbone.register_forward_pre_hook(prompt.pre_hook, with_kwargs=True)
    backbone.register_forward_hook(prompt.post_hook)
    set_trainable_heads(model, ctx.head_modules)
    return model


def _peft_config(model: nn.Module, opts: PromptOptions, ctx: ModelContext) -> dict:
    cfg = model.config
    heads = cfg.num_attention_heads
    config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": ctx.task_type,
        "base_model_name_or_path": ctx.base_model,
        "num_virtual_tokens": opts.num_virtual_tokens,
        "token_dim": model.get_input_embeddings().weight.shape[1],
        "num_transformer_submodules": 1,
        "num_attention_heads": heads,
        "num_layers": cfg.num_hidden_layers,
        "prompt_tuning_init": _PEFT_INIT[opts.init],
        "prompt_tuning_init_text": opts.init_text,
        "tokenizer_name_or_path": ctx.base_model if opts.init == "text" else None,
        "modules_to_save": ctx.head_modules or None,
        "inference_mode": True,
    }
    if soft_prompt_of(model).at:  # PEFT would put the prompt first: say so in the file
        config["deltatune_placement"] = "after_cls"
    return config


def save_prompt_tuning(model: nn.Module, opts: PromptOptions, ctx: ModelContext, out_dir: Path) -> None:
    """PEFT layout: ``prompt_embeddings`` (n x hidden) and ``base_model.<head>.*``."""
    prompt = soft_prompt_of(model)
    state = {"prompt_embeddings": prompt.prompt, **prompt_learning_head_state(model, ctx.head_modules)}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(state, out_dir / "adapter_model.safetensors")
    write_json_atomic(_peft_config(model, opts, ctx), out_dir / "adapter_config.json")


def load_prompt_tuning(model: nn.Module, adapter_dir: Path) -> None:
    """Load a deltatune- or PEFT-saved prompt into a model that ``apply_prompt_tuning`` adapted."""
    cfg = read_adapter_config(adapter_dir, "PROMPT_TUNING")
    prompt = soft_prompt_of(model)
    saved_at = 1 if cfg.get("deltatune_placement") == "after_cls" else 0
    if saved_at != prompt.at:
        saved, ours = ("after_cls", "start") if saved_at else ("start", "after_cls")
        raise UserError(
            f"{adapter_dir}: the prompt was trained with placement {saved}, the model uses "
            f"{ours}; set method.placement: {saved}"
        )
    state = load_safetensors(adapter_dir / "adapter_model.safetensors", "adapter weights")
    if "prompt_embeddings" not in state:
        raise UserError(f"{adapter_dir}: no 'prompt_embeddings' tensor; not a prompt-tuning adapter")
    own = {parameter_name(model, prompt.prompt): state.pop("prompt_embeddings")}
    load_prompt_learning_state(model, state, own, adapter_dir)


def options_from_peft(adapter_dir: Path) -> PromptOptions:
    """Read a PEFT ``adapter_config.json`` (ours or PEFT's) into prompt-tuning options."""
    cfg = read_adapter_config(adapter_dir, "PROMPT_TUNING")
    init = {v: k for k, v in _PEFT_INIT.items()}.get(cfg.get("prompt_tuning_init"), "random")
    return PromptOptions(
        num_virtual_tokens=cfg["num_virtual_tokens"],
        init=init,
        init_text=cfg.get("prompt_tuning_init_text") if init == "text" else None,
        placement=cfg.get("deltatune_placement", "start"),
    )


def prompt_switched_off(model: nn.Module):
    """``with prompt_switched_off(model):`` no soft prompt is inserted (the base model alone)."""
    return insertion_off(soft_prompt_of(model))
