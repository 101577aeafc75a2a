"""Helpers shared by the methods that add virtual tokens (prompt and prefix tuning): the backbone,
the attention call's arguments, cached lengths, and PEFT's key layout of prompt-learning heads."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from deltatune.errors import ConfigError, UserError
from deltatune.io import read_json
from deltatune.methods.saving import PEFT_PREFIX, head_state, load_head_and_layers

PROMPT_LEARNING_PREFIX = "base_model."  # PEFT's key prefix for heads of prompt-learning adapters


def backbone_of(model: nn.Module) -> nn.Module:
    """The transformer under the task head (``model.base_model``; the model itself if bare)."""
    if getattr(model.config, "is_encoder_decoder", False):
        raise ConfigError(
            f"method.name: soft prompts / prefixes support encoder or decoder models, not "
            f"encoder-decoder models like {model.config.model_type}"
        )
    return getattr(model, "base_model", model)


@functools.lru_cache(maxsize=None)
def _parameter_names(cls: type) -> tuple[str, ...]:
    return tuple(inspect.signature(cls.forward).parameters)[1:]  # without self


def bound_kwargs(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """A forward call's arguments as keywords (BERT passes ``input_ids`` positionally)."""
    return {**dict(zip(_parameter_names(type(module)), args)), **kwargs}


def cached_length(kwargs: dict) -> int:
    """Tokens already in the KV cache (``cache`` in transformers 5, ``past_key_values`` before)."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return int(cache[0][0].shape[-2]) if len(cache) else 0


def input_length(kwargs: dict) -> int:
    x = kwargs.get("input_ids")
    return (x if x is not None else kwargs["inputs_embeds"]).shape[1]


def prompt_learning_head_state(model: nn.Module, head_modules: list[str]) -> dict[str, torch.Tensor]:
    """Head weights under PEFT's prompt-learning names: ``base_model.classifier.weight``."""
    return {
        PROMPT_LEARNING_PREFIX + k[len(PEFT_PREFIX) :]: v for k, v in head_state(model, head_modules).items()
    }


def load_prompt_learning_state(
    model: nn.Module, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], source: Path
) -> None:
    """Load PEFT prompt-learning heads (``base_model.<head>.*``) plus ``own`` tensors (keyed by our
    parameter names) with the shared checks: every tensor must land, every trainable one be covered."""
    full = {}
    for key, value in state.items():
        if not key.startswith(PROMPT_LEARNING_PREFIX):
            raise UserError(f"{source}: unexpected tensor '{key}' (not in PEFT's prompt-learning layout)")
        full[PEFT_PREFIX + key[len(PROMPT_LEARNING_PREFIX) :]] = value
    full.update({PEFT_PREFIX + name: value for name, value in own.items()})
    load_head_and_layers(model, full, source)


def read_adapter_config(adapter_dir: Path, peft_type: str) -> dict:
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise UserError(f"{adapter_dir}: no adapter_config.json; pass a directory saved by deltatune or PEFT")
    cfg = read_json(path, "adapter config")
    if cfg.get("peft_type") != peft_type:
        raise UserError(
            f"{path}: peft_type is {cfg.get('peft_type')!r}, this method loads {peft_type!r} "
            "adapters; set method.name to the method the adapter was trained with"
        )
    return cfg


def parameter_name(model: nn.Module, param: nn.Parameter) -> str:
    return next(n for n, p in model.named_parameters() if p is param)
