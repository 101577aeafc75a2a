"""Win rate of a tuned policy's answers over the base model's, judged by a reward model run.

Both models answer the same held-out prompts (greedy, the run's template); the reward run scores every
answer given its prompt (the whole conversation before it); the win rate counts ties as half, with a
95% Wilson interval over prompts. Used for the DPO and PPO real runs in the README.

    .venv/bin/python benchmarks/preference_winrate.py --policy runs/dpo --reward runs/rm \
        --prompts-from runs/dpo --limit 64 --max-new-tokens 128

``--prompts-from RUN`` takes the held-out prompts of that run's config (its validation split, made with
its seed), so the prompts were never trained on; ``--prompts FILE`` reads any instruction or
preference file instead.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def held_out_prompts(run_dir: str | None, path: str | None, limit: int) -> list[list[dict]]:
    from deltatune.data.pairs import load_pair_splits
    from deltatune.runs.loaded import finished_run_config
    from deltatune.tasks.preference.options import PreferenceData
    from deltatune.tasks.rl.prompts import PromptData, load_prompt_splits, read_prompts

    if path:
        return read_prompts(path, PromptData(train=path))[:limit]
    cfg = finished_run_config(Path(run_dir))
    if isinstance(cfg.data, PreferenceData):
        splits, _ = load_pair_splits(cfg.data, cfg.train.seed)
        return [p.prompt for p in splits["validation"]][:limit]
    if isinstance(cfg.data, PromptData):
        return load_prompt_splits(cfg.data, cfg.train.seed)["validation"][:limit]
    from deltatune.data.conversations import load_splits

    return [c.prompt_messages for c in load_splits(cfg.data, cfg.train.seed)["validation"]][:limit]


def answers(model, tokenizer, template, prompts, max_new_tokens: int) -> list[str]:
    from deltatune.config import GenerateConfig
    from deltatune.data.masks import prompt_ids
    from deltatune.inference.generation import generate_texts

    ids = [prompt_ids(tokenizer, template, p) for p in prompts]
    return generate_texts(
        model, tokenizer, ids, GenerateConfig(max_new_tokens=max_new_tokens, batch_size=8), seed=0
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policy", required=True, help="a tuned causal-LM run (dpo, ppo, sft)")
    p.add_argument("--reward", required=True, help="a reward run that judges the answers")
    p.add_argument("--prompts-from", help="a run whose validation prompts to use (default: --policy)")
    p.add_argument("--prompts", help="or a file of prompts")
    p.add_argument("--limit", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    from deltatune.metrics.intervals import pairwise_accuracy_ci
    from deltatune.runs.loaded import load_run

    prompts = held_out_prompts(args.prompts_from or args.policy, args.prompts, args.limit)
    run = load_run(args.policy)
    template = run.template()
    start = time.perf_counter()
    tuned = answers(run.model, run.tokenizer, template, prompts, args.max_new_tokens)
    with run.method.switch_off(run.model) if run.method.switch_off else _base(run) as base_model:
        base = answers(base_model or run.model, run.tokenizer, template, prompts, args.max_new_tokens)
    generated = time.perf_counter() - start
    judge = load_run(args.reward, command="score")
    tuned_scores = judge.task.score(judge, prompts, tuned)
    base_scores = judge.task.score(judge, prompts, base)
    wins = [t > b for t, b in zip(tuned_scores, base_scores)]
    ties = sum(t == b for t, b in zip(tuned_scores, base_scores))
    rate, low, high = pairwise_accuracy_ci(wins)
    result = {
        "policy": args.policy,
        "reward": args.reward,
        "prompts": len(prompts),
        "wins": sum(wins),
        "ties": ties,
        "win_rate": (sum(wins) + 0.5 * ties) / len(prompts),
        "strict_win_rate_ci": [low, high],
        "tuned_mean_reward": sum(tuned_scores) / len(prompts),
        "base_mean_reward": sum(base_scores) / len(prompts),
        "tuned_words": sum(len(a.split()) for a in tuned) / len(tuned),
        "base_words": sum(len(a.split()) for a in base) / len(base),
        "generation_seconds": round(generated, 1),
        "samples": [
            {"prompt": p[-1]["content"], "base": b, "tuned": t, "base_reward": bs, "tuned_reward": ts}
            for p, b, t, bs, ts in list(zip(prompts, base, tuned, base_scores, tuned_scores))[:5]
        ],
    }
    print(
        "| policy | prompts | win rate (ties half) | strict wins 95% CI "
        "| mean reward base -> tuned | words base -> tuned |\n"
        f"|---|---:|---:|---|---|---|\n"
        f"| {args.policy} | {len(prompts)} | {result['win_rate']:.3f} | [{low:.3f}, {high:.3f}] | "
        f"{result['base_mean_reward']:.3f} -> {result['tuned_mean_reward']:.3f} | "
        f"{result['base_words']:.1f} -> {result['tuned_words']:.1f} |"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


class _base:
    """A full fine-tuning run has no switch: load its base model for the comparison."""

    def __init__(self, run):
        self.run = run

    def __enter__(self):
        from deltatune.models import load_for_causal_lm

        model, _, _ = load_for_causal_lm(self.run.cfg.model.name, dtype=self.run.cfg.model.dtype)
        return model.eval()

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
