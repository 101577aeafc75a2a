"""Rollouts for RLHF (PPO, GRPO): the policy answers prompts, the answers are scored, and the
per-token quantities the updates need are computed once per rollout, then served as minibatches to
the one training loop.

Token ids are kept as generated, never re-tokenised. A rollout row is ``[prompt..., response...,
pad...]`` (right-padded); every per-token tensor is aligned with it, and ``mask`` is 1 on response
tokens. Log-probs at position t are those of token t given the tokens before it (read from the logits
at t − 1); values at t are the value head's estimate at the same state (the hidden state at t − 1).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from deltatune.inference.generation import end_token_ids, left_pad
from deltatune.losses.rl import (
    KL_ESTIMATORS,
    entropy_from_logits,
    explained_variance,
    gae,
    group_advantages,
    per_token_rewards,
    whiten,
)


@dataclass
class RolloutSettings:
    algorithm: str  # "ppo" or "grpo"
    prompts_per_rollout: int
    group_size: int  # answers per prompt (GRPO > 1; PPO usually 1)
    epochs: int  # passes over each rollout
    minibatch: int  # sequences per minibatch
    max_new_tokens: int
    temperature: float
    top_p: float
    gamma: float
    lam: float
    kl_estimator: str
    whiten_advantages: bool
    top_k: int = 0  # 0: no top-k cut (the log-probs use the whole softmax)


def on_policy_top_p(generate_options) -> float:
    """Rollouts sample from the whole (tempered) distribution, the one the log-probs and the KL are
    computed on, unless ``generate.top_p`` was set explicitly (then from its nucleus). Likewise no
    top-k cut unless ``generate.top_k`` is set (transformers would apply 50 if not told)."""
    return generate_options.top_p if "top_p" in generate_options.model_fields_set else 1.0


class ValueModel(nn.Module):
    """A value network of its own (``ppo.value_model: separate``): a second copy of the model's trunk,
    adapted by the run's method, with a linear head (hidden -> 1). Its gradients never reach the
    policy's weights, at the cost of a second forward and backward per minibatch (as in InstructGPT and
    TRL's PPO, where the value model is separate)."""

    def __init__(self, trunk: nn.Module, hidden_size: int):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Values (B, T), aligned like the log-probs: the value at t is read from the hidden state at
        t − 1."""
        hidden = self.trunk(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        return F.pad(self.head(hidden[:, :-1].to(self.head.weight.dtype)).squeeze(-1).float(), (1, 0))


def forward(
    model,
    value_head: nn.Module | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float = 1.0,
    positions: torch.Tensor | None = None,
    entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Log-probs (B, T) of the rows' own tokens, values (B, T) or None, and entropies (B, T) (None
    unless asked), from one forward of the policy trunk (a value head shares it; a :class:`ValueModel`
    runs its own forward).

    The LM head runs only where a log-prob is wanted: at the tokens ``positions`` marks (B, T; the
    response mask), from the hidden state one position earlier; elsewhere log-probs and entropies are 0.
    Prompts are often several times longer than responses, and the head with its vocabulary-wide
    softmax is a large share of a small model's forward."""
    hidden = model.base_model(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state
    need = (attention_mask if positions is None else positions)[:, 1:].bool()
    logits = model.get_output_embeddings()(hidden[:, :-1][need]).float()  # (N, V): one row per wanted token
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, input_ids[:, 1:][need].unsqueeze(-1)).squeeze(-1) - lse
    zeros = hidden.new_zeros(need.shape, dtype=torch.float32)
    logps = F.pad(zeros.masked_scatter(need, picked), (1, 0))
    ent = None
    if entropy:
        ent = F.pad(zeros.masked_scatter(need, entropy_from_logits(logits)), (1, 0))
    values = None
    if isinstance(value_head, ValueModel):  # a separate network: its own forward over the same rows
        values = value_head(input_ids, attention_mask)
    elif value_head is not None:
        values = F.pad(value_head(hidden[:, :-1].to(value_head.weight.dtype)).squeeze(-1).float(), (1, 0))
    return logps, values, ent


@torch.no_grad()
def generate(
    model, tokenizer, prompts: list[list[int]], settings: RolloutSettings, seed: int | None = None
) -> list[list[int]]:
    """One sampled response (token ids, ending with its end token when it has one) per prompt."""
    ends = set(end_token_ids(tokenizer))
    pad = tokenizer.pad_token_id
    ids, mask = left_pad(prompts, pad)
    device = next(model.parameters()).device
    context = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with context:
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            do_sample=True,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            max_new_tokens=settings.max_new_tokens,
            pad_token_id=pad,
            eos_token_id=list(ends) or None,
        )
    responses = []
    for row in out[:, ids.shape[1] :].tolist():
        cut = next((n + 1 for n, t in enumerate(row) if t in ends), len(row))
        responses.append(row[:cut])
    return responses


def pad_rows(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``[prompt, response]`` rows with their attention and response masks."""
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    b = len(prompts)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention, mask = torch.zeros((b, width), dtype=torch.long), torch.zeros((b, width))
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attention[i, : len(p) + len(r)] = 1
        mask[i, len(p) : len(p) + len(r)] = 1
    return {"input_ids": ids, "attention_mask": attention, "mask": mask}


class Rollouts:
    """Makes rollouts: sample, score, then log-probs of policy and reference, values, advantages."""

    def __init__(
        self,
        model,
        tokenizer,
        value_head: nn.Module | None,
        reference: Callable,
        reward: Callable[[list[list[dict]], list[str]], list[float]],
        settings: RolloutSettings,
        kl,
    ):
        """``reference()`` -> (model, context): the untuned model to run inside the context (the
        policy with its method switched off, or a frozen copy); ``kl``: a KL controller (``value``,
        ``update``)."""
        self.model, self.tokenizer, self.value_head = model, tokenizer, value_head
        self.reference, self.reward, self.settings, self.kl = reference, reward, settings, kl

    @torch.no_grad()
    def make(self, prompts: list[list[int]], messages: list[list[dict]], seed: int) -> dict:
        s, model = self.settings, self.model
        was_training = model.training
        model.eval()
        start = time.perf_counter()
        prompts = [p for p in prompts for _ in range(s.group_size)]
        messages = [m for m in messages for _ in range(s.group_size)]
        responses = generate(model, self.tokenizer, prompts, s, seed)
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        scores = torch.tensor(self.reward(messages, texts), dtype=torch.float32)
        generated = time.perf_counter()
        batch = pad_rows(prompts, responses, self.tokenizer.pad_token_id)
        logps, values, _ = forward(
            model, self.value_head, batch["input_ids"], batch["attention_mask"], s.temperature, batch["mask"]
        )
        ref_model, off = self.reference()
        with off:
            ref_logps, _, _ = forward(
                ref_model, None, batch["input_ids"], batch["attention_mask"], s.temperature, batch["mask"]
            )
        model.train(was_training)
        batch.update(old_logps=logps, ref_logps=ref_logps, scores=scores)
        kl = KL_ESTIMATORS[s.kl_estimator](logps, ref_logps) * batch["mask"]
        self._advantages(batch, kl, values)
        batch["stats"] = self._stats(batch, kl, responses, start, generated)
        self.kl.update(batch["stats"]["kl"], len(responses))
        return batch

    def _advantages(self, batch: dict, kl: torch.Tensor, values: torch.Tensor | None) -> None:
        s, mask = self.settings, batch["mask"]
        if s.algorithm == "grpo":  # outcome advantages, normalised within each prompt's group
            batch["advantages"] = group_advantages(batch["scores"], s.group_size)[:, None] * mask
            return
        rewards = per_token_rewards(batch["scores"], kl, self.kl.value, mask)
        advantages, returns = gae(rewards, values, mask, s.gamma, s.lam)
        batch.update(
            advantages=whiten(advantages, mask) if s.whiten_advantages else advantages,
            returns=returns,
            old_values=values,
        )
        batch["explained_variance"] = explained_variance(values, returns, mask)

    def _stats(self, batch: dict, kl: torch.Tensor, responses: list, start: float, generated: float) -> dict:
        lengths = torch.tensor([len(r) for r in responses], dtype=torch.float32)
        done = time.perf_counter()
        return {
            "score_mean": float(batch["scores"].mean()),
            "score_std": float(batch["scores"].std(correction=0)),
            "kl": float((kl.sum(1)).mean()),
            "kl_coef": float(self.kl.value),
            "response_length": float(lengths.mean()),
            "rollout_tokens_per_s": float(lengths.sum() / max(generated - start, 1e-9)),
            "rollout_seconds": done - start,
            **(
                {"explained_variance": ev}
                if math.isfinite(ev := batch.get("explained_variance", math.nan))
                else {}
            ),
        }


class RolloutStream:
    """The "loader" of an RL run: every ``prompts_per_rollout`` prompts become a rollout, served as
    ``epochs`` passes of shuffled minibatches; ``len`` counts minibatches per pass over the prompts.

    Each minibatch carries ``num_units`` (response tokens for PPO, sequences for GRPO) and the rollout's
    statistics (logged by the loss). After a resume the rollouts already trained on are skipped
    without generating them again (``skip``)."""

    def __init__(self, rollouts: Rollouts, prompts: list[list[int]], messages: list[list[dict]], seed: int):
        self.rollouts, self.prompts, self.messages, self.seed = rollouts, prompts, messages, seed
        self.epoch, self.skip = 0, 0
        s = rollouts.settings
        self.per_rollout = s.epochs * -(-s.prompts_per_rollout * s.group_size // s.minibatch)
        self.rollouts_per_pass = max(1, len(prompts) // s.prompts_per_rollout)

    def __len__(self) -> int:
        return self.rollouts_per_pass * self.per_rollout

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        s = self.rollouts.settings
        order = list(range(len(self.prompts)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        skip, self.skip = self.skip, 0
        for k in range(self.rollouts_per_pass):
            if skip >= self.per_rollout:
                skip -= self.per_rollout
                continue
            chunk = order[k * s.prompts_per_rollout : (k + 1) * s.prompts_per_rollout]
            rollout = self.rollouts.make(
                [self.prompts[i] for i in chunk],
                [self.messages[i] for i in chunk],
                seed=self.seed + 7919 * (self.epoch * self.rollouts_per_pass + k),
            )
            for n, minibatch in enumerate(self._minibatches(rollout, k)):
                if n >= skip:
                    yield minibatch
            skip = 0

    def _minibatches(self, rollout: dict, k: int):
        s, n = self.rollouts.settings, len(rollout["scores"])
        rng = random.Random(self.seed + 31 * k + self.epoch)
        keys = (
            "input_ids",
            "attention_mask",
            "mask",
            "old_logps",
            "ref_logps",
            "advantages",
            "returns",
            "old_values",
        )
        for _ in range(s.epochs):
            order = list(range(n))
            rng.shuffle(order)
            for start in range(0, n, s.minibatch):
                idx = torch.tensor(order[start : start + s.minibatch])
                mb = {key: rollout[key][idx] for key in keys if rollout.get(key) is not None}
                width = int(mb["attention_mask"].sum(1).max())  # trim padding shared by the minibatch
                mb = {key: v[:, :width] for key, v in mb.items()}
                units = mb["mask"].sum() if s.algorithm == "ppo" else torch.tensor(len(idx))
                yield {**mb, "num_units": units.long(), "stats": rollout["stats"], "rows": len(idx)}


STAT_KEYS = ("score_mean", "score_std", "kl", "kl_coef", "response_length", "rollout_tokens_per_s")


def attach_value_head(model) -> nn.Linear:
    """A value head (hidden -> 1) on the policy's trunk, registered on the model so it trains and is
    checkpointed with it (``model.ppo_value_head``)."""
    head = nn.Linear(model.config.hidden_size, 1).to(next(model.parameters()).device)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    model.ppo_value_head = head
    return head


def attach_value_model(model, trunk: nn.Module) -> ValueModel:
    """A separate value network on ``trunk`` (the backbone of a second copy of the model, already
    adapted by the run's method), registered on the policy (``model.ppo_value_model``) so that one
    optimizer trains both and checkpoints hold both."""
    value_model = ValueModel(trunk, model.config.hidden_size).to(next(model.parameters()).device)
    model.ppo_value_model = value_model
    return value_model


def separate_value_model(policy, cfg, method) -> ValueModel:
    """``ppo.value_model: separate``: a second copy of the run's checkpoint, adapted by the run's
    method (its own adapter init, seed + 1), whose backbone with a new head becomes the value model
    (the copy's LM head is dropped), attached to ``policy``."""
    from deltatune.log import log
    from deltatune.methods.registry import ModelContext
    from deltatune.models import load_for_causal_lm

    copy_lm, _, path = load_for_causal_lm(cfg.model.name, dtype=cfg.model.dtype, seed=cfg.train.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed + 1)
        method.apply(copy_lm, cfg.method, ModelContext(str(path), "CAUSAL_LM", []))
    if cfg.train.gradient_checkpointing:
        copy_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    value_model = attach_value_model(policy, copy_lm.base_model)
    n = sum(p.numel() for p in value_model.parameters() if p.requires_grad)
    log(f"value model: a separate copy of {cfg.model.name} ({method.name}), {n:,} trainable parameters")
    return value_model


def detach_value(model) -> tuple[str, dict] | None:
    """Remove the value head or value model from the policy (they are for training only) and return
    the file name and the trained weights to keep (a value model's adapter and head only)."""
    if hasattr(model, "ppo_value_head"):
        state = {f"value_head.{k}": v for k, v in model.ppo_value_head.state_dict().items()}
        del model.ppo_value_head
        return "value_head.safetensors", state
    if hasattr(model, "ppo_value_model"):
        state = {
            f"value_model.{n}": p.detach().cpu().contiguous()
            for n, p in model.ppo_value_model.named_parameters()
            if p.requires_grad
        }
        del model.ppo_value_model
        return "value_model.safetensors", state
    return None


def update_loss(model, value_head: nn.Module | None, batch: dict, options, temperature: float):
    """The summed PPO (policy + ``vf_coef`` x value − entropy bonus) or GRPO loss of one minibatch,
    and the sums to log (clip fraction, approximate KL, entropy, value loss, the rollout's statistics).
    Stops the run (UserError) when the rollout's KL exceeds ``options.max_kl`` or the loss is not finite."""
    from deltatune.errors import UserError
    from deltatune.losses.rl import grpo_loss, ppo_policy_loss, ppo_value_loss

    stats = batch["stats"]
    if not math.isfinite(stats["kl"]) or stats["kl"] > options.max_kl:
        raise UserError(
            f"the policy drifted from the reference: rollout KL {stats['kl']:.3g} > ppo.max_kl "
            f"{options.max_kl}; the last good checkpoint is kept. "
            "Lower train.learning_rate or raise ppo.kl_coef"
        )
    logps, values, entropy = forward(
        model,
        value_head,
        batch["input_ids"],
        batch["attention_mask"],
        temperature,
        batch["mask"],
        entropy=True,
    )
    mask = batch["mask"]
    if options.algorithm == "ppo":
        loss, clipped, approx_kl = ppo_policy_loss(
            logps, batch["old_logps"], batch["advantages"], mask, options.clip
        )
        value_loss, _ = ppo_value_loss(
            values, batch["old_values"], batch["returns"], mask, options.value_clip
        )
        loss = loss + options.vf_coef * value_loss
    else:
        loss, clipped, approx_kl = grpo_loss(
            logps,
            batch["old_logps"],
            batch["ref_logps"],
            batch["advantages"],
            mask,
            options.clip,
            options.kl_coef,
        )
        value_loss = torch.zeros(())
    loss = loss - options.entropy_coef * (entropy * mask).sum()
    if not torch.isfinite(loss):
        raise UserError(
            "the PPO ratio or loss became NaN/inf; the last good checkpoint is kept. Lower "
            "train.learning_rate"
        )
    units, tokens = float(batch["num_units"]), max(float(mask.sum()), 1.0)
    extras = {
        "clip_fraction": float(clipped) * units,
        "approx_kl": float(approx_kl) * units,
        "entropy": float((entropy.detach() * mask).sum()) / tokens * units,
        "value_loss": float(value_loss.detach()) / tokens * units,
        **{k: stats[k] * units for k in (*STAT_KEYS, "explained_variance") if k in stats},
    }
    return loss, extras


__all__ = [
    "RolloutSettings",
    "Rollouts",
    "RolloutStream",
    "ValueModel",
    "attach_value_head",
    "attach_value_model",
    "detach_value",
    "forward",
    "generate",
    "on_policy_top_p",
    "pad_rows",
    "separate_value_model",
    "update_loss",
]
