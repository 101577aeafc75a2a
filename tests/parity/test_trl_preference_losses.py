"""Our preference losses against TRL's own implementations on the same inputs (skipped where TRL is not
installed).

TRL keeps its losses inline in ``DPOTrainer._compute_loss`` and ``RewardTrainer.compute_loss``; we call
those methods unbound with a namespace ``self`` holding the attributes they read and a fake model
returning the log-probs / rewards we choose, so no model or trainer is built.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from deltatune.losses.preference import DPO_LOSSES, bradley_terry, dpo_rewards, mean_logps, preference_metrics

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")


trl_reward = pytest.importorskip("trl.trainer.reward_trainer")


def _metrics():
    return defaultdict(lambda: defaultdict(list))


def _accelerator():
    return SimpleNamespace(
        device=torch.device("cpu"),
        gather=lambda x: x,
        gather_for_metrics=lambda x: x,
        reduce=lambda x, reduction="sum": x,
    )


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
        model=SimpleNamespace(training=False),
        accelerator=_accelerator(),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        _metrics=_metrics(),
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(n, seq, dtype=torch.long),
        "attention_mask": torch.ones(n, seq),
        "completion_mask": completion_mask.long(),
        "ref_chosen_logps": rc,
        "ref_rejected_logps": rr,
    }
    loss = trl_dpo.DPOTrainer._compute_loss(self, lambda **kw: outputs, inputs, return_outputs=False)
    return loss, {k: v[0] for k, v in self._metrics["eval"].items()}


def _random_pairs(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(b, generator=g) * 40 + 1) for _ in range(4)]


@pytest.mark.parametrize("with_margin", [False, True])
def test_bradley_terry_equals_trl_reward_trainer(with_margin):
    g = torch.Generator().manual_seed(1)
    chosen, rejected = torch.randn(6, generator=g), torch.randn(6, generator=g)
    margin = torch.rand(6, generator=g)
    self = SimpleNamespace(
        model=SimpleNamespace(training=False),
        accelerator=_accelerator(),
        args=SimpleNamespace(center_rewards_coefficient=0.01),
        _metrics=_metrics(),
        _total_train_tokens=0,
        _tp_size=1,
    )
    outputs = SimpleNamespace(logits=torch.cat([chosen, rejected]).unsqueeze(-1))
    inputs = {"attention_mask": torch.ones(12, 4)} | ({"margin": margin} if with_margin else {})
    expected = trl_reward.RewardTrainer.compute_loss(self, lambda **kw: outputs, inputs)
    ours = bradley_terry(chosen, rejected, margin if with_margin else None, center_coef=0.01) / 6
    torch.testing.assert_close(ours, expected)
    metrics = preference_metrics(chosen, rejected)
    assert metrics["accuracy"] == pytest.approx(self._metrics["eval"]["accuracy"][0])
    assert metrics["margin_mean"] == pytest.approx(self._metrics["eval"]["margin"][0], abs=1e-6)
    assert metrics["reward_mean"] == pytest.approx(self._metrics["eval"]["mean_reward"][0], abs=1e-6)


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
        pair = [x[i : i + 1] for x in (pc, pr, rc, rr)]
        expected, _ = trl_dpo_loss("aot", *pair, 0.2, label_smoothing)
        torch.testing.assert_close(ours[i], expected)
    plain, _ = trl_dpo_loss("sigmoid", pc, pr, rc, rr, 0.2, label_smoothing)
    torch.testing.assert_close(DPO_LOSSES["sigmoid"](pc, pr, rc, rr, 0.2, 0.0).mean(), plain)
