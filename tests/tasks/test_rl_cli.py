"""RLHF on tiny models: rollouts keep the generated ids and score them at the right positions, the
first update sees ratio 1 and KL 0, PPO and GRPO raise a synthetic reward with the KL bounded (less
with a larger KL coefficient), a reward run can be the reward, guardrails stop a drifting run, and
a killed run resumes."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from deltatune.cli import main
from deltatune.models import make_tiny_model_dir

REWARDS = '''
def early_letters(prompts, responses):
    """Share of the words that start with a, b, c, d or e (about a quarter for a random model)."""
    return [sum(w[:1].lower() in "abcde" for w in r.split()) / max(len(r.split()), 1) for r in responses]

def broken(prompts, responses):
    return [float("nan")] * len(responses)
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl")
    (root / "rewards.py").write_text(REWARDS)
    (root / "prompts.jsonl").write_text(
        "".join(json.dumps({"instruction": f"Say something about item {i}."}) + "\n" for i in range(48))
    )
    return {"root": root, "llama": make_tiny_model_dir("llama", root / "llama", task="causal_lm")}


def args(setup, out, *extra):
    """A tiny random model samples almost uniformly from its whole vocabulary, which PPO shifts too slowly for
    a test; the top-k and nucleus cuts a user can set (``generate.top_k``, ``top_p``) keep learning within a
    few dozen steps."""
    r = setup["root"]
    return [
        "train",
        "task=ppo",
        f"model.name={setup['llama']}",
        f"data.train={r / 'prompts.jsonl'}",
        "data.validation_split=0.25",
        f"ppo.reward={r / 'rewards.py'}:early_letters",
        "generate.max_new_tokens=12",
        "train.epochs=3",
        "train.batch_size=8",
        "train.learning_rate=1e-2",
        "train.progress=false",
        "train.precision=fp32",
        "train.log_every=4",
        "generate.top_k=50",
        "generate.top_p=0.9",
        "--output-dir",
        str(out),
        "--json",
        *extra,
    ]


def rollout_log(out):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "score_mean" in r]


def test_first_rollout_has_ratio_one_and_kl_zero(setup, one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deltatune.data.masks import prompt_ids
    from deltatune.data.templates import make_template
    from deltatune.losses.rl import FixedKLController
    from deltatune.methods.lora import LORA
    from deltatune.methods.lora.options import LoraOptions
    from deltatune.methods.registry import ModelContext
    from deltatune.tasks.rl.rollout import Rollouts, RolloutSettings, forward

    model = AutoModelForCausalLM.from_pretrained(setup["llama"])
    tok = AutoTokenizer.from_pretrained(setup["llama"])
    LORA.apply(model, LoraOptions(), ModelContext("x", "CAUSAL_LM", []))
    with torch.no_grad():  # a trained-looking adapter: the policy differs from the reference
        for layer in [m for m in model.modules() if hasattr(m, "lora_B")]:
            layer.lora_B.weight.normal_(0, 0.05)
    messages = [[{"role": "user", "content": f"item {i}"}] for i in range(4)]
    prompts = [prompt_ids(tok, make_template("chat", tok), m) for m in messages]
    settings = RolloutSettings("ppo", 4, 1, 1, 4, 6, 1.0, 1.0, 1.0, 0.95, "k1", True)
    value_head = torch.nn.Linear(model.config.hidden_size, 1)
    rollouts = Rollouts(
        model,
        tok,
        value_head,
        lambda: (model, LORA.switch_off(model)),
        lambda p, r: [float(len(x)) for x in r],
        settings,
        FixedKLController(0.1),
    )
    batch = rollouts.make(prompts, messages, seed=0)
    for i, p in enumerate(prompts):  # ids kept as generated: the prompt, then the response
        assert batch["input_ids"][i, : len(p)].tolist() == p and batch["mask"][i, : len(p)].sum() == 0
    with torch.no_grad():
        logps, values, _ = forward(model, value_head, batch["input_ids"], batch["attention_mask"])
    mask = batch["mask"].bool()
    ratio = torch.exp(logps - batch["old_logps"])[mask]
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)  # first update: ratio 1
    assert batch["stats"]["kl"] != 0  # policy != reference here ...
    same = Rollouts(
        model,
        tok,
        value_head,
        lambda: (model, torch.no_grad()),
        lambda p, r: [0.0] * len(r),
        settings,
        FixedKLController(0.1),
    ).make(prompts, messages, seed=0)
    assert same["stats"]["kl"] == 0  # ... and 0 when the reference is the policy itself
    # the LM head runs on response positions only:
    # the same log-probs and entropies as the whole model's logits
    from deltatune.losses.rl import entropy_from_logits, shifted_logprobs

    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        picked, _, entropy = forward(
            model, None, batch["input_ids"], batch["attention_mask"], 1.0, batch["mask"], entropy=True
        )
    torch.testing.assert_close(
        picked[mask], shifted_logprobs(logits, batch["input_ids"])[mask], atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        entropy[mask], entropy_from_logits(logits[:, :-1])[mask[:, 1:]], atol=1e-5, rtol=1e-5
    )
    assert not picked[~mask].any() and not entropy[~mask].any()


def test_ppo_and_grpo_raise_the_reward_with_bounded_kl(setup, tmp_path, capsys, one_thread):
    for algo, extra in (("ppo", []), ("grpo", ["ppo.prompts_per_rollout=8"])):
        out = tmp_path / algo
        assert main(args(setup, out, f"ppo.algorithm={algo}", *extra)) == 0
        summary = json.loads(capsys.readouterr().out)
        log = rollout_log(out)
        assert log[0]["kl"] == pytest.approx(0, abs=1e-6)  # the first rollout comes from the reference itself
        first, last = log[0]["score_mean"], max(r["score_mean"] for r in log[-3:])
        assert last > first + 0.1, (algo, first, last)
        assert summary["tuned_score"] > summary["base_score"] and summary["tuned_win_rate"] > 0.5
        assert max(r["kl"] for r in log) < 5
        if algo == "ppo":  # the value head's fit is logged (GRPO has no value head)
            assert any(-10 < r.get("explained_variance", -99) <= 1 for r in log)
        else:
            assert not any("explained_variance" in r for r in log)
        report = (out / "eval_report.md").read_text()
        assert "| prompt | base | reward | tuned | reward |" in report
        assert 'id="plot-rollouts"' in (out / "eval_report.html").read_text()  # score and KL curves
    # a large KL coefficient keeps the policy near the reference
    near = tmp_path / "near"
    assert main(args(setup, near, "ppo.kl_coef=5")) == 0
    capsys.readouterr()
    assert max(r["kl"] for r in rollout_log(near)) < max(r["kl"] for r in rollout_log(tmp_path / "ppo"))


def test_reward_from_a_reward_run_and_guardrails(setup, tmp_path, capsys, one_thread):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": f"item {i}", "chosen": "a b c d e", "rejected": "x y z"}) + "\n"
            for i in range(32)
        )
    )
    rm = tmp_path / "rm"
    assert (
        main(
            [
                "train",
                "task=reward",
                f"model.name={setup['llama']}",
                f"data.train={pairs}",
                "train.epochs=2",
                "train.batch_size=8",
                "train.progress=false",
                "train.precision=fp32",
                "--output-dir",
                str(rm),
            ]
        )
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "with-rm"
    assert main(args(setup, out, f"ppo.reward={rm}", "train.epochs=1")) == 0
    assert json.loads(capsys.readouterr().out)["tuned_score"] is not None
    code = main(args(setup, tmp_path / "drift", "ppo.max_kl=1e-9", "train.epochs=1"))
    assert code == 2 and "ppo.max_kl" in capsys.readouterr().err
    code = main(args(setup, tmp_path / "nan", f"ppo.reward={setup['root'] / 'rewards.py'}:broken"))
    assert code == 2 and "finite" in capsys.readouterr().err
    assert main(args(setup, tmp_path / "bad", "ppo.reward=no_such_module:f")) == 2
    assert "cannot import" in capsys.readouterr().err


@pytest.mark.parametrize("value_model", ["shared", "separate"])
def test_a_killed_rl_run_resumes(setup, tmp_path, value_model):
    out = tmp_path / "run"
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "DELTATUNE_FAULT_AT_STEP": "8"}
    cmd = [
        sys.executable,
        "-m",
        "deltatune",
        *args(setup, out, "train.checkpoint_every=4", f"ppo.value_model={value_model}"),
    ]
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL
    env.pop("DELTATUNE_FAULT_AT_STEP")
    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 24 and summary["tuned_score"] is not None


def test_rollouts_sample_from_the_whole_distribution(setup):
    """The log-probs, ratios and KL use the full softmax, so rollouts must not cut it: no top-k (transformers
    would apply top_k=50 unless told), and top-p 1 unless the user set ``generate.top_p``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deltatune.config import GenerateConfig
    from deltatune.tasks.rl.rollout import RolloutSettings, generate, on_policy_top_p

    assert on_policy_top_p(GenerateConfig()) == 1.0 and on_policy_top_p(GenerateConfig(top_p=0.8)) == 0.8
    model = AutoModelForCausalLM.from_pretrained(setup["llama"])
    tokenizer = AutoTokenizer.from_pretrained(setup["llama"])
    seen = {}
    original = model.generate

    def spy(*a, **kw):
        seen.update(kw)
        return original(*a, **kw)

    model.generate = spy
    settings = RolloutSettings(
        "grpo", 1, 2, 1, 2, 4, 1.0, on_policy_top_p(GenerateConfig()), 1.0, 0.95, "k3", False
    )
    responses = generate(model, tokenizer, [[1, 5, 6], [1, 7]], settings, seed=0)
    assert len(responses) == 2 and seen["top_k"] == 0 and seen["top_p"] == 1.0 and seen["do_sample"]


def test_a_separate_value_model_keeps_value_gradients_out_of_the_policy(setup):
    from transformers import AutoModelForCausalLM

    from deltatune.methods.lora import LORA
    from deltatune.methods.lora.options import LoraOptions
    from deltatune.methods.registry import ModelContext
    from deltatune.tasks.rl.rollout import attach_value_head, attach_value_model, forward

    def lora_model(seed):
        torch.manual_seed(seed)
        m = AutoModelForCausalLM.from_pretrained(setup["llama"])
        LORA.apply(m, LoraOptions(), ModelContext("x", "CAUSAL_LM", []))
        for layer in [x for x in m.modules() if hasattr(x, "lora_B")]:  # non-zero B: gradients reach A too
            torch.nn.init.normal_(layer.lora_B.weight, std=0.05)
        return m

    ids = torch.randint(3, 100, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    for kind in ("shared", "separate"):
        policy = lora_model(0)
        value = (
            attach_value_head(policy)
            if kind == "shared"
            else attach_value_model(policy, lora_model(1).base_model)
        )
        logps, values, _ = forward(policy, value, ids, mask)
        assert (
            values.shape == logps.shape == ids.shape and not values[:, 0].any()
        )  # value at t from state t-1
        values.sum().backward()
        policy_lora = [p for n, p in policy.named_parameters() if "lora_" in n and "ppo_value" not in n]
        reached = any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy_lora)
        assert reached == (kind == "shared"), kind  # a separate value model's gradients stay in it
        if kind == "separate":
            head_and_trunk = [p for p in value.parameters() if p.requires_grad]
            assert len(head_and_trunk) > 2 and all(p.grad is not None for p in head_and_trunk)
            assert not any(p.requires_grad for n, p in value.trunk.named_parameters() if "lora_" not in n)


def test_ppo_with_a_separate_value_model_trains_saves_and_checks(setup, tmp_path, capsys, one_thread):
    out = tmp_path / "separate"
    assert main(args(setup, out, "ppo.value_model=separate", "train.epochs=1")) == 0
    capsys.readouterr()
    from safetensors.torch import load_file

    saved = load_file(str(out / "value_model.safetensors"))
    assert "value_model.head.weight" in saved and any("lora_" in k for k in saved)
    assert not (out / "value_head.safetensors").exists()
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert adapter and not any("value" in k for k in adapter)  # the policy's adapter holds the policy only
    assert any("explained_variance" in r for r in rollout_log(out))
    assert main(args(setup, tmp_path / "grpo", "ppo.algorithm=grpo", "ppo.value_model=separate")) == 2
    assert "ppo.value_model" in capsys.readouterr().err
