"""Recipes: one thin module per task. ``run_config`` picks the recipe for ``cfg.task``."""

from __future__ import annotations

import importlib

from deltatune.config import Config

RECIPES = {"classify": "deltatune.recipes.classify", "sft": "deltatune.recipes.sft"}


def run_config(cfg: Config, overwrite: bool = False) -> dict:
    """Prepare the run directory, run the task's recipe, return its summary."""
    from accelerate.utils import set_seed

    from deltatune.training.memory import limit_allocator_retention
    from deltatune.training.run import prepare_run_dir

    limit_allocator_retention()  # also for Python callers, not only the CLI (see training/memory.py)

    run = prepare_run_dir(cfg, overwrite=overwrite)
    set_seed(cfg.train.seed)
    summary = importlib.import_module(RECIPES[cfg.task]).run(cfg, run)
    summary["run_dir"] = str(run.dir)
    return summary
