"""The single extension point for fine-tuning methods.

A method is one folder, ``deltatune/methods/<name>/``: ``options.py`` (its pydantic options, validated
from the ``method:`` section; no torch), ``model.py`` (the layers, and how to inject, save, load and merge
them) and ``__init__.py``, whose one :func:`register` call adds a :class:`MethodSpec` with :func:`lazy`
references into ``model.py``. Nothing else in deltatune knows the list of methods; the registry's shape
and rules are those of every registry (:mod:`deltatune.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from deltatune.errors import ConfigError, suggest_key
from deltatune.registry import Registry, lazy

if TYPE_CHECKING:
    import torch.nn as nn

__all__ = ["MethodOptions", "MethodSpec", "ModelContext", "available", "get_method", "lazy", "register"]


class MethodOptions(BaseModel):
    """Base class of every method's options: ``name`` plus the method's own keys.

    Read like attributes (``opts.r``) or, as the ``method:`` section of a config, like a mapping
    (``cfg.method["r"]``).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    name: str

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)


@dataclass
class ModelContext:
    """What a method needs to know about the model it adapts."""

    base_model: str  # name or path recorded in adapter_config.json
    task_type: str  # PEFT task type: "SEQ_CLS" or "CAUSAL_LM"
    head_modules: list[str] = field(default_factory=list)  # trained and saved in full (e.g. classifier)


class AdapterLayer(Protocol):
    """An injected layer declares its own trainable parameters (never selected by name)."""

    def adapter_params(self) -> list[nn.Parameter]: ...


@dataclass(frozen=True)
class MethodSpec:
    """One fine-tuning method: how it adapts a model, saves and loads what it trained, and what it
    can do. Recipes ask these capabilities instead of naming methods."""

    name: str
    description: str
    options: type[MethodOptions]
    apply: Callable[[nn.Module, Any, ModelContext], nn.Module]
    """Inject the method in place, freeze what it does not train; returns the model."""
    save: Callable[[nn.Module, Any, ModelContext, Path], None]
    """Write what was trained into a directory (PEFT format where PEFT knows the method)."""
    load: Callable[[nn.Module, Path], None]
    """Load saved weights into a model that ``apply`` already adapted."""
    default_lr: float
    """Peak learning rate when the config sets none (:meth:`lr_for`: a task may have its own)."""
    saved_dir: str = "adapter"  # run-dir subfolder written by ``save``
    merge: Callable[[nn.Module], nn.Module] | None = None
    """Fold the trained update into the base weights and remove the wrappers (mergeable methods)."""
    param_lr: Callable[[nn.Module, Any, float], dict[int, float]] | None = None
    """Optional per-parameter learning rates ``(model, options, base_lr) -> {id(param): lr}``
    (e.g. LoRA+); parameters not in the dict use ``base_lr``."""
    inserts_tokens: bool = False
    """Adds virtual tokens to every input (prompt, prefix): examples cannot share a packed row,
    and the attention mask must be kept."""
    trains_whole_model: bool = False
    """Every weight trains; the run saves a complete model rather than an adapter."""
    switch_off: Callable[[nn.Module], ContextManager] | None = None
    """``with spec.switch_off(model):`` the adapted model computes the untouched base model (the
    reference model of DPO/PPO, with no second copy of the weights). None: the method changes the
    base weights themselves (full fine-tuning), so a reference needs a frozen copy."""
    saved_tags: tuple[str, ...] = ()
    """``peft_type`` / ``method`` values in an ``adapter_config.json`` that this method loads."""
    options_from_saved: Callable[[Path], MethodOptions] | None = None
    """The options an adapter directory was trained with (ours or PEFT's), to ``apply`` before
    ``load`` an adapter trained elsewhere."""
    min_steps: int = 0
    """Optimizer steps below which the method (at its default learning rate) was measured to stay near
    the untuned model; a run planned shorter gets a pre-flight warning (0: no such floor)."""
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Named presets of this method's options that ``deltatune compare --methods`` accepts as method
    names (LoRA: ``dora`` = ``use_dora: true``)."""
    task_lr: dict[str, float] = field(default_factory=dict)
    """Default learning rates measured better for one task than ``default_lr`` (``{"classify": 1e-4}``)."""
    int8_auto: str = "off"
    """What ``train.int8_base: auto`` means for this method (``off``, ``backward``, ``on``: measured to keep
    quality) in the tasks that allow it (:attr:`TaskSpec.int8_auto`)."""

    def lr_for(self, task: str) -> float:
        """The default learning rate of this method for ``task``."""
        return self.task_lr.get(task, self.default_lr)


METHODS: Registry[MethodSpec] = Registry(
    "method", package="deltatune.methods", entry_points="deltatune.methods"
)
register = METHODS.register
available = METHODS.available

# PEFT's spellings of our option names, for "did you mean" hints.
PEFT_ALIASES = {
    "rank": "r",
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "target": "target_modules",
    "targets": "target_modules",
}


def get_method(name: str) -> MethodSpec:
    return METHODS.get(name, key="method.name")


def resolve_method(name: str) -> tuple[MethodSpec, dict[str, Any]]:
    """A method name or a registered variant name (``dora``) -> (its method, the options it sets)."""
    if name in METHODS.folders():  # a method's own folder: no need to import the others
        return METHODS.get(name), {}
    methods = available()
    if name in methods:
        return methods[name], {}
    for spec in methods.values():
        if name in spec.variants:
            return spec, dict(spec.variants[name])
    names = sorted([*methods, *(v for spec in methods.values() for v in spec.variants)])
    raise ConfigError(f"unknown method '{name}'{suggest_key(name, names).replace('valid keys', 'methods')}")


def validate_method_config(raw: dict[str, Any] | MethodOptions) -> MethodOptions:
    """Validate the ``method:`` section with the method's options class; returns the typed options
    (every default filled in)."""
    if isinstance(raw, MethodOptions):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError("method: expected a mapping like {name: lora, r: 16}")
    raw = {"name": "lora", **raw}
    try:  # a variant name (dora) is its method with the variant's options, which the user's override
        spec, preset = resolve_method(str(raw["name"]))
        raw = {**preset, **raw, "name": spec.name}
    except ConfigError:
        spec = get_method(str(raw["name"]))  # raises the error that names the key
    try:
        opts = spec.options.model_validate(raw)
    except ValidationError as exc:
        msgs = []
        for err in exc.errors():
            key = "method." + ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                given = str(err["loc"][-1])
                hint = (
                    f"; did you mean `{PEFT_ALIASES[given]}`?"
                    if PEFT_ALIASES.get(given) in spec.options.model_fields
                    else suggest_key(given, list(spec.options.model_fields))
                )
                msgs.append(f"{key}: unknown option for method '{spec.name}'{hint}")
            else:
                msgs.append(f"{key}: {err['msg'].removeprefix('Value error, ')} (got {err.get('input')!r})")
        raise ConfigError("invalid config\n  " + "\n  ".join(msgs)) from None
    return opts


def method_for_adapter(adapter_config: dict[str, Any], source: Path) -> MethodSpec:
    """The method that wrote an ``adapter_config.json`` (PEFT's ``peft_type`` or our ``method`` tag)."""
    tag = adapter_config.get("method") or adapter_config.get("peft_type")
    for spec in available().values():
        if tag in spec.saved_tags:
            return spec
    known = sorted(t for spec in available().values() for t in spec.saved_tags)
    raise ConfigError(
        f"{source}: adapters of type '{tag}' are not supported; deltatune loads {', '.join(known)}"
    )


def trainable_report(model: nn.Module) -> dict[str, float]:
    """Trainable / total parameter counts and the trainable percentage."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / max(total, 1)}
