"""Instruction tuning (SFT): Trainer, TRL, a hand-written loop and deltatune on the same data, one run.

Protocol
--------
Data: /work/shared/data/instruction/alpaca_subset_1k.json (a JSON list of {instruction, input, output}).
Training rows: the first ``--rows`` (64); held-out rows: the next ``--rows`` (64..127).
Model: the bundled SmolLM2-135M-Instruct (``deltatune.models.bundled.resolve_model_path``), fp32.
LoRA r=16, alpha=32, dropout 0 on q/k/v/o/gate/up/down_proj; batch 8; lr 2e-4, linear decay, no warm-up;
1 epoch; seed 42; max length 512; gradient clipping 1.0 and no weight decay (the Trainer/TRL/deltatune
defaults, copied into the hand-written loop).

One encoding for every way (:func:`encode_rows`): user message = instruction (+ "\\n\\n" + input when set),
prompt = ``apply_chat_template([user], add_generation_prompt=True)`` (SmolLM2's template adds its default
system message), completion = output + "<|im_end|>\\n" (checked per row: prompt + completion equals the
rendered 2-message chat). ids = tokens(prompt) + tokens(completion) (separately, no special tokens), labels
-100 on the prompt, cut at 512.

Ways (each in its own child process ``sft.py --way NAME``, which prints one JSON line):
  base             the untuned model: held-out loss only.
  trainer_pad512   peft.get_peft_model + transformers.Trainer, every row padded to 512 (the tutorial recipe).
  trl_sft          TRL SFTTrainer on plain-text {prompt, completion} with completion_only_loss, fp32,
                   gradient_checkpointing=False (TRL defaults to True; no other way recomputes activations).
  trl_sft_gc       trl_sft with TRL's default gradient checkpointing (less memory, slower).
  handwritten      PEFT model + a plain PyTorch loop: AdamW, linear schedule, dynamic padding, token-mean
                   loss.
  deltatune        deltatune.runs.run_config with task sft (train.precision fp32).
  deltatune_packed the same with data.packing=True.
  deltatune_compile       the same with train.compile=True, from an empty inductor cache: the timed training
                          includes compiling (what a first run pays).
  deltatune_compile_warm  the same again, reusing the cache the previous way filled (what later runs pay).
  For the deltatune ways the table also gives "steps 3+ tok/s": real tok/s over the steps after the first
  two (from the run's per-step metrics), i.e. speed once warm-up (and compiling) is over.
  --bf16 adds trl_sft_bf16 and handwritten_bf16 (bf16 autocast; ~20x slower on CPUs without native bf16).

TRL appends ``tokenizer.eos_token`` (<|im_end|>) to any non-conversational completion that does not end
with it; ours ends with "<|im_end|>\\n", so TRL would train on one extra "<|im_end|>" per row. The trl ways
strip exactly that appended token from TRL's prepared dataset (before timing) and then check that TRL's
input_ids and labels equal ours row for row, so every way trains on identical tokens. ``--trl-keep-eos``
keeps TRL's extra token instead (it is then counted as a real token).

Measures: real tokens = non-padding tokens (prompt + completion) of the rows the training steps processed
(counted at the model's forward for Trainer/TRL, in the loop for the hand-written way, deltatune's own
``train_tokens``); time = wall time of the training call only (``trainer.train()``, our loop, deltatune's
``train_seconds``); peak RSS = ``ru_maxrss`` of the child read right after training, before the held-out
evaluation (which loads a second model for deltatune); the whole child's ``ru_maxrss`` (os.wait4) is kept in
the JSON as ``process_peak_rss_mb``. Held-out loss = token-mean cross-entropy over the completion tokens of
the held-out rows, by one function (:func:`heldout_loss`, batch 8, fp32, no_grad) on the trained model in the
same child; deltatune's adapter is loaded with ``peft.PeftModel.from_pretrained`` (checks PEFT interop).

Usage:
    .venv/bin/python benchmarks/sft.py                                  # all ways, ~20+ min on 2 cores
    .venv/bin/python benchmarks/sft.py --ways trl_sft,deltatune --bf16
    .venv/bin/python benchmarks/sft.py --rows 8 --max-steps 1 --ways base,handwritten   # smoke test
    .venv/bin/python benchmarks/sft.py --way handwritten --rows 8       # one child, prints one JSON line
Results: a markdown table on stdout and benchmarks/results/sft.json (atomic write; a --max-steps run writes
nothing unless --json PATH is given). Timings assume an otherwise idle machine: each child warns when the CPUs
are busy before it starts.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import exit_with, record_failure, spawn_way, write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA_JSON = HERE.parent.parent / "shared" / "data" / "instruction" / "alpaca_subset_1k.json"
RESULTS_JSON = HERE / "results" / "sft.json"
MODEL = "smollm2-135m-instruct"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R, ALPHA, BATCH, LR, SEED, MAX_LENGTH = 16, 32, 8, 2e-4, 42, 512
END_OF_TURN = "<|im_end|>\n"  # what SmolLM2's chat template writes after an assistant message
BASE_WAYS = [
    "base",
    "trainer_pad512",
    "trl_sft",
    "trl_sft_gc",
    "handwritten",
    "deltatune",
    "deltatune_packed",
    "deltatune_compile",
    "deltatune_compile_warm",
]
BF16_WAYS = ["trl_sft_bf16", "handwritten_bf16"]
TRL_REF, HAND_REF = "trl_sft", "handwritten"  # the fp32 references for the relative columns


# --------------------------------------------------------------------------- shared data + evaluation
def load_rows(rows: int) -> tuple[list[dict], list[dict]]:
    data = json.loads(DATA_JSON.read_text(encoding="utf-8"))
    if 2 * rows > len(data):
        raise SystemExit(f"--rows {rows}: need {2 * rows} rows, {DATA_JSON} has {len(data)}")
    return data[:rows], data[rows : 2 * rows]


def prompt_completion(tok, row: dict) -> tuple[str, str]:
    """(prompt text, completion text) of one alpaca row, checked against the full chat render."""
    user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    chat = [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
    prompt = tok.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    completion = row["output"] + END_OF_TURN
    full = tok.apply_chat_template(chat, tokenize=False)
    if prompt + completion != full:
        raise SystemExit(f"prompt + completion differs from the chat template's render:\n{full!r}")
    return prompt, completion


def encode_rows(tok, rows: list[dict]) -> list[dict]:
    """[{input_ids, labels}]: prompt and completion tokenized separately, labels -100 on the prompt."""
    out = []
    for row in rows:
        prompt, completion = prompt_completion(tok, row)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        c = tok(completion, add_special_tokens=False)["input_ids"]
        out.append({"input_ids": (p + c)[:MAX_LENGTH], "labels": ([-100] * len(p) + c)[:MAX_LENGTH]})
    return out


def pad_batch(examples: list[dict], pad_id: int, length: int | None = None):
    """Right-pad to `length` (default: the longest row): (input_ids, attention_mask, labels) tensors."""
    import torch

    n = length or max(len(e["input_ids"]) for e in examples)
    ids = torch.tensor([e["input_ids"] + [pad_id] * (n - len(e["input_ids"])) for e in examples])
    mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (n - len(e["input_ids"])) for e in examples])
    labels = torch.tensor([e["labels"] + [-100] * (n - len(e["labels"])) for e in examples])
    return ids, mask, labels


def heldout_loss(model, encoded: list[dict], pad_id: int) -> tuple[float, int]:
    """Token-mean cross-entropy over completion tokens of `encoded` (batch 8, fp32, no_grad).

    Only the hidden states at target positions go through the LM head, so no (B, T, vocab) logits are
    built. Returns (loss, number of target tokens).
    """
    import torch
    import torch.nn.functional as F

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA layers stay active
    decoder, head = lm.get_decoder(), lm.get_output_embeddings()
    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(encoded), BATCH):
            ids, mask, labels = (t.to(device) for t in pad_batch(encoded[i : i + BATCH], pad_id))
            hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            targets = labels[:, 1:]  # position t predicts token t+1
            keep = targets != -100
            logits = head(hidden[:, :-1][keep]).float()
            total += F.cross_entropy(logits, targets[keep], reduction="sum").item()
            count += int(keep.sum())
    return total / count, count


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


# --------------------------------------------------------------------------- ways (child process)
def load_base(path: str):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.to("cuda") if torch.cuda.is_available() else model


def lora_config():
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS)


def count_forward_tokens(model, counter: list[int]):
    """Count real tokens at every training forward (after any dataloader prefetch): returns the hook
    handle."""

    def hook(module, args, kwargs):
        if module.training:
            mask = kwargs.get("attention_mask")
            counter[0] += int(mask.sum()) if mask is not None else kwargs["input_ids"].numel()

    return model.register_forward_pre_hook(hook, with_kwargs=True)


def way_trainer_pad512(ctx: dict, args) -> dict:
    import transformers
    from peft import get_peft_model
    from transformers import Trainer, TrainingArguments

    pad = ctx["tok"].pad_token_id
    train = []
    for e in ctx["train"]:  # every row padded to 512; labels -100 on prompt and padding
        ids, mask, labels = pad_batch([e], pad, MAX_LENGTH)
        train.append({"input_ids": ids[0], "attention_mask": mask[0], "labels": labels[0]})
    transformers.set_seed(SEED)
    model = get_peft_model(load_base(ctx["path"]), lora_config())
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=BATCH,
            learning_rate=LR,
            lr_scheduler_type="linear",
            warmup_steps=0,
            num_train_epochs=1,
            max_steps=args.max_steps or -1,
            seed=SEED,
            bf16=False,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            logging_strategy="no",
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=targs, train_dataset=train)  # default_data_collator
        return timed_train(trainer, model, ctx)


def timed_train(trainer, model, ctx: dict, extra: dict | None = None) -> dict:
    """trainer.train() timed, real tokens counted at the forward, then RSS and held-out loss."""
    counter = [0]
    handle = count_forward_tokens(trainer.model, counter)
    t0 = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t0
    handle.remove()
    return finish(model, ctx, counter[0], seconds, out.global_step, extra)


def finish(model, ctx: dict, tokens: int, seconds: float, steps: int, extra: dict | None = None) -> dict:
    rss = rss_mb()
    loss, n = heldout_loss(model, ctx["heldout"], ctx["tok"].pad_token_id)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "train_tokens": tokens,
        "train_seconds": seconds,
        "train_tokens_per_s": tokens / seconds,
        "steps": steps,
        "peak_rss_mb": rss,
        "heldout_loss": loss,
        "heldout_tokens": n,
        "trainable_params": trainable,
        **(extra or {}),
    }


def way_trl(ctx: dict, args, bf16: bool = False, checkpointing: bool = False) -> dict:
    import torch
    import transformers
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tok = ctx["tok"]
    texts = [dict(zip(("prompt", "completion"), prompt_completion(tok, r))) for r in ctx["train_rows"]]
    transformers.set_seed(SEED)
    model = load_base(ctx["path"])
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SFTConfig(
            output_dir=tmp,
            completion_only_loss=True,
            max_length=MAX_LENGTH,
            per_device_train_batch_size=BATCH,
            learning_rate=LR,
            lr_scheduler_type="linear",
            warmup_steps=0,
            num_train_epochs=1,
            max_steps=args.max_steps or -1,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            packing=False,
            bf16=bf16,
            seed=SEED,
            gradient_checkpointing=checkpointing,
            logging_strategy="no",
            disable_tqdm=True,
            use_cpu=bf16 and not torch.cuda.is_available(),
        )  # bf16 on CPU is refused without use_cpu
        trainer = SFTTrainer(
            model=model,
            args=cfg,
            train_dataset=Dataset.from_list(texts),
            processing_class=tok,
            peft_config=lora_config(),
        )
        extra = align_trl_dataset(trainer, ctx, keep_eos=args.trl_keep_eos)
        extra.update(gradient_checkpointing=checkpointing, bf16=bf16)
        return timed_train(trainer, trainer.model, ctx, extra)


def align_trl_dataset(trainer, ctx: dict, keep_eos: bool) -> dict:
    """Drop the EOS that TRL appended to each completion (unless keep_eos); compare TRL's rows with ours."""
    eos, ours = ctx["tok"].eos_token_id, ctx["train"]
    ds = trainer.train_dataset
    if len(ds) != len(ours):
        return {"trl_note": f"TRL kept {len(ds)} of {len(ours)} rows; rows not compared"}
    appended = sum(
        1
        for i, r in enumerate(ds)
        if r["input_ids"][:-1] == ours[i]["input_ids"] and r["input_ids"][-1] == eos
    )
    if not keep_eos and appended:

        def strip(r, i):
            if r["input_ids"][:-1] == ours[i]["input_ids"] and r["input_ids"][-1] == eos:
                return {"input_ids": r["input_ids"][:-1], "labels": r["labels"][:-1]}
            return {}

        ds = trainer.train_dataset = ds.map(strip, with_indices=True)
    same = sum(
        1
        for i, r in enumerate(ds)
        if r["input_ids"] == ours[i]["input_ids"] and r["labels"] == ours[i]["labels"]
    )
    return {
        "trl_eos_appended_rows": appended,
        "trl_eos_stripped": not keep_eos and appended > 0,
        "trl_rows_identical_to_ours": same,
    }


def way_handwritten(ctx: dict, args, bf16: bool = False) -> dict:
    import contextlib

    import torch
    import transformers
    from peft import get_peft_model

    transformers.set_seed(SEED)
    model = get_peft_model(load_base(ctx["path"]), lora_config())
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    train, pad = ctx["train"], ctx["tok"].pad_token_id
    steps = args.max_steps or math.ceil(len(train) / BATCH)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))  # linear, no warm-up
    gen = torch.Generator().manual_seed(SEED)
    order: list[int] = []
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    model.train()
    tokens, t0 = 0, time.perf_counter()
    for _ in range(steps):
        if not order:
            order = torch.randperm(len(train), generator=gen).tolist()
        batch, order = [train[i] for i in order[:BATCH]], order[BATCH:]
        ids, mask, labels = (t.to(device) for t in pad_batch(batch, pad))
        with autocast():
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss  # mean over target tokens
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
    seconds = time.perf_counter() - t0
    return finish(model, ctx, tokens, seconds, steps, {"bf16": bf16})


def steady_tokens_per_s(metrics_path: Path, skip: int = 2) -> float | None:
    """Real tok/s over the steps after the first ``skip`` (warm-up and, with compile, compiling),
    from the run's per-step metrics.jsonl lines."""
    rows = [json.loads(x) for x in metrics_path.read_text().splitlines()]
    steps = [r for r in rows if "tokens" in r and r.get("tokens_per_s")][skip:]
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in steps)
    return sum(r["tokens"] for r in steps) / seconds if steps else None


def way_deltatune(ctx: dict, args, packing: bool = False, compile: bool = False) -> dict:
    from deltatune.config import validate_config
    from deltatune.runs import run_config

    with tempfile.TemporaryDirectory(prefix="sft-bench-deltatune-") as tmp:
        train_path, run_dir = Path(tmp) / "train.json", Path(tmp) / "run"
        train_path.write_text(json.dumps(ctx["train_rows"]), encoding="utf-8")
        train = {
            "epochs": 1,
            "batch_size": BATCH,
            "learning_rate": LR,
            "warmup_ratio": 0.0,
            "scheduler": "linear",
            "progress": False,
            "checkpoint_every": None,
            "seed": SEED,
            "precision": "fp32",  # "auto" would pick bf16 on CPUs with native bf16: keep fp32 like the rest
            "log_every": 1,
            "compile": compile,
        }
        cache = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR", "/nonexistent"))
        cache_warm = compile and cache.is_dir() and any(cache.iterdir())
        if args.max_steps:
            train["max_steps"] = args.max_steps
        cfg = validate_config(
            {
                "task": "sft",
                "model": {"name": MODEL},
                "data": {
                    "train": str(train_path),
                    "layout": "alpaca",
                    "template": "chat",
                    "max_length": MAX_LENGTH,
                    "packing": packing,
                },
                "method": {"name": "lora", "r": R, "alpha": ALPHA, "dropout": 0.0, "target_modules": TARGETS},
                "train": train,
                "generate": {"eval_samples": 0},
                "output_dir": str(run_dir),
            }
        )
        summary = run_config(cfg, overwrite=True)
        steady = steady_tokens_per_s(run_dir / "metrics.jsonl")
        gc.collect()
        rss = rss_mb()  # before loading the evaluation model
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_base(ctx["path"]), str(run_dir / "adapter"))
        loss, n = heldout_loss(model, ctx["heldout"], ctx["tok"].pad_token_id)
    return {
        "train_tokens": summary["train_tokens"],
        "train_seconds": summary["train_seconds"],
        "train_tokens_per_s": summary["train_tokens"] / summary["train_seconds"],
        "deltatune_tokens_per_s": summary.get("train_tokens_per_s"),
        "steps": summary.get("steps"),
        "peak_rss_mb": rss,
        "deltatune_peak_rss_mb": summary.get("peak_rss_mb"),
        "heldout_loss": loss,
        "heldout_tokens": n,
        "trainable_params": (summary.get("trainable_parameters") or {}).get("trainable"),
        "packing": packing,
        "template": summary.get("template"),
        "steady_tokens_per_s": steady,
        "compile": compile,
        "compile_cache_warm_at_start": cache_warm if compile else None,
    }


def way_base(ctx: dict, args) -> dict:
    model = load_base(ctx["path"])
    loss, n = heldout_loss(model, ctx["heldout"], ctx["tok"].pad_token_id)
    return {"peak_rss_mb": rss_mb(), "heldout_loss": loss, "heldout_tokens": n}


WAYS = {
    "base": way_base,
    "trainer_pad512": way_trainer_pad512,
    "trl_sft": way_trl,
    "trl_sft_gc": lambda ctx, a: way_trl(ctx, a, checkpointing=True),
    "trl_sft_bf16": lambda ctx, a: way_trl(ctx, a, bf16=True),
    "handwritten": way_handwritten,
    "handwritten_bf16": lambda ctx, a: way_handwritten(ctx, a, bf16=True),
    "deltatune": way_deltatune,
    "deltatune_packed": lambda ctx, a: way_deltatune(ctx, a, packing=True),
    "deltatune_compile": lambda ctx, a: way_deltatune(ctx, a, compile=True),
    "deltatune_compile_warm": lambda ctx, a: way_deltatune(ctx, a, compile=True),
}
COLD_CACHE_WAYS = {"deltatune_compile"}  # start with an empty inductor cache; the _warm way reuses it


def run_way(args) -> None:
    """Child process: run one way, print one JSON line (with "error" instead of numbers on failure)."""
    import torch
    from transformers import AutoTokenizer

    from deltatune.models.bundled import resolve_model_path

    result = {
        "way": args.way,
        "rows": args.rows,
        "max_steps": args.max_steps,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        path = resolve_model_path(MODEL)
        tok = AutoTokenizer.from_pretrained(path)
        train_rows, heldout_rows = load_rows(args.rows)
        ctx = {
            "path": path,
            "tok": tok,
            "train_rows": train_rows,
            "train": encode_rows(tok, train_rows),
            "heldout": encode_rows(tok, heldout_rows),
        }
        result["expected_train_tokens"] = sum(len(e["input_ids"]) for e in ctx["train"])  # one full epoch
        result.update(WAYS[args.way](ctx, args))
    except Exception as e:  # noqa: BLE001 - reported in the table, the traceback goes to the log
        record_failure(result, e)
    exit_with(result)


# --------------------------------------------------------------------------- parent / orchestration
def run_child(way: str, args, work: Path) -> dict:
    """Run one way in a fresh child; its JSON line plus the child's whole-process peak RSS (wait4)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--way", way, "--rows", str(args.rows)]
    cmd += ["--max-steps", str(args.max_steps)] if args.max_steps else []
    cmd += ["--trl-keep-eos"] if args.trl_keep_eos else []
    if way in COLD_CACHE_WAYS:
        shutil.rmtree(work / "inductor-cache", ignore_errors=True)
    return spawn_way(cmd, way, work, env={"TORCHINDUCTOR_CACHE_DIR": str(work / "inductor-cache")})


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def print_table(results: list[dict]) -> list[str]:
    ok = {r["way"]: r for r in results if "error" not in r}
    trl_best = max((r["train_tokens_per_s"] for w, r in ok.items() if w.startswith("trl")), default=None)
    trl, hand = ok.get(TRL_REF), ok.get(HAND_REF)
    print(
        "\n| way | real tok/s | x vs TRL | x vs hand-written | steps 3+ tok/s | peak RSS MB | held-out loss "
        "| loss vs TRL (%) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['way']} | FAILED: {r['error'][:120]} | | | | | | |")
            continue
        tps, steady = r.get("train_tokens_per_s"), r.get("steady_tokens_per_s")
        dloss = f"{100 * (r['heldout_loss'] / trl['heldout_loss'] - 1):+.2f}" if trl else "-"
        print(
            f"| {r['way']} | {f'{tps:,.0f}' if tps else '-'} | {ratio(tps, trl_best)} "
            f"| {ratio(tps, hand and hand['train_tokens_per_s'])} "
            f"| {f'{steady:,.0f}' if steady else '-'} "
            f"| {r['peak_rss_mb']:,.0f} "
            f"| {r['heldout_loss']:.4f} | {dloss} |"
        )
    print(
        "\nx vs TRL: against TRL's best tok/s "
        f"({', '.join(w for w in ok if w.startswith('trl')) or 'none run'}); "
        f"loss vs TRL: against {TRL_REF}. Peak RSS: the child's ru_maxrss right after training."
    )
    for r in results:
        exp = r.get("expected_train_tokens")
        if (
            "error" not in r
            and r.get("train_tokens")
            and exp
            and r["train_tokens"] != exp
            and not r.get("max_steps")
        ):
            print(
                f"note: {r['way']} counted {r['train_tokens']} real tokens, "
                f"one epoch of our encoding has {exp}"
            )
        if r.get("trl_eos_appended_rows") is not None:
            print(
                f"note: {r['way']}: TRL appended EOS to {r['trl_eos_appended_rows']} rows "
                f"({'stripped' if r['trl_eos_stripped'] else 'kept'}); "
                f"{r['trl_rows_identical_to_ours']}/{r['rows']} rows identical to ours"
            )
    return goal_lines(ok, trl_best, trl, hand)


def goal_lines(ok: dict, trl_best, trl, hand) -> list[str]:
    lines = []
    for way in (w for w in WAYS if w.startswith("deltatune")):
        d = ok.get(way)
        if not d:
            continue
        checks = []
        if trl_best:
            x = d["train_tokens_per_s"] / trl_best
            checks.append(f"{x:.2f}x TRL best tok/s (>= 5) {'PASS' if x >= 5 else 'FAIL'}")
        if hand:
            x = d["train_tokens_per_s"] / hand["train_tokens_per_s"]
            checks.append(f"{x:.2f}x hand-written (>= 2.5) {'PASS' if x >= 2.5 else 'FAIL'}")
        if trl:
            dl = 100 * (d["heldout_loss"] / trl["heldout_loss"] - 1)
            checks.append(f"loss {dl:+.2f}% vs TRL (within 2%) {'PASS' if abs(dl) <= 2 else 'FAIL'}")
            checks.append(
                f"RSS {d['peak_rss_mb']:,.0f} vs TRL {trl['peak_rss_mb']:,.0f} MB (<=) "
                f"{'PASS' if d['peak_rss_mb'] <= trl['peak_rss_mb'] else 'FAIL'}"
            )
        lines.append(f"goal {way}: " + "; ".join(checks or ["no reference ways ran"]))
    print("\n" + "\n".join(lines or ["goal: no deltatune way succeeded"]))
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=64, help="training rows (the first N); held-out: the next N")
    p.add_argument(
        "--ways", help=f"comma list (default: {','.join(BASE_WAYS)}; --bf16 adds {','.join(BF16_WAYS)})"
    )
    p.add_argument("--max-steps", type=int, help="stop every way after N optimizer steps (smoke tests)")
    p.add_argument(
        "--bf16", action="store_true", help="add bf16-autocast variants of TRL and the hand-written loop"
    )
    p.add_argument("--trl-keep-eos", action="store_true", help="keep the EOS TRL appends to each completion")
    p.add_argument("--workdir", help="keep child logs here (default: a temp dir)")
    p.add_argument(
        "--json",
        type=Path,
        help=f"results file (default {RESULTS_JSON.relative_to(HERE.parent)}; "
        "not written for --max-steps runs unless given)",
    )
    p.add_argument("--way", choices=list(WAYS), help="run one way in this process and print one JSON line")
    args = p.parse_args()
    if args.rows < 1 or (args.max_steps is not None and args.max_steps < 1):
        p.error("--rows and --max-steps must be positive")
    if args.way:
        run_way(args)
        return

    ways = args.ways.split(",") if args.ways else BASE_WAYS + (BF16_WAYS if args.bf16 else [])
    unknown = [w for w in ways if w not in WAYS]
    if unknown:
        p.error(f"unknown way(s) {', '.join(unknown)}; choose from {', '.join(WAYS)}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="deltatune-sft-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = [run_child(way, args, work) for way in ways]
    goals = print_table(results)
    if not args.workdir:
        if any("error" in r for r in results):
            print(f"\nlogs of the failed ways kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    import torch
    import transformers

    out = args.json or (None if args.max_steps else RESULTS_JSON)
    if out is None:
        print("\n--max-steps run: results not written (pass --json PATH to keep them)")
        return
    write_json(
        out,
        {
            "protocol": {
                "data": str(DATA_JSON),
                "train_rows": [0, args.rows],
                "heldout_rows": [args.rows, 2 * args.rows],
                "model": MODEL,
                "lora": {"r": R, "alpha": ALPHA, "dropout": 0.0, "target_modules": TARGETS},
                "batch_size": BATCH,
                "learning_rate": LR,
                "scheduler": "linear, no warm-up",
                "epochs": 1,
                "max_steps": args.max_steps,
                "seed": SEED,
                "max_length": MAX_LENGTH,
                "trl_eos": "kept" if args.trl_keep_eos else "stripped",
            },
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "goals": goals,
            "results": results,
        },
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
