"""Full fine-tuning: every weight trains; the run saves a complete Hugging Face model directory.

The reference point for every parameter-efficient method: most capacity, most memory (weights,
gradients and two AdamW moments for all parameters), largest files.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch.nn as nn
from safetensors.torch import load_file

from deltatune.errors import UserError
from deltatune.methods.full.options import FullOptions
from deltatune.methods.registry import ModelContext


def apply_full(model: nn.Module, opts: FullOptions, ctx: ModelContext) -> nn.Module:
    model.requires_grad_(True)
    return model


def save_full(model: nn.Module, opts: FullOptions, ctx: ModelContext, out_dir: Path) -> None:
    """``save_pretrained`` (safetensors) into a temp dir, then swap it in."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_full(model: nn.Module, model_dir: Path) -> None:
    files = sorted(model_dir.glob("model*.safetensors"))
    if not files:
        raise UserError(f"{model_dir}: no model.safetensors found")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise UserError(f"{model_dir}: weights do not fit this model, e.g. '{unexpected[0]}'")
