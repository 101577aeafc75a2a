"""Where the score of an RL run comes from: a reward-model run directory, or a Python function.

``load_reward(spec)`` returns ``reward(prompts, responses) -> list[float]`` where ``prompts`` are chat
messages (what the policy was asked) and ``responses`` the generated texts:

* a directory holding a finished ``task: reward`` run: its model scores each response to its prompt,
  rendered with the reward run's own template (``deltatune score`` does the same);
* ``module:function`` or ``path/to/file.py:function``: a function ``f(prompts, responses)`` taking
  the prompt texts (the last user message of each) and the responses, returning one float each —
  a rule, a classifier, or the share of tests some code passes. Loading it imports your module: it
  runs your code, which you asked for by naming it.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from pathlib import Path
from typing import Callable

from deltatune.errors import ConfigError, UserError

RewardFn = Callable[[list[list[dict]], list[str]], list[float]]


def load_reward(spec: str, key: str = "ppo.reward") -> RewardFn:
    """The reward function ``spec`` names (see the module docstring)."""
    if not spec:
        raise ConfigError(f"{key}: required; give a reward run directory or module:function")
    path = Path(spec)
    if path.is_dir():
        return _from_run(path, key)
    if ":" not in spec:
        raise ConfigError(
            f"{key}: '{spec}' is neither a directory nor module:function (e.g. "
            "my_rewards:length_penalty, or rewards.py:score)"
        )
    return _from_function(spec, key)


def _from_run(run_dir: Path, key: str) -> RewardFn:
    from deltatune.runs.loaded import load_run

    run = load_run(run_dir, command="score")

    def reward(prompts: list[list[dict]], responses: list[str]) -> list[float]:
        return run.task.score(run, prompts, responses)

    reward.run = run  # type: ignore[attr-defined]  (its model, for memory accounting)
    return reward


def _from_function(spec: str, key: str) -> RewardFn:
    module_name, _, function_name = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            if not Path(module_name).is_file():
                raise ConfigError(f"{key}: file not found: {module_name}")
            module_spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{key}: cannot import '{module_name}' ({exc}); put it on PYTHONPATH or give "
            "a path/to/file.py:function"
        ) from None
    fn = getattr(module, function_name, None)
    if not callable(fn):
        raise ConfigError(f"{key}: '{module_name}' has no function '{function_name}'")

    def reward(prompts: list[list[dict]], responses: list[str]) -> list[float]:
        texts = [next((m["content"] for m in reversed(p) if m["role"] == "user"), "") for p in prompts]
        scores = list(fn(texts, responses))
        if len(scores) != len(responses) or not all(
            isinstance(s, (int, float)) and math.isfinite(s) for s in scores
        ):
            raise UserError(
                f"{key}: {spec} must return one finite number per response "
                f"(got {len(scores)} values for {len(responses)} responses)"
            )
        return [float(s) for s in scores]

    return reward
