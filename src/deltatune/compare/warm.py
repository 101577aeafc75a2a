"""Imported once by the fork server of :mod:`deltatune.compare.isolate`: loads what every comparison run
needs (torch, transformers, every task and method) so that each child process starts warm."""

from __future__ import annotations

import deltatune.compare.work  # noqa: F401
import deltatune.runs.bench  # noqa: F401
import deltatune.runs.skeleton  # noqa: F401
from deltatune.methods.registry import available
from deltatune.tasks import available_tasks

available_tasks()
available()
