"""The config reference: every key with its default and description, per task (``train --help``,
``docs/config.md``)."""

from __future__ import annotations

from pydantic import BaseModel

from deltatune.config.schema import Config, DataConfig, GenerateConfig, ModelConfig, TrainConfig
from deltatune.tasks import available_tasks


def _reference_lines(
    prefix: str, model: type[BaseModel], note: str = "", skip: tuple[str, ...] = ()
) -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if name in skip or (isinstance(ann, type) and issubclass(ann, BaseModel)):
            continue
        default = field.default_factory() if field.default_factory else field.default
        if isinstance(default, BaseModel):
            continue
        out.append(f"  {prefix}{name} = {default!r}{note}\n      {field.description or ''}")
    return out


def config_reference() -> str:
    """Every key with its default and description, per task (for `train --help` and the README)."""
    out = _reference_lines("", Config, skip=("method",))
    out += _reference_lines("model.", ModelConfig) + _reference_lines("data.", DataConfig)
    for name, spec in sorted(available_tasks().items()):
        out += _reference_lines(
            "data.", spec.data_options, f"   [task {name}]", skip=tuple(DataConfig.model_fields)
        )
        if spec.options is not None:
            out += _reference_lines(f"{name}.", spec.options, f"   [task {name}]")
    out += _reference_lines("train.", TrainConfig) + _reference_lines("generate.", GenerateConfig)
    return "\n".join(out)
