"""LoRA: low-rank adaptation (Hu et al. 2021, https://arxiv.org/abs/2106.09685).

A frozen linear layer ``W`` (out x in) gets a trainable low-rank update::

    h = W x + (alpha / r) * B A dropout(x)        A: r x in (Kaiming-uniform),  B: out x r (zeros)

      x ──┬──────────── W (frozen) ─────────────┐
          └─ dropout ─ A (r x in) ─ B (out x r) ─ * alpha/r ─ (+) ─> h

``B = 0`` at init, so training starts from the pretrained function. Merging folds ``scale * B A``
into ``W`` for zero-overhead inference. GPT-2's ``Conv1D`` stores ``W`` transposed (in x out);
the update is transposed accordingly.

Options:

* ``use_dora`` — DoRA (Liu et al. 2024, https://arxiv.org/abs/2402.09353) splits the adapted weight
  into a trainable magnitude ``m`` (one per output feature, init ``||W_i,:||``) and a direction::

      h = m / ||W + s B A||_row  ⊙  (W + s B A) x  +  b

  The row norm is treated as a constant in backprop (paper §4.3, as PEFT does), so the outputs
  *and* gradients equal PEFT's. Merging folds ``m / ||W + s B A||`` into the merged weight.
* ``loraplus_lr_ratio`` — LoRA+ (Hayou et al. 2024, https://arxiv.org/abs/2402.12354): the ``B``
  matrices learn ``ratio`` times faster than ``A`` (paper: ratio ≈ 16); see :func:`lora_param_lr`.

Files are written in the PEFT format (``adapter_config.json`` + ``adapter_model.safetensors``),
so ``peft.PeftModel.from_pretrained`` loads them.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from deltatune.io import load_safetensors, read_json, save_safetensors_atomic, write_json_atomic
from deltatune.methods.lora.options import LoraOptions
from deltatune.methods.registry import ModelContext
from deltatune.methods.saving import head_state, load_head_and_layers, set_trainable_heads, unwrap_layers
from deltatune.methods.switch import layers_switched_off
from deltatune.models.targets import compact_target_list, find_targets, get_submodule_parent, linear_features


class LoraLinear(nn.Module):
    """Wraps an ``nn.Linear`` or ``Conv1D`` with a LoRA update. Parameters: ``lora_A``, ``lora_B``
    and, with DoRA, ``lora_magnitude_vector`` (out,)."""

    def __init__(
        self,
        base: nn.Module,
        r: int,
        alpha: float,
        dropout: float,
        use_rslora: bool = False,
        use_dora: bool = False,
    ):
        super().__init__()
        in_features, out_features = linear_features(base)
        self.base_layer = base
        self.fan_in_fan_out = isinstance(base, Conv1D)
        self.r = r
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(in_features, r, bias=False)
        self.lora_B = nn.Linear(r, out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.merged = False
        self.disabled = False
        self.lora_magnitude_vector: nn.Parameter | None = None
        self._merged_norm: torch.Tensor | None = None  # DoRA: ||W + ΔW|| at merge time, for unmerge
        if use_dora:  # ||W_i,:|| per output feature (B = 0, so W + s B A = W); float32 master weight
            with torch.no_grad():
                norm = self.weight_norm(self.delta_weight())
            self.lora_magnitude_vector = nn.Parameter(norm.to(base.weight.device))

    def adapter_params(self) -> list[nn.Parameter]:
        params = [self.lora_A.weight, self.lora_B.weight]
        return params + ([self.lora_magnitude_vector] if self.lora_magnitude_vector is not None else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged or self.disabled:
            return out
        x = x.to(self.lora_A.weight.dtype)
        dropped = self.lora_dropout(x)
        if (
            self.lora_magnitude_vector is None
            and out.dtype == x.dtype
            and not torch.is_autocast_enabled(x.device.type)
        ):
            # out + s * (x A^T) B^T as one GEMM with accumulation: no (N, out) temporaries for the
            # scaled update and the sum (measured ~5% of a SmolLM2 LoRA step on CPU)
            h = self.lora_A(dropped).reshape(-1, self.r)
            flat = torch.addmm(out.reshape(-1, out.shape[-1]), h, self.lora_B.weight.T, alpha=self.scaling)
            return flat.view(out.shape)
        update = self.lora_B(self.lora_A(dropped)) * self.scaling
        if self.lora_magnitude_vector is not None:
            update = self._dora_update(dropped, out, update)
        return out + update.to(out.dtype)

    def _base_weight_out_in(self) -> torch.Tensor:
        w = self.base_layer.weight
        return w.T if self.fan_in_fan_out else w

    def weight_norm(self, delta: torch.Tensor) -> torch.Tensor:
        """Row norms ``||W + ΔW||`` (out,) in float32, ``delta`` in the base weight's layout."""
        delta = delta.T if self.fan_in_fan_out else delta
        return torch.linalg.norm(self._base_weight_out_in().float() + delta.float(), dim=1)

    def _dora_update(self, dropped: torch.Tensor, out: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """What DoRA adds to the base output ``out`` (PEFT's formulation)::

            (m/n - 1) ⊙ W x' + m/n ⊙ s B A x',   n = ||W + s B A||_row, detached (DoRA §4.3)

        With no dropout (or in eval) ``x' = x`` and ``W x`` is reused from ``out``; the total is then
        ``m/n ⊙ (W + s B A) x + b``. With dropout, ``W x'`` uses the dropped input, as PEFT does.
        """
        with torch.no_grad():  # a constant in backprop
            norm = self.weight_norm(self.delta_weight())
        factor = self.lora_magnitude_vector / norm
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            bias = self.base_layer.bias
            base = out.to(dropped.dtype) - (bias if bias is not None else 0)
        else:
            base = F.linear(dropped, self._base_weight_out_in().to(dropped.dtype))
        return (factor - 1) * base + factor * update

    def delta_weight(self) -> torch.Tensor:
        """``scale * B A`` in the base weight's layout (out x in, or in x out for Conv1D)."""
        delta = (self.lora_B.weight @ self.lora_A.weight) * self.scaling
        return delta.T if self.fan_in_fan_out else delta

    def _dora_factor(self, norm: torch.Tensor) -> torch.Tensor:
        """``m / n`` shaped to scale the rows of ``W`` (columns of a Conv1D weight)."""
        factor = self.lora_magnitude_vector / norm
        return factor.view(1, -1) if self.fan_in_fan_out else factor.view(-1, 1)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        w = self.base_layer.weight
        delta = self.delta_weight()
        if self.lora_magnitude_vector is None:
            w.add_(delta.to(w.dtype))
        else:  # W' = m / ||W + ΔW|| ⊙ (W + ΔW)
            self._merged_norm = self.weight_norm(delta)
            w.copy_((self._dora_factor(self._merged_norm) * (w.float() + delta)).to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        w = self.base_layer.weight
        if self.lora_magnitude_vector is None:
            w.sub_(self.delta_weight().to(w.dtype))
        else:
            w.copy_((w.float() / self._dora_factor(self._merged_norm) - self.delta_weight()).to(w.dtype))
            self._merged_norm = None
        self.merged = False


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def set_lora_enabled(model: nn.Module, enabled: bool) -> None:
    """Disable (base model only) or re-enable every LoRA update."""
    for layer in lora_layers(model).values():
        layer.disabled = not enabled


def merge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.unmerge()


def apply_lora(model: nn.Module, opts: LoraOptions, ctx: ModelContext) -> nn.Module:
    """Freeze the model, wrap the target layers, make the task head trainable."""
    model.requires_grad_(False)
    for name in find_targets(model, opts.target_modules):
        parent, child = get_submodule_parent(model, name)
        base = getattr(parent, child)
        layer = LoraLinear(base, opts.r, opts.alpha, opts.dropout, opts.use_rslora, opts.use_dora)
        layer.to(device=base.weight.device)  # adapter weights stay float32 (master weights)
        setattr(parent, child, layer)
        for p in layer.adapter_params():
            p.requires_grad_(True)
    set_trainable_heads(model, ctx.head_modules)
    return model


def _peft_config(model: nn.Module, opts: LoraOptions, ctx: ModelContext) -> dict:
    layers = lora_layers(model)
    return {
        "peft_type": "LORA",
        "task_type": ctx.task_type,
        "base_model_name_or_path": ctx.base_model,
        "r": opts.r,
        "lora_alpha": opts.alpha,
        "lora_dropout": opts.dropout,
        "target_modules": compact_target_list(model, list(layers)),
        "modules_to_save": ctx.head_modules or None,
        "fan_in_fan_out": any(layer.fan_in_fan_out for layer in layers.values()),
        "bias": "none",
        "use_rslora": opts.use_rslora,
        "use_dora": opts.use_dora,
        "init_lora_weights": True,
        "inference_mode": True,
    }


def save_lora(model: nn.Module, opts: LoraOptions, ctx: ModelContext, out_dir: Path) -> None:
    """PEFT layout: ``base_model.model.<module>.lora_A.weight`` and the head's weights."""
    state = {}
    for name, layer in lora_layers(model).items():
        state[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A.weight
        state[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B.weight
        if layer.lora_magnitude_vector is not None:  # PEFT's key: no ".weight" suffix
            state[f"base_model.model.{name}.lora_magnitude_vector"] = layer.lora_magnitude_vector
    state.update(head_state(model, ctx.head_modules))
    out_dir.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(state, out_dir / "adapter_model.safetensors")
    write_json_atomic(_peft_config(model, opts, ctx), out_dir / "adapter_config.json")


def load_lora(model: nn.Module, adapter_dir: Path) -> None:
    state = load_safetensors(adapter_dir / "adapter_model.safetensors", "adapter weights")
    load_head_and_layers(model, state, adapter_dir)


def options_from_peft(adapter_dir: Path) -> LoraOptions:
    """Read a PEFT ``adapter_config.json`` (ours or PEFT's) into LoRA options."""
    cfg = read_json(adapter_dir / "adapter_config.json", "adapter config")
    return LoraOptions(
        r=cfg["r"],
        alpha=cfg["lora_alpha"],
        dropout=cfg.get("lora_dropout", 0.0),
        target_modules=cfg["target_modules"],
        use_rslora=cfg.get("use_rslora", False),
        use_dora=cfg.get("use_dora", False),
    )


def lora_param_lr(model: nn.Module, opts: LoraOptions, base_lr: float) -> dict[int, float]:
    """LoRA+: ``{id(B): base_lr * loraplus_lr_ratio}`` for every B matrix; empty when LoRA+ is off.

    Only B is sped up, as in the paper. (PEFT's ``create_loraplus_optimizer`` also gives every
    trainable 1-D tensor, e.g. biases of the head or DoRA's magnitude, the B learning rate.)
    """
    if not opts.loraplus_lr_ratio:
        return {}
    return {
        id(layer.lora_B.weight): base_lr * opts.loraplus_lr_ratio for layer in lora_layers(model).values()
    }


def lora_switched_off(model: nn.Module):
    """``with lora_switched_off(model):`` the base model alone (merged layers unmerged meanwhile)."""
    return layers_switched_off(lora_layers(model).values())


def merge_and_unload_lora(model: nn.Module) -> nn.Module:
    """Fold the update into the base weights and drop the wrappers: a plain Hugging Face model."""
    merge_lora(model)
    return unwrap_layers(model, LoraLinear)
