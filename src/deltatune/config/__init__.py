"""Run configuration: the schema (:mod:`.schema`, no task, no torch), loading and validation through the
task registry (:mod:`.loading`), and the generated reference (:mod:`.reference`)."""

from deltatune.config.loading import config_class, load_config, validate_config
from deltatune.config.schema import (
    Config,
    DataConfig,
    GenerateConfig,
    ModelConfig,
    TrainConfig,
    _Strict,
    dump_config,
)

__all__ = [
    "Config",
    "DataConfig",
    "GenerateConfig",
    "ModelConfig",
    "TrainConfig",
    "_Strict",
    "config_class",
    "dump_config",
    "load_config",
    "validate_config",
]
