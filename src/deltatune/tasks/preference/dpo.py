"""Direct preference optimisation: wiring only (preference pairs -> summed answer log-probs of the
policy and of the reference -> a DPO-family loss picked by name; implicit reward accuracy and margins).

The reference is the policy with the method switched off (one copy of the weights); its log-probs
are computed once before training and cached in the run directory (``dpo.precompute_reference``);
otherwise every step runs it, with full fine-tuning keeping a frozen copy of the base model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from deltatune.config import Config
from deltatune.config.fit import fit_max_length
from deltatune.data.batching import LengthGroupedBatchSampler
from deltatune.data.pairs import load_pair_splits, read_pairs
from deltatune.data.templates import template_for
from deltatune.losses.preference import answer_logps, dpo_batch_loss
from deltatune.models import load_for_causal_lm
from deltatune.results import BatchLoss
from deltatune.tasks.preference.evaluate import dpo_report, pair_logps, preference_markdown
from deltatune.tasks.preference.pairs import describe_stats, encode_pairs, training_collate
from deltatune.tasks.preference.reference import Reference

REPORT_KEYS = (
    "loss",
    "reward_accuracy",
    "reward_accuracy_ci_low",
    "reward_accuracy_ci_high",
    "reward_margin",
    "reward_chosen",
    "reward_rejected",
    "logps_chosen",
    "logps_rejected",
)


class DpoJob:
    """One DPO run (see :class:`deltatune.tasks.TaskJob`)."""

    run_dir: Path | None = None

    def __init__(self, cfg: Config):
        d, t = cfg.data, cfg.train
        self.cfg, (self.splits, self.stats) = cfg, load_pair_splits(d, t.seed)
        self.model, self.tokenizer, self.model_path = load_for_causal_lm(
            cfg.model.name, dtype=cfg.model.dtype, seed=t.seed
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
        self.reference = Reference(
            self.model,
            self.tokenizer.pad_token_id,
            self.feats,
            f"{cfg.model.name}|{cfg.model.dtype}",
            share=d.share_prompt,
        )

    def describe(self) -> str:
        return describe_stats(self.stats, self.template.name, self.cfg.data.max_length)

    def header(self) -> dict:
        return {"template": self.template.name, "data": {k: vars(v) for k, v in self.stats.items()}}

    def evaluate(self, model, split: str = "validation") -> dict:
        o = self.cfg.dpo
        policy = pair_logps(
            model,
            self.feats[split],
            self.tokenizer.pad_token_id,
            self.reference.inserts_tokens,
            share=self.cfg.data.share_prompt,
        )
        return dpo_report(policy, self.reference.logps(split), o.beta, o.loss, o.label_smoothing)

    def eval_metrics(self, model) -> dict:
        return {k: v for k, v in self.evaluate(model).items() if isinstance(v, float)}

    def loader(self, method, num_processes: int) -> DataLoader:
        self.reference.attach(method, self.cfg.dpo.precompute_reference, self.run_dir)
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
        o = self.cfg.dpo
        logps, counts = answer_logps(model, batch)
        ref_chosen, ref_rejected = self.reference.for_batch(model, batch)
        loss, extras = dpo_batch_loss(
            logps, counts, ref_chosen, ref_rejected, o.loss, o.beta, o.label_smoothing
        )
        return BatchLoss(loss, logps.shape[0] // 2, int(batch["num_tokens"]), extras)

    def final(self, model) -> dict:
        return {
            name: self.evaluate(model, split)
            for name, split in (("tuned", "validation"), ("test", "test"))
            if self.feats.get(split)
        }

    def save(self, run_dir: Path) -> None:
        self.tokenizer.save_pretrained(run_dir / "tokenizer")

    def summary(self, report: dict) -> dict:
        scores = {
            f"{side}_{k}": report[side][k]
            for side in ("base", "tuned", "test")
            if side in report
            for k in REPORT_KEYS
            if k in report[side]
        }
        # the reference log-probs are computed before the training loop, so not in train_seconds
        return {
            "template": self.template.name,
            "reference_seconds": round(self.reference.seconds, 3),
            **scores,
        }

    def markdown(self, report: dict, result) -> str:
        p, o = report["trainable_parameters"], self.cfg.dpo
        return preference_markdown(
            f"deltatune DPO ({o.loss}, beta {o.beta}): {report['method']} on {report['model']}",
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
    model, tokenizer, path = load_for_causal_lm(source, dtype=cfg.model.dtype)
    return model, tokenizer, path, {}


def evaluate_file(run, data_path: str, samples: int | None = None) -> dict:
    """Held-out DPO metrics of a trained run against its reference (the method switched off)."""
    pairs, stats = read_pairs(data_path, run.cfg.data)
    feats, _ = encode_pairs(
        pairs, run.template(), run.tokenizer, run.cfg.data.max_length, run.cfg.data.truncation, stats
    )
    share, pad = run.cfg.data.share_prompt, run.tokenizer.pad_token_id
    if run.method.switch_off is None:  # a whole fine-tuned model: the reference is the base model
        base, _, _ = load_for_causal_lm(run.cfg.model.name, dtype=run.cfg.model.dtype)
        reference = pair_logps(base.eval(), feats, pad, share=share)
    else:
        with run.method.switch_off(run.model):
            reference = pair_logps(run.model, feats, pad, run.method.inserts_tokens, share=share)
    policy = pair_logps(run.model, feats, pad, run.method.inserts_tokens, share=share)
    o = run.cfg.dpo
    return {
        **dpo_report(policy, reference[:, :2], o.beta, o.loss, o.label_smoothing),
        "skipped_prompt_mismatch": stats.skipped_prompt_mismatch,
    }
