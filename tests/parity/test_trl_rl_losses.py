"""Our RL pieces against TRL's own implementations on the same inputs (skipped where TRL is not installed)."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from deltatune.losses.rl import (
    entropy_from_logits,
    gather_logprobs,
    group_advantages,
    grpo_loss,
    shifted_logprobs,
)
from helpers.rl_losses import _grpo_batch

trl_utils = pytest.importorskip("trl.trainer.utils")


trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")


def test_logprobs_and_entropy_equal_trl():
    g = torch.Generator().manual_seed(5)
    logits, ids = torch.randn(3, 7, 11, generator=g), torch.randint(0, 11, (3, 7), generator=g)
    torch.testing.assert_close(gather_logprobs(logits, ids), trl_utils.selective_log_softmax(logits, ids))
    torch.testing.assert_close(
        gather_logprobs(logits, ids, temperature=0.7),
        trl_utils.selective_log_softmax(logits, ids, temperature=0.7),
    )
    torch.testing.assert_close(
        shifted_logprobs(logits, ids)[:, 1:], trl_utils.selective_log_softmax(logits[:, :-1], ids[:, 1:])
    )
    torch.testing.assert_close(entropy_from_logits(logits), trl_utils.entropy_from_logits(logits))
    torch.testing.assert_close(entropy_from_logits(torch.zeros(2, 11)), torch.full((2,), math.log(11)))


def test_group_advantages_equal_trl_formula():
    """TRL builds GRPO advantages inline in ``_generate_and_score_completions`` (needs a full trainer);
    this is that code's formula with its own ``nanstd`` and its eps of 1e-4."""
    rewards = torch.randn(24, generator=torch.Generator().manual_seed(9))
    grouped = rewards.view(-1, 6)
    mean = grouped.mean(dim=1).repeat_interleave(6)
    std = trl_utils.nanstd(grouped, dim=1).repeat_interleave(6)
    torch.testing.assert_close(group_advantages(rewards, 6, eps=1e-4), (rewards - mean) / (std + 1e-4))


def trl_grpo_loss(logp, old, ref, advantages, mask, clip, beta):
    """TRL's ``loss_type="grpo"`` loss (mean over sequences) and its logged metrics."""
    self = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None),
        loss_type="grpo",
        epsilon_low=clip,
        epsilon_high=clip,
        use_vllm=False,
        model=SimpleNamespace(training=False),
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        accelerator=SimpleNamespace(reduce=lambda x, reduction="sum": x, gather=lambda x: x),
    )
    b = logp.shape[0]
    inputs = {
        "prompt_ids": torch.zeros(b, 2, dtype=torch.long),
        "prompt_mask": torch.ones(b, 2),
        "completion_ids": torch.zeros_like(mask),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
    }
    loss = trl_grpo.GRPOTrainer._compute_loss(self, None, inputs)
    return loss, {k: v[0] for k, v in self._metrics["eval"].items()}


@pytest.mark.parametrize("beta", [0.0, 0.04, 0.5])
def test_grpo_loss_equals_trl(beta):
    logp, old, ref, advantages, mask = _grpo_batch()
    loss, clip_frac, kl = grpo_loss(logp, old, ref, advantages, mask, clip=0.2, beta=beta)
    expected, metrics = trl_grpo_loss(logp, old, ref, advantages, mask, 0.2, beta)
    torch.testing.assert_close(loss / logp.shape[0], expected)  # ours is a sum over sequences
    assert 0 < clip_frac.item() < 1
    assert clip_frac.item() == pytest.approx(metrics["clip_ratio/region_mean"], abs=1e-6)
    if beta:
        assert kl.item() == pytest.approx(metrics["kl"], abs=1e-6)
