"""``train.compile``: compile the model's repeated blocks (decoder layers) with ``torch.compile``.

Compiling each block instead of the whole model ("regional" compilation) compiles one block's
graph and reuses it for every layer, so the cost does not grow with depth; the embeddings, the
head and the loss stay eager. Inductor fuses the elementwise work between the matmuls (norms,
rotary embeddings, activations, residual adds, LoRA sums).

Compiled code runs only for training steps: evaluation and generation run the eager layers
(they would otherwise need graphs of their own: no-grad mode, KV caches). Shapes are dynamic,
so varying sequence lengths do not recompile; a few graphs are still made (e.g. batch size 1,
the first layer whose input needs no gradient). The first steps pay the compile time; inductor
caches it on disk for later runs.
"""

from __future__ import annotations

import contextlib
import shutil

import torch
import torch.nn as nn

from deltatune.errors import ConfigError


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's decoder/encoder layers: modules whose class transformers lists in
    ``_no_split_modules`` (the blocks it never splits across devices)."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


class RegionalCompile:
    """Compile every repeated block in place; :meth:`eager` runs the plain blocks for a while."""

    def __init__(self, model: nn.Module):
        self.blocks = repeated_blocks(model)
        if not self.blocks:
            raise ConfigError(
                f"train.compile: found no repeated layers to compile in "
                f"{type(model).__name__} (transformers lists none in _no_split_modules); "
                "set train.compile: false"
            )
        if not torch.cuda.is_available() and not (
            shutil.which("cc") or shutil.which("gcc") or shutil.which("g++")
        ):
            raise ConfigError(
                "train.compile: torch.compile on CPU needs a C++ compiler (gcc/g++) on "
                "PATH; install one or set train.compile: false"
            )
        for block in self.blocks:
            block.compile(dynamic=True)
        self._compiled = [block._compiled_call_impl for block in self.blocks]

    def _set(self, impls) -> None:
        for block, impl in zip(self.blocks, impls):
            block._compiled_call_impl = impl

    @contextlib.contextmanager
    def eager(self):
        self._set([None] * len(self.blocks))
        try:
            yield
        finally:
            self._set(self._compiled)

    def remove(self) -> None:
        self._set([None] * len(self.blocks))
