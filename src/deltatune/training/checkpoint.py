"""Crash-safe, resumable checkpoints — no pickle.

A checkpoint is a directory ``checkpoints/step-<N>/`` holding

* ``trainable.safetensors``  the trainable parameters (adapter or whole model), by name;
* ``optimizer.safetensors``  AdamW moments per parameter, plus ``optimizer.json`` (hyper-params, step);
* ``rng.safetensors`` + ``state.json``  torch RNG state, Python RNG state, loop counters
  (step, best metric, ...), scheduler position.

It is written under a temporary name and renamed when complete, so a kill at any moment leaves
either the previous checkpoints or a complete new one, never a half one. The last ``keep`` and the
best checkpoint are kept.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from deltatune.errors import UserError

_STEP_DIR = re.compile(r"step-(\d+)\Z")


def _opt_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    names = {id(p): n for n, p in model.named_parameters()}
    tensors, meta = {}, {"groups": [], "step": {}}
    for g in optimizer.param_groups:
        meta["groups"].append(
            {k: v for k, v in g.items() if k != "params"} | {"params": [names[id(p)] for p in g["params"]]}
        )
        for p in g["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if key == "step":
                    meta["step"][names[id(p)]] = float(value)
                else:
                    tensors[f"{names[id(p)]}::{key}"] = value
    return tensors, meta


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    model: nn.Module,
    optimizer,
    scheduler,
    loop_state: dict,
    keep: int,
    best_step: int | None,
) -> Path:
    """Write ``ckpt_root/step-<step>`` atomically, then prune old ones."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}.", dir=ckpt_root))
    try:
        trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, str(tmp / "trainable.safetensors"))
        tensors, meta = _opt_tensors(model, optimizer)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "optimizer.safetensors")
        )
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        state = {
            **loop_state,
            "step": step,
            "scheduler_last_epoch": scheduler.last_epoch,
            "python_rng": _jsonable(random.getstate()),
        }
        (tmp / "state.json").write_text(json.dumps(state))
        final = ckpt_root / f"step-{step}"
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)  # atomic on one filesystem: the checkpoint appears complete or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(ckpt_root, keep, best_step)
    return final


def _jsonable(obj):
    return [_jsonable(x) for x in obj] if isinstance(obj, (tuple, list)) else obj


def _tupled(obj):
    return tuple(_tupled(x) for x in obj) if isinstance(obj, list) else obj


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def _prune(ckpt_root: Path, keep: int, best_step: int | None) -> None:
    found = list_checkpoints(ckpt_root)
    for step, path in found[:-keep] if keep > 0 else []:
        if step != best_step:
            shutil.rmtree(path, ignore_errors=True)
    for stale in ckpt_root.glob(".step-*"):  # temp dirs left by a killed writer
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    found = list_checkpoints(ckpt_root)
    return found[-1][1] if found else None


def load_checkpoint(path: Path, model: nn.Module, optimizer, scheduler) -> dict:
    """Restore parameters, optimizer moments, scheduler position and RNG; return the loop state."""
    params = dict(model.named_parameters())
    trainable = load_file(str(path / "trainable.safetensors"))
    missing = [n for n, p in params.items() if p.requires_grad and n not in trainable]
    if missing or any(n not in params for n in trainable):
        raise UserError(
            f"{path}: checkpoint does not match this model/method "
            f"(e.g. '{(missing or list(trainable))[0]}'); was the config changed?"
        )
    with torch.no_grad():
        for name, value in trainable.items():
            params[name].copy_(value)
    tensors = load_file(str(path / "optimizer.safetensors"))
    meta = json.loads((path / "optimizer.json").read_text())
    for group, saved in zip(optimizer.param_groups, meta["groups"]):
        for p, name in zip(group["params"], saved["params"]):
            state = {k.split("::", 1)[1]: v for k, v in tensors.items() if k.startswith(name + "::")}
            if name in meta["step"]:
                state["step"] = torch.tensor(meta["step"][name])
            optimizer.state[p] = state
        group.update({k: v for k, v in saved.items() if k != "params"})
    state = json.loads((path / "state.json").read_text())
    scheduler.last_epoch = state["scheduler_last_epoch"]
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch"])
    random.setstate(_tupled(state["python_rng"]))
    return state


def load_trainable(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "trainable.safetensors"))
