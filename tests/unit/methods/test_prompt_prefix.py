"""Prompt tuning and prefix tuning: training, counts, save/load, generation, PEFT equivalence and a
hand-computed prefix-attention reference for BERT."""

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from deltatune.errors import UserError
from deltatune.methods.prefix_tuning import PREFIX_TUNING
from deltatune.methods.prefix_tuning.model import fold_prefix_projection, prefix_of, set_prefix_enabled
from deltatune.methods.prefix_tuning.options import PrefixOptions
from deltatune.methods.prompt_tuning import PROMPT_TUNING
from deltatune.methods.prompt_tuning.model import set_prompt_enabled, soft_prompt_of
from deltatune.methods.prompt_tuning.options import PromptOptions
from deltatune.methods.registry import ModelContext, trainable_report
from deltatune.models.tiny import tiny_config
from helpers.prompt_prefix import HEADS, SPECS, N, adapt, batch, ctx, logits, randomize, tiny

CASES = [
    ("bert", "SEQ_CLS"),
    ("llama", "SEQ_CLS"),
    ("gpt2", "SEQ_CLS"),
    ("llama", "CAUSAL_LM"),
    ("gpt2", "CAUSAL_LM"),
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("method", ["prompt", "prefix"])
@pytest.mark.parametrize("kind,task", CASES)
def test_trains_and_leaves_base_weights_alone(method, kind, task):
    model, _ = adapt(method, kind, task)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    x = batch(kind, task)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=SPECS[method][0].default_lr
    )
    model.train()
    losses = []
    for _ in range(20):
        loss = model(**x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # a tiny random LM predicts ~uniformly and a few virtual tokens move it only a little
    assert losses[-1] < (0.8 * losses[0] if task == "SEQ_CLS" else losses[0] - 0.02), losses
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


@pytest.mark.parametrize("kind,task", CASES)
def test_trainable_parameter_counts(kind, task):
    cfg = tiny_config(kind)
    heads = tiny(kind, task).get_submodule(HEADS[kind][0]) if task == "SEQ_CLS" else None
    head = sum(p.numel() for p in heads.parameters()) if heads is not None else 0
    model, _ = adapt("prompt", kind, task)
    assert trainable_report(model)["trainable"] == N * cfg.hidden_size + head
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    kv = kv_heads * cfg.hidden_size // cfg.num_attention_heads
    layers = cfg.num_hidden_layers
    model, _ = adapt("prefix", kind, task)
    assert trainable_report(model)["trainable"] == layers * 2 * N * kv + head
    model, _ = adapt("prefix", kind, task, prefix_projection=True, encoder_hidden_size=8)
    mlp = N * kv + (kv * 8 + 8) + (8 * layers * 2 * kv + layers * 2 * kv)
    assert trainable_report(model)["trainable"] == mlp + head
    fold_prefix_projection(model)
    assert trainable_report(model)["trainable"] == layers * 2 * N * kv + head


@pytest.mark.parametrize(
    "method,extra", [("prompt", {}), ("prefix", {}), ("prefix", {"prefix_projection": True})]
)
@pytest.mark.parametrize("kind,task", [("bert", "SEQ_CLS"), ("llama", "CAUSAL_LM"), ("gpt2", "SEQ_CLS")])
def test_save_then_load_gives_identical_outputs(method, extra, kind, task, tmp_path):
    model, opts = adapt(method, kind, task, **extra)
    randomize(model)
    x = batch(kind, task)
    expected = logits(model, x)
    SPECS[method][0].save(model, opts, ctx(kind, task), tmp_path)
    fresh, _ = adapt(method, kind, task, **extra)
    assert not torch.allclose(logits(fresh, x), expected)
    SPECS[method][0].load(fresh, tmp_path)
    assert torch.allclose(logits(fresh, x), expected, atol=1e-6)


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_disabling_gives_the_base_model(method):
    base = tiny("llama", "CAUSAL_LM")
    model, _ = adapt(method, "llama", "CAUSAL_LM")
    randomize(model)
    x = batch("llama", "CAUSAL_LM")
    adapted = logits(model, x)
    (set_prompt_enabled if method == "prompt" else set_prefix_enabled)(model, False)
    assert torch.allclose(logits(model, x), logits(base, x), atol=1e-6)
    (set_prompt_enabled if method == "prompt" else set_prefix_enabled)(model, True)
    assert torch.allclose(logits(model, x), adapted)


def test_prompt_is_the_input_prefix_and_logits_align_with_input_ids():
    model, _ = adapt("prompt", "gpt2", "CAUSAL_LM")
    randomize(model)
    x = batch("gpt2", "CAUSAL_LM")
    ours = logits(model, x)
    assert ours.shape[:2] == x["input_ids"].shape
    set_prompt_enabled(model, False)
    prompt = soft_prompt_of(model).prompt.detach()
    embeds = torch.cat([prompt.expand(3, -1, -1), model.get_input_embeddings()(x["input_ids"])], 1)
    mask = torch.cat([torch.ones(3, N, dtype=torch.long), x["attention_mask"]], 1)
    with torch.no_grad():
        reference = model(inputs_embeds=embeds, attention_mask=mask).logits[:, N:]
    assert torch.allclose(ours, reference, atol=1e-5)


@pytest.mark.parametrize("placement", ["after_cls", "start"])
def test_bert_placement(placement):
    model, _ = adapt("prompt", "bert", placement=placement)
    seen = {}
    model.bert.embeddings.register_forward_hook(
        lambda mod, args, kwargs, out: seen.update(kwargs), with_kwargs=True
    )
    x = batch("bert")
    logits(model, x)
    embeds, prompt = seen["inputs_embeds"], soft_prompt_of(model).prompt
    cls = model.get_input_embeddings()(x["input_ids"][:, :1])
    at = 1 if placement == "after_cls" else 0
    assert torch.equal(embeds[:, at : at + N], prompt.expand(3, -1, -1))
    if placement == "after_cls":  # [CLS] stays first, where the pooler reads it
        assert torch.equal(embeds[:, :1], cls)
    assert torch.equal(seen["token_type_ids"][:, at : at + N], torch.zeros(3, N, dtype=torch.long))


def test_text_init_and_option_errors(tmp_path):
    from deltatune.models import load_tokenizer, make_tiny_model_dir

    path = make_tiny_model_dir("llama", tmp_path / "m", task="causal_lm")
    model = AutoModelForCausalLM.from_pretrained(path)
    opts = PromptOptions(num_virtual_tokens=5, init="text", init_text="good movie")
    PROMPT_TUNING.apply(model, opts, ModelContext(path, "CAUSAL_LM"))
    ids = load_tokenizer(path)("good movie", add_special_tokens=False)["input_ids"]
    ids = (ids * 5)[:5]
    assert torch.equal(soft_prompt_of(model).prompt, model.get_input_embeddings().weight[ids])
    with pytest.raises(ValueError, match="init_text"):
        PromptOptions(init="text")
    with pytest.raises(ValueError, match="init: text"):
        PromptOptions(init_text="hello")
    with pytest.raises(ValueError, match="prefix_projection"):
        PrefixOptions(encoder_hidden_size=16)


def test_placement_mismatch_on_load_is_a_clear_error(tmp_path):
    model, opts = adapt("prompt", "bert", placement="start")
    PROMPT_TUNING.save(model, opts, ctx("bert", "SEQ_CLS"), tmp_path)
    other, _ = adapt("prompt", "bert", placement="after_cls")
    with pytest.raises(UserError, match="placement: start"):
        PROMPT_TUNING.load(other, tmp_path)


# ----------------------------------------------------------------------------- generation


def greedy_without_cache(model, ids, steps):
    with torch.no_grad():
        for _ in range(steps):
            nxt = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    return ids


@pytest.mark.parametrize("method", ["prompt", "prefix"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_generation_with_cache_matches_full_recompute(method, kind):
    model, _ = adapt(method, kind, "CAUSAL_LM")
    randomize(model)
    model.eval()
    model.generation_config.eos_token_id = None
    ids = torch.randint(3, 100, (2, 5), generator=torch.Generator().manual_seed(4))
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    assert torch.equal(out, greedy_without_cache(model, ids, 6))
    # a shorter, left-padded row generates what it generates alone
    pad = model.config.pad_token_id
    padded = ids.clone()
    padded[1, :2] = pad
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    out = model.generate(padded, attention_mask=mask, max_new_tokens=6, do_sample=False)
    alone = model.generate(
        ids[1:, 2:], attention_mask=torch.ones_like(ids[1:, 2:]), max_new_tokens=6, do_sample=False
    )
    assert torch.equal(out[1, 2:], alone[0])


# ----------------------------------------------------------------------------- PEFT equivalence


# ----------------------------------------------------------------------------- BERT reference


def bert_by_hand(model, x, prefix):
    """BERT classification with prefix attention written out: softmax(q [Pk; K]^T / sqrt(d) + m) [Pv; V]."""
    bert, cfg = model.bert, model.config
    heads, d = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    layer_kv = prefix.view(N, cfg.num_hidden_layers * 2, heads, d).permute(1, 2, 0, 3)  # PEFT layout
    h = bert.embeddings(input_ids=x["input_ids"], token_type_ids=x["token_type_ids"])
    b, t = x["input_ids"].shape
    pad = (1 - x["attention_mask"]).float() * torch.finfo(torch.float32).min
    additive = torch.cat([torch.zeros(b, N), pad], 1)[:, None, None, :]
    for i, layer in enumerate(bert.encoder.layer):
        att = layer.attention.self
        split = lambda y: y.view(b, t, heads, d).transpose(1, 2)  # noqa: E731
        q, k, v = split(att.query(h)), split(att.key(h)), split(att.value(h))
        k = torch.cat([layer_kv[2 * i].expand(b, -1, -1, -1), k], 2)
        v = torch.cat([layer_kv[2 * i + 1].expand(b, -1, -1, -1), v], 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + additive, -1)
        context = (probs @ v).transpose(1, 2).reshape(b, t, heads * d)
        h = layer.attention.output(context, h)
        h = layer.output(layer.intermediate(h), h)
    return model.classifier(bert.pooler(h))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bert_prefix_attention_matches_hand_computation(attn):
    model = tiny("bert", attn=attn)
    opts = PrefixOptions(num_virtual_tokens=N)
    PREFIX_TUNING.apply(model, opts, ctx("bert", "SEQ_CLS"))
    randomize(model)
    x = batch("bert")
    with torch.no_grad():
        reference = bert_by_hand(model.eval(), x, prefix_of(model).prefix)
    assert torch.allclose(logits(model, x), reference, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_vocab_init_equals_prepending_those_tokens(kind, monkeypatch):
    """Prefixes initialised from tokens w, at positions 0..n-1, make a decoder behave exactly as if w
    were typed before the input (which also checks the position shift)."""
    words = torch.tensor([[5, 17, 42]])
    real_randint = torch.randint
    monkeypatch.setattr(torch, "randint", lambda *a, **k: words)
    model, _ = adapt("prefix", kind, "CAUSAL_LM")  # default init: vocab
    monkeypatch.setattr(torch, "randint", real_randint)
    x = batch(kind, "CAUSAL_LM", padded=False)
    typed = {"input_ids": torch.cat([words.expand(3, -1), x["input_ids"]], 1)}
    assert torch.allclose(logits(model, x), logits(tiny(kind, "CAUSAL_LM"), typed)[:, N:], atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_prefix_over_eager_and_sdpa_agree(kind):
    outs = []
    for attn in ("sdpa", "eager"):
        model = tiny(kind, "CAUSAL_LM", attn=attn)
        PREFIX_TUNING.apply(model, PrefixOptions(num_virtual_tokens=N), ctx(kind, "CAUSAL_LM"))
        randomize(model)
        outs.append(logits(model, batch(kind, "CAUSAL_LM")))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    copy.deepcopy(model)  # tagged attention modules survive a deep copy


def test_registered_with_config_validation():
    from deltatune.errors import ConfigError
    from deltatune.methods.registry import get_method, validate_method_config

    assert get_method("prompt_tuning") is PROMPT_TUNING and get_method("prefix_tuning") is PREFIX_TUNING
    assert validate_method_config({"name": "prefix_tuning", "prefix_projection": True})["init"] == "random"
    with pytest.raises(ConfigError, match="method.init_text"):
        validate_method_config({"name": "prompt_tuning", "init": "text"})
