"""Preference losses: hand-computed values, TRL 1.16's own loss code as the reference, brute force.

TRL keeps its losses inline in ``DPOTrainer._compute_loss`` and ``RewardTrainer.compute_loss``; we call
those methods unbound with a namespace ``self`` holding the attributes they read and a fake model
returning the log-probs / rewards we choose, so no model or trainer is built.
"""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from deltatune.losses.preference import (DPO_LOSSES, bradley_terry, dpo_rewards, mean_logps,
                                         pairwise_accuracy_ci, preference_metrics, sequence_logps,
                                         sequence_logps_from_hidden)

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
trl_reward = pytest.importorskip("trl.trainer.reward_trainer")

# chosen/rejected log-probs of two pairs: Δ = [1, -1]
PC, PR = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0])
RC, RR = torch.tensor([-1.5, -1.5]), torch.tensor([-1.5, -1.5])


def _metrics():
    return defaultdict(lambda: defaultdict(list))


def _accelerator():
    return SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x,
                           reduce=lambda x, reduction="sum": x)


def trl_dpo_loss(loss_type, pc, pr, rc, rr, beta, label_smoothing=0.0, lengths=None):
    """TRL's DPO loss (mean over pairs) and its logged metrics, from summed log-probs (B,).
    ``lengths`` (2B,): completion tokens of chosen then rejected (only IPO reads them)."""
    n = 2 * pc.shape[0]
    lengths = lengths if lengths is not None else torch.full((n,), 3)
    seq = int(lengths.max()) + 2
    completion_mask = (torch.arange(seq) >= 1) & (torch.arange(seq) <= lengths[:, None])
    log_probs = torch.zeros(n, seq - 1)
    log_probs[:, 0] = torch.cat([pc, pr])  # only their sum over the sequence matters
    zeros = torch.zeros(n, seq - 1)
    outputs = SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())
    self = SimpleNamespace(
        model=SimpleNamespace(training=False), accelerator=_accelerator(), aux_loss_enabled=False,
        ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type],
        loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing, use_weighting=False,
        _metrics=_metrics(), _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(n, seq, dtype=torch.long), "attention_mask": torch.ones(n, seq),
              "completion_mask": completion_mask.long(), "ref_chosen_logps": rc, "ref_rejected_logps": rr}
    loss = trl_dpo.DPOTrainer._compute_loss(self, lambda **kw: outputs, inputs, return_outputs=False)
    return loss, {k: v[0] for k, v in self._metrics["eval"].items()}


def _random_pairs(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(b, generator=g) * 40 + 1) for _ in range(4)]


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


@pytest.mark.parametrize("with_margin", [False, True])
def test_bradley_terry_equals_trl_reward_trainer(with_margin):
    g = torch.Generator().manual_seed(1)
    chosen, rejected = torch.randn(6, generator=g), torch.randn(6, generator=g)
    margin = torch.rand(6, generator=g)
    self = SimpleNamespace(model=SimpleNamespace(training=False), accelerator=_accelerator(),
                           args=SimpleNamespace(center_rewards_coefficient=0.01), _metrics=_metrics(),
                           _total_train_tokens=0, _tp_size=1)
    outputs = SimpleNamespace(logits=torch.cat([chosen, rejected]).unsqueeze(-1))
    inputs = {"attention_mask": torch.ones(12, 4)} | ({"margin": margin} if with_margin else {})
    expected = trl_reward.RewardTrainer.compute_loss(self, lambda **kw: outputs, inputs)
    ours = bradley_terry(chosen, rejected, margin if with_margin else None, center_coef=0.01) / 6
    torch.testing.assert_close(ours, expected)
    metrics = preference_metrics(chosen, rejected)
    assert metrics["accuracy"] == pytest.approx(self._metrics["eval"]["accuracy"][0])
    assert metrics["margin_mean"] == pytest.approx(self._metrics["eval"]["margin"][0], abs=1e-6)
    assert metrics["reward_mean"] == pytest.approx(self._metrics["eval"]["mean_reward"][0], abs=1e-6)


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
    torch.testing.assert_close(mean_logps(torch.tensor([-4.0, -6.0, 0.0]), torch.tensor([2, 3, 0])),
                               torch.tensor([-2.0, -2.0, 0.0]))
    chosen, rejected = dpo_rewards(PC, PR, RC, RR, beta=0.5)
    torch.testing.assert_close(chosen, torch.tensor([0.25, -0.25]))
    torch.testing.assert_close(rejected, torch.tensor([-0.25, 0.25]))
    metrics = preference_metrics(chosen, rejected)
    assert metrics == pytest.approx({"accuracy": 0.5, "margin_mean": 0.0, "chosen_mean": 0.0,
                                     "rejected_mean": 0.0, "reward_mean": 0.0, "reward_std": 0.25})


def test_dpo_gradient_direction():
    pc = PC.clone().requires_grad_()
    for name, fn in DPO_LOSSES.items():
        pc.grad = None
        fn(pc, PR, RC, RR, 0.5, 0.0).sum().backward()
        assert (pc.grad <= 0).all(), name  # raising the chosen log-prob never increases the loss


# ---------------------------------------------------------------- DPO family against TRL

@pytest.mark.parametrize("name", ["sigmoid", "hinge", "ipo"])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_losses_equal_trl(name, beta):
    pc, pr, rc, rr = _random_pairs()
    lengths = torch.randint(1, 30, (16,), generator=torch.Generator().manual_seed(2))
    expected, trl_metrics = trl_dpo_loss(name, pc, pr, rc, rr, beta, lengths=lengths)
    if name == "ipo":  # IPO takes per-token averages; TRL divides the summed log-ratios by the lengths
        lc, lr = lengths.chunk(2)
        args = [mean_logps(pc, lc), mean_logps(pr, lr), mean_logps(rc, lc), mean_logps(rr, lr)]
    else:
        args = [pc, pr, rc, rr]
    torch.testing.assert_close(DPO_LOSSES[name](*args, beta, 0.0).mean(), expected)

    chosen, rejected = dpo_rewards(pc, pr, rc, rr, beta)
    ours = preference_metrics(chosen, rejected)
    assert ours["chosen_mean"] == pytest.approx(trl_metrics["rewards/chosen"], abs=1e-5)
    assert ours["rejected_mean"] == pytest.approx(trl_metrics["rewards/rejected"], abs=1e-5)
    assert ours["accuracy"] == pytest.approx(trl_metrics["rewards/accuracies"])
    assert ours["margin_mean"] == pytest.approx(trl_metrics["rewards/margins"], abs=1e-5)


@pytest.mark.parametrize("label_smoothing", [0.1, 0.3])
def test_conservative_dpo_equals_trl_aot_on_single_pairs(label_smoothing):
    """TRL 1.16's ``sigmoid`` ignores label_smoothing (it no longer has cDPO). Its ``aot`` loss is the
    cDPO formula on *sorted* log-ratios; with one pair per call the sort is the identity, so it is cDPO."""
    pc, pr, rc, rr = _random_pairs(b=6, seed=3)
    ours = DPO_LOSSES["sigmoid"](pc, pr, rc, rr, 0.2, label_smoothing)
    for i in range(6):
        pair = [x[i:i + 1] for x in (pc, pr, rc, rr)]
        expected, _ = trl_dpo_loss("aot", *pair, 0.2, label_smoothing)
        torch.testing.assert_close(ours[i], expected)
    plain, _ = trl_dpo_loss("sigmoid", pc, pr, rc, rr, 0.2, label_smoothing)
    torch.testing.assert_close(DPO_LOSSES["sigmoid"](pc, pr, rc, rr, 0.2, 0.0).mean(), plain)


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
    end = [9, 7, 5, 9]     # right padding
    for i in range(b):
        labels[i, :prompt[i]] = -100
        labels[i, end[i]:] = -100
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

@pytest.mark.parametrize("k, n, low, high", [
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score interval)
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
    (8, 10, 0.4902, 0.9433), (10, 10, 0.7225, 1.0),
])
def test_pairwise_accuracy_ci_known_values(k, n, low, high):
    acc, lo, hi = pairwise_accuracy_ci([True] * k + [False] * (n - k))
    assert acc == pytest.approx(k / n)
    assert (round(lo, 4), round(hi, 4)) == (low, high)


def test_pairwise_accuracy_ci_edge_cases():
    with pytest.raises(ValueError):
        pairwise_accuracy_ci([])
    acc, lo, hi = pairwise_accuracy_ci([True, False] * 500)
    assert acc == 0.5 and lo == pytest.approx(0.5 - 1.96 * math.sqrt(0.25 / 1000), abs=1e-3)
