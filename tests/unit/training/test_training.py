"""The training loop: exact gradient accumulation, determinism, schedule, NaN handling."""

from functools import partial

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification

from deltatune.config import TrainConfig
from deltatune.data.batching import LengthGroupedBatchSampler, pad_collate
from deltatune.losses.classification import classifier_batch_loss as loss_fn
from deltatune.methods.lora.model import apply_lora
from deltatune.methods.lora.options import LoraOptions
from deltatune.methods.registry import ModelContext
from deltatune.results import BatchLoss
from deltatune.training.accelerator import make_accelerator
from deltatune.training.loop import LoopPlan, train
from deltatune.training.optim import lr_factor


def tiny_model():
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForSequenceClassification(cfg)
    apply_lora(model, LoraOptions(r=2, alpha=4, dropout=0.0), ModelContext("x", "SEQ_CLS", ["classifier"]))
    return model


def features(n=32):
    g = torch.Generator().manual_seed(3)
    feats = []
    for i in range(n):
        length = int(torch.randint(3, 12, (1,), generator=g))
        feats.append({"input_ids": torch.randint(1, 50, (length,), generator=g).tolist(), "label": i % 2})
    return feats


def run(tmp_path, batch_size, grad_accum, steps=4, **kw):
    model = tiny_model()
    feats = features()
    sampler = LengthGroupedBatchSampler(
        [len(f["input_ids"]) for f in feats], batch_size, group_by_length=False, seed=1
    )
    loader = DataLoader(feats, batch_sampler=sampler, collate_fn=partial(pad_collate, pad_token_id=0))
    cfg = TrainConfig(
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_steps=steps,
        precision="fp32",
        progress=False,
        warmup_ratio=0.0,
        **kw,
    )
    res = train(model, loader, loss_fn, cfg, LoopPlan(1e-2), tmp_path, make_accelerator("fp32"))
    return model, res


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_accumulation_is_exact(tmp_path):
    a, _ = run(tmp_path / "a", batch_size=8, grad_accum=1)
    b, _ = run(tmp_path / "b", batch_size=2, grad_accum=4)
    pa, pb = trainable(a), trainable(b)
    for name in pa:
        assert torch.allclose(pa[name], pb[name], atol=1e-5), name
    c, _ = run(tmp_path / "c", batch_size=4, grad_accum=1)  # a different batch: different result
    assert not all(torch.allclose(pa[n], trainable(c)[n], atol=1e-5) for n in pa)


def test_same_seed_same_weights_bit_for_bit(tmp_path):
    a, _ = run(tmp_path / "a", batch_size=4, grad_accum=2)
    b, _ = run(tmp_path / "b", batch_size=4, grad_accum=2)
    for (n, x), y in zip(trainable(a).items(), trainable(b).values()):
        assert torch.equal(x, y), n


def test_metrics_log_written(tmp_path):
    _, res = run(tmp_path, batch_size=4, grad_accum=1, steps=6, log_every=2)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # steps 2, 4, 6 and the end record
    assert res.steps == 6 and res.train_tokens > 0 and res.tokens_per_s > 0


def test_nan_steps_are_skipped_then_stop(tmp_path, monkeypatch):
    import deltatune.training.loop as loop

    model = tiny_model()
    before = trainable(model)
    feats = features(8)
    loader = DataLoader(feats, batch_size=4, collate_fn=partial(pad_collate, pad_token_id=0))

    def nan_loss(m, b):
        return BatchLoss(loss_fn(m, b).loss * float("nan"), 4, 10)

    cfg = TrainConfig(batch_size=4, max_steps=3, precision="fp32", progress=False)
    res = train(model, loader, nan_loss, cfg, LoopPlan(1e-2), tmp_path, make_accelerator("fp32"))
    assert res.skipped_steps == 3
    for n, p in trainable(model).items():
        assert torch.equal(p, before[n])  # no update from a NaN step
    monkeypatch.setattr(loop, "MAX_CONSECUTIVE_BAD_STEPS", 2)
    from deltatune.errors import UserError

    with pytest.raises(UserError, match="NaN"):
        train(tiny_model(), loader, nan_loss, cfg, LoopPlan(1e-2), tmp_path, make_accelerator("fp32"))


def test_schedule_shapes():
    assert lr_factor(0, 100, 10, "linear") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "linear") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, 10, "constant") == 1.0


def test_length_grouped_batches_cover_everything_and_reduce_padding():
    lengths = [int(x) for x in torch.randint(1, 100, (1000,), generator=torch.Generator().manual_seed(0))]
    grouped = list(LengthGroupedBatchSampler(lengths, 16, seed=0))
    plain = list(LengthGroupedBatchSampler(lengths, 16, seed=0, group_by_length=False))
    assert sorted(i for b in grouped for i in b) == list(range(1000))

    def pad(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert pad(grouped) < 0.7 * pad(plain)
    s = LengthGroupedBatchSampler(lengths, 16, seed=0)
    s.set_epoch(1)
    assert list(s) != grouped  # reshuffled each epoch


def test_gradient_checkpointing_gives_the_same_update(tmp_path, monkeypatch):
    a, _ = run(tmp_path / "a", batch_size=4, grad_accum=1)
    original = tiny_model

    def checkpointed():
        model = original()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        assert model.is_gradient_checkpointing
        return model

    monkeypatch.setitem(globals(), "tiny_model", checkpointed)
    b, _ = run(tmp_path / "b", batch_size=4, grad_accum=1)
    for (n, x), y in zip(trainable(a).items(), trainable(b).values()):
        assert torch.allclose(x, y, atol=1e-6), n


def test_missing_tracker_is_a_clear_error(monkeypatch):
    import deltatune.training.accelerator as loop
    from deltatune.errors import UserError

    monkeypatch.setitem(loop.TRACKER_PACKAGES, "wandb", "surely_not_installed_pkg")
    with pytest.raises(UserError, match="pip install surely_not_installed_pkg"):
        make_accelerator("fp32", ["wandb"])
    with pytest.raises(UserError, match="unknown tracker"):
        make_accelerator("fp32", ["neptune"])


def test_auto_precision_is_fp32_on_cpus_without_native_bf16(monkeypatch):
    import deltatune.training.accelerator as loop

    monkeypatch.setattr(loop.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loop, "cpu_has_fast_bf16", lambda: False)
    assert loop.resolve_precision("auto") == "fp32"
    monkeypatch.setattr(loop, "cpu_has_fast_bf16", lambda: True)
    assert loop.resolve_precision("auto") == "bf16"
    assert loop.resolve_precision("fp32") == "fp32"


def test_accumulation_is_exact_for_token_level_lm_loss(tmp_path):
    """Uneven lengths and uneven numbers of target tokens: 2 x 4 must equal 8 x 1."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from deltatune.losses.lm import token_cross_entropy_sum

    def lm_model():
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=60,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=32,
            pad_token_id=0,
        )
        model = LlamaForCausalLM(cfg)
        apply_lora(model, LoraOptions(r=2, alpha=4, dropout=0.0), ModelContext("x", "CAUSAL_LM", []))
        return model

    g = torch.Generator().manual_seed(5)
    feats = []
    for i in range(16):
        n = int(torch.randint(4, 20, (1,), generator=g))
        ids = torch.randint(1, 60, (n,), generator=g).tolist()
        prompt = int(torch.randint(1, n - 2, (1,), generator=g))  # loss only after the prompt
        feats.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})

    def collate(batch):
        t = max(len(f["input_ids"]) for f in batch)
        ids = torch.tensor([f["input_ids"] + [0] * (t - len(f["input_ids"])) for f in batch])
        labels = torch.tensor([f["labels"] + [-100] * (t - len(f["labels"])) for f in batch])
        mask = (torch.arange(t)[None] < torch.tensor([len(f["input_ids"]) for f in batch])[:, None]).long()
        units = int((labels[:, 1:] != -100).sum())
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "num_units": torch.tensor(units)}

    def lm_loss(model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, n = token_cross_entropy_sum(logits, batch["labels"])
        return BatchLoss(loss, n, int(batch["attention_mask"].sum()))

    def go(out, bs, accum):
        model = lm_model()
        sampler = LengthGroupedBatchSampler(
            [len(f["input_ids"]) for f in feats], bs, group_by_length=False, seed=1
        )
        loader = DataLoader(feats, batch_sampler=sampler, collate_fn=collate)
        cfg = TrainConfig(
            batch_size=bs,
            grad_accum=accum,
            max_steps=2,
            precision="fp32",
            progress=False,
            warmup_ratio=0.0,
            checkpoint_every=None,
        )
        train(model, loader, lm_loss, cfg, LoopPlan(1e-2), out, make_accelerator("fp32"))
        return trainable(model)

    a, b = go(tmp_path / "a", 8, 1), go(tmp_path / "b", 2, 4)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name
