"""IA3, BitFit, bottleneck adapters, DoRA and LoRA+ on tiny BERT-, Llama- and GPT-2-like models:
training, save/load, parameter counts, merging, and equivalence with PEFT."""

import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config,
                          GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification)

from deltatune.errors import ConfigError, UserError
from deltatune.methods.adapters import ADAPTERS, AdaptersOptions, adapter_layers, options_from_saved
from deltatune.methods.bitfit import BITFIT, BitFitOptions
from deltatune.methods.ia3 import IA3, IA3Options, ia3_layers, merge_ia3, unmerge_ia3
from deltatune.methods.ia3 import options_from_peft as ia3_options_from_peft
from deltatune.methods.lora import LORA, LoraOptions, lora_layers, merge_lora, unmerge_lora
from deltatune.methods.lora import options_from_peft as lora_options_from_peft
from deltatune.methods.registry import ModelContext, trainable_report, validate_method_config
from deltatune.training.optim import build_optimizer

from _tiny import inputs  # tests/ is on sys.path under pytest

H, L, I, R = 32, 2, 64, 4          # tiny() sizes; R = LoRA rank used here
KV = 16                            # tiny Llama: 2 key/value heads x head_dim 8
LABELS = torch.tensor([0, 1, 2])


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(kind):
    """A random 2-layer model (same seed -> same weights) and its head module names."""
    torch.manual_seed(0)
    if kind == "bert":
        return BertForSequenceClassification(BertConfig(
            vocab_size=100, hidden_size=H, num_hidden_layers=L, num_attention_heads=4,
            intermediate_size=I, num_labels=3)), ["classifier"]
    if kind == "llama":
        return LlamaForSequenceClassification(LlamaConfig(
            vocab_size=100, hidden_size=H, num_hidden_layers=L, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=I, num_labels=3, pad_token_id=0)), ["score"]
    return GPT2ForSequenceClassification(GPT2Config(
        vocab_size=100, n_embd=H, n_layer=L, n_head=4, num_labels=3, pad_token_id=0,
        bos_token_id=0, eos_token_id=0)), ["score"]


def method(name):
    """(spec, options) for a method name used in this file."""
    if name == "ia3":
        return IA3, IA3Options()
    if name == "bitfit":
        return BITFIT, BitFitOptions()
    if name in ("houlsby", "pfeiffer"):
        return ADAPTERS, AdaptersOptions(variant=name)
    return LORA, LoraOptions(r=R, alpha=8, dropout=0.0, use_dora=True)


def adapted(name, kind):
    model, heads = tiny(kind)
    spec, opts = method(name)
    ctx = ModelContext("tiny", "SEQ_CLS", heads)
    spec.apply(model, opts, ctx)
    return model, spec, opts, ctx


def head_count(kind):
    return {"bert": 3 * H + 3, "llama": 3 * H, "gpt2": 3 * H}[kind]


def lora_shapes(kind):
    """(in, out) of every 'auto' LoRA target."""
    per_layer = {"bert": [(H, H)] * 4 + [(H, I), (I, H)],
                 "llama": [(H, H), (H, KV), (H, KV), (H, H), (H, I), (H, I), (I, H)],
                 "gpt2": [(H, 3 * H), (H, H), (H, 4 * H), (4 * H, H)]}[kind] * L
    return per_layer + ([(H, H)] if kind == "bert" else [])  # BERT's pooler.dense


def expected_trainable(name, kind):
    if name == "ia3":  # keys + values (out) and feed-forward inputs (in)
        per_layer = {"bert": 2 * H + H + I, "llama": 2 * KV + I, "gpt2": 3 * H + 4 * H}[kind]
        return L * per_layer + head_count(kind)
    if name == "bitfit":  # BERT: q,k,v,attn-out,LN1,intermediate,out,LN2 + embeddings LN + pooler
        per_layer, extra = {"bert": (7 * H + I, 2 * H), "gpt2": (11 * H, H)}[kind]
        return L * per_layer + extra + head_count(kind)
    if name in ("houlsby", "pfeiffer"):
        b = H // 16
        sites = L * (2 if name == "houlsby" else 1)
        norms = {"bert": (2 * L + 1) * 2 * H, "llama": (2 * L + 1) * H, "gpt2": (2 * L + 1) * 2 * H}
        return (sites * (2 * H * b + b + H) + (norms[kind] if name == "houlsby" else 0)
                + head_count(kind))
    return sum(R * (i + o) + o for i, o in lora_shapes(kind)) + head_count(kind)  # DoRA


def loss_of(model):
    return torch.nn.functional.cross_entropy(model(**inputs()).logits, LABELS)


def perturb(model, names_with=("ia3_l", "lora_B", "lora_magnitude_vector", "adapter.up")):
    """Move adapter weights away from their identity init so tests see a real update."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name for s in names_with):
                noise = torch.randn(p.shape, generator=g) * 0.1
                p.copy_(p * (1 + noise) if "ia3" in name or "magnitude" in name else p + noise)


CASES = ([("ia3", k) for k in ("bert", "llama", "gpt2")] + [("bitfit", k) for k in ("bert", "gpt2")]
         + [(v, k) for v in ("houlsby", "pfeiffer", "dora") for k in ("bert", "llama", "gpt2")])


@pytest.mark.parametrize("name,kind", CASES)
def test_trains_saves_reloads_and_counts(name, kind, tmp_path):
    model, spec, opts, ctx = adapted(name, kind)
    assert trainable_report(model)["trainable"] == expected_trainable(name, kind)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.eval()
    before = loss_of(model).item()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    torch.manual_seed(0)
    for _ in range(20):
        opt.zero_grad()
        loss_of(model).backward()
        opt.step()
    model.eval()
    assert loss_of(model).item() < before
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[n]), f"frozen weight {n} changed"
    moved = [n for n, p in model.named_parameters() if p.requires_grad
             and not any(n.startswith(h + ".") for h in ctx.head_modules) and not torch.equal(p, start[n])]
    assert moved, "only the head trained"

    spec.save(model, opts, ctx, tmp_path / "adapter")
    fresh, heads = tiny(kind)
    spec.apply(fresh, opts, ModelContext("tiny", "SEQ_CLS", heads))
    spec.load(fresh, tmp_path / "adapter")
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh(**inputs()).logits, model(**inputs()).logits, atol=1e-6)


@pytest.mark.parametrize("name,kind", [("ia3", "bert"), ("ia3", "gpt2"), ("ia3", "llama"),
                                       ("dora", "bert"), ("dora", "gpt2"), ("dora", "llama")])
def test_merge_gives_same_outputs(name, kind):
    model, *_ = adapted(name, kind)
    perturb(model)
    model.eval()
    with torch.no_grad():
        adapted_out = model(**inputs()).logits
        merge, unmerge = (merge_ia3, unmerge_ia3) if name == "ia3" else (merge_lora, unmerge_lora)
        merge(model)
        assert torch.allclose(model(**inputs()).logits, adapted_out, atol=1e-5)
        unmerge(model)
        assert torch.allclose(model(**inputs()).logits, adapted_out, atol=1e-5)


def _peft_config(peft, name, kind):
    if name == "ia3":
        return peft.IA3Config(task_type="SEQ_CLS")
    targets = {"bert": ["query", "value", "dense"], "llama": ["q_proj", "v_proj", "down_proj"],
               "gpt2": ["c_attn", "c_proj"]}[kind]
    return peft.LoraConfig(r=R, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                           use_dora=True, task_type="SEQ_CLS", fan_in_fan_out=(kind == "gpt2"))


@pytest.mark.parametrize("name", ["ia3", "dora"])
@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2"])
def test_peft_round_trips(name, kind, tmp_path):
    peft = pytest.importorskip("peft")
    # deltatune-saved -> peft.PeftModel.from_pretrained
    model, spec, opts, ctx = adapted(name, kind)
    perturb(model, ("ia3_l", "lora_B", "lora_magnitude_vector", "score.", "classifier."))
    spec.save(model, opts, ctx, tmp_path / "ours")
    pm = peft.PeftModel.from_pretrained(tiny(kind)[0], tmp_path / "ours")
    model.eval(), pm.eval()
    with torch.no_grad():
        assert torch.allclose(pm(**inputs()).logits, model(**inputs()).logits, atol=1e-5)
    # PEFT-saved -> deltatune
    pm = peft.get_peft_model(tiny(kind)[0], _peft_config(peft, name, kind))
    perturb(pm, ("ia3_l", "lora_B", "lora_magnitude_vector", "modules_to_save"))
    pm.save_pretrained(tmp_path / "peft")
    fresh, heads = tiny(kind)
    from_peft = ia3_options_from_peft if name == "ia3" else lora_options_from_peft
    spec.apply(fresh, from_peft(tmp_path / "peft"), ModelContext("tiny", "SEQ_CLS", heads))
    spec.load(fresh, tmp_path / "peft")
    fresh.eval(), pm.eval()
    with torch.no_grad():
        assert torch.allclose(fresh(**inputs()).logits, pm(**inputs()).logits, atol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_dora_outputs_and_gradients_equal_peft(kind, dropout):
    peft = pytest.importorskip("peft")
    model, heads = tiny(kind)
    pm = peft.get_peft_model(tiny(kind)[0], _peft_config(peft, "dora", kind))
    targets = pm.peft_config["default"].target_modules
    opts = LoraOptions(r=R, alpha=8, dropout=dropout, target_modules=sorted(targets), use_dora=True)
    LORA.apply(model, opts, ModelContext("x", "SEQ_CLS", heads))
    for layer in pm.modules():
        if hasattr(layer, "lora_dropout") and dropout:
            layer.lora_dropout["default"] = torch.nn.Dropout(dropout)
    perturb(model)
    ours = dict(model.named_parameters())

    def key(peft_name):
        return (peft_name.replace("base_model.model.", "").replace(".default", "")
                .replace("lora_magnitude_vector.weight", "lora_magnitude_vector"))

    with torch.no_grad():
        for name, p in pm.named_parameters():
            if ".lora_" in name:
                p.copy_(ours[key(name)])
    model.train(), pm.train()  # training path: dropout on, norm detached
    torch.manual_seed(5)
    out_ours = model(**inputs()).logits
    torch.manual_seed(5)
    out_peft = pm(**inputs()).logits
    assert torch.allclose(out_ours, out_peft, atol=1e-5)
    out_ours.pow(2).sum().backward()
    out_peft.pow(2).sum().backward()
    peft_grads = {key(n): p.grad for n, p in pm.named_parameters() if ".lora_" in n}
    assert any(".lora_magnitude_vector" in n for n in peft_grads)
    for n, p in ours.items():
        if ".lora_" in n:
            assert torch.allclose(p.grad, peft_grads[n], atol=1e-5), n


def test_dora_magnitude_is_row_norm_of_weight():
    model, *_ = adapted("dora", "gpt2")  # Conv1D: weight is in x out, norm over `in`
    layer = lora_layers(model)["transformer.h.0.attn.c_attn"]
    w = layer.base_layer.weight
    assert torch.allclose(layer.lora_magnitude_vector, w.norm(dim=0))
    model, *_ = adapted("dora", "bert")
    layer = lora_layers(model)["bert.encoder.layer.0.intermediate.dense"]
    assert torch.allclose(layer.lora_magnitude_vector, layer.base_layer.weight.norm(dim=1))


def test_loraplus_gives_b_its_own_learning_rate():
    model, heads = tiny("bert")
    opts = LoraOptions(r=R, loraplus_lr_ratio=16)
    LORA.apply(model, opts, ModelContext("x", "SEQ_CLS", heads))
    lrs = LORA.param_lr(model, opts, 1e-3)
    layers = lora_layers(model).values()
    assert set(lrs) == {id(layer.lora_B.weight) for layer in layers}
    assert all(lr == pytest.approx(1.6e-2) for lr in lrs.values())
    group_lr = {id(p): g["lr"] for g in build_optimizer(model, 1e-3, 0.0, lrs).param_groups
                for p in g["params"]}
    layer = next(iter(layers))
    assert group_lr[id(layer.lora_B.weight)] == pytest.approx(1.6e-2)
    assert group_lr[id(layer.lora_A.weight)] == pytest.approx(1e-3)
    assert LORA.param_lr(model, LoraOptions(r=R), 1e-3) == {}


def test_ia3_defaults_match_peft():
    peft = pytest.importorskip("peft")
    for kind in ("bert", "llama", "gpt2"):
        model, *_ = adapted("ia3", kind)
        pm = peft.get_peft_model(tiny(kind)[0], peft.IA3Config(task_type="SEQ_CLS"))
        theirs = {n.replace("base_model.model.", ""): m.is_feedforward
                  for n, m in pm.named_modules() if hasattr(m, "ia3_l")}
        assert {n: m.is_feedforward for n, m in ia3_layers(model).items()} == theirs


def test_adapters_wrap_the_right_sublayers():
    model, *_ = adapted("houlsby", "bert")
    assert sorted(adapter_layers(model)) == sorted(
        f"bert.encoder.layer.{i}.{s}" for i in range(L) for s in ("attention.output.dense", "output.dense"))
    model, *_ = adapted("pfeiffer", "llama")
    assert sorted(adapter_layers(model)) == [f"model.layers.{i}.mlp.down_proj" for i in range(L)]
    model, *_ = adapted("houlsby", "gpt2")
    assert len(adapter_layers(model)) == 2 * L
    big = AdaptersOptions(bottleneck=8, activation="gelu")
    assert big.bottleneck_for(32) == 8 and AdaptersOptions(reduction_factor=4).bottleneck_for(32) == 8


def test_identity_at_init():
    for name, kind in [("ia3", "gpt2"), ("houlsby", "llama"), ("dora", "bert")]:
        base, _ = tiny(kind)
        model, *_ = adapted(name, kind)
        base.eval(), model.eval()
        with torch.no_grad():
            assert torch.allclose(model(**inputs()).logits, base(**inputs()).logits, atol=1e-5)


def test_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="BitFit needs bias terms.*'llama'"):
        adapted("bitfit", "llama")
    with pytest.raises(ConfigError, match="Choose one"):
        validate_method_config({"name": "adapters", "bottleneck": 8, "reduction_factor": 4})
    for name in ("ia3", "bitfit", "adapters"):
        assert validate_method_config({"name": name})["name"] == name
    model, spec, opts, ctx = adapted("bitfit", "bert")
    spec.save(model, opts, ctx, tmp_path / "bitfit")
    with pytest.raises(UserError, match="'bitfit' adapter, not bottleneck adapters"):
        ADAPTERS.load(adapted("houlsby", "bert")[0], tmp_path / "bitfit")
    with pytest.raises(UserError, match="not IA3"):
        IA3.load(adapted("ia3", "bert")[0], tmp_path / "bitfit")
    model, spec, opts, ctx = adapted("pfeiffer", "bert")
    spec.save(model, opts, ctx, tmp_path / "pf")
    assert options_from_saved(tmp_path / "pf").variant == "pfeiffer"
    with pytest.raises(UserError, match="saved at 2 places"):
        ADAPTERS.load(adapted("houlsby", "bert")[0], tmp_path / "pf")
