"""BitFit: train only the bias terms (Ben Zaken et al. 2021, https://arxiv.org/abs/2106.10199).

Every weight matrix stays frozen; every bias vector trains (linear layers' biases and the
LayerNorm biases, as in the paper), plus the task head in full::

    h = W x + b          W frozen, b trainable

No new parameters and no inference overhead: the trained model *is* the base model with other
biases. It needs biases, so bias-free architectures (Llama, Mistral, ...) cannot use it.

PEFT has no BitFit, so the files are deltatune's own two-file layout, shaped like PEFT's:
``adapter_config.json`` (``{"method": "bitfit", "library": "deltatune", ...}``) and
``adapter_model.safetensors`` with ``base_model.model.<module>.bias`` and the head's weights.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from deltatune.errors import ConfigError
from deltatune.io import load_safetensors, save_safetensors_atomic, write_json_atomic
from deltatune.methods.bitfit.options import TAG, BitFitOptions
from deltatune.methods.registry import ModelContext
from deltatune.methods.saving import (
    PEFT_PREFIX,
    check_tag,
    head_state,
    load_head_and_layers,
    set_trainable_heads,
)
from deltatune.methods.switch import remember_originals


def bias_params(model: nn.Module, head_modules: list[str]) -> dict[str, nn.Parameter]:
    """Every module's ``bias`` parameter outside the task head, by full parameter name."""
    head_ids = {id(p) for h in head_modules for p in model.get_submodule(h).parameters()}
    found: dict[str, nn.Parameter] = {}
    for mname, module in model.named_modules():
        bias = dict(module.named_parameters(recurse=False)).get("bias")  # not a `bias: bool` flag
        if isinstance(bias, nn.Parameter) and id(bias) not in head_ids:
            found[f"{mname}.bias" if mname else "bias"] = bias
    return found


def apply_bitfit(model: nn.Module, opts: BitFitOptions, ctx: ModelContext) -> nn.Module:
    """Freeze everything, then unfreeze the biases and the task head."""
    biases = bias_params(model, ctx.head_modules)
    if not biases:
        model_type = getattr(getattr(model, "config", None), "model_type", "unknown")
        raise ConfigError(
            f"method.name: BitFit needs bias terms, but model type '{model_type}' "
            f"({type(model).__name__}) has none outside the task head. Use lora, ia3 or adapters."
        )
    model.requires_grad_(False)
    remember_originals(model, biases)  # to switch BitFit off: the base model's own biases
    for p in biases.values():
        p.requires_grad_(True)
    set_trainable_heads(model, ctx.head_modules)
    return model


def save_bitfit(model: nn.Module, opts: BitFitOptions, ctx: ModelContext, out_dir: Path) -> None:
    state = {PEFT_PREFIX + name: p for name, p in bias_params(model, ctx.head_modules).items()}
    state.update(head_state(model, ctx.head_modules))
    out_dir.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(state, out_dir / "adapter_model.safetensors")
    write_json_atomic(
        {
            "method": TAG,
            "library": "deltatune",
            "task_type": ctx.task_type,
            "base_model_name_or_path": ctx.base_model,
            "modules_to_save": ctx.head_modules or None,
            "num_bias_tensors": len(state) - len(head_state(model, ctx.head_modules)),
        },
        out_dir / "adapter_config.json",
    )


def load_bitfit(model: nn.Module, adapter_dir: Path) -> None:
    """Load saved biases + head into a model that :func:`apply_bitfit` prepared."""
    check_tag(adapter_dir, TAG)
    state = load_safetensors(adapter_dir / "adapter_model.safetensors", "adapter weights")
    load_head_and_layers(model, state, adapter_dir)
