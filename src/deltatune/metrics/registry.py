"""The metric registry (see :mod:`deltatune.metrics`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from deltatune.registry import Registry

KINDS = ("text", "classification")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str
    fn: Callable[..., float]
    greater_is_better: bool = True


METRICS: Registry[MetricSpec] = Registry("metric")


def register_metric(name: str, kind: str, greater_is_better: bool = True):
    """Decorator: add ``fn`` as metric ``name`` of ``kind`` (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"metric kind {kind!r}: use one of {', '.join(KINDS)}")

    def add(fn: Callable[..., float]) -> Callable[..., float]:
        METRICS.register(MetricSpec(name, kind, fn, greater_is_better))
        return fn

    return add


def metrics_of(kind: str) -> list[MetricSpec]:
    """The metrics of one kind registered so far, in registration order (the built-ins register when
    their module is imported, before anything asks)."""
    return [m for m in METRICS.available().values() if m.kind == kind]


def registered(kind: str) -> dict[str, MetricSpec]:
    """The metrics of ``kind`` registered so far, by name."""
    return {m.name: m for m in METRICS.available().values() if m.kind == kind}
