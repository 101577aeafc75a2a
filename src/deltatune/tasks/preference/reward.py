"""Reward modelling: wiring only (preference pairs -> chosen and rejected through the model in one
batch -> a scalar head -> Bradley-Terry loss; pairwise accuracy with a 95% interval)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from deltatune.config import Config
from deltatune.config.fit import fit_max_length
from deltatune.data.batching import LengthGroupedBatchSampler
from deltatune.data.pairs import PreferencePair, load_pair_splits, read_pairs
from deltatune.data.templates import template_for
from deltatune.errors import UserError
from deltatune.losses.preference import bradley_terry, sequence_rewards
from deltatune.models import load_for_classification
from deltatune.results import BatchLoss
from deltatune.tasks.preference.evaluate import pair_rewards, preference_markdown, reward_report
from deltatune.tasks.preference.pairs import describe_stats, encode_pairs, training_collate

REPORT_KEYS = (
    "accuracy",
    "accuracy_ci_low",
    "accuracy_ci_high",
    "loss",
    "margin_mean",
    "reward_mean",
    "reward_std",
)


class RewardJob:
    """One reward-model run (see :class:`deltatune.tasks.TaskJob`)."""

    has_validation = False

    def __init__(self, cfg: Config):
        d, t = cfg.data, cfg.train
        self.cfg, (self.splits, self.stats) = cfg, load_pair_splits(d, t.seed)
        self.model, self.tokenizer, self.model_path = load_for_classification(
            cfg.model.name, 1, {0: "reward"}, t.seed, dtype=cfg.model.dtype
        )
        fit_max_length(cfg, self.model)
        self.template = template_for(d, self.tokenizer, [])
        self.feats = {
            split: encode_pairs(
                pairs, self.template, self.tokenizer, d.max_length, d.truncation, self.stats.get(split)
            )[0]
            for split, pairs in self.splits.items()
        }
        self.has_validation = bool(self.feats.get("validation"))

    def describe(self) -> str:
        return describe_stats(self.stats, self.template.name, self.cfg.data.max_length)

    def header(self) -> dict:
        return {"template": self.template.name, "data": {k: vars(v) for k, v in self.stats.items()}}

    def evaluate(self, model, split: str = "validation") -> dict:
        chosen, rejected = pair_rewards(model, self.feats[split], self.tokenizer.pad_token_id)
        kept = {f["line"] for f in self.feats[split]}
        pairs = [p for p in self.splits[split] if p.line in kept]
        return reward_report(
            chosen, rejected, pairs if len(pairs) == len(chosen) else None, self.cfg.reward.center_coef
        )

    def eval_metrics(self, model) -> dict:
        return {k: v for k, v in self.evaluate(model).items() if isinstance(v, float)}

    def loader(self, method, num_processes: int) -> DataLoader:
        t, feats = self.cfg.train, self.feats["train"]
        sampler = LengthGroupedBatchSampler(
            [max(len(f["chosen_ids"]), len(f["rejected_ids"])) for f in feats],
            t.batch_size,
            group_by_length=t.group_by_length,
            seed=t.seed,
        )
        return DataLoader(
            feats,
            batch_sampler=sampler,
            generator=torch.Generator(),
            collate_fn=training_collate(
                self.cfg.data, self.model, method, self.tokenizer.pad_token_id, num_processes
            ),
        )

    def loss_fn(self, model, batch):
        rewards = sequence_rewards(model, batch)
        n = rewards.shape[0] // 2
        margin = batch.get("margin") if self.cfg.reward.use_margin else None
        loss = bradley_terry(rewards[:n], rewards[n:], margin, self.cfg.reward.center_coef)
        return BatchLoss(loss, n, int(batch["num_tokens"]))

    def final(self, model) -> dict:
        return {
            name: self.evaluate(model, split)
            for name, split in (("tuned", "validation"), ("test", "test"))
            if self.feats.get(split)
        }

    def save(self, run_dir: Path) -> None:
        self.tokenizer.save_pretrained(run_dir / "tokenizer")

    def summary(self, report: dict) -> dict:
        return {
            f"{side}_{k}": report[side][k]
            for side in ("base", "tuned", "test")
            if side in report
            for k in REPORT_KEYS
            if k in report[side]
        }

    def markdown(self, report: dict, result) -> str:
        p = report["trainable_parameters"]
        return preference_markdown(
            f"deltatune reward model: {report['method']} on {report['model']}",
            report,
            REPORT_KEYS,
            {
                "template": self.template.name,
                "trainable": f"{p['trainable']:,} / {p['total']:,} ({p['percent']:.3f}%)",
                "train": f"{result.steps} steps, {result.tokens_per_s:.1f} tokens/s, peak memory "
                f"{result.peak_memory_mb:.0f} MB",
            },
        )


def load_model(cfg: Config, source: str, run_dir: Path | None, saved: Path):
    model, tokenizer, path = load_for_classification(source, 1, {0: "reward"}, 0, dtype=cfg.model.dtype)
    return model, tokenizer, path, {}


def evaluate_file(run, data_path: str, samples: int | None = None) -> dict:
    pairs, stats = read_pairs(data_path, run.cfg.data)
    feats, _ = encode_pairs(
        pairs, run.template(), run.tokenizer, run.cfg.data.max_length, run.cfg.data.truncation, stats
    )
    chosen, rejected = pair_rewards(run.model, feats, run.tokenizer.pad_token_id)
    report = reward_report(chosen, rejected)
    return {**report, "skipped_prompt_mismatch": stats.skipped_prompt_mismatch}


def score(run, prompts: list[list[dict]], answers: list[str]) -> list[float]:
    """The reward of each answer to its prompt (chat messages), as the run's template renders them."""
    pairs = [
        PreferencePair(prompt, answer, answer, line=i + 1)
        for i, (prompt, answer) in enumerate(zip(prompts, answers))
    ]
    feats, stats = encode_pairs(pairs, run.template(), run.tokenizer, run.cfg.data.max_length, "truncate")
    if stats.dropped_no_answer:
        raise UserError(
            f"{stats.dropped_no_answer} of the answers are empty after the template; nothing to score"
        )
    return pair_rewards(run.model, feats, run.tokenizer.pad_token_id)[0].tolist()
