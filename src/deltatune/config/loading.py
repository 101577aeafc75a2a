"""Loading a config: YAML file + dotted command-line overrides, validated through the task's own class.

The schema (:mod:`deltatune.config.schema`) knows no task; the loader asks the task registry for the
task's data options and section and builds one :class:`Config` subclass per task. Unknown keys, wrong
types and impossible combinations are one :class:`~deltatune.errors.ConfigError` naming the key and the
fix::

    train.learnig_rate: unknown key; did you mean `learning_rate`?
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, model_validator

from deltatune.config.schema import Config
from deltatune.errors import ConfigError, suggest_key
from deltatune.methods.registry import get_method
from deltatune.metrics.registry import registered
from deltatune.tasks import available_tasks, get_task


class TaskConfig(Config):
    """A :class:`Config` checked against its task and method: the defaults that depend on them are filled
    in, checks across sections and the task's own checks run."""

    @model_validator(mode="after")
    def _resolve(self) -> "Config":
        """Fill the defaults that depend on the task and the method, so config.yaml says what ran."""
        spec = get_task(self.task)
        d, t = self.data, self.train
        if d.validation and d.validation_split:
            raise ValueError("data.validation and data.validation_split both set: choose one")
        if d.max_length is None:
            self._max_length_is_default = True
            d.max_length = spec.default_max_length
        if t.metric_for_best is None:
            self._metric_is_default = True
            t.metric_for_best = spec.default_metric
        added = registered(spec.metric_kind) if spec.metric_kind else {}  # metrics a user registered
        best = (*spec.best_metrics, *added) if spec.best_metrics else None
        if best and t.metric_for_best not in best:
            raise ValueError(
                f"train.metric_for_best: {spec.name} runs evaluate "
                f"{', '.join(best[:-1])} and {best[-1]} during "
                f"training, not '{t.metric_for_best}'; use "
                f"{', '.join(best[:-1])} or {best[-1]}"
            )
        if t.greater_is_better is None:
            metric = added.get(t.metric_for_best)
            t.greater_is_better = (
                metric.greater_is_better if metric else t.metric_for_best not in spec.lower_is_better
            )
        if t.compile and t.int8_base in ("backward", "on"):
            raise ValueError(
                f"train.int8_base: {t.int8_base} and train.compile: true do not combine (torch.compile "
                "does not trace the int8 layers); set train.int8_base: off or train.compile: false"
            )
        if t.learning_rate is None:
            t.learning_rate = get_method(self.method.name).lr_for(self.task)
        if spec.check is not None:
            spec.check(self)
        return self


_CONFIG_CLASSES: dict[str, tuple[Any, type[Config]]] = {}  # task -> (its spec, its Config class)


def config_class(task: str) -> type[Config]:
    """The Config subclass of one task: ``data`` typed by the task's data options, plus the task's
    own section. Built once per task from the registry."""
    spec = get_task(task)
    built, cls = _CONFIG_CLASSES.get(task, (None, None))
    if built is not spec:
        fields: dict[str, Any] = {
            "task": (
                Literal[spec.name],
                Field(spec.name, description=Config.model_fields["task"].description),
            ),
            "data": (spec.data_options, Field(default_factory=spec.data_options)),
        }
        if spec.options is not None:
            fields[spec.name] = (
                spec.options,
                Field(default_factory=spec.options, description=f"options of task {spec.name}"),
            )
        cls = create_model(f"{spec.name.title().replace('_', '')}Config", __base__=TaskConfig, **fields)
        _CONFIG_CLASSES[task] = (spec, cls)
    return cls


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply overrides.

    Overrides are ``dotted.key=value`` strings; the value is parsed as YAML (``3e-4``, ``true``,
    ``[q, v]``).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    for item in overrides:
        _apply_override(raw, item, str(path) if path else None)
    return validate_config(raw, source=str(path) if path else "command line")


def validate_config(raw: dict[str, Any], source: str = "config") -> Config:
    """The typed config of ``raw`` (a parsed YAML mapping), or one ConfigError naming every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys (task, model, data, ...)")
    try:
        cls = config_class(raw.get("task", "classify"))
        return cls.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, raw, source, cls)) from None
    except (ValueError, ConfigError) as exc:  # raised from validators outside pydantic's wrapping
        raise ConfigError(f"{source}: {exc}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: PyYAML reports it itself
            if repeated:
                raise ConfigError(
                    f"line {key_node.start_mark.line + 1}: key '{key}' is given twice "
                    f"(first on line {first}); the second would silently replace the "
                    "first. Merge the two into one"
                )
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; give the YAML config file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except UnicodeDecodeError:
        raise ConfigError(
            f"{path}: not a text file (not UTF-8); a config is a YAML text file like configs/sst2_lora.yaml"
        ) from None
    except ConfigError as exc:
        raise ConfigError(f"{path}, {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (task, model, data, ...)")
    return data


def _apply_override(raw: dict[str, Any], item: str, source: str | None = None) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{item}': expected dotted.key=value, e.g. train.learning_rate=3e-4")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = f" in {source}" if source else ""
            raise ConfigError(
                f"override '{item}': '{part}'{where} is {child!r}, not a section; write it as "
                f"a mapping, e.g. `{part}: {{name: ...}}`"
            )
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError:
        node[parts[-1]] = value


def _format_errors(exc: ValidationError, raw: dict[str, Any], source: str, cls: type[Config]) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{key}: {_other_task_owner(loc, cls) or 'unknown key' + _suggest(loc, cls)}")
        elif err["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        elif not loc:  # a check across sections: its message names the keys
            lines.append(err["msg"].removeprefix("Value error, "))
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


def _other_task_owner(loc: list[str], cls: type[Config]) -> str | None:
    """'belongs to task sft' for a key that another task has (``data.packing`` on a classify run)."""
    task = cls.model_fields["task"].default
    owners = [
        name
        for name, spec in sorted(available_tasks().items())
        if name != task
        and (
            (len(loc) == 2 and loc[0] == "data" and loc[1] in spec.data_options.model_fields)
            or (len(loc) == 1 and loc[0] == name and spec.options is not None)
        )
    ]
    if not owners:
        return None
    named = " and ".join(", ".join(f"'{o}'" for o in owners).rsplit(", ", 1))
    return (
        f"an option of task{'s' if len(owners) > 1 else ''} {named}, but this config has task: {task}; "
        f"set task: {owners[-1] if len(owners) > 1 else owners[0]}, or remove the key"
    )


def _section_class(cls: type[BaseModel], part: str) -> type[BaseModel] | None:
    field = cls.model_fields.get(part)
    ann = field.annotation if field else None
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _suggest(loc: list[str], cls: type[BaseModel]) -> str:
    """'; did you mean ...' for an unknown key: a key of another section (``learning_rate`` at the top
    level is ``train.learning_rate``), ``<name>_field`` for a field name, or the closest spelling."""
    model: type[BaseModel] | None = cls
    for part in loc[:-1]:
        model = _section_class(model, part) if model else None
    if model is None:
        return ""
    key = loc[-1]
    if len(loc) == 1:
        homes = [
            f"{section}.{key}"
            for section in cls.model_fields
            if (sub := _section_class(cls, section)) is not None and key in sub.model_fields
        ]
        if homes:
            return f"; it belongs in a section: did you mean `{homes[0]}`?"
    if f"{key}_field" in model.model_fields:
        return f"; did you mean `{key}_field`? (it names the field of your rows that holds the {key})"
    return suggest_key(key, list(model.model_fields))
