"""Switching a method off: the adapted model computes the untouched base model again.

DPO and PPO need a reference model (the model before tuning). A second copy of the weights doubles
memory; every parameter-efficient method can instead be switched off for a forward pass:

* wrapper layers (LoRA, DoRA, IA3, bottleneck adapters) skip their update (merged ones are
  unmerged first and merged again afterwards);
* prompt and prefix tuning stop inserting their virtual tokens;
* methods that train some of the base model's own parameters (BitFit's biases, the norms Houlsby
  adapters train) swap the original values back in for the duration.

A task head the method trains in full (a new classifier) has no untrained counterpart and stays.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
import torch.nn as nn

ORIGINALS_ATTR = "_deltatune_original_values"


@contextlib.contextmanager
def layers_switched_off(layers: Iterable[nn.Module]) -> Iterator[None]:
    """Wrapper layers with ``disabled`` (and optionally ``merged``/``merge``/``unmerge``) flags."""
    layers = list(layers)
    merged = [layer for layer in layers if getattr(layer, "merged", False)]
    for layer in merged:
        layer.unmerge()
    before = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield
    finally:
        for layer, flag in zip(layers, before):
            layer.disabled = flag
        for layer in merged:
            layer.merge()


@contextlib.contextmanager
def insertion_off(store: nn.Module) -> Iterator[None]:
    """A soft prompt or prefix store (an ``enabled`` flag) stops inserting its virtual tokens."""
    before, store.enabled = store.enabled, False
    try:
        yield
    finally:
        store.enabled = before


def remember_originals(model: nn.Module, params: dict[str, nn.Parameter]) -> None:
    """Keep a copy of base parameters a method is about to train (so it can be switched off)."""
    store = getattr(model, ORIGINALS_ATTR, None)
    if store is None:
        store = {}
        object.__setattr__(model, ORIGINALS_ATTR, store)  # a plain attribute, not a submodule/buffer
    for name, p in params.items():
        store.setdefault(name, p.detach().clone())


@contextlib.contextmanager
def originals_restored(model: nn.Module) -> Iterator[None]:
    """Swap the remembered original values into their parameters, and the trained ones back after."""
    store: dict[str, torch.Tensor] = getattr(model, ORIGINALS_ATTR, {})
    params = dict(model.named_parameters())
    trained = {}
    with torch.no_grad():
        for name, original in store.items():
            trained[name] = params[name].detach().clone()
            params[name].copy_(original)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in trained.items():
                params[name].copy_(value)
