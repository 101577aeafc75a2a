"""IA3, BitFit, bottleneck adapters, DoRA and LoRA+ on tiny BERT-, Llama- and GPT-2-like models:
training, save/load, parameter counts, merging, and equivalence with PEFT."""

import pytest
import torch

from deltatune.errors import ConfigError, UserError
from deltatune.methods.adapters import ADAPTERS
from deltatune.methods.adapters.model import adapter_layers, options_from_saved
from deltatune.methods.adapters.options import AdaptersOptions
from deltatune.methods.ia3 import IA3
from deltatune.methods.ia3.model import merge_ia3, unmerge_ia3
from deltatune.methods.lora import LORA
from deltatune.methods.lora.model import lora_layers, merge_lora, unmerge_lora
from deltatune.methods.lora.options import LoraOptions
from deltatune.methods.registry import ModelContext, trainable_report, validate_method_config
from deltatune.training.optim import build_optimizer
from helpers.methods import FF, H, L, R, adapted, perturb, tiny
from helpers.tiny import inputs

KV = 16  # tiny Llama: 2 key/value heads x head_dim 8
LABELS = torch.tensor([0, 1, 2])


pytestmark = pytest.mark.usefixtures("one_thread")


def head_count(kind):
    return {"bert": 3 * H + 3, "llama": 3 * H, "gpt2": 3 * H}[kind]


def lora_shapes(kind):
    """(in, out) of every 'auto' LoRA target."""
    per_layer = {
        "bert": [(H, H)] * 4 + [(H, FF), (FF, H)],
        "llama": [(H, H), (H, KV), (H, KV), (H, H), (H, FF), (H, FF), (FF, H)],
        "gpt2": [(H, 3 * H), (H, H), (H, 4 * H), (4 * H, H)],
    }[kind] * L
    return per_layer + ([(H, H)] if kind == "bert" else [])  # BERT's pooler.dense


def expected_trainable(name, kind):
    if name == "ia3":  # keys + values (out) and feed-forward inputs (in)
        per_layer = {"bert": 2 * H + H + FF, "llama": 2 * KV + FF, "gpt2": 3 * H + 4 * H}[kind]
        return L * per_layer + head_count(kind)
    if name == "bitfit":  # BERT: q,k,v,attn-out,LN1,intermediate,out,LN2 + embeddings LN + pooler
        per_layer, extra = {"bert": (7 * H + FF, 2 * H), "gpt2": (11 * H, H)}[kind]
        return L * per_layer + extra + head_count(kind)
    if name in ("houlsby", "pfeiffer"):
        b = H // 16
        sites = L * (2 if name == "houlsby" else 1)
        norms = {"bert": (2 * L + 1) * 2 * H, "llama": (2 * L + 1) * H, "gpt2": (2 * L + 1) * 2 * H}
        return sites * (2 * H * b + b + H) + (norms[kind] if name == "houlsby" else 0) + head_count(kind)
    return sum(R * (i + o) + o for i, o in lora_shapes(kind)) + head_count(kind)  # DoRA


def loss_of(model):
    return torch.nn.functional.cross_entropy(model(**inputs()).logits, LABELS)


CASES = (
    [("ia3", k) for k in ("bert", "llama", "gpt2")]
    + [("bitfit", k) for k in ("bert", "gpt2")]
    + [(v, k) for v in ("houlsby", "pfeiffer", "dora") for k in ("bert", "llama", "gpt2")]
)


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
    moved = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad
        and not any(n.startswith(h + ".") for h in ctx.head_modules)
        and not torch.equal(p, start[n])
    ]
    assert moved, "only the head trained"

    spec.save(model, opts, ctx, tmp_path / "adapter")
    fresh, heads = tiny(kind)
    spec.apply(fresh, opts, ModelContext("tiny", "SEQ_CLS", heads))
    spec.load(fresh, tmp_path / "adapter")
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh(**inputs()).logits, model(**inputs()).logits, atol=1e-6)


@pytest.mark.parametrize(
    "name,kind",
    [
        ("ia3", "bert"),
        ("ia3", "gpt2"),
        ("ia3", "llama"),
        ("dora", "bert"),
        ("dora", "gpt2"),
        ("dora", "llama"),
    ],
)
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
    group_lr = {
        id(p): g["lr"] for g in build_optimizer(model, 1e-3, 0.0, lrs).param_groups for p in g["params"]
    }
    layer = next(iter(layers))
    assert group_lr[id(layer.lora_B.weight)] == pytest.approx(1.6e-2)
    assert group_lr[id(layer.lora_A.weight)] == pytest.approx(1e-3)
    assert LORA.param_lr(model, LoraOptions(r=R), 1e-3) == {}


def test_adapters_wrap_the_right_sublayers():
    model, *_ = adapted("houlsby", "bert")
    assert sorted(adapter_layers(model)) == sorted(
        f"bert.encoder.layer.{i}.{s}" for i in range(L) for s in ("attention.output.dense", "output.dense")
    )
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
