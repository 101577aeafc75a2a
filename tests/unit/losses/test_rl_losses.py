"""RL pieces: GAE against a plain loop, identities at policy = old = reference, log-prob alignment on a
known case and hand-computed clipped losses (TRL's implementations are compared in
``tests/parity/test_trl_rl_losses.py``; TRL 1.16 has no PPO trainer any more, so no GAE, whitening or KL
controller to compare with)."""

import math

import pytest
import torch

from deltatune.losses.rl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    gather_logprobs,
    group_advantages,
    grpo_loss,
    per_token_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    shifted_logprobs,
    whiten,
)
from helpers.rl_losses import _grpo_batch

# ---------------------------------------------------------------- GAE


def _gae_loop(rewards, values, mask, gamma, lam):
    """Textbook GAE, one sequence at a time, on the response tokens only (masked positions removed)."""
    advantages = torch.zeros_like(rewards, dtype=torch.float64)
    for b in range(rewards.shape[0]):
        idx = [t for t in range(rewards.shape[1]) if mask[b, t]]
        r = [rewards[b, t].item() for t in idx]
        v = [values[b, t].item() for t in idx]
        last = 0.0
        for i in reversed(range(len(idx))):
            next_v = v[i + 1] if i + 1 < len(idx) else 0.0
            last = r[i] + gamma * next_v - v[i] + gamma * lam * last
            advantages[b, idx[i]] = last
    return advantages, (advantages + values.double()) * mask


def _masks(t=12):
    rows = [
        [0] * 3 + [1] * 9,  # prompt, then response to the end
        [0] * 2 + [1] * 4 + [0] * 6,  # right padding
        [0] * 5 + [1] * 1 + [0] * 6,  # one response token
        [0] * t,  # nothing generated
        [0] * 1 + [1] * 3 + [0] * 2 + [1] * 4 + [0] * 2,  # a gap (e.g. tool output) inside the response
        [1] * t,  # all response
    ]
    return torch.tensor(rows, dtype=torch.bool)


@pytest.mark.parametrize("gamma, lam", [(1.0, 1.0), (1.0, 0.95), (0.99, 0.95), (0.9, 0.0), (0.5, 0.7)])
@pytest.mark.parametrize("seed", [0, 1])
def test_gae_equals_plain_loop(gamma, lam, seed):
    g = torch.Generator().manual_seed(seed)
    mask = _masks()
    rewards, values = torch.randn(mask.shape, generator=g), torch.randn(mask.shape, generator=g)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    expected_adv, expected_ret = _gae_loop(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(advantages, expected_adv.float())
    torch.testing.assert_close(returns, expected_ret.float())


def test_gae_special_cases_by_hand():
    rewards, values = torch.tensor([[0.0, 1.0, 0.0, 2.0]]), torch.tensor([[9.0, 0.5, 1.0, 1.5]])
    mask = torch.tensor([[0, 1, 1, 1]])
    # γ = λ = 1: A_t = (sum of rewards from t on) - V_t = [3 - 0.5, 2 - 1, 2 - 1.5]
    advantages, returns = gae(rewards, values, mask, 1.0, 1.0)
    torch.testing.assert_close(advantages, torch.tensor([[0.0, 2.5, 1.0, 0.5]]))
    torch.testing.assert_close(returns, torch.tensor([[0.0, 3.0, 2.0, 2.0]]))
    # λ = 0: one-step TD errors r_t + γ V_{t+1} - V_t with γ = 0.5
    advantages, _ = gae(rewards, values, mask, 0.5, 0.0)
    torch.testing.assert_close(advantages, torch.tensor([[0.0, 1.0 + 0.5 - 0.5, 0.75 - 1.0, 2.0 - 1.5]]))


# ---------------------------------------------------------------- log-prob alignment


def test_shifted_logprobs_known_model():
    """A "model" that puts all its mass on (current token + 1) mod V: every token of a counting
    sequence has log-prob 0 when read from the previous position, and about -100 otherwise."""
    vocab = 10
    input_ids = torch.tensor([[3, 4, 5, 6, 7, 8], [7, 8, 9, 0, 1, 2]])
    logits = 100.0 * torch.nn.functional.one_hot((input_ids + 1) % vocab, vocab).float()
    response = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]])  # prompt, response, padding
    logps = shifted_logprobs(logits, input_ids)
    assert logps.shape == input_ids.shape and (logps[:, 0] == 0).all()
    torch.testing.assert_close(logps[:, 1:], torch.zeros(2, 5), atol=1e-6, rtol=0)
    assert (logps * response).sum() == pytest.approx(0.0, abs=1e-5)
    # without the shift, each token is scored by its own position's logits: the classic bug
    assert (gather_logprobs(logits, input_ids) < -99).all()


# ---------------------------------------------------------------- KL, rewards, whitening


def test_kl_estimators_by_hand_and_zero_at_equality():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0])
    torch.testing.assert_close(KL_ESTIMATORS["k1"](logp, ref), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(KL_ESTIMATORS["k2"](logp, ref), torch.tensor([0.5, 0.5]))
    # k3 = e^(ref - logp) - (ref - logp) - 1 = [e^-1 + 1 - 1, e^1 - 1 - 1]
    torch.testing.assert_close(KL_ESTIMATORS["k3"](logp, ref), torch.tensor([math.exp(-1), math.e - 2]))
    same = torch.randn(4, 5)
    for name, fn in KL_ESTIMATORS.items():
        assert (fn(same, same) == 0).all(), name


def test_per_token_rewards_by_hand():
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]])
    kl = torch.full((3, 5), 0.5)
    rewards = per_token_rewards(torch.tensor([2.0, -1.0, 7.0]), kl, beta=0.1, mask=mask)
    torch.testing.assert_close(
        rewards,
        torch.tensor(
            [[0.0, -0.05, -0.05, 1.95, 0.0], [0.0, 0.0, -1.05, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]
        ),
    )


def test_whiten_masked_moments():
    g = torch.Generator().manual_seed(6)
    x, mask = torch.randn(6, 12, generator=g) * 5 + 3, _masks()
    out = whiten(x, mask)
    kept = out[mask]
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert kept.std().item() == pytest.approx(1.0, abs=1e-5)
    assert (out[~mask] == 0).all()
    # shift_mean=False: only the scale changes, the spread is 1 and the mean is kept
    scaled = whiten(x, mask, shift_mean=False)[mask]
    assert scaled.std().item() == pytest.approx(1.0, abs=1e-5)
    assert scaled.mean().item() == pytest.approx(x[mask].mean().item(), abs=1e-4)


# ---------------------------------------------------------------- PPO losses


def test_ppo_identities_when_policy_equals_old():
    g = torch.Generator().manual_seed(7)
    mask = _masks()
    logp = torch.randn(mask.shape, generator=g)
    advantages = torch.randn(mask.shape, generator=g)
    loss, clip_frac, approx_kl = ppo_policy_loss(logp, logp.clone(), advantages, mask, clip=0.2)
    assert clip_frac.item() == 0 and approx_kl.item() == 0
    assert (loss / mask.sum()).item() == pytest.approx(-advantages[mask].mean().item(), abs=1e-6)


def test_ppo_policy_loss_by_hand():
    ratio = torch.tensor([[1.5, 0.5, 1.1, 0.7]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    old = torch.zeros(1, 4)
    logp = ratio.log().requires_grad_()
    # per token max(-Aρ, -A clip(ρ, 0.8, 1.2)): [-1.2 (clipped), -0.5, 1.1, 0.8 (clipped)]
    loss, clip_frac, approx_kl = ppo_policy_loss(logp, old, advantages, torch.ones(1, 4), clip=0.2)
    assert loss.item() == pytest.approx(0.2, abs=1e-6)
    assert clip_frac.item() == pytest.approx(0.5)
    # mean of (ρ - 1) - log ρ = [0.0945349, 0.1931472, 0.0046898, 0.0566749]
    assert approx_kl.item() == pytest.approx(0.0872617, abs=1e-6)
    loss.backward()  # d/dlogp of -Aρ is -Aρ where unclipped, 0 where the clip binds
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.5, 1.1, 0.0]]))
    # masked tokens do not count
    masked, _, _ = ppo_policy_loss(logp, old, advantages, torch.tensor([[1, 1, 0, 0]]), clip=0.2)
    assert masked.item() == pytest.approx(-1.7, abs=1e-6)


def test_ppo_value_loss_by_hand():
    values, old = torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[0.5, 2.5, 0.0]])
    returns = torch.tensor([[2.0, 2.0, 1.0]])
    # clipped values [0.7, 2.3, 0.0]; errors unclipped [1, 0, 1], clipped [1.69, 0.09, 1]
    loss, clip_frac = ppo_value_loss(values, old, returns, torch.ones(1, 3), clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.09 + 1.0), abs=1e-6)
    assert clip_frac.item() == pytest.approx(2 / 3)


def test_explained_variance():
    g = torch.Generator().manual_seed(8)
    mask, returns = _masks(), torch.randn(6, 12, generator=g)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    constant = torch.full_like(returns, 3.0)
    assert explained_variance(constant, returns, mask) == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(explained_variance(returns, torch.ones_like(returns), mask))


def test_kl_controllers():
    adaptive = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    adaptive.update(12.0, 256)  # error clipped to +0.2: 0.1 * (1 + 0.2 * 256 / 10000)
    assert adaptive.value == pytest.approx(0.100512)
    adaptive.update(6.6, 1000)  # error +0.1
    assert adaptive.value == pytest.approx(0.100512 * 1.01)
    before = adaptive.value
    adaptive.update(3.0, 1000)  # below target: error -0.2
    assert adaptive.value == pytest.approx(before * 0.98) and adaptive.value < before
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.05


# ---------------------------------------------------------------- GRPO


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.0, 1.0, 2.0, 3.0])
    # groups of 4: mean 0.5, sample std sqrt(1/3) -> ±√3/2; constant -> 0; mean 1.5, std sqrt(5/3)
    expected = [
        0.8660254,
        -0.8660254,
        -0.8660254,
        0.8660254,
        0,
        0,
        0,
        0,
        -1.1618950,
        -0.3872983,
        0.3872983,
        1.1618950,
    ]
    torch.testing.assert_close(group_advantages(rewards, 4, eps=0.0).nan_to_num(0.0), torch.tensor(expected))
    torch.testing.assert_close(group_advantages(rewards, 4)[4:8], torch.zeros(4))
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(rewards, 5)


def test_grpo_identities_when_policy_equals_old_and_reference():
    logp, _, _, advantages, mask = _grpo_batch()
    loss, clip_frac, kl = grpo_loss(logp, logp.clone(), logp.clone(), advantages, mask, clip=0.2, beta=0.04)
    assert clip_frac.item() == 0 and kl.item() == 0
    # ratio 1, KL 0: each sequence's token mean is -A_i
    assert loss.item() == pytest.approx(-advantages.sum().item(), abs=1e-5)
