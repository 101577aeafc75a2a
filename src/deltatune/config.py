"""Typed, validated run configuration: YAML file + dotted command-line overrides.

The config is the single source of truth; every default lives here. Unknown keys, wrong types and
impossible combinations are one :class:`~deltatune.errors.ConfigError` naming the key and the fix::

    train.learnig_rate: unknown key; did you mean `learning_rate`?

Method options are validated by the method's own config class (see ``deltatune.methods.registry``),
so adding a method never touches this file.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deltatune.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    name: str = Field("minilm-l6", description="bundled model name, local model directory, or hub id")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="dtype of the loaded base weights (trainable params stay float32)")


class DataConfig(_Strict):
    train: str | None = Field(None, description="training file (.jsonl, .json, .csv, .tsv)")
    validation: str | None = Field(None, description="validation file; or use validation_split")
    test: str | None = Field(None, description="test file, evaluated once at the end")
    validation_split: float | None = Field(
        None, gt=0, lt=1, description="fraction of train held out (seeded, stratified) when no validation file")
    format: Literal["jsonl", "json", "csv", "tsv"] | None = Field(
        None, description="file format; default from the file extension")
    text_field: str = Field("text", description="field holding the input text")
    text_pair_field: str | None = Field(None, description="optional second text (sentence pairs)")
    label_field: str = Field("label", description="field holding the label (string or integer)")
    label_names: list[str] | dict[int | str, str] | None = Field(
        None, description="names for integer labels (list indexed by label, or {value: name})")
    max_length: int = Field(128, gt=1, description="truncate inputs to this many tokens")
    max_train_samples: int | None = Field(
        None, gt=0, description="use a seeded stratified sample of this many training rows")


class TrainConfig(_Strict):
    epochs: float = Field(1, gt=0, description="passes over the training data (fractions allowed)")
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    batch_size: int = Field(16, gt=0, description="examples per micro-batch (per device); 16 beat 32 on SST-2 (more steps per epoch, half the activation memory)")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    learning_rate: float | None = Field(
        None, gt=0, description="peak learning rate; default: the method's own (LoRA 1e-3, full 5e-5)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (never on biases and norms)")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="share of steps with linear warm-up")
    scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="decay after warm-up")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping; null to disable")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="autocast dtype; auto = bf16 where the hardware runs it natively (CUDA, AVX512-BF16/AMX CPUs), "
        "fp16 on older GPUs, else fp32")
    group_by_length: bool = Field(True, description="batch similar lengths together (less padding)")
    eval_every: int | None = Field(None, gt=0, description="evaluate every N steps; default once per epoch")
    metric_for_best: str = Field("accuracy", description="validation metric that selects the best checkpoint")
    greater_is_better: bool = Field(True, description="whether a higher metric_for_best is better")
    seed: int = Field(42, description="seed for init, dropout and data order")
    log_every: int = Field(10, gt=0, description="write a metrics.jsonl line every N steps")
    progress: bool = Field(True, description="show a progress bar")
    checkpoint_every: int | None = Field(
        200, gt=0, description="save a resumable checkpoint every N steps (and after each evaluation)")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept (plus the best one)")
    resume: bool = Field(False, description="continue from the latest complete checkpoint in the run dir")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in backward: less memory, ~30% slower steps")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list, description="experiment trackers via Accelerate (metrics.jsonl is always written)")


class Config(_Strict):
    task: Literal["classify"] = Field("classify", description="what to train")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: dict[str, Any] = Field(
        default_factory=lambda: {"name": "lora"},
        description="method name plus its options; see `deltatune methods`")
    train: TrainConfig = Field(default_factory=TrainConfig)
    output_dir: str | None = Field(None, description="run directory; default runs/<task>-<method>-<time>")

    @field_validator("method")
    @classmethod
    def _method(cls, value: dict[str, Any]) -> dict[str, Any]:
        from deltatune.methods.registry import validate_method_config

        return validate_method_config(value)

    @model_validator(mode="after")
    def _check(self) -> "Config":
        if self.data.validation and self.data.validation_split:
            raise ValueError("data.validation and data.validation_split both set: choose one")
        return self

    def method_options(self):
        """The method's typed options object."""
        from deltatune.methods.registry import get_method

        return get_method(self.method["name"]).config_cls(**self.method)


# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply overrides.

    Overrides are ``dotted.key=value`` strings; the value is parsed as YAML (``3e-4``, ``true``,
    ``[q, v]``).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    for item in overrides:
        _apply_override(raw, item)
    return validate_config(raw, source=str(path) if path else "command line")


def validate_config(raw: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, raw, source)) from None
    except (ValueError, ConfigError) as exc:  # raised from validators outside pydantic's wrapping
        raise ConfigError(f"{source}: {exc}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (task, model, data, ...)")
    return data


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{item}': expected dotted.key=value, e.g. train.learning_rate=3e-4")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{item}': '{part}' is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError:
        node[parts[-1]] = value


def _format_errors(exc: ValidationError, raw: dict[str, Any], source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key{_suggest(loc)}")
        elif err["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        else:
            given = _lookup(raw, loc)
            shown = f" (got {given!r})" if given is not _MISSING else ""
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {msg}{shown}")
    return f"{source}: invalid config\n  " + "\n  ".join(lines)


_MISSING = object()


def _lookup(raw: Any, loc: list[str]) -> Any:
    for part in loc:
        if isinstance(raw, dict) and part in raw:
            raw = raw[part]
        else:
            return _MISSING
    return raw


def _suggest(loc: list[str]) -> str:
    model: type[BaseModel] | None = Config
    for part in loc[:-1]:
        field = model.model_fields.get(part) if model else None
        ann = field.annotation if field else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    if model is None:
        return ""
    names = list(model.model_fields)
    close = difflib.get_close_matches(loc[-1], names, n=1, cutoff=0.6)
    if close:
        return f"; did you mean `{close[0]}`?"
    return f"; valid keys here: {', '.join(names)}"


def suggest_key(name: str, names: list[str]) -> str:
    """'; did you mean `x`?' or the list of valid names."""
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else f"; valid keys: {', '.join(names)}"


def config_reference() -> str:
    """Every key with its default and description (for `deltatune train --help` and the README)."""
    out = []
    for section, model in (("", Config), ("model.", ModelConfig), ("data.", DataConfig),
                           ("train.", TrainConfig)):
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                continue
            default = field.default_factory() if field.default_factory else field.default
            out.append(f"  {section}{name} = {default!r}\n      {field.description or ''}")
    return "\n".join(out)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
