"""Preference losses: hand-computed values and brute force (the TRL references are in
``tests/parity/test_trl_preference_losses.py``)."""

import pytest
import torch

from deltatune.losses.preference import (
    DPO_LOSSES,
    bradley_terry,
    dpo_rewards,
    mean_logps,
    preference_metrics,
    sequence_logps,
    sequence_logps_from_hidden,
)

# chosen/rejected log-probs of two pairs: Δ = [1, -1]
PC, PR = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0])
RC, RR = torch.tensor([-1.5, -1.5]), torch.tensor([-1.5, -1.5])


# ---------------------------------------------------------------- reward model (Bradley–Terry)


def test_bradley_terry_hand_values():
    chosen, rejected = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5])
    # -log σ(1) = log(1 + e^-1) = 0.31326169, -log σ(-1) = 1.31326169
    assert bradley_terry(chosen, rejected).item() == pytest.approx(1.62652338, abs=1e-6)
    # margin 0.5 on the first pair: -log σ(0.5) = 0.47407698
    margin = torch.tensor([0.5, 0.0])
    assert bradley_terry(chosen, rejected, margin).item() == pytest.approx(1.78733867, abs=1e-6)
    # a float margin for all pairs: -log σ(0.5) + -log σ(-1.5) = 0.47407698 + 1.70141328
    assert bradley_terry(chosen, rejected, 0.5).item() == pytest.approx(2.17549026, abs=1e-6)
    # centring: 0.01 * ((2 + 1)² + (0.5 + 1.5)²) = 0.01 * 13
    assert bradley_terry(chosen, rejected, center_coef=0.01).item() == pytest.approx(1.75652338, abs=1e-6)


# ---------------------------------------------------------------- DPO family, by hand


def test_dpo_sigmoid_hand_values():
    # β = 0.5: βΔ = [0.5, -0.5]; -log σ(0.5) = 0.47407698, -log σ(-0.5) = 0.97407698
    loss = DPO_LOSSES["sigmoid"](PC, PR, RC, RR, beta=0.5, label_smoothing=0.0)
    torch.testing.assert_close(loss, torch.tensor([0.47407698, 0.97407698]))
    # cDPO, ε = 0.1: 0.9 * 0.47407698 + 0.1 * 0.97407698, and the mirror
    loss = DPO_LOSSES["sigmoid"](PC, PR, RC, RR, beta=0.5, label_smoothing=0.1)
    torch.testing.assert_close(loss, torch.tensor([0.52407698, 0.92407698]))


def test_dpo_ipo_and_hinge_hand_values():
    # IPO, β = 0.5: (Δ - 1/(2β))² = (1 - 1)², (-1 - 1)²
    torch.testing.assert_close(DPO_LOSSES["ipo"](PC, PR, RC, RR, 0.5, 0.0), torch.tensor([0.0, 4.0]))
    # hinge, β = 0.5: max(0, 1 - 0.5 * Δ)
    torch.testing.assert_close(DPO_LOSSES["hinge"](PC, PR, RC, RR, 0.5, 0.0), torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(DPO_LOSSES["hinge"](PC, PR, RC, RR, 4.0, 0.0), torch.tensor([0.0, 5.0]))
    for name in ("ipo", "hinge"):
        with pytest.raises(ValueError, match="label_smoothing"):
            DPO_LOSSES[name](PC, PR, RC, RR, 0.5, 0.1)


def test_mean_logps_and_rewards_hand_values():
    torch.testing.assert_close(
        mean_logps(torch.tensor([-4.0, -6.0, 0.0]), torch.tensor([2, 3, 0])), torch.tensor([-2.0, -2.0, 0.0])
    )
    chosen, rejected = dpo_rewards(PC, PR, RC, RR, beta=0.5)
    torch.testing.assert_close(chosen, torch.tensor([0.25, -0.25]))
    torch.testing.assert_close(rejected, torch.tensor([-0.25, 0.25]))
    metrics = preference_metrics(chosen, rejected)
    assert metrics == pytest.approx(
        {
            "accuracy": 0.5,
            "margin_mean": 0.0,
            "chosen_mean": 0.0,
            "rejected_mean": 0.0,
            "reward_mean": 0.0,
            "reward_std": 0.25,
        }
    )


def test_dpo_gradient_direction():
    pc = PC.clone().requires_grad_()
    for name, fn in DPO_LOSSES.items():
        pc.grad = None
        fn(pc, PR, RC, RR, 0.5, 0.0).sum().backward()
        assert (pc.grad <= 0).all(), name  # raising the chosen log-prob never increases the loss


# ---------------------------------------------------------------- DPO family against TRL


# ---------------------------------------------------------------- sequence log-probs


def _brute_force_logps(logits, labels):
    logps, counts = [], []
    for b in range(labels.shape[0]):
        total, count = 0.0, 0
        for t in range(1, labels.shape[1]):  # the token at t is scored by the logits at t - 1
            if labels[b, t] != -100:
                total += torch.log_softmax(logits[b, t - 1].double(), -1)[labels[b, t]].item()
                count += 1
        logps.append(total)
        counts.append(count)
    return torch.tensor(logps), torch.tensor(counts)


def _labelled_batch(seed=0, b=4, t=9, v=13):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g) * 3
    labels = torch.randint(0, v, (b, t), generator=g)
    prompt = [2, 3, 1, 8]  # last row: all prompt, nothing to score
    end = [9, 7, 5, 9]  # right padding
    for i in range(b):
        labels[i, : prompt[i]] = -100
        labels[i, end[i] :] = -100
    return logits, labels


def test_sequence_logps_equals_brute_force():
    logits, labels = _labelled_batch()
    logps, counts = sequence_logps(logits, labels)
    expected_logps, expected_counts = _brute_force_logps(logits, labels)
    torch.testing.assert_close(logps, expected_logps.float())
    assert counts.tolist() == expected_counts.tolist() == [7, 4, 4, 1]


def test_sequence_logps_from_hidden_equals_from_logits():
    g = torch.Generator().manual_seed(4)
    _, labels = _labelled_batch()
    head = torch.nn.Linear(6, 13, bias=False)
    hidden = torch.randn(4, 9, 6, generator=g, requires_grad=True)
    logps, counts = sequence_logps_from_hidden(hidden, labels, head)
    expected, expected_counts = sequence_logps(head(hidden), labels)
    torch.testing.assert_close(logps, expected)
    assert counts.tolist() == expected_counts.tolist()
    (grad,) = torch.autograd.grad(logps.sum(), hidden)
    (expected_grad,) = torch.autograd.grad(expected.sum(), hidden)
    torch.testing.assert_close(grad, expected_grad)


# ---------------------------------------------------------------- accuracy with a confidence interval
