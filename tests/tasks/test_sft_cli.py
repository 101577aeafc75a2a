"""SFT recipe: loss paths, packing equivalence, and the CLI end to end on tiny models."""

import json

import pytest
import torch

from deltatune.cli import main
from deltatune.data.batching import sft_collate
from deltatune.data.conversations import rows_to_conversations
from deltatune.data.masks import encode_conversations
from deltatune.data.readers import read_rows
from deltatune.data.templates import AlpacaTemplate, ChatTemplate
from deltatune.losses.lm import causal_lm_batch_loss as loss_fn
from deltatune.losses.lm import token_cross_entropy_sum
from deltatune.models import load_for_causal_lm
from deltatune.models.tiny import make_tiny_model_dir
from deltatune.tasks.sft.packing import pack
from helpers.paths import ASSETS


def astuple(out):
    """(loss sum, target tokens, real tokens) of a :class:`deltatune.results.BatchLoss`."""
    return out.loss, out.units, out.tokens


ALPACA = ASSETS / "alpaca_sample.json"
LIMA = ASSETS / "lima_sample.json"


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny_lm(request, tmp_path_factory, one_thread):
    d = tmp_path_factory.mktemp(request.param)
    make_tiny_model_dir(request.param, d, task="causal_lm")
    model, tok, _ = load_for_causal_lm(str(d))
    return request.param, model, tok


def _feats(kind, tok, n=12, max_length=128):
    multi = [c for c in rows_to_conversations(read_rows(LIMA)) if len(c.messages) > 2][:3]
    convs = multi + rows_to_conversations(read_rows(ALPACA))[: n - 3]  # multi-turn included
    template = ChatTemplate(tok) if kind == "llama" else AlpacaTemplate(tok)
    feats, _ = encode_conversations(convs, template, tok, max_length)
    return feats


def test_fast_loss_equals_full_logits(tiny_lm):
    kind, model, tok = tiny_lm
    batch = sft_collate(_feats(kind, tok)[:4], tok.pad_token_id)
    loss, n, tokens = astuple(loss_fn(model, batch))
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref, ref_n = token_cross_entropy_sum(full, batch["labels"])
    assert n == ref_n == int(batch["num_units"]) and tokens == int(batch["attention_mask"].sum())
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("chunk_elements", [2**26, 50])  # one chunk; several chunks of tokens
def test_frozen_head_cross_entropy_matches_autograd(monkeypatch, chunk_elements):
    from deltatune.losses import lm

    monkeypatch.setattr(lm, "HEAD_CHUNK_ELEMENTS", chunk_elements)
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(23, 8, generator=gen)
    targets = torch.randint(0, 23, (11,), generator=gen)
    hidden = torch.randn(11, 8, generator=gen, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref * 0.37, hidden)
    loss = lm.FrozenHeadCrossEntropy.apply(hidden, weight, targets)
    (grad,) = torch.autograd.grad(loss * 0.37, hidden)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, ref_grad)
    with torch.no_grad():  # no gradient wanted: loss only
        torch.testing.assert_close(lm.FrozenHeadCrossEntropy.apply(hidden, weight, targets), ref.detach())


def test_lora_loss_without_mask_and_fused_head_equals_reference(tiny_lm):
    """The training path (no attention mask on right-padded rows, fused frozen-head loss) gives the
    loss and LoRA gradients of the plain path: full logits, masked attention, autograd cross-entropy."""
    import copy

    from deltatune.losses import lm
    from deltatune.methods.lora.model import apply_lora, lora_layers
    from deltatune.methods.lora.options import LoraOptions
    from deltatune.methods.registry import ModelContext

    kind, base, tok = tiny_lm
    model = apply_lora(
        copy.deepcopy(base),
        LoraOptions(r=4, target_modules="all-linear"),
        ModelContext(base_model="tiny", task_type="CAUSAL_LM", head_modules=[]),
    )
    for layer in lora_layers(model).values():  # B = 0 at init would make most gradients vanish
        torch.nn.init.normal_(layer.lora_B.weight, std=0.05)
    model.train()
    feats = _feats(kind, tok)[:5]
    masked = sft_collate(feats, tok.pad_token_id)
    unmasked = sft_collate(feats, tok.pad_token_id, attention_mask=False)
    assert "attention_mask" not in unmasked and int(unmasked["num_tokens"]) == int(
        masked["attention_mask"].sum()
    )
    assert lm._frozen_plain_head(model.get_output_embeddings(), masked["input_ids"])
    params = [p for p in model.parameters() if p.requires_grad]

    loss, n, _ = astuple(loss_fn(model, unmasked))
    grads = torch.autograd.grad(loss, params)
    logits = model(input_ids=masked["input_ids"], attention_mask=masked["attention_mask"]).logits
    ref, ref_n = token_cross_entropy_sum(logits, masked["labels"])
    ref_grads = torch.autograd.grad(ref, params)
    assert n == ref_n
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_packed_loss_and_gradients_equal_unpacked(tiny_lm):
    """Positions restart and attention stays inside each example, so packing changes nothing."""
    kind, model, tok = tiny_lm
    feats = _feats(kind, tok)
    params = [p for p in model.parameters() if p.is_floating_point()]

    def loss_and_grads(batches):
        model.zero_grad()
        total, units = 0.0, 0
        for b in batches:
            loss, n, _ = astuple(loss_fn(model, b))
            loss.backward()
            total, units = total + loss.detach(), units + n
        grads = [p.grad.clone() for p in params]
        return total, units, grads

    model.train()
    for p in params:
        p.requires_grad_(True)
    unpacked = loss_and_grads([sft_collate([f], tok.pad_token_id) for f in feats])
    rows = pack(feats, 384, seed=3)
    assert len(rows) < len(feats)  # examples really share rows
    packed = loss_and_grads([sft_collate(rows[i : i + 2], tok.pad_token_id) for i in range(0, len(rows), 2)])
    assert unpacked[1] == packed[1]
    torch.testing.assert_close(packed[0], unpacked[0], rtol=1e-5, atol=1e-3)
    for g_packed, g_plain in zip(packed[2], unpacked[2]):
        torch.testing.assert_close(g_packed, g_plain, rtol=1e-4, atol=1e-5)
    model.eval()


# ----------------------------------------------------------------------------- CLI end to end


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    model_dir = tmp / "tiny-llama"
    make_tiny_model_dir("llama", model_dir, task="causal_lm")
    rows = json.load(open(ALPACA))[:24]
    (tmp / "train.json").write_text(json.dumps(rows))
    run = tmp / "run"
    code = main(
        [
            "train",
            "task=sft",
            f"model.name={model_dir}",
            f"data.train={tmp / 'train.json'}",
            "data.validation_split=0.25",
            "data.max_length=96",
            "train.batch_size=4",
            "train.epochs=2",
            "train.progress=false",
            "generate.eval_samples=3",
            "generate.max_new_tokens=6",
            "--output-dir",
            str(run),
            "--json",
        ]
    )
    assert code == 0
    return tmp, model_dir, run


def test_train_writes_adapter_reports_and_metrics(sft_run):
    tmp, model_dir, run = sft_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "sft" and summary["template"] == "chat"
    assert summary["tuned_loss"] < summary["base_loss"]  # it learned something
    for key in ("tuned_rouge_l", "tuned_bleu", "tuned_exact_match", "base_perplexity", "train_tokens_per_s"):
        assert key in summary
    md = (run / "eval_report.md").read_text()
    assert "| held-out loss |" in md and "## Samples" in md and "| prompt | reference | base | tuned |" in md
    report = json.loads((run / "eval_report.json").read_text())
    assert len(report["tuned"]["answers"]) == 3 and report["data"]["train"]["examples"] == 18


def test_adapter_loads_in_peft_with_same_logits(sft_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from deltatune.runs.loaded import load_run

    tmp, model_dir, run = sft_run
    loaded = load_run(run)
    ours, tok = loaded.model, loaded.tokenizer
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), run / "adapter")
    ids = torch.tensor([tok("Hello there, how are you?")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, peft_model(ids).logits, atol=1e-5, rtol=1e-4)


def test_generate_eval_preview_chat_merge(sft_run, tmp_path, capsys, monkeypatch):
    tmp, model_dir, run = sft_run
    assert (
        main(["generate", str(run), "Name a colour", "Add 2 and 3", "--max-new-tokens", "4", "--json"]) == 0
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["prompt"] for x in lines] == ["Name a colour", "Add 2 and 3"]
    assert main(["generate", "--model", str(model_dir), "hi", "--max-new-tokens", "3"]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--max-new-tokens", "2", "first", "second", "--json"]) == 0
    assert [json.loads(x)["prompt"] for x in capsys.readouterr().out.splitlines()] == ["first", "second"]
    prompts_only = tmp_path / "prompts.jsonl"
    prompts_only.write_text('{"instruction": "Name a colour"}\n{"instruction": "Add", "input": "2 and 3"}\n')
    assert main(["generate", str(run), "--data", str(prompts_only), "--json", "--max-new-tokens", "2"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["Name a colour", "Add\n\n2 and 3"] and "reference" not in rows[0]
    assert (
        main(
            [
                "generate",
                str(run),
                "--data",
                str(tmp / "train.json"),
                "--json",
                "--max-new-tokens",
                "2",
                "--sample",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) == 24 and all("reference" in r for r in rows)

    assert main(["eval", str(run), "--data", str(tmp / "train.json"), "--samples", "2", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"loss", "perplexity", "rouge_l", "bleu", "exact_match"} <= set(metrics)

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"task: sft\nmodel: {{name: {model_dir}}}\ndata: {{train: {tmp / 'train.json'}}}\n")
    assert (
        main(
            [
                "preview",
                str(cfg),
                "data.max_length=64",
                "data.packing=true",
                "--examples",
                "1",
                "--color",
                "never",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "«" in out and "»" in out and "truncated" in out and "packing:" in out

    answers = iter(["hello", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    assert main(["chat", str(run), "--max-new-tokens", "3"]) == 0
    assert "assistant>" in capsys.readouterr().out

    assert main(["merge", str(run), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_sft_user_errors(sft_run, tmp_path, capsys):
    tmp, model_dir, run = sft_run
    assert main(["predict", str(run), "x"]) == 2
    assert "use `deltatune generate" in capsys.readouterr().err
    assert main(["generate", str(run), "hi", "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens: Input should be greater than 0" in capsys.readouterr().err
    code = main(["train", "task=sft", f"data.train={tmp / 'train.json'}", "train.metric_for_best=rouge_l"])
    assert code == 2 and "use loss or perplexity" in capsys.readouterr().err
    assert main(["generate", "Name a colour"]) == 2  # not a run directory
    assert "not a deltatune run" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "outptu": "d"}\n')
    code = main(
        [
            "train",
            "task=sft",
            f"model.name={model_dir}",
            f"data.train={bad}",
            "train.progress=false",
            "--output-dir",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "bad.jsonl, line 2" in err and "did you mean 'outptu'" in err
    code = main(
        [
            "train",
            "task=sft",
            f"model.name={model_dir}",
            f"data.train={tmp / 'train.json'}",
            "method.name=prompt_tuning",
            "data.packing=true",
            "--output-dir",
            str(tmp_path / "r2"),
        ]
    )
    assert code == 2 and "packing" in capsys.readouterr().err


def test_padding_free_parts_split_exactly(tiny_lm):
    from deltatune.data.batching import padding_free_parts, sft_collate_parts

    assert padding_free_parts([10, 10, 10]) == [[0, 1, 2]]  # nothing to gain from splitting
    parts = padding_free_parts([40, 300, 38, 35, 290])
    assert sorted(map(sorted, parts)) == [[0, 2, 3], [1, 4]]  # long ones no longer pad short ones
    kind, model, tok = tiny_lm
    feats = _feats(kind, tok)[:8]
    for f in feats[::3]:  # mixed lengths: a padded batch would waste most of its slots
        f["input_ids"], f["labels"] = f["input_ids"][:30], f["labels"][:30]
    padded = sft_collate(feats, tok.pad_token_id)
    split = sft_collate_parts(feats, tok.pad_token_id)
    assert len(split["parts"]) > 1 and int(split["num_units"]) == int(padded["num_units"])
    loss_padded, n_padded, tokens_padded = astuple(loss_fn(model, padded))
    loss_split, n_split, tokens_split = astuple(loss_fn(model, split))
    assert (n_split, tokens_split) == (n_padded, tokens_padded)
    torch.testing.assert_close(loss_split, loss_padded, rtol=1e-5, atol=1e-4)
