"""Load a base model and its tokenizer for a task, safely and reproducibly.

Every load goes through :func:`~deltatune.models.bundled.resolve_model_path` (bundled name, local
directory or hub id), reads only safetensors (pickled ``*.bin`` weights can run code when loaded) and
never runs code shipped with a model (``trust_remote_code=False``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator, Mapping

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from deltatune.errors import UserError
from deltatune.models.bundled import resolve_model_path

logger = logging.getLogger(__name__)

# transformers' per-load "Loading weights" bar is noise next to our own progress bar.
hf_logging.disable_progress_bar()

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# transformers' report of weights missing from the checkpoint (v5: a "LOAD REPORT" table; v4: "Some
# weights ... were not initialized"). For a new task head that is expected, so it is dropped and the
# parts that are *not* about the head are reported again by _report_unexpected_loading().
_HEAD_REPORT_MARKERS = (
    "LOAD REPORT",
    "were not initialized from the model checkpoint",
    "You should probably TRAIN this model",
)


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load the (fast) tokenizer of a model; a missing pad token becomes the eos token.

    Padding side is left as the tokenizer ships it. Decoder classification in transformers finds the
    last non-pad token, which works with either side; batched generation wants left padding, which
    the generation code sets for itself.
    """
    return _tokenizer_from(resolve_model_path(name_or_path))


def load_for_classification(
    name_or_path: str | os.PathLike,
    num_labels: int,
    id2label: Mapping[int, str] | None = None,
    seed: int = 0,
    dtype: torch.dtype | str = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """A sequence-classification model with a fresh ``num_labels``-way head, its tokenizer and path.

    The head is initialised under ``torch.manual_seed(seed)``, so the same seed gives the same head.
    A checkpoint head of another size is replaced (``ignore_mismatched_sizes``). The pad token id is
    copied from the tokenizer into the config: decoder models (Llama, GPT-2) need it to find the last
    real token of each row. Returns ``(model, tokenizer, model_path)``.
    """
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    id2label = {int(i): str(label) for i, label in (id2label or {}).items()} or {
        i: f"LABEL_{i}" for i in range(num_labels)
    }
    if sorted(id2label) != list(range(num_labels)):
        raise ValueError(f"id2label must map exactly 0..{num_labels - 1}, got keys {sorted(id2label)}")
    path = resolve_model_path(name_or_path)
    tokenizer = _tokenizer_from(path)
    torch.manual_seed(seed)
    with _without_head_report():
        model, info = _from_pretrained(
            AutoModelForSequenceClassification,
            name_or_path,
            path,
            dtype,
            num_labels=num_labels,
            id2label=id2label,
            label2id={v: k for k, v in id2label.items()},
            ignore_mismatched_sizes=True,
            output_loading_info=True,
        )
    _report_unexpected_loading(model, info, path)
    _sync_pad_token(model, tokenizer)
    return model, tokenizer, path


def load_for_causal_lm(
    name_or_path: str | os.PathLike, dtype: torch.dtype | str = torch.float32, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """A causal language model (with its pretrained LM head), its tokenizer and path.

    ``seed`` seeds anything initialised during the load (normally nothing). Returns
    ``(model, tokenizer, model_path)``.
    """
    path = resolve_model_path(name_or_path)
    _require_decoder(name_or_path, path)
    tokenizer = _tokenizer_from(path)
    torch.manual_seed(seed)
    model = _from_pretrained(AutoModelForCausalLM, name_or_path, path, dtype)
    _sync_pad_token(model, tokenizer)
    return model, tokenizer, path


def head_module_names(model: nn.Module) -> list[str]:
    """Top-level modules of a task head that must be trained and saved next to an adapter.

    Found from the model's structure rather than a per-architecture table: the head is every top-level
    child with parameters other than the backbone (``model.base_model``), excluding the pretrained
    output embedding (``lm_head``, often tied to the input embedding). So BERT gives ``["classifier"]``,
    Llama/GPT-2 classification ``["score"]``, DistilBERT ``["pre_classifier", "classifier"]``, and a
    causal LM or a bare backbone ``[]``.
    """
    backbone = getattr(model, "base_model", model)
    if backbone is model:
        return []
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    heads = []
    for name, child in model.named_children():
        if child is backbone or next(child.parameters(), None) is None:
            continue
        if output is not None and any(m is output for m in child.modules()):
            continue
        heads.append(name)
    return heads


# Learned position tables that start after an offset (RoBERTa counts from padding_idx + 1, OPT from 2).
_POSITION_OFFSET = {"roberta": "pad+1", "xlm-roberta": "pad+1", "camembert": "pad+1", "opt": 2}


def position_limit(model: nn.Module) -> int | None:
    """The longest input a model can read: the size of its learned position table (BERT, GPT-2,
    RoBERTa, OPT), else the context it declares it was trained for (``max_position_embeddings``
    of rotary models such as Llama), else None."""
    config = getattr(model, "config", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] in (
            "position_embeddings",
            "wpe",
            "embed_positions",
        ):
            offset = _POSITION_OFFSET.get(getattr(config, "model_type", ""), 0)
            if offset == "pad+1":
                offset = (getattr(config, "pad_token_id", None) or 0) + 1
            return module.num_embeddings - offset
    declared = getattr(config, "max_position_embeddings", None)
    return declared if isinstance(declared, int) and declared > 0 else None


def _tokenizer_from(path: str) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise UserError(f"could not load a tokenizer from {path}: {e}") from e
    if not tokenizer.is_fast:
        raise UserError(
            f"the tokenizer in {path} is not a fast tokenizer; deltatune needs one "
            "(a tokenizer.json file) for offsets and speed."
        )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(
                f"the tokenizer in {path} has neither a pad nor an eos token; "
                "add a pad_token to its tokenizer_config.json."
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _from_pretrained(auto_class, name_or_path, path: str, dtype, **kwargs):
    """``auto_class.from_pretrained`` with the safety flags, turning user-caused failures into UserError."""
    if os.path.isdir(path) and not any(Path(path).glob("*.safetensors")):
        found = ", ".join(sorted(p.name for p in Path(path).iterdir() if p.suffix in {".bin", ".pt", ".pth"}))
        raise UserError(
            f"model directory {path} has no *.safetensors weights"
            f"{f' (found {found})' if found else ''}. deltatune reads only safetensors, because "
            "pickled weights can run code when loaded; convert them with "
            "model.save_pretrained(dir) in a trusted environment."
        )
    from safetensors import SafetensorError

    try:
        return auto_class.from_pretrained(
            path, dtype=_as_dtype(dtype), use_safetensors=True, trust_remote_code=False, **kwargs
        )
    except SafetensorError as e:
        raise UserError(
            f"model '{os.fspath(name_or_path)}': {_damaged_weights(path)} is damaged or not "
            f"safetensors ({e}); copy or convert the model again"
        ) from None
    except OSError as e:
        raise UserError(f"could not load model '{os.fspath(name_or_path)}' from {path}: {e}") from e
    except ValueError as e:
        if "Unrecognized" not in str(e):
            raise
        raise UserError(
            f"model '{os.fspath(name_or_path)}' ({path}) cannot be loaded as {auto_class.__name__}: {e}"
        ) from e


def _damaged_weights(path: str) -> str:
    """The first ``*.safetensors`` file in ``path`` whose header does not read (or the folder)."""
    from safetensors import safe_open

    for file in sorted(Path(path).glob("*.safetensors")):
        try:
            with safe_open(str(file), "pt") as fh:
                for key in fh.keys():
                    fh.get_slice(key)
        except Exception:  # noqa: BLE001 - any failure marks the damaged file
            return str(file)
    return f"a weights file in {path}"


def is_encoder(config) -> bool:
    """Bidirectional encoders (BERT & co.) have a masked-LM class and are not configured as decoders."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)


def _require_decoder(name_or_path, path: str) -> None:
    """Encoder-only models (BERT & co.) have an ``*LMHeadModel`` class but cannot generate text."""
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise UserError(
            f"could not read the config of model '{os.fspath(name_or_path)}' ({path}): {e}"
        ) from e
    if is_encoder(config):
        raise UserError(
            f"model '{os.fspath(name_or_path)}' is an encoder-style model "
            f"({config.model_type}), not a decoder, so it cannot be used as a causal language "
            "model; use a decoder model such as smollm2-135m-instruct."
        )


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).removeprefix("torch.") not in _DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; use one of: float32, bfloat16, float16.")
    return _DTYPES[str(dtype).removeprefix("torch.")]


def _sync_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make the model's pad id the tokenizer's, so padding is recognised (and generate stays quiet)."""
    if tokenizer.pad_token_id is None:
        return
    model.config.pad_token_id = tokenizer.pad_token_id
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id


class _DropHeadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(marker in message for marker in _HEAD_REPORT_MARKERS)


@contextlib.contextmanager
def _without_head_report() -> Iterator[None]:
    """Drop transformers' "newly initialised weights" report while loading a model with a new head."""
    source = logging.getLogger("transformers.modeling_utils")
    drop = _DropHeadReport()
    source.addFilter(drop)
    try:
        yield
    finally:
        source.removeFilter(drop)


def _report_unexpected_loading(model: PreTrainedModel, info: dict, path: str) -> None:
    """Warn about loading surprises that are not the expected fresh task head."""
    heads = tuple(f"{name}." for name in head_module_names(model))
    mismatched = {k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ())}
    missing = {k for k in info.get("missing_keys", ()) if not k.startswith(heads)}
    mismatched_backbone = {k for k in mismatched if not k.startswith(heads)}
    if mismatched - mismatched_backbone:
        logger.info("%s: the checkpoint's task head has another shape; it was re-initialised", path)
    problems = [
        ("newly initialised (not in the checkpoint)", missing),
        ("re-initialised (shape differs from the checkpoint)", mismatched_backbone),
        ("in the checkpoint but unused", set(info.get("unexpected_keys", ()))),
    ]
    for what, keys in problems:
        if keys:
            shown = ", ".join(sorted(keys)[:8]) + (", ..." if len(keys) > 8 else "")
            logger.warning("%s: %d weights outside the task head are %s: %s", path, len(keys), what, shown)
