"""Preference learning end to end on tiny models: pair data in every layout with exact answer masks,
truncation as configured, a reward model and DPO that learn a synthetic preference, their reports,
`score`, `eval`, `preview`, merging and PEFT loading."""

import json
import random

import pytest
import torch

from deltatune.cli import main
from deltatune.data.conversations import FieldMap
from deltatune.data.pairs import PairStats, rows_to_pairs
from deltatune.data.readers import Row
from deltatune.data.templates import make_template
from deltatune.losses.lm import IGNORE_INDEX
from deltatune.models import make_tiny_model_dir
from deltatune.tasks.preference.pairs import encode_pairs

WORDS = "apple river stone cloud light paper music garden window candle".split()


def synthetic_pairs(n, seed=0):
    """Chosen answers use kind words, rejected ones rude words: learnable from the answer alone."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic = rng.choice(WORDS)
        good = " ".join(rng.choice(["great", "good", "kind", "helpful"]) for _ in range(4))
        bad = " ".join(rng.choice(["awful", "rude", "bad", "wrong"]) for _ in range(4))
        rows.append(
            {
                "prompt": f"Tell me about the {topic}.",
                "chosen": f"The {topic} is {good}.",
                "rejected": f"The {topic} is {bad}.",
            }
        )
    return rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pref")
    train, val = root / "train.jsonl", root / "val.jsonl"
    rows = synthetic_pairs(96)
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:64]))
    val.write_text("".join(json.dumps(r) + "\n" for r in rows[64:]))
    return {
        "llama": make_tiny_model_dir("llama", root / "llama", task="causal_lm"),
        "bert": make_tiny_model_dir("bert", root / "bert", num_labels=1),
        "train": train,
        "val": val,
        "root": root,
    }


def _rows(records):
    return [Row.make(r, "pairs.jsonl", i + 1) for i, r in enumerate(records)]


def test_hh_transcripts_become_chat_pairs_and_mismatches_are_counted():
    rows = _rows(
        [
            {
                "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: a joke?\n\nAssistant: Why not.",
                "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: a joke?\n\nAssistant: No.",
            },
            {"chosen": "\n\nHuman: one\n\nAssistant: yes", "rejected": "\n\nHuman: two\n\nAssistant: no"},
        ]
    )
    pairs, stats = rows_to_pairs(rows)
    assert len(pairs) == 1 and stats.skipped_prompt_mismatch == 1 and stats.skipped_lines == [2]
    assert pairs[0].prompt == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "a joke?"},
    ]
    assert (pairs[0].chosen, pairs[0].rejected) == ("Why not.", "No.")


def test_explicit_and_message_layouts():
    msgs = [{"role": "user", "content": "q"}]
    explicit = rows_to_pairs(
        _rows([{"prompt": msgs, "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}])
    )[0][0]
    assert (explicit.prompt, explicit.chosen, explicit.rejected) == (msgs, "a", "b")
    implicit = rows_to_pairs(
        _rows(
            [
                {
                    "chosen": msgs + [{"role": "assistant", "content": "a"}],
                    "rejected": msgs + [{"role": "assistant", "content": "b"}],
                }
            ]
        )
    )[0][0]
    assert (implicit.prompt, implicit.chosen, implicit.rejected) == (msgs, "a", "b")
    mapped = rows_to_pairs(
        _rows([{"q": "x", "good": "a", "bad": "b", "gap": 2}]),
        fields=FieldMap({"prompt": "q", "chosen": "good", "rejected": "bad", "margin": "gap"}),
    )[0][0]
    assert mapped.chosen == "a" and mapped.margin == 2.0


@pytest.mark.parametrize("template", ["chat", "alpaca"])
def test_answer_masks_are_exact_and_prompts_shared(tiny, template):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["llama"])
    pairs, _ = rows_to_pairs(_rows(synthetic_pairs(12)))
    feats, stats = encode_pairs(pairs, make_template(template, tok), tok, None)
    assert stats.kept == 12
    for f, pair in zip(feats, pairs):
        for side in ("chosen", "rejected"):
            ids, labels = f[f"{side}_ids"], f[f"{side}_labels"]
            start = next(i for i, x in enumerate(labels) if x != IGNORE_INDEX)
            scored = tok.decode([x for x in labels if x != IGNORE_INDEX])
            assert scored.startswith(getattr(pair, side)) and len(scored) - len(getattr(pair, side)) < 20
            assert all(x in (IGNORE_INDEX, i) for i, x in zip(ids, labels))
            assert ids[:start] == f["chosen_ids"][:start]  # one prompt for both answers


def test_decoder_rewards_need_no_attention_mask(tiny):
    """Right-padded rows of a causal model: no real token sees a pad, so the rewards (read at each row's
    last token) are the same without the mask, which lets attention run its causal kernel in training."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from deltatune.losses.preference import sequence_rewards
    from deltatune.tasks.preference.pairs import pair_collate

    tok = AutoTokenizer.from_pretrained(tiny["llama"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny["llama"], num_labels=1).eval()
    pairs, _ = rows_to_pairs(_rows(synthetic_pairs(6, seed=3)))
    pairs[0].chosen += " and much longer than the others, so the other rows get padded at the end"
    feats, _ = encode_pairs(pairs, make_template("chat", tok), tok, None)
    for f, i in zip(feats, range(len(feats))):
        f["index"] = i
    with torch.no_grad():
        masked = sequence_rewards(
            model, pair_collate(feats, tok.pad_token_id, attention_mask=True, split_parts=False)
        )
        bare = pair_collate(feats, tok.pad_token_id, attention_mask=False, split_parts=False)
        assert "attention_mask" not in bare["parts"][0]
        torch.testing.assert_close(sequence_rewards(model, bare), masked, atol=1e-5, rtol=1e-5)


def _share_feats():
    """Pairs with prompts of several lengths; answers that share their first token; a chosen answer
    that is only the end token (a prefix of the rejected one)."""
    g = torch.Generator().manual_seed(0)
    feats = []
    for i, (p, a, b) in enumerate([(7, 3, 5), (12, 4, 1), (3, 6, 6), (9, 0, 4), (5, 2, 2)]):
        prompt, ca, ra = (torch.randint(5, 90, (n,), generator=g).tolist() for n in (p, a, b))
        if i == 2:
            ra[0] = ca[0]
        feats.append(
            {
                "chosen_ids": prompt + ca + [2],
                "chosen_labels": [IGNORE_INDEX] * p + ca + [2],
                "rejected_ids": prompt + ra + [2],
                "rejected_labels": [IGNORE_INDEX] * p + ra + [2],
                "index": i,
                "margin": None,
            }
        )
    return feats


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_pairs_sharing_their_prompt_give_the_same_rewards_logps_and_gradients(tmp_path, kind, attention):
    """One row per pair (prompt once, a 4-D mask keeping the answers apart, the rejected answer's
    positions restarting after the prompt) computes exactly what two separate sequences do."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from deltatune.losses.preference import answer_logps, sequence_rewards
    from deltatune.tasks.preference.pairs import pair_collate, shared_pair_collate

    feats = _share_feats()
    shared = shared_pair_collate(feats, 0)
    assert shared["num_tokens"] == sum(len(f["chosen_ids"]) + len(f["rejected_ids"]) for f in feats)
    assert sum(int(p["input_ids"].ne(0).sum()) for p in shared["parts"]) < shared["num_tokens"]
    lm = AutoModelForCausalLM.from_pretrained(
        make_tiny_model_dir(kind, tmp_path / "lm", task="causal_lm"), attn_implementation=attention
    )
    rm = AutoModelForSequenceClassification.from_pretrained(
        make_tiny_model_dir(kind, tmp_path / "rm", num_labels=1), attn_implementation=attention
    )
    for model, run in ((lm, lambda m, b: answer_logps(m, b)[0]), (rm, sequence_rewards)):
        values = []
        for batch in (pair_collate(feats, 0, attention_mask=False), shared):
            model.zero_grad()
            out = run(model, batch)
            (out * torch.linspace(-1, 1, len(out))).sum().backward()
            values.append((out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
        (a, grads_a), (b, grads_b) = values
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        for ga, gb in zip(grads_a, grads_b):
            torch.testing.assert_close(gb, ga, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(answer_logps(lm, shared)[1], answer_logps(lm, pair_collate(feats, 0))[1])


def test_evaluation_log_probs_are_the_same_with_shared_prompts(tiny):
    from transformers import AutoModelForCausalLM

    from deltatune.tasks.preference.evaluate import pair_logps

    model = AutoModelForCausalLM.from_pretrained(tiny["llama"])
    feats = _share_feats()
    torch.testing.assert_close(
        pair_logps(model, feats, 0, batch_size=3, share=True),
        pair_logps(model, feats, 0, batch_size=3),
        atol=1e-5,
        rtol=1e-5,
    )


def test_training_shares_prompts_only_where_it_can(tiny):
    from transformers import AutoModelForSequenceClassification

    from deltatune.config import load_config
    from deltatune.methods.registry import get_method
    from deltatune.tasks.preference.pairs import training_collate

    d = load_config(None, ["task=reward", f"data.train={tiny['train']}"]).data
    decoder = AutoModelForSequenceClassification.from_pretrained(tiny["llama"], num_labels=1)
    encoder = AutoModelForSequenceClassification.from_pretrained(tiny["bert"], num_labels=1)
    lora, prompt = get_method("lora"), get_method("prompt_tuning")
    name = lambda f: f.func.__name__  # noqa: E731
    assert name(training_collate(d, decoder, lora, 0, 1)) == "shared_pair_collate"
    assert name(training_collate(d, encoder, lora, 0, 1)) == "pair_collate"
    assert name(training_collate(d, decoder, prompt, 0, 1)) == "pair_collate"  # virtual tokens: a 2-D mask
    assert name(training_collate(d, decoder, lora, 0, 2)) == "pair_collate"  # DDP: one forward per backward
    assert (
        name(training_collate(d.model_copy(update={"share_prompt": False}), decoder, lora, 0, 1))
        == "pair_collate"
    )


def test_too_long_pairs_cut_the_prompt_from_the_left_first(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["llama"])
    long_prompt = "word " * 200
    pairs, _ = rows_to_pairs(
        _rows([{"prompt": long_prompt + "END", "chosen": "yes it is", "rejected": "no"}])
    )
    stats = PairStats(rows=1)
    feats, _ = encode_pairs(pairs, make_template("raw", tok), tok, 64, "truncate", stats)
    f = feats[0]
    assert len(f["chosen_ids"]) <= 64 and stats.prompt_truncated == 1 and stats.answer_truncated == 0
    assert "END" in tok.decode(f["chosen_ids"]) and "yes it is" in tok.decode(f["chosen_ids"])
    dropped = PairStats(rows=1)
    assert encode_pairs(pairs, make_template("raw", tok), tok, 64, "drop", dropped)[0] == []
    assert dropped.dropped_too_long == 1
    answers = rows_to_pairs(_rows([{"prompt": "q", "chosen": "long " * 100, "rejected": "short"}]))[0]
    cut = PairStats(rows=1)
    f = encode_pairs(answers, make_template("raw", tok), tok, 32, "truncate", cut)[0][0]
    assert cut.answer_truncated == 1 and len(f["chosen_ids"]) == 32 and len(f["rejected_ids"]) < 32


def _train(tiny, task, out, *extra):
    return main(
        [
            "train",
            f"task={task}",
            f"model.name={tiny['llama']}",
            f"data.train={tiny['train']}",
            f"data.validation={tiny['val']}",
            "train.epochs=4",
            "train.batch_size=8",
            "train.learning_rate=3e-3",
            "train.progress=false",
            "train.precision=fp32",
            "--output-dir",
            str(out),
            "--json",
            *extra,
        ]
    )


def test_reward_model_learns_scores_and_loads_as_a_classifier(tiny, tmp_path, capsys, one_thread):
    out = tmp_path / "rm"
    assert _train(tiny, "reward", out) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tuned_accuracy"] >= 0.9 and summary["tuned_accuracy_ci_low"] > 0.5
    report = json.loads((out / "eval_report.json").read_text())
    assert {"accuracy", "accuracy_ci_low", "margin_mean", "reward_std"} <= set(report["tuned"])
    assert "most wrongly" in (out / "eval_report.md").read_text() or report["tuned"]["most_wrong"] == []
    assert (
        main(
            [
                "score",
                str(out),
                "The apple is great good kind.",
                "The apple is awful rude bad.",
                "--prompt",
                "Tell me about the apple.",
                "--json",
            ]
        )
        == 0
    )
    good, bad = [json.loads(x)["reward"] for x in capsys.readouterr().out.splitlines()]
    assert good > bad
    assert main(["eval", str(out), "--data", str(tiny["val"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(summary["tuned_accuracy"])

    from transformers import AutoModelForSequenceClassification

    from deltatune.runs.loaded import load_run

    assert main(["merge", str(out), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert merged.config.num_labels == 1
    run = load_run(out)
    ids = torch.tensor([run.tokenizer("The river is kind and good.")["input_ids"]])
    with torch.no_grad():  # the merged model's own last-token reading equals ours (no pad in the row)
        torch.testing.assert_close(
            merged(ids).logits[:, 0], run.model(ids).logits[:, 0], atol=1e-5, rtol=1e-4
        )


def test_reward_model_on_an_encoder(tiny, tmp_path, capsys, one_thread):
    out = tmp_path / "rm-bert"
    code = main(
        [
            "train",
            "task=reward",
            f"model.name={tiny['bert']}",
            f"data.train={tiny['train']}",
            f"data.validation={tiny['val']}",
            "train.epochs=4",
            "train.batch_size=8",
            "train.learning_rate=3e-3",
            "train.progress=false",
            "train.precision=fp32",
            "data.max_length=48",
            "--output-dir",
            str(out),
            "--json",
        ]
    )
    assert code == 0 and json.loads(capsys.readouterr().out)["tuned_accuracy"] >= 0.9


def test_dpo_learns_a_synthetic_preference_and_its_reference_is_the_base(tiny, tmp_path, capsys, one_thread):
    out = tmp_path / "dpo"
    assert _train(tiny, "dpo", out, "train.log_every=4") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["base_reward_accuracy"] == 0.0  # policy == reference before training: ties
    assert summary["tuned_reward_accuracy"] >= 0.9 and summary["tuned_loss"] < summary["base_loss"]
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("reward_accuracy" in r and "logps_chosen" in r for r in log if "loss" in r)
    assert (out / "reference_logps.safetensors").is_file()
    # `eval` recomputes the reference with the method switched off: the same numbers
    assert main(["eval", str(out), "--data", str(tiny["val"]), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["loss"] == pytest.approx(summary["tuned_loss"], rel=1e-4)
    # the cached reference log-probs are the untouched base model's
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deltatune.data.pairs import read_pairs
    from deltatune.runs.loaded import load_run
    from deltatune.tasks.preference.evaluate import pair_logps
    from deltatune.tasks.preference.pairs import encode_pairs

    run = load_run(out)
    base, tok = (
        AutoModelForCausalLM.from_pretrained(tiny["llama"]),
        AutoTokenizer.from_pretrained(tiny["llama"]),
    )
    pairs, _ = read_pairs(str(tiny["val"]), run.cfg.data)
    feats, _ = encode_pairs(pairs, run.template(), tok, run.cfg.data.max_length)
    cached = load_file(str(out / "reference_logps.safetensors"))["validation"]
    torch.testing.assert_close(cached, pair_logps(base, feats, tok.pad_token_id)[:, :2], atol=1e-4, rtol=1e-5)
    assert main(["generate", str(out), "Tell me about the river.", "--max-new-tokens", "3"]) == 0


@pytest.mark.parametrize("loss", ["ipo", "hinge"])
def test_dpo_variants_and_per_step_reference_train(tiny, tmp_path, capsys, loss, one_thread):
    out = tmp_path / loss
    assert (
        _train(tiny, "dpo", out, f"dpo.loss={loss}", "dpo.precompute_reference=false", "train.epochs=2") == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["tuned_loss"] < summary["base_loss"] and not (out / "reference_logps.safetensors").exists()


def test_dpo_with_full_fine_tuning_keeps_a_frozen_reference(tiny, tmp_path, capsys, one_thread):
    out = tmp_path / "full"
    assert (
        _train(
            tiny,
            "dpo",
            out,
            "method.name=full",
            "train.learning_rate=1e-3",
            "train.epochs=2",
            "dpo.precompute_reference=false",
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["tuned_reward_accuracy"] > summary["base_reward_accuracy"]


def test_preview_and_errors_of_pair_data(tiny, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"task: dpo\nmodel: {{name: {tiny['llama']}}}\ndata: {{train: {tiny['train']}}}\n")
    assert main(["preview", str(cfg), "--examples", "1", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "pair 1" in out and "chosen" in out and "«" in out and "64 pairs kept" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "good": "a", "bad": "b"}) + "\n")
    assert (
        main(
            [
                "train",
                "task=reward",
                f"model.name={tiny['llama']}",
                f"data.train={bad}",
                "--output-dir",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "bad.jsonl, line 1" in err and "data.fields" in err


def test_held_out_split_does_not_depend_on_the_training_sample():
    from deltatune.data.readers import split_then_sample

    items = list(range(100))
    _, val_all = split_then_sample(items, None, 0.2, None, seed=3)
    train, val_small = split_then_sample(items, None, 0.2, 10, seed=3)
    assert val_small == val_all and len(val_all) == 20 and len(train) == 10
    assert not set(train) & set(val_all) and train == sorted(train)
