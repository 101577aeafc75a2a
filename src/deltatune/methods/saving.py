"""Shared helpers for methods that save adapters: task heads, PEFT key layout, saved tags.

(Atomic file writing, used by training and reports too, lives in :mod:`deltatune.io`.)
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from deltatune.errors import UserError
from deltatune.io import read_json

PEFT_PREFIX = "base_model.model."


def set_trainable_heads(model: nn.Module, head_modules: list[str]) -> None:
    """Task heads (e.g. the new classifier) are trained in full next to any adapter."""
    for name in head_modules:
        model.get_submodule(name).requires_grad_(True)


def head_state(model: nn.Module, head_modules: list[str]) -> dict[str, torch.Tensor]:
    """Head weights under PEFT's saved names (``base_model.model.classifier.weight``)."""
    state = {}
    for name in head_modules:
        for pname, p in model.get_submodule(name).named_parameters():
            state[f"{PEFT_PREFIX}{name}.{pname}"] = p
    return state


def load_head_and_layers(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load a PEFT-layout state dict into an adapted model; every key must land, every
    trainable parameter must be covered (otherwise the adapter does not fit this model)."""
    own = {}
    for key, value in state.items():
        if not key.startswith(PEFT_PREFIX):
            raise UserError(f"{source}: unexpected tensor '{key}' (not in PEFT layout)")
        own[key[len(PEFT_PREFIX) :]] = value
    params = dict(model.named_parameters())
    unknown = [k for k in own if k not in params]
    if unknown:
        raise UserError(
            f"{source}: adapter tensors do not fit this model, e.g. '{unknown[0]}' "
            f"({len(unknown)} unknown). Was it trained on another base model or method?"
        )
    missing = [n for n, p in params.items() if p.requires_grad and n not in own]
    if missing:
        raise UserError(
            f"{source}: adapter lacks trained tensors, e.g. '{missing[0]}' ({len(missing)} missing)"
        )
    with torch.no_grad():
        for key, value in own.items():
            target = params[key]
            if target.shape != value.shape:
                raise UserError(
                    f"{source}: '{key}' has shape {tuple(value.shape)}, "
                    f"the model expects {tuple(target.shape)}"
                )
            target.copy_(value.to(target.dtype))


def unwrap_layers(model: nn.Module, layer_type: type) -> nn.Module:
    """Replace every ``layer_type`` wrapper by its ``base_layer`` (after merging): a plain model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, layer_type):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.base_layer)
    return model


def check_tag(adapter_dir: Path, tag: str, what: str | None = None) -> dict:
    """Read ``adapter_config.json`` and make sure method ``tag`` wrote it (``what`` names it in the
    error); returns the config."""
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise UserError(f"{adapter_dir}: no adapter_config.json; not an adapter directory")
    cfg = read_json(path, "adapter config")
    found = cfg.get("method") or cfg.get("peft_type")
    if found != tag:
        raise UserError(
            f"{path}: this is a '{found}' adapter, not {what or tag}; "
            f"use method '{str(found).lower()}' to load it"
        )
    return cfg
