"""Which hidden states a classification head reads (``classify.pooling``).

``cls``: the model's own pooling (BERT's pooler over ``[CLS]``; a decoder's last token).
``mean``: the mean of the last hidden states over the real tokens, what sentence-embedding
checkpoints (the bundled MiniLM is one) are trained to produce, then the checkpoint's pooler layer
(dense + tanh) and the head.
``auto`` (the default): ``mean`` for a checkpoint that says it was trained to mean-pool (a
sentence-transformers ``modules.json`` whose pooling module reads the mean of the tokens) and has a
BERT-style pooler, else ``cls``. Measured on the bundled MiniLM (README, "Defaults sweep"): mean
pooling lifts the methods that leave the encoder's weights alone most (prompt tuning at the demo's
budget 0.526 -> 0.752 dev accuracy) and is within noise for LoRA.

How it hooks in: BERT-style encoders call ``pooler(hidden)`` inside the backbone, without the
attention mask, so the backbone gets a forward pre-hook that keeps the mask of the current call, and
its pooler is wrapped in :class:`MeanPooler`. The pooler's weights keep their names, so checkpoints,
adapters and PEFT's ``modules_to_save`` are unchanged; the model object stays the same class.
Loading a mean-pooled run elsewhere: transformers and PEFT load the weights, but pool over ``[CLS]``
unless told; ``install_pooling(model, "mean")`` on the transformers model (for PEFT, on
``peft_model.get_base_model()``) makes them pool as the run did (tested: same logits). Without
deltatune: apply :func:`mean_pool` to ``model.base_model(...).last_hidden_state`` and feed the result
to ``model.base_model.pooler.dense`` + tanh, then ``model.classifier``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``hidden`` (B, T, H) over the positions where ``mask`` (B, T) is 1 (all when None)."""
    if mask is None:
        return hidden.mean(dim=1)
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


class MeanPooler(nn.Module):
    """A BERT pooler that reads the mean of the real tokens instead of ``[CLS]``. ``dense`` and
    ``activation`` are the wrapped pooler's own modules (same parameter names)."""

    def __init__(self, pooler: nn.Module):
        super().__init__()
        self.dense, self.activation = pooler.dense, pooler.activation
        self.mask: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        mask = self.mask
        if mask is not None and mask.shape[1] < hidden.shape[1]:
            # virtual tokens (prompt tuning) were inserted before the real ones: they are attended
            # to, and the padding stays at the end of each row
            extra = hidden.shape[1] - mask.shape[1]
            mask = torch.cat([mask.new_ones(mask.shape[0], extra), mask], dim=1)
        return self.activation(self.dense(mean_pool(hidden, mask)))


def checkpoint_pooling(path: str | Path | None) -> str | None:
    """How a sentence-transformers checkpoint pools (``"mean"`` or ``"cls"``), read from its
    ``modules.json`` and pooling module's ``config.json`` (plain JSON; nothing runs); None for a
    checkpoint that is not one, or pools another way."""
    if path is None:
        return None
    root = Path(path)
    try:
        modules = json.loads((root / "modules.json").read_text(encoding="utf-8"))
        folder = next(m.get("path", "") for m in modules if str(m.get("type", "")).endswith("models.Pooling"))
        pool = json.loads((root / folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, StopIteration, AttributeError, TypeError):
        return None
    modes = [k for k, on in pool.items() if k.startswith("pooling_mode_") and on is True]
    return {("pooling_mode_mean_tokens",): "mean", ("pooling_mode_cls_token",): "cls"}.get(tuple(modes))


def resolve_pooling(pooling: str, model, path: str | Path | None) -> str:
    """``cls`` or ``mean`` for ``classify.pooling``; ``auto`` is ``mean`` for a checkpoint trained to
    mean-pool (:func:`checkpoint_pooling`) that has a BERT-style pooler to feed, else ``cls``."""
    if pooling != "auto":
        return pooling
    return "mean" if checkpoint_pooling(path) == "mean" and _pooler(model) is not None else "cls"


POOLING_FILE = "deltatune_pooling.json"
"""Beside a saved adapter or model: how the head pooled, for loading the folder without its run."""


def record_pooling(pooling: str, run_dir: Path) -> None:
    """Write :data:`POOLING_FILE` into the run's saved adapter or model folder."""
    from deltatune.io import write_json_atomic

    for saved in (run_dir / "adapter", run_dir / "model"):
        if saved.is_dir():
            write_json_atomic({"pooling": pooling}, saved / POOLING_FILE)


def saved_pooling(saved: str | Path) -> str:
    """The pooling recorded in ``saved``'s :data:`POOLING_FILE`; ``cls`` (PEFT's and transformers'
    way) when there is none."""
    from deltatune.io import read_json

    path = Path(saved) / POOLING_FILE
    pooling = read_json(path, "pooling record").get("pooling") if path.is_file() else None
    return pooling if pooling in ("cls", "mean") else "cls"


def _pooler(model) -> nn.Module | None:
    pooler = getattr(getattr(model, "base_model", None), "pooler", None)
    return (
        pooler if pooler is not None and hasattr(pooler, "dense") and hasattr(pooler, "activation") else None
    )


def install_pooling(model, pooling: str) -> None:
    """Make ``model`` (a sequence classifier) pool as ``pooling`` says; ``cls`` changes nothing.
    A ConfigError for ``mean`` on a model without a BERT-style pooler."""
    if pooling == "cls":
        return
    pooler = _pooler(model)
    if pooler is None:
        from deltatune.errors import ConfigError

        raise ConfigError(
            f"classify.pooling: mean needs a BERT-style encoder with a pooler layer; "
            f"{type(model).__name__} has none (use cls)"
        )
    if isinstance(pooler, MeanPooler):
        return
    model.base_model.pooler = MeanPooler(pooler)
    model.base_model.register_forward_pre_hook(_keep_mask, with_kwargs=True)


def _keep_mask(backbone: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook of the backbone: the call's 2-D attention mask, for its :class:`MeanPooler`
    (found through the module called, so a deep copy of the model keeps working)."""
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:
        mask = args[1]
    backbone.pooler.mask = mask if mask is not None and mask.dim() == 2 else None
