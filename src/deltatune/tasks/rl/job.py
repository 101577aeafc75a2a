"""RLHF with PPO (value head, per-token KL in the reward, GAE, clipped updates) or GRPO (group-normalised
advantages, KL in the loss, no value head): wiring only. Rollouts and the update loss come from
``rollout.py``; the reference is the policy with the method switched off."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

from deltatune.config import Config
from deltatune.config.fit import fit_max_length
from deltatune.data.masks import prompt_ids
from deltatune.data.templates import template_for
from deltatune.errors import UserError
from deltatune.io import save_safetensors_atomic
from deltatune.losses.rl import AdaptiveKLController, FixedKLController
from deltatune.models import load_for_causal_lm
from deltatune.results import BatchLoss
from deltatune.tasks.rl.evaluate import rl_markdown, score_answers, win_rate
from deltatune.tasks.rl.prompts import load_prompt_splits
from deltatune.tasks.rl.rewards import load_reward
from deltatune.tasks.rl.rollout import (
    Rollouts,
    RolloutSettings,
    RolloutStream,
    attach_value_head,
    detach_value,
    on_policy_top_p,
    separate_value_model,
    update_loss,
)


class PpoJob:
    """One PPO/GRPO run (see :class:`deltatune.tasks.TaskJob`)."""

    run_dir: Path | None = None

    def __init__(self, cfg: Config):
        o, g, t = cfg.ppo, cfg.generate, cfg.train
        self.cfg, self.splits = cfg, load_prompt_splits(cfg.data, t.seed)
        self.reward = load_reward(o.reward)
        self.model, self.tokenizer, self.model_path = load_for_causal_lm(
            cfg.model.name, dtype=cfg.model.dtype, seed=t.seed
        )
        fit_max_length(cfg, self.model)
        self.template = template_for(cfg.data, self.tokenizer, [])
        room = cfg.data.max_length - g.max_new_tokens  # prompts are cut from the left to leave room
        self.ids = {
            s: [prompt_ids(self.tokenizer, self.template, p)[-room:] for p in ps]
            for s, ps in self.splits.items()
        }
        self.has_validation = bool(self.splits.get("validation"))
        self.settings = RolloutSettings(
            o.algorithm,
            o.prompts_per_rollout,
            o.group_size or (4 if o.algorithm == "grpo" else 1),
            o.epochs,
            t.batch_size,
            g.max_new_tokens,
            g.temperature,
            on_policy_top_p(g),
            o.gamma,
            o.lam,
            o.kl_estimator if o.algorithm == "ppo" else "k3",
            o.whiten_advantages,
            g.top_k or 0,
        )
        self.method = self.frozen = self.value_head = None
        self.base_scores = None

    def describe(self) -> str:
        return (
            f"prompts: {len(self.ids['train'])} train, {len(self.ids.get('validation', []))} validation "
            f"({self.template.name} template); {self.settings.algorithm}, {self.settings.group_size} "
            "answer(s) per prompt"
        )

    def header(self) -> dict:
        return {
            "template": self.template.name,
            "algorithm": self.settings.algorithm,
            "reward": self.cfg.ppo.reward,
        }

    def evaluate(self, model) -> dict:
        out = score_answers(
            model,
            self.tokenizer,
            self.template,
            self.splits["validation"],
            self.reward,
            self.cfg.generate,
            self.cfg.train.seed,
        )
        if self.base_scores is None:
            self.base_scores = out["scores"]  # the first evaluation is the untuned base model's
        else:
            out["win_rate"] = win_rate(out["scores"], self.base_scores)
        return out

    def eval_metrics(self, model) -> dict:
        return {k: v for k, v in self.evaluate(model).items() if isinstance(v, float)}

    def _reference(self):
        if self.frozen is not None:
            return self.frozen, contextlib.nullcontext()
        return self.model, self.method.switch_off(self.model)

    def loader(self, method, num_processes: int) -> RolloutStream:
        if num_processes > 1:
            raise UserError(
                "task ppo runs in one process for now (its rollouts are not sharded); "
                "launch it without torchrun/accelerate launch"
            )
        self.method = method
        if method.switch_off is None:  # full fine-tuning: the reference is a frozen copy
            self.frozen = copy.deepcopy(self.model).eval().requires_grad_(False)
        if self.settings.algorithm == "ppo" and self.cfg.ppo.value_model == "separate":
            self.value_head = separate_value_model(self.model, self.cfg, method)
        elif self.settings.algorithm == "ppo":  # a value head on the policy's trunk, trained with it
            self.value_head = attach_value_head(self.model)
        o = self.cfg.ppo
        kl = (
            AdaptiveKLController(o.kl_coef, o.kl_target, o.kl_horizon)
            if o.kl_target and o.algorithm == "ppo"
            else FixedKLController(o.kl_coef)
        )
        rollouts = Rollouts(
            self.model, self.tokenizer, self.value_head, self._reference, self.reward, self.settings, kl
        )
        return RolloutStream(rollouts, self.ids["train"], self.splits["train"], self.cfg.train.seed)

    def loss_fn(self, model, batch):
        loss, extras = update_loss(model, self.value_head, batch, self.cfg.ppo, self.settings.temperature)
        return BatchLoss(loss, int(batch["num_units"]), int(batch["attention_mask"].sum()), extras)

    def final(self, model) -> dict:
        self.value_state = detach_value(model)  # training only: kept in a file of its own
        return {"tuned": self.evaluate(model)} if self.has_validation else {}

    def save(self, run_dir: Path) -> None:
        self.tokenizer.save_pretrained(run_dir / "tokenizer")
        if getattr(self, "value_state", None):
            save_safetensors_atomic(self.value_state[1], run_dir / self.value_state[0])

    def summary(self, report: dict) -> dict:
        return {
            "template": self.template.name,
            **{
                f"{side}_{k}": report[side][k]
                for side in ("base", "tuned")
                if side in report
                for k in ("score", "words", "win_rate")
                if k in report[side]
            },
        }

    def markdown(self, report: dict, result) -> str:
        p = report["trainable_parameters"]
        return rl_markdown(
            report,
            self.splits.get("validation", []),
            f"deltatune {self.settings.algorithm.upper()}: {report['method']} on {report['model']}",
            {
                "reward": self.cfg.ppo.reward,
                "trainable": f"{p['trainable']:,} / {p['total']:,}",
                "train": f"{result.steps} updates, peak memory {result.peak_memory_mb:.0f} MB",
            },
        )


def load_model(cfg: Config, source: str, run_dir: Path | None, saved: Path):
    model, tokenizer, path = load_for_causal_lm(source, dtype=cfg.model.dtype)
    return model, tokenizer, path, {}
