"""A config fitted to the model it loads: ``data.max_length`` against the positions the model can read."""

from __future__ import annotations

from deltatune.errors import ConfigError, UserError
from deltatune.log import log
from deltatune.methods.registry import get_method


def fit_max_length(cfg, model) -> None:
    """Make ``cfg.data.max_length`` fit what the model can read (minus virtual tokens a method
    inserts): inputs longer than a learned position table fail at the first step. A value the user
    set is refused with the fix; the task's default is lowered, with a log line."""
    from deltatune.models.loading import position_limit

    inserts = get_method(cfg.method.name).inserts_tokens
    inserted_tokens = getattr(cfg.method, "num_virtual_tokens", 0) if inserts else 0
    limit = position_limit(model)
    if limit is None or cfg.data.max_length + inserted_tokens <= limit:
        return
    fitted = limit - inserted_tokens
    if not getattr(cfg, "_max_length_is_default", False):
        extra = f" minus the {inserted_tokens} virtual tokens of the method" if inserted_tokens else ""
        raise ConfigError(
            f"data.max_length: {cfg.data.max_length} is more than model '{cfg.model.name}' "
            f"can read ({limit} positions{extra}); set data.max_length to {fitted} or less"
        )
    if fitted < 2:
        raise UserError(
            f"model '{cfg.model.name}' reads at most {limit} positions, too few for the "
            f"{inserted_tokens} virtual tokens of method.num_virtual_tokens; lower it"
        )
    log(
        f"data.max_length: the task's default {cfg.data.max_length} is more than model '{cfg.model.name}' "
        f"can read ({limit} "
        f"positions{f' minus {inserted_tokens} virtual tokens' if inserted_tokens else ''}); "
        f"using {fitted}, longer inputs are cut"
    )
    cfg.data.max_length = fitted
