"""RL (GRPO): rollout + update throughput of deltatune vs TRL's GRPOTrainer, same model, prompts and lengths,
one run.

TRL's PPO: TRL 1.16 has no PPOTrainer (``hasattr(trl, "PPOTrainer")`` is False and there is no
``trl.experimental`` PPO module either), so deltatune's PPO (``ppo.algorithm: ppo``) has no TRL counterpart
here and is not benchmarked. The parent checks this again at run time and says so in the table notes and the
JSON.

Protocol
--------
Prompts: the first ``--steps`` x ``--prompts`` rows of /work/shared/data/instruction/alpaca_subset_1k.json,
read with deltatune's own reader (``deltatune.tasks.rl.prompts.read_prompts``, layout ``alpaca``: user message
= instruction (+ "\\n\\n" + input)) and encoded with deltatune's ``prompt_ids`` (template ``chat``: SmolLM2's
chat template, which adds its default system message). The parent checks, prompt by prompt, that these ids
equal ``apply_chat_template(messages, add_generation_prompt=True)`` - what TRL does for conversational
prompts.
Rollout order: deltatune draws each rollout's prompts from a seeded shuffle (``RolloutStream``:
``random.Random(seed * 1_000_003 + epoch)``); the TRL dataset is given in that order with
``shuffle_dataset=False``, so rollout k answers the same prompts in both. Each child records the prompt ids
its trainer actually generated from, per rollout, and compares them with ours ("rollout prompts identical" in
the notes).
Model: the bundled SmolLM2-135M-Instruct (``deltatune.models.bundled.bundled_model_path``, HF_HUB_OFFLINE=1),
fp32. LoRA r=16, alpha=32, dropout 0 on q/k/v/o/gate/up/down_proj (TRL through ``peft_config``).
Reward: benchmarks/rewards.py:concise, loaded in both ways by deltatune's ``load_reward`` (the score of the
last user message's text and the decoded answer, special tokens skipped - as both trainers decode).

Settings that match (defaults in brackets; --quick in braces):
  rollouts ``--steps`` [4] {2}; prompts per rollout ``--prompts`` [4] {2} (TRL: generation_batch_size =
  prompts x group); answers per prompt ``--group`` [4] {2} (ppo.group_size / num_generations); max new tokens
  ``--max-new-tokens`` [64] {16} (generate.max_new_tokens / max_completion_length); sampling temperature 1.0
  and top_p 1.0 (generate.temperature/top_p - deltatune's generate defaults are 0.7/0.9, set here - / TRL's);
  answers end at the same tokens (deltatune's ``end_token_ids``: <|im_end|> and <|endoftext|>; TRL reads its
  stop ids from ``model.generation_config.eos_token_id``, set to that list); minibatch ``--batch-size`` [8]
  {2} sequences per optimizer step (train.batch_size / per_device_train_batch_size,
  gradient_accumulation_steps 1, so steps_per_generation = prompts x group / batch); passes over each rollout
  ``--epochs`` [2] (ppo.epochs / num_iterations): both make epochs x prompts x group / batch optimizer steps
  per rollout (16 in all by default); clip epsilon 0.2; KL coefficient 0.05 (ppo.kl_coef / beta) with the k3
  estimator in the loss, reference = the policy with the adapter switched off, KL term not multiplied by the
  importance ratio (TRL use_bias_correction_kl=False); advantages = (r - group mean) / (group sample std +
  1e-4) (TRL scale_rewards="group"); loss = per-sequence token mean, averaged over the minibatch's sequences
  (TRL loss_type="grpo"); no entropy bonus; truncated answers kept in the loss; old log-probs computed once
  per rollout (TRL computes them because steps_per_generation x num_iterations > 1); AdamW, lr 1e-4, linear
  decay to 0 over all steps, no warm-up, no weight decay, gradient clipping 1.0; seed 42; fp32; no gradient
  checkpointing (TRL's default is on; switched off here); no vLLM; one process.
Settings that cannot match (or are not forced to):
  - Sampled answers differ: each trainer draws from its own RNG stream (deltatune forks and reseeds per
    rollout), so answer lengths - hence tokens processed - differ between ways; throughput is therefore
    reported per token.
  - top-k: none in either way (deltatune's rollouts pass ``top_k=0`` since the fix this benchmark prompted:
    transformers applied its default top_k=50 before; TRL passes 0). Both children record the logits
    processors generation actually used, and the notes say whether they agree.
  - Minibatch composition: TRL shuffles each rollout once and reuses the same minibatches in every pass;
    deltatune reshuffles per pass (padding per minibatch may differ slightly).
  - Forward layout: TRL left-pads prompts and computes logits only for completion positions, in chunks of
    per_device_train_batch_size; deltatune right-pads [prompt, answer] rows and runs the LM head on answer
    positions only, the whole minibatch in one forward. That is part of what is measured.
  - Optimizer kernel: TRL's default AdamW (``adamw_torch_fused``) vs deltatune's ``foreach`` AdamW (same
    update).
  - Initial LoRA weights: each library draws its own (A random, B zero); the notes compare a fingerprint.

Ways (each in its own child process ``rl.py --way NAME``, which prints one JSON line):
  trl_grpo        TRL GRPOTrainer + peft_config, model passed as a fp32 AutoModelForCausalLM.
  deltatune_grpo  deltatune task ppo, ppo.algorithm grpo (deltatune.runs.run_config).

Measures (per way): total s = wall time of the training call (``trainer.train()``; deltatune's loop
``skeleton.train``), which includes every rollout; rollout s = time in the rollout function (TRL
``_generate_and_score_completions``, deltatune ``Rollouts.make``: generation, reward, policy and reference
log-probs, advantages), of which gen s = time in generation (TRL ``_generate_single_turn``, deltatune rollout
``generate``); update s = total - rollout. Tokens: prompt and completion tokens of every sampled sequence
(completion = generated ids up to and including the end token). tok/s = (prompt + completion tokens) /
total s, compl tok/s = completion tokens / total s, gen tok/s = completion tokens / gen s, update tok/s =
(prompt + completion tokens) x epochs / update s (every sequence goes through forward + backward once per
pass). Peak RSS = the child's ``ru_maxrss`` right after training; the whole child's (os.wait4) is kept as
``process_peak_rss_mb``.
Reward: mean score of the first and of the last rollout (sampled, so noisy; a throughput benchmark, not a
quality one). deltatune's own logged ``rollout_tokens_per_s`` (metrics.jsonl) is kept in the JSON for
comparison.

Usage:
    .venv/bin/python benchmarks/rl.py                 # both ways, default sizes (~7-9 min on 2 idle cores)
    .venv/bin/python benchmarks/rl.py --quick
        # smoke test: 2 rollouts of 2 prompts x 2 answers x 16 tokens
    .venv/bin/python benchmarks/rl.py --way deltatune_grpo --quick   # one child, prints one JSON line
Results: a markdown table on stdout and benchmarks/results/rl.json (atomic write; --quick runs write nothing
unless --json PATH is given). Timings assume an otherwise idle machine: each child warns when the CPUs are
busy before it starts.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
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
DATA_JSON = HERE.parent.parent / "shared" / "data" / "instruction" / "alpaca_subset_1k.json"
RESULTS_JSON = HERE / "results" / "rl.json"
REWARD = f"{HERE / 'rewards.py'}:concise"
MODEL = "smollm2-135m-instruct"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R, ALPHA, SEED, LR, BETA, CLIP, MAX_LENGTH = 16, 32, 42, 1e-4, 0.05, 0.2, 1024
TEMPERATURE, TOP_P = 1.0, 1.0


# --------------------------------------------------------------------------- shared data
def prompt_options():
    from deltatune.tasks.rl.prompts import PromptData

    return PromptData(layout="alpaca", template="chat")


def select_prompts(tok, args, folder: Path) -> dict:
    """The first steps x prompts rows of DATA, written to ``folder/train.json`` (deltatune's training file),
    read back with deltatune's reader and encoded with its chat template; plus deltatune's rollout order."""
    from deltatune.data.masks import prompt_ids
    from deltatune.data.templates import template_for
    from deltatune.tasks.rl.prompts import read_prompts

    n = args.steps * args.prompts
    rows = json.loads(DATA_JSON.read_text(encoding="utf-8"))[:n]
    if len(rows) < n:
        raise SystemExit(f"--steps x --prompts = {n}: {DATA_JSON} has only {len(rows)} rows")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.json"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rows), encoding="utf-8")
    os.replace(tmp, path)
    messages = read_prompts(str(path), prompt_options())
    if len(messages) != n:
        raise SystemExit(f"deltatune read {len(messages)} prompts from the first {n} rows of {DATA_JSON}")
    template = template_for(prompt_options(), tok, [])
    ids = [prompt_ids(tok, template, m) for m in messages]
    room = MAX_LENGTH - args.max_new_tokens  # deltatune cuts longer prompts from the left; none is cut here
    if max(map(len, ids)) > room:
        raise SystemExit(
            f"a prompt has {max(map(len, ids))} tokens, over data.max_length - max_new_tokens = {room}"
        )
    return {
        "train_path": str(path),
        "messages": messages,
        "ids": ids,
        "template": template.name,
        "order": rollout_order(n, args.prompts),
    }


def rollout_order(n: int, prompts_per_rollout: int) -> list[int]:
    """The prompt indices deltatune's RolloutStream answers, rollout after rollout, in its first pass over the
    prompts (training/rollout.py: ``random.Random(seed * 1_000_003 + epoch).shuffle``). Checked, not trusted:
    both children compare the prompts their trainer generated from with ``expected_rollouts``."""
    order = list(range(n))
    random.Random(SEED * 1_000_003 + 0).shuffle(order)
    return order[: (n // prompts_per_rollout) * prompts_per_rollout]


def expected_rollouts(ctx: dict, args) -> list[list[list[int]]]:
    """Per rollout: the prompt ids of its sequences (each prompt ``group`` times in a row, as both trainers
    lay out a rollout)."""
    order, p = ctx["order"], args.prompts
    return [
        [ctx["ids"][i] for i in order[k * p : (k + 1) * p] for _ in range(args.group)]
        for k in range(args.steps)
    ]


def chat_template_check(tok, messages, ids) -> int:
    """How many prompts' ids equal apply_chat_template(messages, add_generation_prompt=True)
    (what TRL does)."""
    same = 0
    for m, ours in zip(messages, ids):
        theirs = tok.apply_chat_template(
            plain_messages(m), add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        same += list(theirs) == ours
    return same


def plain_messages(messages: list[dict]) -> list[dict]:
    """Chat messages with role and content only (deltatune's reader keeps the row's other fields in them)."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


# --------------------------------------------------------------------------- measurement helpers (child)
def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def fingerprint(model) -> list:
    """(count, sum, sum of squares) of the trainable weights."""
    ps = [p.detach().double() for p in model.parameters() if p.requires_grad]
    return [
        sum(p.numel() for p in ps),
        float(sum(p.sum() for p in ps)),
        float(sum((p * p).sum() for p in ps)),
    ]


def watch_sampling(seen: set) -> None:
    """Record the logits processors every ``generate`` call of this child builds (type, and
    top-k/top-p/temperature when the processor has one): shows what sampling actually ran."""
    from transformers.generation.utils import GenerationMixin

    build = GenerationMixin._get_logits_processor

    def spy(self, *a, **k):
        procs = build(self, *a, **k)
        seen.add(
            ", ".join(
                type(p).__name__
                + "".join(f"({getattr(p, x)})" for x in ("top_k", "top_p", "temperature") if hasattr(p, x))
                for p in procs
            )
            or "none"
        )
        return procs

    GenerationMixin._get_logits_processor = spy


def measures(records: list[dict], expected: list, total_s: float, steps: int, args, extra: dict) -> dict:
    """The way's numbers from its per-rollout records (prompt ids, completion lengths, times, rewards)."""
    prompt_tok = sum(sum(map(len, r["prompt_ids"])) for r in records)
    compl_tok = sum(sum(r["lengths"]) for r in records)
    gen_s = sum(r["generate_s"] for r in records)
    roll_s = sum(r.get("rollout_s", 0.0) for r in records)
    update_s = total_s - roll_s
    seq_tok = prompt_tok + compl_tok
    same = sum(r["prompt_ids"] == e for r, e in zip(records, expected))
    means = [sum(r["scores"]) / len(r["scores"]) for r in records if r.get("scores")]
    return {
        "rollouts": len(records),
        "optimizer_steps": steps,
        "prompt_tokens": prompt_tok,
        "completion_tokens": compl_tok,
        "sequence_tokens": seq_tok,
        "sequences": sum(len(r["lengths"]) for r in records),
        "mean_completion_length": compl_tok / max(1, sum(len(r["lengths"]) for r in records)),
        "truncated_share": (
            sum(sum(n >= args.max_new_tokens for n in r["lengths"]) for r in records)
            / max(1, sum(len(r["lengths"]) for r in records))
        ),
        "total_seconds": total_s,
        "rollout_seconds": roll_s,
        "generate_seconds": gen_s,
        "update_seconds": update_s,
        "tokens_per_s": seq_tok / total_s,
        "completion_tokens_per_s": compl_tok / total_s,
        "generate_tokens_per_s": compl_tok / gen_s if gen_s else None,
        "update_tokens_per_s": seq_tok * args.epochs / update_s if update_s > 0 else None,
        "reward_first": means[0] if means else None,
        "reward_last": means[-1] if means else None,
        "reward_per_rollout": means,
        "rollout_prompts_identical_to_ours": same,
        "rollouts_expected": len(expected),
        "peak_rss_mb": rss_mb(),
        **extra,
    }


# --------------------------------------------------------------------------- ways (child process)
def spy_on_trl(records: list) -> None:
    """Wrap TRL's rollout and generation calls: each generation appends its record (time, prompt ids, lengths)
    to ``records``, and each rollout adds its time to the last record."""
    from trl import GRPOTrainer

    generate_scored, generate_one = (
        GRPOTrainer._generate_and_score_completions,
        GRPOTrainer._generate_single_turn,
    )

    def rollout_spy(self, inputs):
        t0 = time.perf_counter()
        out = generate_scored(self, inputs)
        records[-1]["rollout_s"] = time.perf_counter() - t0
        return out

    def generate_spy(self, prompt_ids, *a, **k):
        t0 = time.perf_counter()
        completion_ids, logprobs = generate_one(self, prompt_ids, *a, **k)
        records.append(
            {
                "generate_s": time.perf_counter() - t0,
                "prompt_ids": [list(map(int, p)) for p in prompt_ids],
                "lengths": [len(c) for c in completion_ids],
            }
        )
        return completion_ids, logprobs

    GRPOTrainer._generate_and_score_completions, GRPOTrainer._generate_single_turn = rollout_spy, generate_spy


def way_trl(ctx: dict, args) -> dict:
    import torch
    import transformers
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from deltatune.inference.generation import end_token_ids
    from deltatune.tasks.rl.rewards import load_reward

    tok, records, sampling = ctx["tok"], [], set()
    watch_sampling(sampling)
    reward = load_reward(REWARD)

    def concise(prompts, completions, **_):  # TRL's reward interface -> deltatune's loaded reward
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        scores = reward(prompts, texts)
        records[-1]["scores"] = scores
        return scores

    spy_on_trl(records)

    transformers.set_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(ctx["path"], dtype=torch.float32)
    model.generation_config.eos_token_id = end_token_ids(tok)  # stop (and cut) where deltatune does
    rows = [{"prompt": plain_messages(ctx["messages"][i])} for i in ctx["order"]]  # deltatune's rollout order
    per_rollout = args.prompts * args.group
    total_steps = args.steps * args.epochs * per_rollout // args.batch_size
    with tempfile.TemporaryDirectory(prefix="rl-bench-trl-") as tmp:
        cfg = GRPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=1,
            generation_batch_size=per_rollout,
            num_generations=args.group,
            num_iterations=args.epochs,
            max_completion_length=args.max_new_tokens,
            temperature=TEMPERATURE,
            top_p=TOP_P,
            top_k=args.trl_top_k,
            beta=BETA,
            epsilon=CLIP,
            loss_type="grpo",
            scale_rewards="group",
            use_bias_correction_kl=False,
            mask_truncated_completions=False,
            entropy_coef=0.0,
            use_vllm=False,
            shuffle_dataset=False,
            learning_rate=LR,
            lr_scheduler_type="linear",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            max_steps=total_steps,
            seed=SEED,
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
        )
        lora = LoraConfig(
            task_type="CAUSAL_LM", r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[concise],
            args=cfg,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=lora,
        )
        extra = {
            "init_fingerprint": fingerprint(trainer.model),
            "steps_per_generation": cfg.steps_per_generation,
            "trl_top_k": args.trl_top_k,
            "eos_token_ids": list(trainer.eos_token_ids),
            "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        }
        t0 = time.perf_counter()
        out = trainer.train()
        total = time.perf_counter() - t0
        result = measures(records, expected_rollouts(ctx, args), total, out.global_step, args, extra)
    result["sampling_processors"] = sorted(sampling)
    return result


def way_deltatune(ctx: dict, args) -> dict:
    import deltatune.runs.skeleton as skeleton
    import deltatune.tasks.rl.rollout as rollout
    from deltatune.config import validate_config
    from deltatune.runs import run_config

    records, sampling, spy = [], set(), {}
    watch_sampling(sampling)
    generate, make, train = rollout.generate, rollout.Rollouts.make, skeleton.train

    def generate_spy(model, tokenizer, prompts, settings, seed=None):
        t0 = time.perf_counter()
        responses = generate(model, tokenizer, prompts, settings, seed)
        records.append(
            {
                "generate_s": time.perf_counter() - t0,
                "prompt_ids": [list(p) for p in prompts],
                "lengths": [len(r) for r in responses],
            }
        )
        return responses

    def make_spy(self, prompts, messages, seed):
        t0 = time.perf_counter()
        batch = make(self, prompts, messages, seed)
        records[-1].update(rollout_s=time.perf_counter() - t0, scores=batch["scores"].tolist())
        return batch

    def train_spy(model, *a, **k):
        spy["init_fingerprint"] = fingerprint(model)
        t0 = time.perf_counter()
        try:
            return train(model, *a, **k)
        finally:
            spy["total_s"] = time.perf_counter() - t0

    rollout.generate, rollout.Rollouts.make, skeleton.train = generate_spy, make_spy, train_spy
    with tempfile.TemporaryDirectory(prefix="rl-bench-deltatune-") as tmp:
        run_dir = Path(tmp) / "run"
        cfg = validate_config(
            {
                "task": "ppo",
                "model": {"name": MODEL},
                "output_dir": str(run_dir),
                "data": {
                    "train": ctx["train_path"],
                    "layout": "alpaca",
                    "template": "chat",
                    "max_length": MAX_LENGTH,
                },
                "method": {"name": "lora", "r": R, "alpha": ALPHA, "dropout": 0.0, "target_modules": TARGETS},
                "ppo": {
                    "algorithm": "grpo",
                    "reward": REWARD,
                    "prompts_per_rollout": args.prompts,
                    "group_size": args.group,
                    "epochs": args.epochs,
                    "kl_coef": BETA,
                    "clip": CLIP,
                    "entropy_coef": 0.0,
                },
                "generate": {
                    "max_new_tokens": args.max_new_tokens,
                    "temperature": TEMPERATURE,
                    "top_p": TOP_P,
                },
                "train": {
                    "epochs": 1,
                    "batch_size": args.batch_size,
                    "grad_accum": 1,
                    "learning_rate": LR,
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
                },
            }
        )  # "auto" may pick bf16
        summary = run_config(cfg, overwrite=True)
        gc.collect()
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        logged = [json.loads(x).get("rollout_tokens_per_s") for x in lines]
        logged = [x for x in logged if x is not None]
        extra = {
            "init_fingerprint": spy.get("init_fingerprint"),
            "deltatune_train_seconds": summary["train_seconds"],
            "deltatune_train_tokens": summary["train_tokens"],
            "deltatune_logged_rollout_tokens_per_s": sum(logged) / len(logged) if logged else None,
            "trainable_params": (summary.get("trainable_parameters") or {}).get("trainable"),
        }
        result = measures(
            records, expected_rollouts(ctx, args), spy["total_s"], summary["steps"], args, extra
        )
    result["sampling_processors"] = sorted(sampling)
    return result


WAYS = {  # name: (function, the TRL way it is compared with)
    "trl_grpo": (way_trl, None),
    "deltatune_grpo": (way_deltatune, "trl_grpo"),
}
DEFAULT_WAYS = list(WAYS)


def run_way(args) -> None:
    """Child process: run one way, print one JSON line (with "error" instead of numbers on failure)."""
    import torch
    from transformers import AutoTokenizer

    from deltatune.models.bundled import bundled_model_path

    result = {"way": args.way, "torch_threads": torch.get_num_threads(), **sizes(args)}
    try:
        path = bundled_model_path(MODEL)
        tok = AutoTokenizer.from_pretrained(path)
        ctx = {
            "path": path,
            "tok": tok,
            **select_prompts(tok, args, Path(args.cache_dir or tempfile.mkdtemp())),
        }
        result.update(WAYS[args.way][0](ctx, args))
    except Exception as e:  # noqa: BLE001 - reported in the table, the traceback goes to the log
        record_failure(result, e)
    exit_with(result)


def sizes(args) -> dict:
    return {
        k: getattr(args, k)
        for k in ("steps", "prompts", "group", "max_new_tokens", "batch_size", "epochs", "trl_top_k")
    }


# --------------------------------------------------------------------------- parent / orchestration
def run_child(way: str, args, work: Path) -> dict:
    """Run one way in a fresh child; its JSON line plus the child's whole-process peak RSS (wait4)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--way", way, "--cache-dir", str(work)]
    for key, value in sizes(args).items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    return spawn_way(cmd, way, work, args.reuse, same=sizes(args))


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def trl_ppo_status() -> str:
    import importlib.util
    import warnings

    import trl

    with warnings.catch_warnings():  # importing trl.experimental warns that its APIs are unstable
        warnings.simplefilter("ignore")
        found = [
            name
            for name in ("trl.experimental.ppo", "trl.trainer.ppo_trainer")
            if importlib.util.find_spec(name) is not None
        ]
    if hasattr(trl, "PPOTrainer") or found:
        where = "trl.PPOTrainer" if hasattr(trl, "PPOTrainer") else found[0]
        return f"TRL {trl.__version__} has a PPO trainer ({where}) but this benchmark does not run it"
    return (
        f"TRL {trl.__version__} has no PPOTrainer "
        "(hasattr(trl, 'PPOTrainer') is False; no trl.experimental.ppo): "
        "deltatune's PPO cannot be compared with TRL here; only GRPO is"
    )


def print_table(results: list[dict], args) -> list[str]:
    ok = {r["way"]: r for r in results if "error" not in r}
    print(
        f"\n{args.steps} rollouts x {args.prompts} prompts x {args.group} answers, <= {args.max_new_tokens} "
        f"new tokens, minibatch {args.batch_size}, {args.epochs} passes per rollout\n"
    )
    print(
        "| way | rollouts | opt steps | prompt+compl tok | compl tok (mean len) | total s "
        "| rollout s (gen s) | update s | gen tok/s | update tok/s | tok/s | compl tok/s "
        "| x vs TRL: tok/s, compl, gen, update | peak RSS MB | RSS vs TRL | reward first -> last |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['way']} | FAILED: {r['error'][:150]} |" + " |" * 14)
            continue
        ref = ok.get(WAYS[r["way"]][1] or "")
        xs = ", ".join(
            ratio(r[k], ref and ref[k])
            for k in (
                "tokens_per_s",
                "completion_tokens_per_s",
                "generate_tokens_per_s",
                "update_tokens_per_s",
            )
        )
        reward = (
            f"{r['reward_first']:.3f} -> {r['reward_last']:.3f}" if r.get("reward_first") is not None else "-"
        )
        print(
            f"| {r['way']} | {r['rollouts']} | {r['optimizer_steps']} | {r['sequence_tokens']:,} "
            f"| {r['completion_tokens']:,} ({r['mean_completion_length']:.1f}) | {r['total_seconds']:.1f} "
            f"| {r['rollout_seconds']:.1f} "
            f"({r['generate_seconds']:.1f}) | {r['update_seconds']:.1f} "
            f"| {r['generate_tokens_per_s'] or 0:,.1f} "
            f"| {r['update_tokens_per_s'] or 0:,.1f} | {r['tokens_per_s']:,.1f} "
            f"| {r['completion_tokens_per_s']:,.1f} | {xs if ref else '-'} | {r['peak_rss_mb']:,.0f} "
            f"| {ratio(r['peak_rss_mb'], ref and ref['peak_rss_mb'])} | {reward} |"
        )
    print(
        "\ntok/s: prompt + completion tokens of the sampled sequences / total training wall time (rollouts + "
        "updates); compl tok/s: completion tokens / total; gen tok/s: completion tokens / time in "
        "generation; update tok/s: (prompt + completion tokens) x passes / (total - rollout time). Sampled "
        "lengths differ between ways (own RNG streams), so compare per-token rates, not seconds. Peak RSS: "
        "ru_maxrss of the child right after training."
    )
    notes(results, ok, args)
    return summary_lines(ok)


def notes(results: list[dict], ok: dict, args) -> None:
    print(f"note: {trl_ppo_status()}")
    expected = args.steps * args.epochs * args.prompts * args.group // args.batch_size
    for r in results:
        if "error" in r:
            continue
        if r["optimizer_steps"] != expected or r["rollouts"] != args.steps:
            print(
                f"note: {r['way']} made {r['rollouts']} rollouts and {r['optimizer_steps']} optimizer steps; "
                f"expected {args.steps} and {expected}"
            )
        print(
            f"note: {r['way']}: {r['rollout_prompts_identical_to_ours']}/{r['rollouts_expected']} rollouts "
            "generated from exactly our prompt ids (deltatune's rollout order); "
            f"{100 * r['truncated_share']:.0f}% of answers hit max_new_tokens; sampling processors: "
            f"{'; '.join(r['sampling_processors']) or '?'}"
        )
        if r.get("deltatune_logged_rollout_tokens_per_s") is not None:
            print(
                f"note: {r['way']}: deltatune's own log: rollout_tokens_per_s "
                f"{r['deltatune_logged_rollout_tokens_per_s']:.1f} "
                "(generated tokens / (generation + reward) time), "
                f"train_seconds {r['deltatune_train_seconds']:.1f}"
            )
        ref = ok.get(WAYS[r["way"]][1] or "")
        if ref:
            if r["sampling_processors"] != ref["sampling_processors"]:
                print(f"note: {r['way']} and {ref['way']} sampled with different logits processors")
            a, b = r.get("init_fingerprint"), ref.get("init_fingerprint")
            if a and b:
                same = a[0] == b[0] and all(
                    abs(x - y) <= 1e-6 * max(1.0, abs(y)) for x, y in zip(a[1:], b[1:])
                )
                detail = (
                    "identical"
                    if same
                    else "differ (count, sum, sum of squares): " + str(a) + " vs " + str(b)
                )
                print(f"note: {r['way']} vs {ref['way']}: initial trainable weights {detail}")


def summary_lines(ok: dict) -> list[str]:
    lines = []
    for way, (_, ref_way) in WAYS.items():
        d, t = ok.get(way), ok.get(ref_way or "")
        if not d or not ref_way:
            continue
        if not t:
            lines.append(f"ratio {way}: {ref_way} did not run or failed; no comparison")
            continue
        lines.append(
            f"ratio {way} / {ref_way}: tok/s {ratio(d['tokens_per_s'], t['tokens_per_s'])}, completion tok/s "
            f"{ratio(d['completion_tokens_per_s'], t['completion_tokens_per_s'])}, generation tok/s "
            f"{ratio(d['generate_tokens_per_s'], t['generate_tokens_per_s'])}, update tok/s "
            f"{ratio(d['update_tokens_per_s'], t['update_tokens_per_s'])}; peak RSS "
            f"{d['peak_rss_mb']:,.0f} vs {t['peak_rss_mb']:,.0f} MB"
        )
    print("\n" + "\n".join(lines or ["ratio: no comparison (a way failed)"]))
    return lines


def check_inputs(args, work: Path) -> dict:
    """Parent: our prompt ids equal TRL's conversational construction, prompt by prompt."""
    from transformers import AutoTokenizer

    from deltatune.models.bundled import bundled_model_path

    tok = AutoTokenizer.from_pretrained(bundled_model_path(MODEL))
    sel = select_prompts(tok, args, work)
    same = chat_template_check(tok, sel["messages"], sel["ids"])
    lengths = [len(i) for i in sel["ids"]]
    print(
        f"inputs: {same}/{len(sel['ids'])} prompts encode exactly as apply_chat_template(messages, "
        f"add_generation_prompt=True) (template {sel['template']}); "
        f"prompt tokens {min(lengths)}-{max(lengths)}, "
        f"rollout order {sel['order']}",
        flush=True,
    )
    return {
        "prompts": len(sel["ids"]),
        "prompts_matching_chat_template": same,
        "prompt_tokens": sum(lengths),
        "rollout_order": sel["order"],
        "data": str(DATA_JSON),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--steps", type=int, default=4, help="rollouts (each followed by its updates)")
    p.add_argument("--prompts", type=int, default=4, help="prompts per rollout")
    p.add_argument("--group", type=int, default=4, help="answers per prompt (GRPO group size)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest answer, in tokens")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per optimizer step (minibatch)")
    p.add_argument(
        "--epochs", type=int, default=2, help="passes over each rollout (ppo.epochs / num_iterations)"
    )
    p.add_argument(
        "--trl-top-k", type=int, default=0, help="TRL's top_k (0 = no top-k, as deltatune's rollouts)"
    )
    p.add_argument("--ways", help=f"comma list (default: {','.join(DEFAULT_WAYS)})")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 2 rollouts of 2 prompts x 2 answers x 16 tokens, minibatch 2",
    )
    p.add_argument("--workdir", help="keep child logs here (default: a temp dir)")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="with --workdir: keep the results of ways that already "
        "finished there with the same sizes; each is marked reused_from",
    )
    p.add_argument(
        "--json",
        type=Path,
        help=f"results file (default {RESULTS_JSON.relative_to(HERE.parent)}; not "
        "written for --quick runs unless given)",
    )
    p.add_argument("--way", choices=list(WAYS), help="run one way in this process and print one JSON line")
    p.add_argument(
        "--cache-dir", help=argparse.SUPPRESS
    )  # the parent's work dir: the training file is written there
    args = p.parse_args()
    if args.quick:
        args.steps, args.prompts, args.group, args.max_new_tokens, args.batch_size = 2, 2, 2, 16, 2
    if min(args.steps, args.prompts, args.max_new_tokens, args.batch_size, args.epochs) < 1 or args.group < 2:
        p.error(
            "--steps, --prompts, --max-new-tokens, --batch-size, --epochs must be positive; "
            "--group at least 2"
        )
    if (args.prompts * args.group) % args.batch_size:
        p.error(
            "--prompts x --group must be a multiple of --batch-size (TRL splits each rollout into whole "
            "minibatches)"
        )
    if args.trl_top_k < 0:
        p.error("--trl-top-k must be 0 (off) or positive")
    if args.way:
        run_way(args)
        return

    ways, work = ways_and_workdir(p, args, WAYS, DEFAULT_WAYS, "deltatune-rl-bench-")
    inputs = check_inputs(args, work)
    results = [run_child(way, args, work) for way in ways]
    lines = print_table(results, args)
    tidy_workdir(args, work, results)
    write_results(args, inputs, lines, results)


def write_results(args, inputs: dict, lines: list[str], results: list[dict]) -> None:
    import peft
    import torch
    import transformers
    import trl

    out = args.json or (None if args.quick else RESULTS_JSON)
    if out is None:
        print("\n--quick run: results not written (pass --json PATH to keep them)")
        return
    write_json(
        out,
        {
            "protocol": {
                "data": str(DATA_JSON),
                "model": MODEL,
                "algorithm": "grpo",
                "reward": "benchmarks/rewards.py:concise",
                **sizes(args),
                "temperature": TEMPERATURE,
                "top_p": TOP_P,
                "kl_coef": BETA,
                "clip": CLIP,
                "learning_rate": LR,
                "scheduler": "linear, no warm-up",
                "max_grad_norm": 1.0,
                "seed": SEED,
                "lora": {"r": R, "alpha": ALPHA, "dropout": 0.0, "target_modules": TARGETS},
                "precision": "fp32",
                "gradient_checkpointing": False,
                "vllm": False,
            },
            "trl_ppo": trl_ppo_status(),
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
            "ratios": lines,
            "results": results,
        },
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
