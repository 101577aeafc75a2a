"""IA3: learned rescaling vectors (Liu et al. 2022, https://arxiv.org/abs/2205.05638).

Each targeted linear layer ``W`` (out x in, bias ``b``) gets one trainable vector, initialised to ones::

    attention keys / values (output side):   h = l ⊙ (W x + b)      l: out      saved shape (out, 1)
    feed-forward down projection (input):    h = W (l ⊙ x) + b      l: in       saved shape (1, in)

      x ── W ── ⊙ l ──> h                   x ── ⊙ l ── W ──> h

so training starts from the pretrained function and adds only ``out`` (or ``in``) parameters per
layer. Merging folds ``l`` into ``W`` (rows for output side, columns for input side; the bias too on
the output side). GPT-2's ``Conv1D`` stores ``W`` as in x out; the vector keeps PEFT's shape and is
transposed when merging.

Default targets are PEFT's (``TRANSFORMERS_MODELS_TO_IA3_*_MAPPING``), matched with PEFT's rules, so
an adapter saved here loads with ``peft.PeftModel.from_pretrained`` and vice versa. Note that for
BERT, PEFT's ``output.dense`` also matches ``attention.output.dense`` (name suffix), so both the
attention output and the feed-forward output projection get input-side scaling.

Files: ``adapter_config.json`` (``peft_type: IA3``) + ``adapter_model.safetensors`` with keys
``base_model.model.<module>.ia3_l`` (no ``.weight`` suffix) and the task head's weights.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from deltatune.errors import ConfigError, UserError
from deltatune.io import load_safetensors, read_json, save_safetensors_atomic, write_json_atomic
from deltatune.methods.ia3.options import IA3Options
from deltatune.methods.registry import ModelContext
from deltatune.methods.saving import head_state, load_head_and_layers, set_trainable_heads, unwrap_layers
from deltatune.methods.switch import layers_switched_off
from deltatune.models.targets import compact_target_list, find_targets, get_submodule_parent, linear_features

# PEFT's defaults (peft.utils.constants), per model_type: targets, and which of them scale the input.
IA3_TARGETS: dict[str, list[str]] = {
    "bert": ["key", "value", "output.dense"],
    "roberta": ["key", "value", "output.dense"],
    "llama": ["k_proj", "v_proj", "down_proj"],
    "mistral": ["k_proj", "v_proj", "down_proj"],
    "qwen2": ["q_proj", "v_proj", "down_proj"],
    "gpt2": ["c_attn", "mlp.c_proj"],
}
IA3_FEEDFORWARD: dict[str, list[str]] = {
    "bert": ["output.dense"],
    "roberta": ["output.dense"],
    "llama": ["down_proj"],
    "mistral": ["down_proj"],
    "qwen2": ["down_proj"],
    "gpt2": ["mlp.c_proj"],
}


class IA3Linear(nn.Module):
    """Wraps an ``nn.Linear`` / ``Conv1D``; one parameter ``ia3_l`` of shape (out, 1) or (1, in)."""

    def __init__(self, base: nn.Module, is_feedforward: bool):
        super().__init__()
        in_features, out_features = linear_features(base)
        self.base_layer = base
        self.is_feedforward = is_feedforward
        self.fan_in_fan_out = isinstance(base, Conv1D)
        shape = (1, in_features) if is_feedforward else (out_features, 1)
        # float32 master weights, whatever the base dtype
        self.ia3_l = nn.Parameter(torch.ones(shape, device=base.weight.device))
        self.merged = False
        self.disabled = False

    def adapter_params(self) -> list[nn.Parameter]:
        return [self.ia3_l]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or self.disabled:
            return self.base_layer(x)
        scale = self.ia3_l.flatten()
        if self.is_feedforward:
            return self.base_layer((x.to(scale.dtype) * scale).to(x.dtype))
        out = self.base_layer(x)
        return (out * scale).to(out.dtype)

    def _weight_scale(self) -> torch.Tensor:
        """``ia3_l`` shaped to broadcast over the base weight (out x in, or in x out for Conv1D)."""
        return self.ia3_l.T if self.fan_in_fan_out else self.ia3_l

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        w, b = self.base_layer.weight, self.base_layer.bias
        w.copy_((w * self._weight_scale()).to(w.dtype))
        if not self.is_feedforward and b is not None:
            b.copy_((b * self.ia3_l.flatten()).to(b.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Divide the scaling back out (exact up to rounding unless some ``l`` is ~0)."""
        if not self.merged:
            return
        w, b = self.base_layer.weight, self.base_layer.bias
        w.copy_((w / self._weight_scale()).to(w.dtype))
        if not self.is_feedforward and b is not None:
            b.copy_((b / self.ia3_l.flatten()).to(b.dtype))
        self.merged = False


def ia3_layers(model: nn.Module) -> dict[str, IA3Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, IA3Linear)}


def merge_ia3(model: nn.Module) -> None:
    for layer in ia3_layers(model).values():
        layer.merge()


def unmerge_ia3(model: nn.Module) -> None:
    for layer in ia3_layers(model).values():
        layer.unmerge()


def set_ia3_enabled(model: nn.Module, enabled: bool) -> None:
    for layer in ia3_layers(model).values():
        layer.disabled = not enabled


def is_feedforward(name: str, spec: str | list[str]) -> bool:
    """PEFT's rule: a regex must match the full name; a list entry must end the name (no dot
    boundary, unlike ``target_modules``)."""
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name.endswith(s) for s in spec)


def resolve_specs(model: nn.Module, opts: IA3Options) -> tuple[str | list[str], str | list[str]]:
    """The (target_modules, feedforward_modules) specs with ``auto`` replaced by PEFT's defaults."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    targets, ff = opts.target_modules, opts.feedforward_modules
    if targets == "auto":
        if model_type not in IA3_TARGETS:
            raise ConfigError(
                f"method.target_modules: IA3 has no default targets for model type '{model_type}' "
                f"(known: {', '.join(sorted(IA3_TARGETS))}). Set method.target_modules to the key, "
                "value and feed-forward down-projection layer names, and method.feedforward_modules."
            )
        targets = IA3_TARGETS[model_type]
    if ff == "auto":
        if model_type not in IA3_FEEDFORWARD:
            raise ConfigError(
                f"method.feedforward_modules: no default for model type '{model_type}'. Set it to "
                "the feed-forward down-projection names (or [] to scale every target's output)."
            )
        ff = IA3_FEEDFORWARD[model_type]
    return targets, ff


def apply_ia3(model: nn.Module, opts: IA3Options, ctx: ModelContext) -> nn.Module:
    """Freeze the model, wrap the targets in :class:`IA3Linear`, make the task head trainable."""
    targets, ff = resolve_specs(model, opts)
    names = find_targets(model, targets)
    if isinstance(ff, list):
        unused = [s for s in ff if not any(is_feedforward(n, [s]) for n in names)]
        if unused:
            raise ConfigError(
                f"method.feedforward_modules: {unused} match no targeted layer; "
                "feed-forward modules must be among method.target_modules"
            )
    model.requires_grad_(False)
    for name in names:
        parent, child = get_submodule_parent(model, name)
        layer = IA3Linear(getattr(parent, child), is_feedforward(name, ff))
        setattr(parent, child, layer)
        layer.ia3_l.requires_grad_(True)
    set_trainable_heads(model, ctx.head_modules)
    return model


def _peft_config(model: nn.Module, opts: IA3Options, ctx: ModelContext) -> dict:
    layers = ia3_layers(model)
    targets, ff = resolve_specs(model, opts)
    if targets == "all-linear":  # spell out: PEFT's all-linear differs on what counts as a head
        targets = compact_target_list(model, list(layers))
    return {
        "peft_type": "IA3",
        "task_type": ctx.task_type,
        "base_model_name_or_path": ctx.base_model,
        "target_modules": targets,
        "feedforward_modules": ff,
        "exclude_modules": None,
        "fan_in_fan_out": any(layer.fan_in_fan_out for layer in layers.values()),
        "modules_to_save": ctx.head_modules or None,
        "init_ia3_weights": True,
        "inference_mode": True,
    }


def save_ia3(model: nn.Module, opts: IA3Options, ctx: ModelContext, out_dir: Path) -> None:
    """PEFT layout: ``base_model.model.<module>.ia3_l`` and the head's weights."""
    state = {f"base_model.model.{name}.ia3_l": layer.ia3_l for name, layer in ia3_layers(model).items()}
    state.update(head_state(model, ctx.head_modules))
    out_dir.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(state, out_dir / "adapter_model.safetensors")
    write_json_atomic(_peft_config(model, opts, ctx), out_dir / "adapter_config.json")


def _read_config(adapter_dir: Path) -> dict:
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise UserError(f"{adapter_dir}: no adapter_config.json; not an adapter directory")
    cfg = read_json(path, "adapter config")
    if cfg.get("peft_type") != "IA3":
        found = cfg.get("peft_type") or cfg.get("method")
        raise UserError(
            f"{path}: this is a '{found}' adapter, not IA3; use method '{str(found).lower()}' to load it"
        )
    return cfg


def load_ia3(model: nn.Module, adapter_dir: Path) -> None:
    """Load an IA3 adapter (ours or PEFT's) into a model that :func:`apply_ia3` adapted."""
    _read_config(adapter_dir)
    state = load_safetensors(adapter_dir / "adapter_model.safetensors", "adapter weights")
    load_head_and_layers(model, state, adapter_dir)


def options_from_peft(adapter_dir: Path) -> IA3Options:
    """Read a PEFT IA3 ``adapter_config.json`` (ours or PEFT's) into IA3 options."""
    cfg = _read_config(adapter_dir)
    ff = cfg.get("feedforward_modules")
    return IA3Options(target_modules=cfg["target_modules"], feedforward_modules=[] if ff is None else ff)


def ia3_switched_off(model: nn.Module):
    """``with ia3_switched_off(model):`` the base model alone (merged layers unmerged meanwhile)."""
    return layers_switched_off(ia3_layers(model).values())


def merge_and_unload_ia3(model: nn.Module) -> nn.Module:
    """Fold the update into the base weights and drop the wrappers: a plain Hugging Face model."""
    merge_ia3(model)
    return unwrap_layers(model, IA3Linear)
