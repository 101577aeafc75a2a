"""Preference learning: deltatune vs TRL for a reward model and for DPO, same model, pairs and budget,
one run.

Protocol
--------
Data: /work/shared/data/hh_rlhf/harmless-base_test.jsonl (HH-RLHF harmless-base transcripts), read with
deltatune's own reader (``rows_to_pairs``, layout ``hh``: the prompt is everything up to the last
"\\n\\nAssistant:", as chat messages) and encoded with SmolLM2's chat template (``encode_pairs``, template
``chat``). Pairs are taken in file order; a pair is skipped when its transcripts share no prompt, when either
answer is longer than ``--max-length`` (320) together with the prompt (no way truncates anything), or when
chosen and rejected are the same text (no preference to learn). Training pairs: the first ``--pairs`` (64)
kept; held-out pairs: the next ``--pairs``. Counts of what was skipped are in the JSON.
Model: the bundled SmolLM2-135M-Instruct, fp32 (deltatune ``train.precision=fp32``: "auto" would pick bf16 on
CPUs with native bf16). LoRA r=16, alpha=32, dropout 0 on q/k/v/o/gate/up/down_proj (+ the reward head,
trained in full, for the reward model); batch 8 pairs; 1 epoch; AdamW, linear decay, no warm-up, no weight
decay, gradient clipping 1.0 (TRL's defaults, set in deltatune); seed 42; no gradient checkpointing (TRL
defaults to it; it is switched off here, not forced by TRL; the ``*_gc`` ways put it back).
Reward model: lr 5e-4, Bradley-Terry loss. DPO: lr 2e-4, sigmoid loss, beta 0.1, no label smoothing; the
reference is the policy with the adapter switched off in every way (TRL does this itself for a PEFT model).

Ways (each in its own child process ``preference.py --way NAME``, which prints one JSON line):
  trl_reward          TRL RewardTrainer + peft_config (LoraConfig task SEQ_CLS: PEFT trains and saves the
                      ``score`` head). The model is AutoModelForSequenceClassification(num_labels=1) made
                      under torch.manual_seed(42), as deltatune makes its own.
  deltatune_reward    deltatune task reward (deltatune.runs.run_config).
  trl_dpo             TRL DPOTrainer + peft_config; reference log-probs every step (TRL's default).
  trl_dpo_precompute  the same with precompute_ref_log_probs=True (TRL runs them all in DPOTrainer.__init__).
  deltatune_dpo       deltatune task dpo; reference log-probs precomputed before training (deltatune's
                      default).
  deltatune_dpo_live  the same with dpo.precompute_reference=false (reference every step, like trl_dpo).
  Not run by default: trl_reward_gc, trl_dpo_gc (TRL's default gradient checkpointing).
  Each deltatune way is compared with the TRL way that handles the reference the same way (the "vs" column):
  deltatune_reward/trl_reward, deltatune_dpo/trl_dpo_precompute, deltatune_dpo_live/trl_dpo.

Identical inputs: every child re-derives our encoding (the chat template through deltatune's segments). The
parent checks, pair by pair, that it equals ``apply_chat_template(prompt + [answer])`` and that the answer
starts at ``len(apply_chat_template(prompt, add_generation_prompt=True))`` - exactly what TRL does for
conversational data. The TRL children compare TRL's prepared training dataset with ours row by row (reward:
chosen_ids and rejected_ids; DPO: prompt_ids + chosen/rejected_ids and where the completion mask starts). TRL
appends EOS only to non-conversational text, so nothing is added or dropped here; a difference would be
counted and shown. The deltatune children capture the pairs deltatune's recipe encoded from the training file
(a wrapper around its ``encode_pairs``) and compare them with ours. Every child also records a fingerprint
(count, sum, sum of squares) of its trainable weights just before training starts, so the table notes say
whether TRL and deltatune started from the same LoRA and head weights.

Measures: real tokens = non-padding tokens of the chosen and rejected sequences of the pairs the training
steps processed (TRL's own ``_total_train_tokens``, the attention-mask sum of each training batch; deltatune's
``train_tokens``); reference forwards are not counted as tokens but their time is: time = wall time of
``trainer.train()`` / deltatune's ``train_seconds`` plus, for the precomputing ways, the precomputation, shown
as "ref s" (both run it before their training loop: timed around TRL's ``DPOTrainer._precompute_ref_logps``
and the ``hash_module`` of the weights it keys its cache with, and around deltatune's ``Reference.attach``).
Peak RSS = the child's ``ru_maxrss`` right after training (before the held-out evaluation loads another
model); the whole child's (os.wait4) is kept as ``process_peak_rss_mb``.
Quality: each way saves its adapter (TRL: ``trainer.model.save_pretrained``; deltatune: ``run_dir/adapter``);
one function (:func:`heldout_quality`) loads it with plain transformers + ``peft.PeftModel.from_pretrained``
and scores the held-out pairs one sequence at a time (no padding, fp32). Reward model: pairwise accuracy with
its 95% Wilson interval (``deltatune.losses.preference.pairwise_accuracy_ci``), mean margin, Bradley-Terry
loss. DPO: held-out DPO loss with the untouched base model (plain AutoModelForCausalLM, computed once and
cached in the work dir) as reference, and the implicit-reward accuracy with its interval.
``reload_max_abs_diff`` compares the reloaded adapter with the in-memory trained model on two held-out pairs
(checks that what is scored is what was trained).

Usage:
    .venv/bin/python benchmarks/preference.py
        # all default ways; long on 2 cores: use an idle machine
    .venv/bin/python benchmarks/preference.py --ways trl_reward,deltatune_reward
    .venv/bin/python benchmarks/preference.py --quick
        # smoke test: 8 pairs, batch 4 (2 steps), max_length 128
    .venv/bin/python benchmarks/preference.py --way deltatune_dpo --quick   # one child, prints one JSON line
Results: a markdown table on stdout and benchmarks/results/preference.json (atomic write; --quick and
--max-steps runs write nothing unless --json PATH is given). Timings assume an otherwise idle machine: each
child warns when the CPUs are busy before it starts.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    exit_with,
    record_failure,
    spawn_way,
    tidy_workdir,
    ways_and_workdir,  # noqa: E402
    write_json,
)

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "hh_rlhf" / "harmless-base_test.jsonl"
RESULTS_JSON = HERE / "results" / "preference.json"
MODEL = "smollm2-135m-instruct"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R, ALPHA, SEED, BETA = 16, 32, 42, 0.1
LR = {"reward": 5e-4, "dpo": 2e-4}
IGNORE = -100


# --------------------------------------------------------------------------- shared data
def our_template(tok):
    from deltatune.data.templates import template_for
    from deltatune.tasks.preference.options import PreferenceData

    return template_for(PreferenceData(template="chat"), tok, [])


def select_pairs(tok, n: int, max_length: int) -> dict:
    """The first 2n usable pairs of DATA (file order): n training, n held-out, with what was skipped."""
    from deltatune.data.pairs import PairStats, rows_to_pairs
    from deltatune.data.readers import read_rows
    from deltatune.tasks.preference.pairs import encode_pair, encode_pairs

    rows = read_rows(str(DATA))
    pairs, stats = rows_to_pairs(rows, "hh")
    template, fit_stats = our_template(tok), PairStats()
    kept, identical, scanned = [], 0, 0
    for pair in pairs:
        scanned += 1
        if pair.chosen.strip() == pair.rejected.strip():
            identical += 1
            continue
        if encode_pair(tok, template, pair, max_length, "drop", fit_stats) is not None:
            kept.append(pair)
        if len(kept) == 2 * n:
            break
    if len(kept) < 2 * n:
        raise SystemExit(f"--pairs {n} --max-length {max_length}: only {len(kept)} usable pairs in {DATA}")
    train, heldout = kept[:n], kept[n:]
    by_line = {r.line: r for r in rows}
    return {
        "train_pairs": train,
        "heldout_pairs": heldout,
        "train": encode_pairs(train, template, tok, max_length, "drop")[0],
        "heldout": encode_pairs(heldout, template, tok, max_length, "drop")[0],
        "train_rows": [dict(by_line[p.line]) for p in train],
        "selection": {
            "rows_in_file": len(rows),
            "pairs_in_file": len(pairs),
            "skipped_no_shared_prompt_in_file": stats.skipped_prompt_mismatch,
            "pairs_scanned": scanned,
            "skipped_too_long": fit_stats.dropped_too_long,
            "skipped_no_answer": fit_stats.dropped_no_answer,
            "skipped_identical_answers": identical,
            "train_lines": [p.line for p in train],
            "heldout_lines": [p.line for p in heldout],
        },
    }


def trl_rows(pairs) -> list[dict]:
    """TRL's conversational preference format: prompt messages, chosen/rejected as one assistant message."""
    return [
        {
            "prompt": p.prompt,
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        }
        for p in pairs
    ]


def prompt_len(feat: dict) -> int:
    return next(i for i, x in enumerate(feat["chosen_labels"]) if x != IGNORE)


def template_check(tok, pairs, feats) -> int:
    """How many pairs' ids equal what TRL builds for conversational data (full render;
    prompt = generation prompt)."""

    def ids(messages, **kw):
        return list(tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)["input_ids"])

    same = 0
    for p, f in zip(pairs, feats):
        prompt = ids(p.prompt, add_generation_prompt=True)
        ok = True
        for side, answer in (("chosen", p.chosen), ("rejected", p.rejected)):
            full = ids(p.prompt + [{"role": "assistant", "content": answer}])
            labels = f[f"{side}_labels"]
            ok &= (
                full == f[f"{side}_ids"]
                and full[: len(prompt)] == prompt
                and labels == [IGNORE] * len(prompt) + full[len(prompt) :]
            )
        same += ok
    return same


# --------------------------------------------------------------------------- shared held-out evaluation
def sequence_scores(model, feats: list[dict], kind: str) -> list[tuple[float, float]]:
    """(chosen, rejected) per pair, one sequence at a time (no padding): the reward (kind "reward": the
    model's one logit, read at the last token) or the answer tokens' summed log-prob (kind "dpo")."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.no_grad():
        for f in feats:
            pair = []
            for side in ("chosen", "rejected"):
                ids = torch.tensor([f[f"{side}_ids"]], device=device)
                logits = model(input_ids=ids).logits.float()
                if kind == "reward":
                    pair.append(logits[0, 0].item())
                    continue
                labels = torch.tensor(f[f"{side}_labels"][1:], device=device)  # position t predicts t+1
                keep = labels != IGNORE
                logps = torch.log_softmax(logits[0, :-1][keep], dim=-1)
                pair.append(logps.gather(-1, labels[keep].unsqueeze(-1)).sum().item())
            out.append(tuple(pair))
    return out


def load_plain(kind: str, path: str, pad_id: int, adapter: str | None = None):
    """Plain transformers (+ peft) model, fp32: a 1-label classifier for "reward", a causal LM for "dpo"."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if kind == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = pad_id
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.to("cuda") if torch.cuda.is_available() else model


def base_reference(ctx: dict) -> list[tuple[float, float]]:
    """Held-out answer log-probs of the untouched base model; cached in the work dir, keyed by every
    token id."""
    key = hashlib.sha256(
        repr(
            [
                (f["chosen_ids"], f["chosen_labels"], f["rejected_ids"], f["rejected_labels"])
                for f in ctx["heldout"]
            ]
        ).encode()
    ).hexdigest()[:16]
    cache = Path(ctx["cache_dir"]) / f"base_logps_{key}.json" if ctx.get("cache_dir") else None
    if cache and cache.is_file():
        return [tuple(x) for x in json.loads(cache.read_text())]
    model = load_plain("dpo", ctx["path"], ctx["tok"].pad_token_id)
    scores = sequence_scores(model, ctx["heldout"], "dpo")
    del model
    gc.collect()
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(scores))
        os.replace(tmp, cache)
    return scores


def heldout_quality(kind: str, adapter_dir: str, ctx: dict, live_model=None) -> dict:
    """The one quality function: the saved adapter loaded with plain transformers+peft, scored on the held-out
    pairs. live_model (the trained model still in memory): compared on two pairs (reload_max_abs_diff)."""
    import torch
    import torch.nn.functional as F

    from deltatune.metrics.intervals import pairwise_accuracy_ci

    out = {}
    if live_model is not None:
        try:
            live = sequence_scores(live_model, ctx["heldout"][:2], kind)
        except Exception as e:  # noqa: BLE001 - a check, not a measure
            out["reload_check_error"] = f"{type(e).__name__}: {e}"[:200]
            live = None
    model = load_plain(kind, ctx["path"], ctx["tok"].pad_token_id, adapter_dir)
    scores = torch.tensor(sequence_scores(model, ctx["heldout"], kind), dtype=torch.float64)
    if live_model is not None and live is not None:
        out["reload_max_abs_diff"] = (scores[:2] - torch.tensor(live, dtype=torch.float64)).abs().max().item()
    del model
    gc.collect()
    if kind == "reward":
        chosen, rejected = scores[:, 0], scores[:, 1]
        loss = -F.logsigmoid(chosen - rejected).mean().item()
    else:
        ref = torch.tensor(base_reference(ctx), dtype=torch.float64)
        chosen, rejected = BETA * (scores[:, 0] - ref[:, 0]), BETA * (scores[:, 1] - ref[:, 1])
        loss = -F.logsigmoid(chosen - rejected).mean().item()  # DPO sigmoid loss, beta inside the rewards
        out.update(
            heldout_logps_chosen=scores[:, 0].mean().item(), heldout_logps_rejected=scores[:, 1].mean().item()
        )
    acc, low, high = pairwise_accuracy_ci((chosen > rejected).tolist())
    out.update(
        heldout_loss=loss,
        heldout_accuracy=acc,
        heldout_accuracy_ci=[low, high],
        heldout_margin=(chosen - rejected).mean().item(),
        heldout_pairs=len(scores),
    )
    return out


# --------------------------------------------------------------------------- ways (child process)
def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def fingerprint(model) -> list:
    """(count, sum, sum of squares) of the trainable weights: equal on both sides = the same initial
    weights."""

    ps = [p.detach().double() for p in model.parameters() if p.requires_grad]
    return [
        sum(p.numel() for p in ps),
        float(sum(p.sum() for p in ps)),
        float(sum((p * p).sum() for p in ps)),
    ]


def lora_config(kind: str):
    from peft import LoraConfig

    return LoraConfig(
        task_type="SEQ_CLS" if kind == "reward" else "CAUSAL_LM",
        r=R,
        lora_alpha=ALPHA,
        lora_dropout=0.0,
        target_modules=TARGETS,
    )


def trl_common(tmp: str, args, kind: str, checkpointing: bool) -> dict:
    return dict(
        output_dir=tmp,
        max_length=args.max_length,
        per_device_train_batch_size=args.batch_size,
        learning_rate=LR[kind],
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        num_train_epochs=1,
        max_steps=args.max_steps or -1,
        seed=SEED,
        bf16=False,
        gradient_checkpointing=checkpointing,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )


def compare_trl_dataset(ds, ours: list[dict], kind: str) -> dict:
    """Rows of TRL's prepared training dataset identical to ours (ids, and the answer start for DPO)."""
    if len(ds) != len(ours):
        return {"trl_rows": len(ds), "trl_rows_identical_to_ours": None}
    same = 0
    for r, f in zip(ds, ours):
        if kind == "reward":
            same += r["chosen_ids"] == f["chosen_ids"] and r["rejected_ids"] == f["rejected_ids"]
        else:
            p = r["prompt_ids"]
            same += (
                p + r["chosen_ids"] == f["chosen_ids"]
                and p + r["rejected_ids"] == f["rejected_ids"]
                and len(p) == prompt_len(f)
                and f["chosen_labels"][len(p) :] == r["chosen_ids"]
                and f["rejected_labels"][len(p) :] == r["rejected_ids"]
            )
    return {"trl_rows": len(ds), "trl_rows_identical_to_ours": same}


def way_trl(ctx: dict, args, kind: str, precompute: bool = False, checkpointing: bool = False) -> dict:
    import torch
    import transformers
    from datasets import Dataset

    path, tok = ctx["path"], ctx["tok"]
    transformers.set_seed(SEED)
    torch.manual_seed(SEED)  # the reward head's init, as deltatune's load_for_classification does
    model = load_plain(kind, path, tok.pad_token_id)
    ref_seconds = [0.0]
    with tempfile.TemporaryDirectory(prefix="pref-bench-trl-") as tmp:
        common = trl_common(tmp, args, kind, checkpointing)
        data = Dataset.from_list(trl_rows(ctx["train_pairs"]))
        if kind == "reward":
            from trl import RewardConfig, RewardTrainer

            trainer = RewardTrainer(
                model=model,
                args=RewardConfig(**common),
                train_dataset=data,
                processing_class=tok,
                peft_config=lora_config(kind),
            )
        else:
            import trl.trainer.dpo_trainer as dpo_module
            from trl import DPOConfig, DPOTrainer

            # TRL precomputes inside __init__ (hashing the model's weights for its cache key, then one forward
            # per batch), outside trainer.train(): timed here, as deltatune's Reference.attach is
            DPOTrainer._precompute_ref_logps = timer(DPOTrainer._precompute_ref_logps, ref_seconds)
            dpo_module.hash_module = timer(dpo_module.hash_module, ref_seconds)
            cfg = DPOConfig(
                **common,
                beta=BETA,
                loss_type=["sigmoid"],
                label_smoothing=0.0,
                precompute_ref_log_probs=precompute,
            )
            trainer = DPOTrainer(
                model=model, args=cfg, train_dataset=data, processing_class=tok, peft_config=lora_config(kind)
            )
        extra = compare_trl_dataset(trainer.train_dataset, ctx["train"], kind)
        extra.update(
            init_fingerprint=fingerprint(trainer.model),
            gradient_checkpointing=checkpointing,
            reference="precomputed" if precompute else ("every step" if kind == "dpo" else None),
        )
        t0 = time.perf_counter()
        out = trainer.train()
        seconds = time.perf_counter() - t0
        rss = rss_mb()
        adapter = Path(tmp) / "adapter"
        trainer.model.save_pretrained(str(adapter))
        result = measures(
            trainer._total_train_tokens, seconds, ref_seconds[0], out.global_step, rss, trainer.model, extra
        )
        result.update(heldout_quality(kind, str(adapter), ctx, live_model=trainer.model))
    return result


def timer(fn, total: list[float]):
    """fn, adding its wall time to total[0] at every call."""

    def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            total[0] += time.perf_counter() - t0

    return timed


def measures(tokens: int, train_s: float, ref_s: float, steps: int, rss: float, model, extra: dict) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) if model is not None else None
    total = train_s + ref_s
    return {
        "train_tokens": tokens,
        "loop_seconds": train_s,
        "ref_seconds": ref_s,
        "train_seconds": total,
        "train_tokens_per_s": tokens / total,
        "steps": steps,
        "peak_rss_mb": rss,
        "trainable_params": trainable,
        **extra,
    }


def deltatune_spies(kind: str) -> dict:
    """Wrap (in this child only) deltatune's encode_pairs, the loop entry and Reference.attach, to capture the
    pairs its recipe encoded, the initial trainable weights, the model, and the reference precompute time."""
    import deltatune.runs.skeleton as skeleton
    from deltatune.tasks import dpo as dpo_recipe
    from deltatune.tasks import reward as reward_recipe
    from deltatune.tasks.preference.reference import Reference

    spy = {"feats": [], "ref_seconds": [0.0]}
    recipe = reward_recipe if kind == "reward" else dpo_recipe
    encode, train = recipe.encode_pairs, skeleton.train

    def encode_spy(*a, **k):
        out = encode(*a, **k)
        spy["feats"].append(out[0])
        return out

    def train_spy(model, *a, **k):
        spy["init_fingerprint"], spy["model"] = fingerprint(model), model
        return train(model, *a, **k)

    recipe.encode_pairs, skeleton.train = encode_spy, train_spy
    Reference.attach = timer(Reference.attach, spy["ref_seconds"])  # precompute: before the loop's own timer
    return spy


def way_deltatune(ctx: dict, args, kind: str, precompute: bool = True) -> dict:
    from deltatune.config import validate_config
    from deltatune.runs import run_config

    spy = deltatune_spies(kind)
    with tempfile.TemporaryDirectory(prefix="pref-bench-deltatune-") as tmp:
        train_path, run_dir = Path(tmp) / "train.jsonl", Path(tmp) / "run"
        train_path.write_text("".join(json.dumps(r) + "\n" for r in ctx["train_rows"]), encoding="utf-8")
        train = {
            "epochs": 1,
            "batch_size": args.batch_size,
            "learning_rate": LR[kind],
            "warmup_ratio": 0.0,
            "scheduler": "linear",
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "progress": False,
            "checkpoint_every": None,
            "seed": SEED,
            "log_every": 1,
            "gradient_checkpointing": False,
            "precision": "fp32",
        }  # "auto" would pick bf16 on CPUs with native bf16
        if args.max_steps:
            train["max_steps"] = args.max_steps
        raw = {
            "task": kind,
            "model": {"name": MODEL},
            "train": train,
            "output_dir": str(run_dir),
            "data": {
                "train": str(train_path),
                "layout": "hh",
                "template": "chat",
                "max_length": args.max_length,
                "truncation": "drop",
            },
            "method": {"name": "lora", "r": R, "alpha": ALPHA, "dropout": 0.0, "target_modules": TARGETS},
        }
        if kind == "dpo":
            raw["dpo"] = {
                "loss": "sigmoid",
                "beta": BETA,
                "label_smoothing": 0.0,
                "precompute_reference": precompute,
            }
        summary = run_config(validate_config(raw), overwrite=True)
        gc.collect()
        rss = rss_mb()  # before loading the evaluation model
        seen = spy["feats"][0] if spy["feats"] else []
        keys = ("chosen_ids", "chosen_labels", "rejected_ids", "rejected_labels")
        same = (
            sum(all(a[k] == b[k] for k in keys) for a, b in zip(seen, ctx["train"]))
            if len(seen) == len(ctx["train"])
            else None
        )
        extra = {
            "deltatune_rows": len(seen),
            "deltatune_rows_identical_to_ours": same,
            "init_fingerprint": spy.get("init_fingerprint"),
            "gradient_checkpointing": False,
            "reference": ("precomputed" if precompute else "every step") if kind == "dpo" else None,
            "deltatune_tokens_per_s": summary.get("train_tokens_per_s"),
            "deltatune_peak_rss_mb": summary.get("peak_rss_mb"),
        }
        result = measures(
            summary["train_tokens"],
            summary["train_seconds"],
            spy["ref_seconds"][0] if kind == "dpo" else 0.0,
            summary.get("steps"),
            rss,
            None,
            extra,
        )
        result["trainable_params"] = (summary.get("trainable_parameters") or {}).get("trainable")
        result.update(heldout_quality(kind, str(run_dir / "adapter"), ctx, live_model=spy.pop("model", None)))
    return result


WAYS = {  # name: (task, function, the TRL way it is compared with)
    "trl_reward": ("reward", lambda c, a: way_trl(c, a, "reward"), None),
    "deltatune_reward": ("reward", lambda c, a: way_deltatune(c, a, "reward"), "trl_reward"),
    "trl_dpo": ("dpo", lambda c, a: way_trl(c, a, "dpo"), None),
    "trl_dpo_precompute": ("dpo", lambda c, a: way_trl(c, a, "dpo", precompute=True), None),
    "deltatune_dpo": ("dpo", lambda c, a: way_deltatune(c, a, "dpo"), "trl_dpo_precompute"),
    "deltatune_dpo_live": ("dpo", lambda c, a: way_deltatune(c, a, "dpo", precompute=False), "trl_dpo"),
    "trl_reward_gc": ("reward", lambda c, a: way_trl(c, a, "reward", checkpointing=True), None),
    "trl_dpo_gc": ("dpo", lambda c, a: way_trl(c, a, "dpo", checkpointing=True), None),
}
DEFAULT_WAYS = [
    "trl_reward",
    "deltatune_reward",
    "trl_dpo",
    "trl_dpo_precompute",
    "deltatune_dpo",
    "deltatune_dpo_live",
]


def run_way(args) -> None:
    """Child process: run one way, print one JSON line (with "error" instead of numbers on failure)."""
    import torch
    from transformers import AutoTokenizer

    from deltatune.models.bundled import bundled_model_path

    task = WAYS[args.way][0]
    result = {
        "way": args.way,
        "task": task,
        "pairs": args.pairs,
        "max_steps": args.max_steps,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        path = bundled_model_path(MODEL)
        tok = AutoTokenizer.from_pretrained(path)
        ctx = {
            "path": path,
            "tok": tok,
            "cache_dir": args.cache_dir,
            **select_pairs(tok, args.pairs, args.max_length),
        }
        result["expected_train_tokens"] = sum(
            len(f["chosen_ids"]) + len(f["rejected_ids"]) for f in ctx["train"]
        )
        result.update(WAYS[args.way][1](ctx, args))
    except Exception as e:  # noqa: BLE001 - reported in the table, the traceback goes to the log
        record_failure(result, e)
    exit_with(result)


# --------------------------------------------------------------------------- parent / orchestration
def run_child(way: str, args, work: Path) -> dict:
    """Run one way in a fresh child; its JSON line plus the child's whole-process peak RSS (wait4)."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--way",
        way,
        "--pairs",
        str(args.pairs),
        "--batch-size",
        str(args.batch_size),
        "--max-length",
        str(args.max_length),
        "--cache-dir",
        str(work),
    ]
    cmd += ["--max-steps", str(args.max_steps)] if args.max_steps else []
    return spawn_way(cmd, way, work, args.reuse, failed={"task": WAYS[way][0]})


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def quality_cell(r: dict) -> str:
    low, high = r["heldout_accuracy_ci"]
    acc = f"acc {r['heldout_accuracy']:.3f} [{low:.3f}, {high:.3f}]"
    return acc if r["task"] == "reward" else f"loss {r['heldout_loss']:.4f}, {acc}"


def versus_cell(r: dict, ref: dict | None) -> str:
    if not ref:
        return "-"
    if r["task"] == "reward":
        return f"acc {r['heldout_accuracy'] - ref['heldout_accuracy']:+.3f}"
    return f"loss {100 * (r['heldout_loss'] / ref['heldout_loss'] - 1):+.2f}%"


def print_table(results: list[dict]) -> list[str]:
    ok = {r["way"]: r for r in results if "error" not in r}
    print(
        "\n| way | vs | steps | real tokens | time s (ref s) | real tok/s | x vs TRL | peak RSS MB "
        "| RSS vs TRL | held-out (95% CI) | held-out vs TRL |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['way']} | FAILED: {r['error'][:150]} | | | | | | | | | |")
            continue
        ref = ok.get(WAYS[r["way"]][2] or "")
        ref_s = f" ({r['ref_seconds']:.1f})" if r.get("ref_seconds") else ""
        print(
            f"| {r['way']} | {WAYS[r['way']][2] or '-'} | {r['steps']} | {r['train_tokens']:,} "
            f"| {r['train_seconds']:.1f}{ref_s} | {r['train_tokens_per_s']:,.1f} "
            f"| {ratio(r['train_tokens_per_s'], ref and ref['train_tokens_per_s'])} "
            f"| {r['peak_rss_mb']:,.0f} "
            f"| {ratio(r['peak_rss_mb'], ref and ref['peak_rss_mb'])} | {quality_cell(r)} "
            f"| {versus_cell(r, ref)} |"
        )
    print(
        "\nreal tok/s: non-padding tokens of chosen + rejected / (training wall time + reference "
        "precompute). Peak RSS: ru_maxrss of the child right after training. Held-out: the saved adapter "
        "reloaded with transformers+peft, one function for every way (reward: pairwise accuracy; DPO: loss "
        "against the base model, implicit-reward accuracy)."
    )
    notes(results, ok)
    return goal_lines(ok)


def notes(results: list[dict], ok: dict) -> None:
    for r in results:
        if "error" in r:
            continue
        exp = r.get("expected_train_tokens")
        if exp and r["train_tokens"] != exp and not r.get("max_steps"):
            print(
                f"note: {r['way']} counted {r['train_tokens']} real tokens; "
                f"one epoch of our encoding has {exp}"
            )
        for side in ("trl", "deltatune"):
            if f"{side}_rows_identical_to_ours" in r:
                print(
                    f"note: {r['way']}: {r[f'{side}_rows_identical_to_ours']}/{r[f'{side}_rows']} training "
                    f"pairs {'TRL prepared' if side == 'trl' else 'deltatune encoded'} identical to ours "
                    f"(of {r['pairs']})"
                )
        if r.get("reload_max_abs_diff") is not None:
            print(
                f"note: {r['way']}: reloaded adapter vs in-memory model, max |diff| "
                f"{r['reload_max_abs_diff']:.2e} on 2 held-out pairs"
            )
        ref = ok.get(WAYS[r["way"]][2] or "")
        if ref and r.get("init_fingerprint") and ref.get("init_fingerprint"):
            a, b = r["init_fingerprint"], ref["init_fingerprint"]
            same = a[0] == b[0] and all(abs(x - y) <= 1e-6 * max(1.0, abs(y)) for x, y in zip(a[1:], b[1:]))
            print(
                f"note: {r['way']} vs {ref['way']}: initial trainable weights "
                f"{'identical (count, sum, sum of squares)' if same else f'differ: {a} vs {b}'}"
            )


def goal_lines(ok: dict) -> list[str]:
    lines = []
    for way, (task, _, ref_way) in WAYS.items():
        d, t = ok.get(way), ok.get(ref_way or "")
        if not d or not ref_way:
            continue
        if not t:
            lines.append(f"goal {way}: {ref_way} did not run or failed; no comparison")
            continue
        x = d["train_tokens_per_s"] / t["train_tokens_per_s"]
        checks = []
        if task == "reward":
            low, high = t["heldout_accuracy_ci"]
            inside = low <= d["heldout_accuracy"] <= high
            checks.append(
                f"accuracy {d['heldout_accuracy']:.3f} inside TRL's CI [{low:.3f}, {high:.3f}] "
                f"{'PASS' if inside else 'FAIL'}"
            )
        else:
            dl = 100 * (d["heldout_loss"] / t["heldout_loss"] - 1)
            checks.append(f"loss {dl:+.2f}% vs TRL (within 2%) {'PASS' if abs(dl) <= 2 else 'FAIL'}")
        checks.append(f"{x:.2f}x TRL tok/s (>= 2) {'PASS' if x >= 2 else 'FAIL'}")
        checks.append(
            f"RSS {d['peak_rss_mb']:,.0f} vs TRL {t['peak_rss_mb']:,.0f} MB (<=) "
            f"{'PASS' if d['peak_rss_mb'] <= t['peak_rss_mb'] else 'FAIL'}"
        )
        lines.append(f"goal {way} vs {ref_way}: " + "; ".join(checks))
    for way, r in ok.items():
        low, high = r["heldout_accuracy_ci"]
        lines.append(
            f"learned {way}: held-out {'pairwise' if r['task'] == 'reward' else 'reward'} accuracy "
            f"{r['heldout_accuracy']:.3f}, CI [{low:.3f}, {high:.3f}] "
            f"{'excludes' if low > 0.5 or high < 0.5 else 'includes'} 50%"
        )
    print("\n" + "\n".join(lines or ["goal: no way succeeded"]))
    return lines


def check_inputs(args) -> dict:
    """Parent: our encoding equals TRL's conversational construction, pair by pair (train and held-out)."""
    from transformers import AutoTokenizer

    from deltatune.models.bundled import bundled_model_path

    tok = AutoTokenizer.from_pretrained(bundled_model_path(MODEL))
    sel = select_pairs(tok, args.pairs, args.max_length)
    train = template_check(tok, sel["train_pairs"], sel["train"])
    held = template_check(tok, sel["heldout_pairs"], sel["heldout"])
    shown = {k: v for k, v in sel["selection"].items() if not k.endswith("_lines")}
    print(
        f"inputs: {train}/{args.pairs} training and {held}/{args.pairs} held-out pairs encode exactly as "
        f"apply_chat_template(prompt + [answer]), answer from len(apply_chat_template(prompt, "
        f"add_generation_prompt=True)); selection: {shown}",
        flush=True,
    )
    return {
        **sel["selection"],
        "train_pairs_matching_chat_template": train,
        "heldout_pairs_matching_chat_template": held,
        "train_tokens": sum(len(f["chosen_ids"]) + len(f["rejected_ids"]) for f in sel["train"]),
        "heldout_tokens": sum(len(f["chosen_ids"]) + len(f["rejected_ids"]) for f in sel["heldout"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--pairs", type=int, default=64, help="training pairs; as many held-out pairs follow them")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step")
    p.add_argument("--max-length", type=int, default=320, help="pairs longer than this are not selected")
    p.add_argument(
        "--ways",
        help=f"comma list (default: {','.join(DEFAULT_WAYS)}; also: "
        f"{','.join(w for w in WAYS if w not in DEFAULT_WAYS)})",
    )
    p.add_argument("--max-steps", type=int, help="stop every way after N optimizer steps (smoke tests)")
    p.add_argument("--quick", action="store_true", help="smoke test: 8 pairs, batch 4, max_length 128")
    p.add_argument("--workdir", help="keep child logs here (default: a temp dir)")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="with --workdir: keep the results of ways that already "
        "finished there (a run killed part-way goes on where it stopped); each is marked reused_from",
    )
    p.add_argument(
        "--json",
        type=Path,
        help=f"results file (default {RESULTS_JSON.relative_to(HERE.parent)}; not "
        "written for --quick or --max-steps runs unless given)",
    )
    p.add_argument("--way", choices=list(WAYS), help="run one way in this process and print one JSON line")
    p.add_argument(
        "--cache-dir", help=argparse.SUPPRESS
    )  # the parent's work dir: base log-probs cached there
    args = p.parse_args()
    if args.quick:
        args.pairs, args.batch_size, args.max_length = 8, 4, 128
    if min(args.pairs, args.batch_size, args.max_length) < 1 or (
        args.max_steps is not None and args.max_steps < 1
    ):
        p.error("--pairs, --batch-size, --max-length and --max-steps must be positive")
    if args.way:
        run_way(args)
        return

    ways, work = ways_and_workdir(p, args, WAYS, DEFAULT_WAYS, "deltatune-preference-bench-")
    inputs = check_inputs(args)
    results = [run_child(way, args, work) for way in ways]
    goals = print_table(results)
    tidy_workdir(args, work, results)
    write_results(args, inputs, goals, results)


def write_results(args, inputs: dict, goals: list[str], results: list[dict]) -> None:
    import peft
    import torch
    import transformers
    import trl

    out = args.json or (None if args.max_steps or args.quick else RESULTS_JSON)
    if out is None:
        print("\n--quick/--max-steps run: results not written (pass --json PATH to keep them)")
        return
    write_json(
        out,
        {
            "protocol": {
                "data": str(DATA),
                "model": MODEL,
                "pairs": args.pairs,
                "max_length": args.max_length,
                "selection": "file order; skipped: "
                "no shared prompt, longer than max_length, identical answers",
                "lora": {"r": R, "alpha": ALPHA, "dropout": 0.0, "target_modules": TARGETS},
                "batch_size": args.batch_size,
                "learning_rate": LR,
                "dpo": {"loss": "sigmoid", "beta": BETA},
                "scheduler": "linear, no warm-up",
                "epochs": 1,
                "max_steps": args.max_steps,
                "seed": SEED,
                "precision": "fp32",
                "gradient_checkpointing": False,
            },
            "inputs": inputs,
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "trl": trl.__version__,
                "peft": peft.__version__,
            },
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "goals": goals,
            "results": results,
        },
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
