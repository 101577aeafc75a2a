"""The options of the RL task (ppo, with GRPO as an algorithm): where the prompts come from (``data:``),
the ``ppo:`` section, and the checks across sections (no torch here)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from deltatune.config.schema import DataConfig, _Strict

if TYPE_CHECKING:
    from deltatune.config import Config

PAIR_LAYOUTS = ("hh", "prompt_chosen_rejected", "messages_pair")


class PromptData(DataConfig):
    """The ``data:`` options of RL tasks (ppo): where the prompts come from."""

    layout: Literal[
        "auto", "alpaca", "messages", "prompt_completion", "hh", "prompt_chosen_rejected", "messages_pair"
    ] = Field(
        "auto",
        description="row layout; auto = preference rows (chosen/rejected) give their prompt, "
        "instruction rows their question (alpaca, messages, prompt_completion or a bare prompt)",
    )
    fields: dict[str, str] = Field(default_factory=dict, description="map our field names to yours")
    template: str = Field("auto", description="as for sft: auto, chat, alpaca, raw, or a Jinja chat template")
    system_prompt: str | None = Field(None, description="system message for prompts that have none")


class PpoOptions(_Strict):
    algorithm: Literal["ppo", "grpo"] = Field(
        "ppo", description="ppo (value head, GAE) or grpo (group advantages)"
    )
    reward: str = Field("", description="a reward run directory, or module:function / file.py:function")
    prompts_per_rollout: int = Field(16, gt=0, description="prompts answered per rollout")
    group_size: int | None = Field(None, gt=0, description="answers per prompt; default 1 (ppo), 4 (grpo)")
    epochs: int = Field(2, gt=0, description="passes over each rollout (minibatches of train.batch_size)")
    clip: float = Field(0.2, gt=0, description="policy ratio clip")
    value_clip: float = Field(0.2, gt=0, description="value clip (ppo)")
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss (ppo)")
    value_model: Literal["shared", "separate"] = Field(
        "shared",
        description="ppo: a value head on the policy's trunk "
        "(shared), or a second copy of the model with its own adapter and head (separate)",
    )
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus")
    gamma: float = Field(1.0, gt=0, le=1, description="discount over tokens (ppo)")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda (ppo)")
    kl_coef: float = Field(
        0.05, ge=0, description="KL penalty: in the reward (ppo) or the loss (grpo's beta)"
    )
    kl_target: float | None = Field(None, gt=0, description="adaptive KL coefficient towards this KL (ppo)")
    kl_horizon: int = Field(10000, gt=0, description="adaptive KL horizon, in samples")
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k1", description="per-token KL estimator in the reward (ppo)"
    )
    whiten_advantages: bool = Field(True, description="normalise advantages per rollout (ppo)")
    max_kl: float = Field(
        20.0, gt=0, description="stop the run when a rollout's KL to the reference exceeds this"
    )


def check(cfg: Config) -> None:
    if not cfg.ppo.reward:
        raise ValueError("ppo.reward: required; a reward run directory (task: reward) or module:function")
    if cfg.ppo.algorithm == "grpo" and (cfg.ppo.group_size or 4) < 2:
        raise ValueError("ppo.group_size: GRPO compares answers within a group; use 2 or more")
    if cfg.ppo.algorithm == "grpo" and cfg.ppo.value_model == "separate":
        raise ValueError(
            "ppo.value_model: GRPO has no value model (its advantages come from the group); "
            "remove the key or set ppo.algorithm: ppo"
        )
