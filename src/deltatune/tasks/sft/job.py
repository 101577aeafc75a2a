"""Instruction tuning (SFT) of causal LMs: wiring only (conversations -> template -> token ids with
response-only labels -> batches; the LM loss on response tokens; held-out loss, perplexity and
generation metrics of base and tuned model, with a side-by-side sample table in ``eval_report.md``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from deltatune.config import Config
from deltatune.config.fit import fit_max_length
from deltatune.data.batching import LengthGroupedBatchSampler, sft_collate, sft_collate_parts
from deltatune.data.conversations import load_splits
from deltatune.data.token_cache import feature_lengths
from deltatune.errors import UserError
from deltatune.io import write_text_atomic
from deltatune.losses.lm import causal_lm_batch_loss
from deltatune.models import load_for_causal_lm
from deltatune.tasks.sft.evaluate import evaluate_model, heldout_loss
from deltatune.tasks.sft.packing import pack
from deltatune.tasks.sft.report import sft_markdown
from deltatune.tasks.sft.tokens import sft_cache_route, sft_data


class SftJob:
    """One SFT run's data, model and parts (see :class:`deltatune.tasks.TaskJob`)."""

    loss_fn = staticmethod(causal_lm_batch_loss)

    def __init__(self, cfg: Config):
        d, t = cfg.data, cfg.train
        streamed = sft_cache_route(d)  # large files: streamed once into the token cache (tokens.py)
        splits = (
            None if streamed else load_splits(d, t.seed)
        )  # in memory, bad data stops before the model loads
        self.cfg = cfg
        self.model, self.tokenizer, self.model_path = load_for_causal_lm(
            cfg.model.name, dtype=cfg.model.dtype, seed=t.seed
        )
        fit_max_length(cfg, self.model)
        self.template, self.feats, self.stats, self.samples = sft_data(
            d, t.seed, self.tokenizer, cfg.generate.eval_samples, streamed, splits
        )
        if not self.feats["train"]:
            raise UserError(
                f"{d.train}: no training example has response tokens within max_length "
                f"{d.max_length}; raise data.max_length"
            )
        self.has_validation = bool(self.feats.get("validation"))

    def describe(self) -> str:
        return "\n".join(
            f"{split}: {s.kept} of {s.examples} examples ({self.template.name} template); {s.truncated} "
            f"truncated and {s.dropped_too_long} dropped at max_length {self.cfg.data.max_length}, "
            f"{s.dropped_no_target} without response tokens dropped"
            for split, s in self.stats.items()
        )

    def header(self) -> dict:
        return {
            "template": self.template.name,
            "data": {k: vars(v) for k, v in self.stats.items()},
            "samples": [
                {
                    "prompt": c.prompt_messages[-1]["content"] if c.prompt_messages else "",
                    "reference": c.reference,
                }
                for c in self.samples
            ],
        }

    def evaluate(self, model) -> dict:
        return evaluate_model(
            model,
            self.tokenizer,
            self.template,
            self.feats["validation"],
            self.samples,
            self.cfg.generate,
            self.cfg.train.seed,
        )

    def eval_metrics(self, model) -> dict:
        out = heldout_loss(model, self.feats["validation"], self.tokenizer.pad_token_id)
        return {k: v for k, v in out.items() if k != "target_tokens"}

    def loader(self, method, num_processes: int) -> DataLoader:
        """Packed rows, or length-grouped examples padded in parts (one part per forward under
        DDP, whose reducer expects one forward per backward). Methods that insert tokens keep the
        attention mask (see ``sft_collate``)."""
        d, t = self.cfg.data, self.cfg.train
        rows = pack(self.feats["train"], d.max_length, t.seed) if d.packing else self.feats["train"]
        sampler = LengthGroupedBatchSampler(
            feature_lengths(rows), t.batch_size, group_by_length=t.group_by_length, seed=t.seed
        )
        collate = sft_collate if d.packing or num_processes > 1 else sft_collate_parts
        # Own generator: iterating the loader must not draw from the global RNG (exact resume).
        return DataLoader(
            rows,
            batch_sampler=sampler,
            generator=torch.Generator(),
            collate_fn=partial(
                collate, pad_token_id=self.tokenizer.pad_token_id, attention_mask=method.inserts_tokens
            ),
        )

    def final(self, model) -> dict:
        out = {"tuned": self.evaluate(model)} if self.has_validation else {}
        if self.feats.get("test"):
            out["test"] = heldout_loss(model, self.feats["test"], self.tokenizer.pad_token_id)
        return out

    def save(self, run_dir: Path) -> None:
        self.tokenizer.save_pretrained(run_dir / "tokenizer")
        if getattr(self.template, "source", None):  # a user Jinja template travels with the run
            write_text_atomic(self.template.source, run_dir / "template.jinja")

    def summary(self, report: dict) -> dict:
        out = {"template": self.template.name}
        for side in ("base", "tuned"):
            out.update(
                {f"{side}_{k}": v for k, v in report.get(side, {}).items() if isinstance(v, (int, float))}
            )
        out.update({f"test_{k}": v for k, v in report.get("test", {}).items()})
        return out

    def markdown(self, report: dict, result) -> str:
        return sft_markdown(report, result, self.cfg)


def load_model(cfg: Config, source: str, run_dir: Path | None, saved: Path):
    model, tokenizer, path = load_for_causal_lm(source, dtype=cfg.model.dtype)
    return model, tokenizer, path, {}
