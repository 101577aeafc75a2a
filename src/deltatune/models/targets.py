"""Which layers an adapter targets.

``target_modules`` accepts

* ``"auto"``: the attention and MLP projections of the architecture (table below), falling back
  to ``all-linear`` for architectures not in the table;
* ``"all-linear"``: every ``nn.Linear`` / GPT-2 ``Conv1D`` except the task head and the LM head;
* a list of names: a module matches when its full name equals a name or ends with ``.name``
  (PEFT's rule, so the same list means the same layers in both tools);
* a string other than the two keywords: a regular expression matched against the full name.
"""

from __future__ import annotations

import re

import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from deltatune.errors import ConfigError

# Attention + MLP projections per model_type. BERT's `dense` covers attention output, intermediate,
# output and the pooler (which feeds the classifier, so adapting it helps classification).
DEFAULT_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}

# Output heads are trained in full (classification) or left alone (LM head), never adapted.
HEAD_NAMES = ("classifier", "score", "lm_head", "qa_outputs")


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def linear_features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an ``nn.Linear`` or a GPT-2 ``Conv1D`` (weight is in x out)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    raise TypeError(f"{type(module).__name__} is not a linear layer")


def _is_head(name: str) -> bool:
    return any(name == h or name.startswith(h + ".") for h in HEAD_NAMES)


def find_targets(model: nn.Module, spec: str | list[str], *, linear_only: bool = True) -> list[str]:
    """Full names of the modules selected by ``spec`` (see module docstring)."""
    candidates = {
        n: m for n, m in model.named_modules() if n and not _is_head(n) and (is_linear(m) or not linear_only)
    }
    if spec == "auto":
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        spec = DEFAULT_TARGETS.get(model_type, "all-linear")
    if spec == "all-linear":
        names = [n for n, m in candidates.items() if is_linear(m)]
    elif isinstance(spec, str):
        try:
            pattern = re.compile(spec)
        except re.error as exc:
            raise ConfigError(f"method.target_modules: '{spec}' is not a valid regular expression ({exc})")
        names = [n for n in candidates if pattern.fullmatch(n)]
    else:
        wanted = list(spec)
        names = [n for n in candidates if any(n == w or n.endswith("." + w) for w in wanted)]
    if not names:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in candidates.items() if is_linear(m)})
        raise ConfigError(
            f"method.target_modules: {spec!r} matches no layer of this model. "
            f"Linear layers it has (by name): {', '.join(leaves)}. "
            "Use some of these names, a regex over full names, or 'all-linear'."
        )
    return names


def get_submodule_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def compact_target_list(model: nn.Module, names: list[str]) -> list[str]:
    """Shortest PEFT-style list selecting exactly ``names``: leaf names if they are unambiguous."""
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    all_linear = [n for n, m in model.named_modules() if n and is_linear(m) and not _is_head(n)]
    selected = {n for n in all_linear if any(n == w or n.endswith("." + w) for w in leaves)}
    return leaves if selected == set(names) else sorted(names)
