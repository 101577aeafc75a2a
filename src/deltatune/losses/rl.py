"""RLHF pieces: log-probs of generated tokens, per-token KL and rewards, GAE, PPO's clipped losses,
KL controllers, and GRPO's group advantages and loss. Small pure tensor functions.

Shapes: (B, T) tensors aligned with the rollout's token ids ``[prompt..., response..., pad...]``,
and a response ``mask`` (B, T), 1 on response tokens and 0 on prompt and padding. Losses return
*sums* (over tokens for PPO, over sequences for GRPO) so the training loop can divide by the count
of the whole accumulated batch, which keeps gradient accumulation exact.

The careful implementations this follows: OpenAI's lm-human-preferences (Ziegler et al. 2019,
https://arxiv.org/abs/1909.08593), "The N+ Implementation Details of RLHF with PPO" (Huang et al.
2024, https://arxiv.org/abs/2403.17031) and DeepSeekMath for GRPO (https://arxiv.org/abs/2402.03300).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(logits / temperature)[tokens]`` at the *same* positions: (B, T, V), (B, T) -> (B, T).

    No shift: use :func:`shifted_logprobs` for the log-probs of a sequence's own tokens. Pass the
    sampling temperature so the log-probs are those of the distribution the tokens were drawn from.
    Computed in float32.
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def shifted_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-prob of each token of ``input_ids`` given the tokens before it, aligned with ``input_ids``:

        ``out[:, t] = log p(input_ids[:, t] | input_ids[:, :t])``, read from ``logits[:, t − 1]``

    because a causal LM's logits at position t score token t + 1. ``out[:, 0] = 0`` (nothing predicts
    the first token). logits: (B, T, V) from one forward over the whole rollout; input_ids: (B, T).
    Returns (B, T), so the response mask over ``input_ids`` applies to it unchanged.
    """
    out = gather_logprobs(logits[:, :-1], input_ids[:, 1:], temperature)
    return F.pad(out, (1, 0))


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log π − log π_ref: unbiased for KL(π‖π_ref) when tokens are sampled from π; noisy, may be < 0."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (log π − log π_ref)²: biased, low variance, always ≥ 0."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = π_ref/π − log(π_ref/π) − 1 = exp(log π_ref − log π) − (log π_ref − log π) − 1:
    unbiased, low variance, always ≥ 0 (the estimator of GRPO's KL term)."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


# Per-token estimators of KL(π‖π_ref) from log-probs (B, T) of tokens sampled from π.
# Schulman, "Approximating KL divergence" (2020), http://joschu.net/blog/kl-approx.html
KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index (B,) of the last position where ``mask`` (B, T) is nonzero; 0 for an all-zero row."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (positions * (mask != 0)).argmax(dim=1)


def per_token_rewards(score: torch.Tensor, kl: torch.Tensor, beta: float, mask: torch.Tensor) -> torch.Tensor:
    """PPO's reward per token (B, T): ``−β · KL_t`` on every response token, plus the sequence's score
    (B,) on its last response token (Ziegler et al. 2019, Eq. 2; Stiennon et al. 2020,
    https://arxiv.org/abs/2009.01325). The KL goes into the reward, not the loss, so GAE credits it
    to the tokens that caused it. kl: (B, T) from :data:`KL_ESTIMATORS`; mask: (B, T).
    Zero outside the mask; a row with no response token gets no score.
    """
    mask = mask.to(kl.dtype)
    rewards = -beta * kl * mask
    has_response = mask.sum(dim=1) > 0
    last = last_token_index(mask).unsqueeze(1)
    return rewards.scatter_add(1, last, (score.to(rewards.dtype) * has_response).unsqueeze(1))


@torch.no_grad()
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the tokens of each response (Schulman et al. 2016,
    https://arxiv.org/abs/1506.02438):

        ``δ_t = r_t + γ V_{t'} − V_t``,  ``A_t = δ_t + γλ A_{t'}``,  ``returns_t = A_t + V_t``

    where t' is the next response token after t (``V = A = 0`` after the last one: the episode ends).
    Positions where ``mask`` is 0 (prompt, padding, or any gap such as tool output) are skipped, as if
    absent, so left/right padding and variable lengths need no special care; they get A = returns = 0.
    rewards, values, mask: (B, T). Returns advantages and returns, (B, T) float32, no gradient.
    """
    rewards, values, keep = rewards.float(), values.float(), mask != 0
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        k = keep[:, t]
        advantages[:, t] = torch.where(k, adv, 0.0)
        next_value = torch.where(k, values[:, t], next_value)
        next_adv = torch.where(k, adv, next_adv)
    return advantages, (advantages + values) * keep


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over entries where ``mask`` is nonzero (a scalar)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum()


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``(x − mean) / sqrt(var + eps)`` with mean and (Bessel-corrected) variance over masked entries.

    With ``shift_mean=False`` the mean is added back (only the scale changes), as for rewards in
    lm-human-preferences. x, mask: (B, T). Returns (B, T), 0 outside the mask.
    """
    mean = masked_mean(x, mask)
    n = (mask != 0).sum()
    var = masked_mean((x - mean) ** 2, mask) * n / (n - 1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * (mask != 0)


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, summed over response tokens (Schulman et al. 2017,
    https://arxiv.org/abs/1707.06347, Eq. 7), with ratio ``ρ_t = exp(log π − log π_old)``:

        ``loss = sum_t max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε))``

    A *sum*: the loop divides by the response tokens of the whole accumulated batch, i.e. the
    token-level mean over the minibatch that lm-human-preferences and TRL's PPO use, exact under
    gradient accumulation and not weighting short responses' tokens more.
    logp, old_logp, advantages, mask: (B, T). Also returns, detached, the clip fraction (share of
    response tokens where the clipped term is the larger one, so its gradient is zero) and the approximate
    KL(π_old‖π) by the k3 estimator ``(ρ − 1) − log ρ`` (tokens were sampled from π_old).
    """
    mask = mask.to(logp.dtype)
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = (torch.maximum(unclipped, clipped) * mask).sum()
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).to(mask.dtype), mask)
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
    return loss, clip_frac, approx_kl


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss, summed over response tokens (as in OpenAI baselines' PPO2 and
    lm-human-preferences; Huang et al. 2024, detail 9):

        ``loss = sum_t ½ max((V_t − R_t)², (V_old,t + clip(V_t − V_old,t, −ε, ε) − R_t)²)``

    values, old_values (from the rollout), returns, mask: (B, T). Also returns the share of response
    tokens where the clipped error is the larger one (detached).
    """
    mask = mask.to(values.dtype)
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_err = (values - returns) ** 2
    clipped_err = (clipped_values - returns) ** 2
    loss = 0.5 * (torch.maximum(unclipped_err, clipped_err) * mask).sum()
    with torch.no_grad():
        clip_frac = masked_mean((clipped_err > unclipped_err).to(mask.dtype), mask)
    return loss, clip_frac


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 − Var[R − V] / Var[R]`` over masked entries: 1 = perfect value function, 0 = no better than a
    constant, < 0 = worse. NaN when the returns do not vary. (B, T) each."""
    var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    diff = returns - values
    var_diff = masked_mean((diff - masked_mean(diff, mask)) ** 2, mask)
    return (1 - var_diff / var_returns).item() if var_returns > 0 else float("nan")


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of ``softmax(logits)`` along the last axis: ``logsumexp(z) − sum_v p_v z_v``.
    (..., V) -> (...), float32."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)


class FixedKLController:
    """A constant KL coefficient β; ``update`` does nothing (same interface as the adaptive one)."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, https://arxiv.org/abs/1909.08593, §2.2):

        ``e = clip(KL / KL_target − 1, −0.2, 0.2)``,  ``β ← β (1 + e · n_steps / horizon)``

    so β grows when the policy drifts beyond the target KL and shrinks when it stays closer.
    ``n_steps`` is the number of samples (episodes) since the last update.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's outcome advantages (Shao et al. 2024, DeepSeekMath, https://arxiv.org/abs/2402.03300, §4.1.2):

        ``A_i = (r_i − mean(r_group)) / (std(r_group) + eps)``

    rewards: (N,) with each prompt's ``group_size`` samples consecutive (N = prompts × group_size).
    std is the sample (Bessel-corrected) standard deviation, as TRL's GRPO; a group whose samples all
    score the same gets advantage 0. Returns (N,) float32; broadcast it over the response tokens.
    """
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(
            f"group_advantages needs group_size >= 2 dividing the {rewards.numel()} rewards, "
            f"got group_size={group_size}"
        )
    groups = rewards.float().view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True)
    return ((groups - mean) / (std + eps)).view(-1)


def grpo_token_losses(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    clip: float = 0.2,
    beta: float = 0.04,
) -> torch.Tensor:
    """GRPO's per-token loss (B, T) (DeepSeekMath Eq. 3, negated to minimise):

        ``−min(ρ_t A, clip(ρ_t, 1 − ε, 1 + ε) A) + β · k3(π‖π_ref)_t``

    ρ_t = exp(log π − log π_old); A: (B,) sequence advantages (or (B, T)); the KL to the reference is
    in the loss (not the reward), estimated per token by :func:`kl_k3` (the paper's Eq. 4).
    ref_logp may be None when beta = 0.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    ratio = torch.exp(logp - old_logp)
    surrogate = torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages)
    loss = -surrogate
    if beta:
        loss = loss + beta * kl_k3(logp, ref_logp)
    return loss


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    beta: float = 0.04,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GRPO loss, normalised as in the paper: the mean over each response's tokens (1/|o_i|), then
    *summed* over sequences — the loop divides by the number of sequences, giving the paper's mean
    over the group (and TRL's ``loss_type="grpo"``).

    The token-level alternative (DAPO, Yu et al. 2025, https://arxiv.org/abs/2503.14476; TRL's
    ``bnpo``/``dapo``) sums :func:`grpo_token_losses` over all tokens and divides by the token count,
    so long responses are not down-weighted per token. logp, old_logp, ref_logp, mask: (B, T);
    advantages: (B,). Also returns, detached, the clip fraction (share of response tokens whose
    gradient the clip zeroes) and the mean k3 KL to the reference over response tokens.
    """
    mask = mask.to(logp.dtype)
    per_token = grpo_token_losses(logp, old_logp, ref_logp, advantages, clip, beta)
    loss = ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).sum()
    with torch.no_grad():
        adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
        ratio = torch.exp(logp - old_logp)
        clipped = ((ratio < 1 - clip) & (adv < 0)) | ((ratio > 1 + clip) & (adv > 0))
        clip_frac = masked_mean(clipped.to(mask.dtype), mask)
        kl = masked_mean(kl_k3(logp, ref_logp), mask) if ref_logp is not None else torch.zeros(())
    return loss, clip_frac, kl
