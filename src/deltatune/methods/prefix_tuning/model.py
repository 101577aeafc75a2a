"""Prefix tuning: trained key/value prefixes in every attention layer (Li & Liang 2021,
https://arxiv.org/abs/2101.00190).

Each self-attention layer ``l`` attends over ``n`` trained key/value pairs before the real ones::

    softmax(Q [P_k^l ; K]^T / sqrt(d) + [0 ; mask]) [P_v^l ; V]      P_k^l, P_v^l: kv_heads x n x head_dim

The prefix positions are visible to every query (never masked, never causal). Trainable:
``layers x 2 x n x kv_dim`` with ``kv_dim = num_key_value_heads x head_dim`` (grouped-query attention
shares prefixes like it shares keys), plus a classification head. ``prefix_projection: true`` trains
the prefixes through Li & Liang's reparametrisation ``P = MLP(E)`` (E: n x kv_dim; MLP: kv_dim ->
encoder_hidden_size -> tanh -> layers*2*kv_dim), which steadies training; only the computed prefixes
are saved, so the MLP is gone after training (:func:`fold_prefix_projection` drops it in memory).
Init ``vocab`` (default without projection): the keys/values the frozen model computes for ``n``
random vocabulary tokens (Li & Liang §7.2: real-word activations beat random init); ``random``:
standard normal, PEFT's init.

How it hooks in, the same way for every architecture: the model's attention implementation becomes
``deltatune_prefix`` (transformers' ``AttentionInterface``). That function receives each layer's
``(query, key, value, mask)`` (B x heads x T x head_dim; keys already include the KV cache),
prepends the layer's prefix to key and value, widens the mask, and calls the model's previous
implementation (``sdpa``, or the model's own ``eager`` function). The prefix never enters the KV
cache, so ``generate`` works unchanged: every step re-reads it in front of the cached keys.

Positions: in decoders the real tokens sit at positions ``n, n+1, ...`` (the prefix counts as ``n``
earlier tokens), as in Li & Liang's GPT-2 code and PEFT, which feed the prefix as a KV cache; a
backbone pre-hook shifts ``position_ids`` by ``n``. Encoders keep positions ``0..T-1`` ([CLS] stays
at its pretrained position 0; PEFT's prefix tuning does not run on BERT in transformers 5).

Files use PEFT's layout: ``prompt_embeddings`` of shape (n, layers*2*kv_dim); row ``i`` viewed as
(layers*2, kv_heads, head_dim) holds layer ``l``'s key at ``2l`` and value at ``2l+1``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from deltatune.errors import ConfigError, UserError
from deltatune.io import load_safetensors, save_safetensors_atomic, write_json_atomic
from deltatune.methods.prefix_tuning.options import PrefixOptions
from deltatune.methods.registry import ModelContext
from deltatune.methods.saving import set_trainable_heads
from deltatune.methods.switch import insertion_off
from deltatune.methods.virtual_tokens import (
    backbone_of,
    bound_kwargs,
    cached_length,
    input_length,
    load_prompt_learning_state,
    parameter_name,
    prompt_learning_head_state,
    read_adapter_config,
)
from deltatune.models.loading import is_encoder

ATTENTION_NAME = "deltatune_prefix"


def kv_geometry(config) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) from a transformers config (as PEFT derives them)."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


class KVPrefix(nn.Module):
    """Per-layer key/value prefixes in PEFT's flat layout (n x layers*2*kv_dim), optionally through
    an MLP. During a backbone call the per-layer view is computed once (``pre_hook``)."""

    def __init__(
        self,
        n: int,
        layers: int,
        kv_heads: int,
        head_dim: int,
        projection_hidden: int | None,
        delegate: str,
        shift_positions: bool,
    ):
        super().__init__()
        self.n, self.layers, self.kv_heads, self.head_dim = n, layers, kv_heads, head_dim
        kv_dim = kv_heads * head_dim
        if projection_hidden:
            self.embedding = nn.Parameter(torch.randn(n, kv_dim))
            self.transform = nn.Sequential(
                nn.Linear(kv_dim, projection_hidden),
                nn.Tanh(),
                nn.Linear(projection_hidden, layers * 2 * kv_dim),
            )
            self.register_parameter("prefix", None)
        else:
            self.prefix = nn.Parameter(torch.randn(n, layers * 2 * kv_dim))
            self.embedding, self.transform = None, None
        self.delegate = delegate  # attention implementation the prefix is put in front of
        self.shift_positions = shift_positions
        self.enabled = True
        self.capture: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._current: torch.Tensor | None = None

    def adapter_params(self) -> list[nn.Parameter]:
        return [p for p in (self.prefix, self.embedding) if p is not None] + (
            list(self.transform.parameters()) if self.transform is not None else []
        )

    def flat(self) -> torch.Tensor:
        """(n, layers*2*kv_dim): the prefixes (through the MLP if there is one)."""
        return self.prefix if self.transform is None else self.transform(self.embedding)

    def per_layer(self) -> torch.Tensor:
        """(layers*2, kv_heads, n, head_dim): key of layer l at 2l, value at 2l+1."""
        return self.flat().view(self.n, self.layers * 2, self.kv_heads, self.head_dim).permute(1, 2, 0, 3)

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        current = self._current if self._current is not None else self.per_layer()
        return current[2 * index], current[2 * index + 1]

    def pre_hook(self, backbone: nn.Module, args: tuple, kwargs: dict):
        self._current = None
        if not self.enabled or self.capture is not None:
            return None
        self._current = self.per_layer()
        if not self.shift_positions:
            return None
        kw = bound_kwargs(backbone, args, kwargs)
        if kw.get("position_ids") is None:
            past, length = cached_length(kw), input_length(kw)
            x = kw["input_ids"] if kw.get("input_ids") is not None else kw["inputs_embeds"]
            kw["position_ids"] = torch.arange(past, past + length, device=x.device).unsqueeze(0)
        kw["position_ids"] = kw["position_ids"] + self.n
        return (), kw

    def post_hook(self, backbone: nn.Module, args: tuple, output):
        self._current = None  # drop the graph reference between calls
        return output

    @torch.no_grad()
    def fold(self) -> None:
        """Replace the MLP by the prefixes it computes (what is saved anyway)."""
        if self.transform is None:
            return
        trainable = self.embedding.requires_grad
        flat = self.flat().detach().clone()
        self.embedding, self.transform = None, None
        self.prefix = nn.Parameter(flat, requires_grad=trainable)

    @torch.no_grad()
    def init_from_vocab(self, backbone: nn.Module, vocab_size: int) -> None:
        """Set the prefixes to the keys/values the model computes for ``n`` random tokens."""
        ids = torch.randint(0, vocab_size, (1, self.n), device=self.prefix.device)
        was_training = backbone.training
        self.capture = {}
        try:
            backbone.eval()
            backbone(input_ids=ids)
            kv = [t for i in range(self.layers) for t in self.capture[i]]  # each (kv_heads, n, head_dim)
        finally:
            self.capture = None
            backbone.train(was_training)
        flat = torch.stack(kv).permute(2, 0, 1, 3).reshape(self.n, -1)
        self.prefix.copy_(flat.to(self.prefix.dtype))


def _widen_mask(mask: torch.Tensor | None, module: nn.Module, query: torch.Tensor, kv_len: int, n: int):
    """Mask for ``[prefix ; keys]``: prefix columns always visible. ``mask`` is what transformers 5
    builds for sdpa (None, or bool B x 1 x q x kv, True = attend) or an additive float mask."""
    q_len = query.shape[2]
    if mask is None:
        if q_len == 1 or not getattr(module, "is_causal", False):
            return None  # everything visible, prefix included
        # None meant "causal": spell it out (queries are the last q_len of the kv_len positions)
        rows = torch.arange(q_len, device=query.device) + (kv_len - q_len)
        mask = (torch.arange(kv_len, device=rows.device)[None, :] <= rows[:, None])[None, None]
    mask = mask[..., :kv_len]
    visible = torch.ones if mask.dtype == torch.bool else torch.zeros
    return torch.cat([visible(*mask.shape[:-1], n, dtype=mask.dtype, device=mask.device), mask], dim=-1)


def _eager_function(module: nn.Module):
    """The model's own eager attention (GPT-2, BERT and Llama each define one in their module)."""
    return getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)


def prefix_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
):
    """Attention over ``[prefix ; key]`` for layers tagged by :func:`apply_prefix_tuning`.

    Shapes: query (B, heads, q, D); key/value (B, kv_heads, kv, D) including cached tokens.
    """
    ref = getattr(module, "_deltatune_prefix", None)
    delegate = "sdpa"
    if ref is not None:
        store, index = ref
        delegate = store.delegate
        if store.capture is not None:
            store.capture[index] = (key[0], value[0])
        elif store.enabled:
            prefix_key, prefix_value = store.layer(index)
            batch = key.shape[0]
            attention_mask = _widen_mask(attention_mask, module, query, key.shape[2], store.n)
            key = torch.cat([prefix_key.to(key).expand(batch, -1, -1, -1), key], dim=2)
            value = torch.cat([prefix_value.to(value).expand(batch, -1, -1, -1), value], dim=2)
    eager = _eager_function(module) if delegate == "eager" else None
    if eager is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.dtype == torch.bool:  # eager adds the mask
        attention_mask = torch.zeros(
            attention_mask.shape, dtype=query.dtype, device=query.device
        ).masked_fill(~attention_mask, torch.finfo(query.dtype).min)
    return eager(module, query, key, value, attention_mask, **kwargs)


def _register_attention() -> None:
    # Masks are built as for sdpa (None or boolean); prefix_attention converts them for eager.
    AttentionInterface.register(ATTENTION_NAME, prefix_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def self_attention_modules(backbone: nn.Module, layers: int) -> dict[int, list[nn.Module]]:
    """Self-attention modules by layer index (``layer_idx``, which transformers 5 attention layers carry)."""
    found: dict[int, list[nn.Module]] = {}
    for module in backbone.modules():
        index, cls = getattr(module, "layer_idx", None), type(module).__name__.lower()
        if (
            isinstance(index, int)
            and "attention" in cls
            and "cross" not in cls
            and not getattr(module, "is_cross_attention", False)
        ):
            found.setdefault(index, []).append(module)
    if sorted(found) != list(range(layers)):
        raise ConfigError(
            f"method.name: prefix tuning found attention layers {sorted(found)} in this "
            f"{type(backbone).__name__}, expected 0..{layers - 1}; this architecture is not "
            "supported (try prompt_tuning or lora)"
        )
    return found


def prefix_of(model: nn.Module) -> KVPrefix | None:
    return getattr(getattr(model, "base_model", model), "prefix_tuning", None)


def set_prefix_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch the prefixes off (plain base model, positions unshifted) or on again."""
    prefix = prefix_of(model)
    if prefix is None:
        raise ValueError("this model has no prefixes (apply prefix tuning first)")
    prefix.enabled = enabled


def fold_prefix_projection(model: nn.Module) -> None:
    """Drop the reparametrisation MLP, keeping the prefixes it computes (after training)."""
    prefix_of(model).fold()


def apply_prefix_tuning(model: nn.Module, opts: PrefixOptions, ctx: ModelContext) -> nn.Module:
    """Freeze the model, route its attention through :func:`prefix_attention`, make the head trainable.

    Adapts ``model`` in place and returns it. Trainable: ``layers x 2 x n x kv_dim`` (+ the head),
    or the MLP's parameters with ``prefix_projection``.
    """
    backbone = backbone_of(model)
    if hasattr(backbone, "prefix_tuning"):
        raise ValueError("prefix tuning is already applied to this model")
    layers, kv_heads, head_dim = kv_geometry(model.config)
    attention = self_attention_modules(backbone, layers)
    model.requires_grad_(False)
    hidden = (opts.encoder_hidden_size or kv_heads * head_dim) if opts.prefix_projection else None
    delegate = "eager" if model.config._attn_implementation == "eager" else "sdpa"
    embedding = model.get_input_embeddings()
    store = KVPrefix(
        opts.num_virtual_tokens,
        layers,
        kv_heads,
        head_dim,
        hidden,
        delegate,
        shift_positions=not is_encoder(model.config),
    ).to(embedding.weight.device)
    backbone.prefix_tuning = store
    for index, modules in attention.items():
        for module in modules:
            module._deltatune_prefix = (store, index)  # a tuple: not registered as a submodule
    _register_attention()
    model.set_attn_implementation(ATTENTION_NAME)
    if model.config._attn_implementation != ATTENTION_NAME:
        raise ConfigError(
            f"method.name: {type(model).__name__} does not let transformers switch its "
            "attention implementation, which prefix tuning needs; try prompt_tuning or lora"
        )
    backbone.register_forward_pre_hook(store.pre_hook, with_kwargs=True)
    backbone.register_forward_hook(store.post_hook)
    if opts.init == "vocab":
        store.init_from_vocab(backbone, embedding.weight.shape[0])
    set_trainable_heads(model, ctx.head_modules)
    return model


def _peft_config(model: nn.Module, opts: PrefixOptions, ctx: ModelContext) -> dict:
    store = prefix_of(model)
    kv_dim = store.kv_heads * store.head_dim
    return {
        "peft_type": "PREFIX_TUNING",
        "task_type": ctx.task_type,
        "base_model_name_or_path": ctx.base_model,
        "num_virtual_tokens": store.n,
        "token_dim": kv_dim,  # PEFT's token_dim is the key/value width
        "num_attention_heads": store.kv_heads,  # ... and this the number of key/value heads
        "num_layers": store.layers,
        "num_transformer_submodules": 1,
        "encoder_hidden_size": opts.encoder_hidden_size or kv_dim,
        "prefix_projection": False,  # the file holds the computed prefixes
        "modules_to_save": ctx.head_modules or None,
        "inference_mode": True,
    }


def save_prefix_tuning(model: nn.Module, opts: PrefixOptions, ctx: ModelContext, out_dir: Path) -> None:
    """PEFT layout: ``prompt_embeddings`` (n x layers*2*kv_dim) and ``base_model.<head>.*``."""
    with torch.no_grad():
        flat = prefix_of(model).flat().detach()
    state = {"prompt_embeddings": flat, **prompt_learning_head_state(model, ctx.head_modules)}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(state, out_dir / "adapter_model.safetensors")
    write_json_atomic(_peft_config(model, opts, ctx), out_dir / "adapter_config.json")


def load_prefix_tuning(model: nn.Module, adapter_dir: Path) -> None:
    """Load deltatune- or PEFT-saved prefixes (an MLP, if any, is folded away first)."""
    read_adapter_config(adapter_dir, "PREFIX_TUNING")
    state = load_safetensors(adapter_dir / "adapter_model.safetensors", "adapter weights")
    if "prompt_embeddings" not in state:
        raise UserError(f"{adapter_dir}: no 'prompt_embeddings' tensor; not a prefix-tuning adapter")
    store = prefix_of(model)
    store.fold()
    own = {parameter_name(model, store.prefix): state.pop("prompt_embeddings")}
    load_prompt_learning_state(model, state, own, adapter_dir)


def options_from_peft(adapter_dir: Path) -> PrefixOptions:
    """Read a PEFT ``adapter_config.json`` (ours or PEFT's) into prefix-tuning options."""
    cfg = read_adapter_config(adapter_dir, "PREFIX_TUNING")
    return PrefixOptions(num_virtual_tokens=cfg["num_virtual_tokens"], init="random")


def prefix_switched_off(model: nn.Module):
    """``with prefix_switched_off(model):`` no prefixes are attended to (the base model alone)."""
    return insertion_off(prefix_of(model))
