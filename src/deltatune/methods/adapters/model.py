"""Bottleneck adapters: Houlsby et al. 2019 (https://arxiv.org/abs/1902.00751) and
Pfeiffer et al. 2021 (https://arxiv.org/abs/2005.00247).

A small residual MLP is inserted on a sublayer's output ``y`` (hidden size d, bottleneck b)::

    y' = y + U act(D y)          D: b x d (normal, std 1e-2),  U: d x b (zeros), both with bias

      x ── sublayer output projection ── y ──┬─────────────────────────┐
                                              └─ D ─ act ─ U ───────── (+) ─> y' ─> dropout, residual, norm

``U = 0`` at init, so training starts from the pretrained function (near-identity init).

* ``houlsby``: after the attention output projection and after the feed-forward output projection
  of every layer (2 adapters per layer); the paper also trains the layer norms
  (``train_layer_norms`` defaults to true for this variant).
* ``pfeiffer``: after the feed-forward output projection only (1 per layer); norms stay frozen
  by default. About half the parameters and latency of Houlsby, usually similar quality.

Adapters are inserted by wrapping the projection module in :class:`AdapterWrapped`, so the result
feeds the model's own dropout + residual + norm. Bottleneck size: ``bottleneck`` or
``d // reduction_factor`` (default 16). PEFT has no bottleneck adapters, so files are deltatune's
two-file layout: ``adapter_config.json`` (``{"method": "adapters", ...}`` + the options) and
``adapter_model.safetensors`` with ``base_model.model.<module>.adapter.{down,up}.{weight,bias}``,
the trained norms and the task head.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn as nn

from deltatune.errors import ConfigError, UserError
from deltatune.io import load_safetensors, save_safetensors_atomic, write_json_atomic
from deltatune.methods.adapters.options import TAG, AdaptersOptions
from deltatune.methods.registry import ModelContext
from deltatune.methods.saving import (
    PEFT_PREFIX,
    check_tag,
    head_state,
    load_head_and_layers,
    set_trainable_heads,
)
from deltatune.methods.switch import layers_switched_off, originals_restored, remember_originals
from deltatune.models.targets import find_targets, get_submodule_parent, linear_features

# model_type -> (attention output projection, feed-forward output projection), regexes over full names
SITES: dict[str, tuple[str, str]] = {
    "bert": (r".*\.layer\.\d+\.attention\.output\.dense", r".*\.layer\.\d+\.output\.dense"),
    "roberta": (r".*\.layer\.\d+\.attention\.output\.dense", r".*\.layer\.\d+\.output\.dense"),
    "llama": (r".*\.self_attn\.o_proj", r".*\.mlp\.down_proj"),
    "mistral": (r".*\.self_attn\.o_proj", r".*\.mlp\.down_proj"),
    "qwen2": (r".*\.self_attn\.o_proj", r".*\.mlp\.down_proj"),
    "gpt2": (r".*\.attn\.c_proj", r".*\.mlp\.c_proj"),
}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class BottleneckAdapter(nn.Module):
    """The adapter branch ``up(act(down(y)))``, y: (..., dim); :class:`AdapterWrapped` adds ``y``."""

    def __init__(self, dim: int, bottleneck: int, activation: str):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # exact identity at init
        nn.init.zeros_(self.up.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(y)))


class AdapterWrapped(nn.Module):
    """A sublayer output projection followed by a residual bottleneck adapter."""

    def __init__(self, base: nn.Module, adapter: BottleneckAdapter):
        super().__init__()
        self.base_layer = base
        self.adapter = adapter
        self.disabled = False

    def adapter_params(self) -> list[nn.Parameter]:
        return list(self.adapter.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.disabled:
            return y
        # adapter weights stay float32 (master weights) whatever the base dtype
        return y + self.adapter(y.to(self.adapter.down.weight.dtype)).to(y.dtype)


def adapter_layers(model: nn.Module) -> dict[str, AdapterWrapped]:
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterWrapped)}


def is_norm(module: nn.Module) -> bool:
    """LayerNorm / RMSNorm modules, including model-specific classes such as ``LlamaRMSNorm``."""
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith(
        ("LayerNorm", "RMSNorm")
    )


def norm_params(model: nn.Module, head_modules: list[str]) -> dict[str, nn.Parameter]:
    """Parameters of every norm layer outside the task head, by full name."""
    head_ids = {id(p) for h in head_modules for p in model.get_submodule(h).parameters()}
    return {
        f"{mname}.{pname}": p
        for mname, m in model.named_modules()
        if is_norm(m)
        for pname, p in m.named_parameters(recurse=False)
        if id(p) not in head_ids
    }


def adapter_sites(model: nn.Module, opts: AdaptersOptions) -> list[str]:
    """Full names of the projections to wrap, for this variant."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    specs = {"attention_output": opts.attention_output, "ffn_output": opts.ffn_output}
    for key, spec in specs.items():
        if spec == "auto":
            if model_type not in SITES:
                raise ConfigError(
                    f"method.{key}: bottleneck adapters have no default insertion points for model "
                    f"type '{model_type}' (known: {', '.join(sorted(SITES))}). Set method."
                    "attention_output and method.ffn_output to regexes over full module names."
                )
            specs[key] = SITES[model_type][0 if key == "attention_output" else 1]
    wanted = ["ffn_output"] if opts.variant == "pfeiffer" else ["attention_output", "ffn_output"]
    names: list[str] = []
    for key in wanted:
        try:
            names += find_targets(model, specs[key])
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("method.target_modules", f"method.{key}")) from None
    return sorted(set(names), key=names.index)


def apply_adapters(model: nn.Module, opts: AdaptersOptions, ctx: ModelContext) -> nn.Module:
    """Freeze the model, wrap the insertion points, unfreeze adapters (+ norms) and the head."""
    sites = adapter_sites(model, opts)
    model.requires_grad_(False)
    for name in sites:
        parent, child = get_submodule_parent(model, name)
        base = getattr(parent, child)
        dim = linear_features(base)[1]
        adapter = BottleneckAdapter(dim, opts.bottleneck_for(dim), opts.activation)
        layer = AdapterWrapped(base, adapter.to(device=base.weight.device))
        setattr(parent, child, layer)
        for p in layer.adapter_params():
            p.requires_grad_(True)
    if opts.trains_norms():
        norms = norm_params(model, ctx.head_modules)
        remember_originals(model, norms)  # to switch adapters off: the base model's own norms
        for p in norms.values():
            p.requires_grad_(True)
    set_trainable_heads(model, ctx.head_modules)
    return model


def save_adapters(model: nn.Module, opts: AdaptersOptions, ctx: ModelContext, out_dir: Path) -> None:
    layers = adapter_layers(model)
    state = {
        f"{PEFT_PREFIX}{name}.adapter.{pname}": p
        for name, layer in layers.items()
        for pname, p in layer.adapter.named_parameters()
    }
    if opts.trains_norms():
        state.update({PEFT_PREFIX + n: p for n, p in norm_params(model, ctx.head_modules).items()})
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
            "options": opts.model_dump(),
            "adapter_modules": list(layers),
        },
        out_dir / "adapter_config.json",
    )


def _read_config(adapter_dir: Path) -> dict:
    return check_tag(adapter_dir, TAG, "bottleneck adapters")


def options_from_saved(adapter_dir: Path) -> AdaptersOptions:
    """The options an adapter directory was trained with (to ``apply`` before ``load``)."""
    return AdaptersOptions.model_validate(_read_config(adapter_dir)["options"])


def load_adapters(model: nn.Module, adapter_dir: Path) -> None:
    """Load saved adapters into a model that :func:`apply_adapters` adapted with the same options."""
    cfg = _read_config(adapter_dir)
    have, saved = list(adapter_layers(model)), cfg.get("adapter_modules", [])
    if have != saved:
        variant = cfg.get("options", {}).get("variant")
        raise UserError(
            f"{adapter_dir}: adapters were saved at {len(saved)} places ({variant} variant), this "
            f"model has them at {len(have)}; apply the saved options (options_from_saved) first"
        )
    state = load_safetensors(adapter_dir / "adapter_model.safetensors", "adapter weights")
    load_head_and_layers(model, state, adapter_dir)


@contextlib.contextmanager
def adapters_switched_off(model: nn.Module):
    """``with adapters_switched_off(model):`` adapters skipped and trained norms back to the base's."""
    with layers_switched_off(adapter_layers(model).values()), originals_restored(model):
        yield
