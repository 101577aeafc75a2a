"""One registry shape for everything a user or a plugin can add: methods, tasks and metrics.

A registry maps names to specs. The rules are the same for every kind:

* ``register(spec)`` adds a spec under ``spec.name``; registering the very same object again is a
  no-op, another object under a taken name is an error (two plugins cannot silently shadow each other).
* Discovery is lazy. A registry with a ``package`` treats each *folder* in it as one entry to import
  (``deltatune/methods/lora/`` registers ``lora``); plugins outside deltatune name a module in the
  ``entry_points`` group (``deltatune.methods``, ``deltatune.tasks``), imported when a name is not
  found among the folders. ``get("lora")`` imports only ``deltatune.methods.lora``; ``available()``
  imports them all.
* A folder's ``__init__`` only registers: heavy code (torch, transformers) sits behind :func:`lazy`
  references, so validating a config imports neither torch nor every task.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Generic, Protocol, TypeVar

from deltatune.errors import ConfigError, suggest_key


class Named(Protocol):
    name: str


T = TypeVar("T", bound=Named)


class Registry(Generic[T]):
    """Named specs of one kind (see the module docstring for the rules)."""

    def __init__(self, kind: str, package: str | None = None, entry_points: str | None = None):
        self.kind, self.package, self.group = kind, package, entry_points
        self._items: dict[str, T] = {}
        self._scanned = False

    def register(self, spec: T) -> T:
        taken = self._items.get(spec.name)
        if taken is not None and taken is not spec:
            raise ValueError(f"{self.kind} '{spec.name}' registered twice")
        self._items[spec.name] = spec
        return spec

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a toy one clean up with this)."""
        self._items.pop(name, None)

    def get(self, name: Any, key: str | None = None) -> T:
        """The spec called ``name``; one ConfigError naming ``key`` and the closest names otherwise."""
        if isinstance(name, str) and name not in self._items:
            self._import_folder(name)
        if not isinstance(name, str) or name not in self._items:
            names = sorted(self.available())
            if name in names:
                return self._items[name]
            raise ConfigError(
                f"{key or self.kind}: unknown {self.kind} {name!r}{suggest_key(str(name), names)}"
            )
        return self._items[name]

    def available(self) -> dict[str, T]:
        """Every entry: the package's folders and the plugins' entry points, imported."""
        if not self._scanned:
            self._scanned = True
            for folder in self.folders():
                self._import_folder(folder)
            self._import_plugins()
        return dict(self._items)

    def folders(self) -> list[str]:
        """The entry folders of the package, without importing them."""
        if self.package is None:
            return []
        package = importlib.import_module(self.package)
        return sorted(
            info.name
            for info in pkgutil.iter_modules(package.__path__)
            if info.ispkg and not info.name.startswith("_")
        )

    def _import_folder(self, name: str) -> None:
        if self.package is not None and name in self.folders():
            importlib.import_module(f"{self.package}.{name}")

    def _import_plugins(self) -> None:
        if self.group is None:
            return
        from importlib.metadata import entry_points

        for entry in entry_points(group=self.group):
            importlib.import_module(entry.value)


class lazy:  # noqa: N801 - used like a function: lazy("module:name")
    """A callable standing for ``module:name``, imported on its first call, so that registering a method
    or a task costs no import of torch or transformers."""

    def __init__(self, target: str):
        self.target = target
        self._fn: Callable | None = None

    def resolve(self) -> Callable:
        if self._fn is None:
            module, _, name = self.target.partition(":")
            self._fn = getattr(importlib.import_module(module), name)
        return self._fn

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"lazy({self.target!r})"
