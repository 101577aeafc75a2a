"""Prompt and prefix tuning against Hugging Face PEFT: adapters round-trip both ways with the same outputs."""

import pytest
import torch

from deltatune.methods.prefix_tuning import PREFIX_TUNING
from deltatune.methods.prompt_tuning import PROMPT_TUNING
from helpers.prompt_prefix import N, adapt, batch, ctx, logits, randomize, tiny


@pytest.mark.parametrize(
    "kind,task", [("bert", "SEQ_CLS"), ("llama", "SEQ_CLS"), ("llama", "CAUSAL_LM"), ("gpt2", "CAUSAL_LM")]
)
def test_prompt_tuning_round_trips_with_peft(kind, task, tmp_path):
    peft = pytest.importorskip("peft")
    model, opts = adapt("prompt", kind, task, placement="start")
    randomize(model)
    # decoders: PEFT drops input_ids, so its classifier reads the last position: no right padding here
    x = batch(kind, task, padded=(kind == "bert"))
    ours = logits(model, x)
    PROMPT_TUNING.save(model, opts, ctx(kind, task), tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(tiny(kind, task), tmp_path / "ours")
    peft_logits = logits(theirs, x)
    if task == "CAUSAL_LM":  # PEFT also returns logits for the virtual positions
        peft_logits = peft_logits[:, N:]
    assert torch.allclose(ours, peft_logits, atol=1e-5)
    theirs.save_pretrained(tmp_path / "peft")
    back, _ = adapt("prompt", kind, task, placement="start")
    PROMPT_TUNING.load(back, tmp_path / "peft")
    assert torch.allclose(logits(back, x), ours, atol=1e-5)


@pytest.mark.parametrize("kind,task", [("llama", "CAUSAL_LM"), ("gpt2", "CAUSAL_LM")])
def test_prefix_tuning_round_trips_with_peft(kind, task, tmp_path):
    peft = pytest.importorskip("peft")
    model, opts = adapt("prefix", kind, task, prefix_projection=True)
    randomize(model)
    x = batch(kind, task, padded=(task == "CAUSAL_LM"))
    ours = logits(model, x)
    PREFIX_TUNING.save(model, opts, ctx(kind, task), tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(tiny(kind, task), tmp_path / "ours")
    assert torch.allclose(logits(theirs, x), ours, atol=1e-5)
    # a prefix trained in PEFT (random values here) loads into deltatune
    pm = peft.get_peft_model(tiny(kind, task), peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=N))
    randomize(pm)
    pm.save_pretrained(tmp_path / "peft")
    back, _ = adapt("prefix", kind, task)
    PREFIX_TUNING.load(back, tmp_path / "peft")
    assert torch.allclose(logits(back, x), logits(pm, x), atol=1e-5)
