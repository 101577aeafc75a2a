"""Instruction tuning (SFT) of causal LMs: wiring only (conversations -> template -> token ids with
response-only labels -> batches; the LM loss on response tokens; held-out loss, perplexity and
generation metrics of base and tuned model, with a side-by-side sample table in ``eval_report.md``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch.utils.data import DataLoader

from deltatune.checks.views import sft_view
from deltatune.config import Config, DataConfig
from deltatune.data.batching import LengthGroupedBatchSampler
from deltatune.data.conversations import load_splits
from deltatune.data.sft import pack, sft_collate, sft_collate_parts
from deltatune.data.sft_tokens import sft_cache_route, sft_data
from deltatune.data.token_cache import feature_lengths
from deltatune.errors import UserError
from deltatune.evaluation.lm import evaluate_file, evaluate_model, heldout_loss
from deltatune.evaluation.reports import scalar_line
from deltatune.evaluation.sft_report import sft_markdown
from deltatune.io import write_text_atomic
from deltatune.losses.lm import causal_lm_batch_loss
from deltatune.methods.registry import get_method
from deltatune.models import fit_max_length, load_for_causal_lm
from deltatune.preview import preview
from deltatune.tasks import TaskSpec, register_task


class SftData(DataConfig):
    layout: Literal["auto", "alpaca", "messages", "prompt_completion", "text"] = Field(
        "auto", description="row layout; auto = detect from the first row's fields "
        "(instruction/output, messages, prompt/completion, text)")
    fields: dict[str, str] = Field(
        default_factory=dict, description="map our field names to yours, e.g. "
        "{instruction: question, output: answer}; names: instruction input output history system "
        "messages prompt completion text role content")
    template: str = Field(
        "auto", description="auto (the tokenizer's chat template if it has one, else alpaca), "
        "chat, alpaca (### Instruction/### Input/### Response), raw (no template), or a Jinja chat "
        "template (inline text or a .jinja file)")
    system_prompt: str | None = Field(None, description="system message for rows that have none")
    empty_answers: Literal["error", "drop"] = Field(
        "error", description="rows whose answer is empty: stop at the first (file and line), or drop them "
        "(counted with the examples without response tokens)")
    truncation: Literal["truncate", "drop"] = Field(
        "truncate", description="examples longer than max_length are cut at the end, or dropped")
    packing: bool = Field(
        False, description="pack several examples per row (positions restart, no attention "
        "across examples); rows hold max_length tokens and batch_size counts rows")
    cache: bool | None = Field(None, description="tokenize once: keep the tokenized data on disk (Arrow, memory-mapped, "
                               "under $DELTATUNE_HOME/tokens) for the next run and --resume; default: for "
                               "training files of 256 KiB or more (not with packing)")


class SftJob:
    """One SFT run's data, model and parts (see :class:`deltatune.tasks.TaskJob`)."""

    loss_fn = staticmethod(causal_lm_batch_loss)

    def __init__(self, cfg: Config):
        d, t = cfg.data, cfg.train
        streamed = sft_cache_route(d)  # large files: streamed once into the token cache (data/sft_tokens.py)
        splits = None if streamed else load_splits(d, t.seed)  # in memory, bad data stops before the model loads
        self.cfg = cfg
        self.model, self.tokenizer, self.model_path = load_for_causal_lm(cfg.model.name, dtype=cfg.model.dtype,
                                                                         seed=t.seed)
        fit_max_length(cfg, self.model)
        self.template, self.feats, self.stats, self.samples = sft_data(d, t.seed, self.tokenizer,
                                                                       cfg.generate.eval_samples, streamed, splits)
        if not self.feats["train"]:
            raise UserError(f"{d.train}: no training example has response tokens within max_length "
                            f"{d.max_length}; raise data.max_length")
        self.has_validation = bool(self.feats.get("validation"))

    def describe(self) -> str:
        return "\n".join(
            f"{split}: {s.kept} of {s.examples} examples ({self.template.name} template); {s.truncated} "
            f"truncated and {s.dropped_too_long} dropped at max_length {self.cfg.data.max_length}, "
            f"{s.dropped_no_target} without response tokens dropped" for split, s in self.stats.items())

    def header(self) -> dict:
        return {"template": self.template.name, "data": {k: vars(v) for k, v in self.stats.items()},
                "samples": [{"prompt": c.prompt_messages[-1]["content"] if c.prompt_messages else "",
                             "reference": c.reference} for c in self.samples]}

    def evaluate(self, model) -> dict:
        return evaluate_model(model, self.tokenizer, self.template, self.feats["validation"], self.samples,
                              self.cfg.generate, self.cfg.train.seed)

    def eval_metrics(self, model) -> dict:
        out = heldout_loss(model, self.feats["validation"], self.tokenizer.pad_token_id)
        return {k: v for k, v in out.items() if k != "target_tokens"}

    def loader(self, method, num_processes: int) -> DataLoader:
        """Packed rows, or length-grouped examples padded in parts (one part per forward under
        DDP, whose reducer expects one forward per backward). Methods that insert tokens keep the
        attention mask (see ``sft_collate``)."""
        d, t = self.cfg.data, self.cfg.train
        rows = pack(self.feats["train"], d.max_length, t.seed) if d.packing else self.feats["train"]
        sampler = LengthGroupedBatchSampler(feature_lengths(rows), t.batch_size,
                                            group_by_length=t.group_by_length, seed=t.seed)
        collate = sft_collate if d.packing or num_processes > 1 else sft_collate_parts
        # Own generator: iterating the loader must not draw from the global RNG (exact resume).
        return DataLoader(rows, batch_sampler=sampler, generator=torch.Generator(),
                          collate_fn=partial(collate, pad_token_id=self.tokenizer.pad_token_id,
                                             attention_mask=method.inserts_tokens))

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
            out.update({f"{side}_{k}": v for k, v in report.get(side, {}).items() if isinstance(v, (int, float))})
        out.update({f"test_{k}": v for k, v in report.get("test", {}).items()})
        return out

    def markdown(self, report: dict, result) -> str:
        return sft_markdown(report, result, self.cfg)


def check(cfg: Config) -> None:
    method = get_method(cfg.method.name)
    if cfg.data.packing and method.inserts_tokens:
        raise ValueError(f"data.packing: not possible with {method.name} (its virtual tokens would be "
                         "shared by every example in a row); set packing: false")


def load_model(cfg: Config, source: str, run_dir: Path | None, saved: Path):
    model, tokenizer, path = load_for_causal_lm(source, dtype=cfg.model.dtype)
    return model, tokenizer, path, {}


SFT = register_task(TaskSpec(
    name="sft",
    description="instruction tuning of a causal LM, loss on responses only (loss, perplexity, ROUGE-L, BLEU)",
    data_options=SftData,
    prepare=SftJob,
    load_model=load_model,
    inspect=sft_view,
    model_kind="causal_lm",
    peft_task_type="CAUSAL_LM",
    default_max_length=1024,
    default_metric="loss",
    best_metrics=("loss", "perplexity"),
    evaluate_file=evaluate_file,
    format_report=scalar_line,
    check=check,
    preview=preview,
    summary_keys=("base_loss", "tuned_loss", "base_rouge_l", "tuned_rouge_l"),
    adapter_default=True,
))
