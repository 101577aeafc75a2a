"""Checks that need only the config: is there validation data, is the learning rate plausible for the
method."""

from __future__ import annotations

from deltatune.checks.findings import CheckReport, Finding

LR_FACTOR = 10
"""A learning rate more than this factor away from the method's default is flagged. The defaults
(``MethodSpec.default_lr``, sources in docs/methods.md) sit inside the ranges the method papers
searched, and those ranges span about one order of magnitude either side."""


def no_validation(cfg) -> Finding | None:
    d = cfg.data
    if d.validation or d.validation_split:
        return None
    return Finding(
        "validation",
        "warning",
        "No validation data",
        "neither data.validation nor data.validation_split is set, so the run cannot pick its best "
        "checkpoint, stop early, warn about overfitting, or report the untuned base against the tuned "
        "model; its only numbers will be training loss",
        "set data.validation=FILE, or data.validation_split=0.1 to hold out 10% of the training file",
    )


def learning_rate(cfg) -> Finding | None:
    from deltatune.methods.registry import get_method

    spec, lr = get_method(cfg.method.name), cfg.train.learning_rate
    default = spec.lr_for(cfg.task)
    low, high = default / LR_FACTOR, default * LR_FACTOR
    if low <= lr <= high:
        return None
    side = "above" if lr > high else "below"
    effect = (
        "training is likely to diverge (loss NaN or stuck at chance) or forget what the model knew"
        if lr > high
        else "the adapter will barely move in the given budget"
    )
    return Finding(
        "learning_rate",
        "warning",
        f"Learning rate far {side} the usual range for {spec.name}",
        f"train.learning_rate {lr:g} is {lr / default:.3g}x the {spec.name} default "
        f"({default:g}); the usual range is {low:g} to {high:g}; {effect}",
        f"use a value in {low:g}-{high:g}, e.g. remove train.learning_rate to use the default "
        f"{default:g}, or compare a few with `deltatune compare`",
    )


def run(cfg, report: CheckReport) -> list[Finding]:
    report.ran += ["validation", "learning_rate"]
    return [f for f in (no_validation(cfg), learning_rate(cfg)) if f]
