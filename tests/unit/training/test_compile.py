"""train.compile: decoder layers compiled for training steps give the eager result."""

import json

import pytest
import torch
from safetensors.torch import load_file

from deltatune.cli import main
from deltatune.errors import ConfigError
from deltatune.models.tiny import make_tiny_model_dir
from deltatune.training.compile import RegionalCompile, repeated_blocks
from helpers.paths import ASSETS

ALPACA = ASSETS / "alpaca_sample.json"


def test_repeated_blocks_and_errors():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=50,
        )
    )
    assert [type(b).__name__ for b in repeated_blocks(llama)] == ["LlamaDecoderLayer"] * 3
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50))
    assert [type(b).__name__ for b in repeated_blocks(gpt2)] == ["GPT2Block"] * 2
    with pytest.raises(ConfigError, match="train.compile: found no repeated layers"):
        RegionalCompile(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    regional = RegionalCompile(llama)  # compiling is lazy: nothing runs until a forward
    assert all(b._compiled_call_impl is not None for b in regional.blocks)
    with regional.eager():
        assert all(b._compiled_call_impl is None for b in regional.blocks)
    assert all(b._compiled_call_impl is not None for b in regional.blocks)
    regional.remove()
    assert all(b._compiled_call_impl is None for b in regional.blocks)


def test_compiled_training_matches_eager(tmp_path, one_thread):
    model_dir = tmp_path / "tiny-llama"
    make_tiny_model_dir("llama", model_dir, task="causal_lm")
    (tmp_path / "train.json").write_text(json.dumps(json.load(open(ALPACA))[:10]))
    adapters = {}
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for compile_ in ("false", "true"):
        run = tmp_path / f"run-{compile_}"
        code = main(
            [
                "train",
                "task=sft",
                f"model.name={model_dir}",
                f"data.train={tmp_path / 'train.json'}",
                "data.validation_split=0.2",
                "data.max_length=64",
                "train.batch_size=4",
                "train.max_steps=2",
                "train.warmup_ratio=0",
                "train.progress=false",
                "train.precision=fp32",
                "method.name=lora",
                "generate.eval_samples=0",
                f"train.compile={compile_}",
                "--output-dir",
                str(run),
            ]
        )
        assert code == 0
        if compile_ == "true":  # the layers really ran compiled
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
        adapters[compile_] = load_file(str(run / "adapter" / "adapter_model.safetensors"))
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 2 and summary["tuned_loss"] < summary["base_loss"]
    assert adapters["true"].keys() == adapters["false"].keys()
    moved = 0
    for key, value in adapters["false"].items():
        torch.testing.assert_close(adapters["true"][key], value, rtol=1e-4, atol=1e-6)
        moved += int("lora_B" in key and value.abs().max() > 0)
    assert moved  # the adapters really trained
