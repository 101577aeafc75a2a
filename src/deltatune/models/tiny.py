"""Tiny random models for fast tests: BERT-like, Llama-like and GPT-2-like, built from a config.

:func:`make_tiny_model_dir` writes a directory that looks exactly like a downloaded model
(``config.json``, ``model.safetensors``, tokenizer files), so tests exercise the same loading code as
real runs, in well under a second. The weights are random: only shapes and code paths are realistic.

The special tokens copy the real models' conventions, so that bugs which would show on the real model
also show on the tiny one (notably pad == eos for the decoders: masking labels by pad id would also
mask the eos the model must learn to emit):

- ``bert``: the bundled MiniLM WordPiece tokenizer (vocab 30522), ``[PAD]`` = 0.
- ``llama``: like SmolLM2 — ``<|endoftext|>`` unk (0), ``<|im_start|>`` bos (1), ``<|im_end|>`` eos and
  pad (2), and a ChatML chat template.
- ``gpt2``: like GPT-2 — ``<|endoftext|>`` (0) is bos, eos, unk and pad; no chat template.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import Iterable, Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)

from deltatune.models.bundled import bundled_model_path

TinyKind = Literal["bert", "llama", "gpt2"]
KINDS: tuple[str, ...] = ("bert", "llama", "gpt2")

HIDDEN, LAYERS, INTERMEDIATE, MAX_POSITIONS = 32, 2, 64, 512
BPE_VOCAB = 1000

# ChatML, as SmolLM2 uses it (minus its default system prompt, to keep test sequences short).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_SPECIALS = {  # in id order: the BPE trainer gives special tokens the first ids
    "llama": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "gpt2": ["<|endoftext|>"],
}
_BERT_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def tiny_config(kind: TinyKind, vocab_size: int | None = None) -> PretrainedConfig:
    """Config of a tiny model: hidden 32, 2 layers, intermediate 64, 512 positions, dropout off.

    Dropout is off so that tests comparing two training runs (gradient accumulation, resume) can
    expect identical numbers. Llama uses grouped-query attention (4 query heads, 2 key/value heads) and
    tied embeddings, like SmolLM2. ``vocab_size`` defaults to the tiny tokenizer's size.
    """
    if kind == "bert":
        return BertConfig(
            vocab_size=vocab_size or 30522,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=2,
            intermediate_size=INTERMEDIATE,
            max_position_embeddings=MAX_POSITIONS,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            pad_token_id=0,
        )
    if kind == "llama":
        return LlamaConfig(
            vocab_size=vocab_size or BPE_VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=INTERMEDIATE,
            max_position_embeddings=MAX_POSITIONS,
            tie_word_embeddings=True,
            unk_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=2,
        )
    if kind == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size or BPE_VOCAB,
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=2,
            n_inner=INTERMEDIATE,
            n_positions=MAX_POSITIONS,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    raise ValueError(f"unknown tiny model kind '{kind}'; choose one of {', '.join(KINDS)}")


def make_tiny_model_dir(
    kind: TinyKind,
    path: str | os.PathLike,
    task: Literal["classify", "causal_lm"] = "classify",
    num_labels: int = 2,
    seed: int = 0,
    texts: Iterable[str] | None = None,
) -> str:
    """Save a randomly initialised tiny model plus tokenizer into ``path``; returns ``path``.

    ``task="classify"`` saves a ``*ForSequenceClassification`` model with a ``num_labels`` head,
    ``"causal_lm"`` a ``*ForCausalLM``. Weights depend only on ``seed``. For llama/gpt2 the byte-level
    BPE tokenizer is trained on ``texts`` (default: the English words of the BERT vocabulary).
    """
    if task not in ("classify", "causal_lm"):
        raise ValueError(f"unknown task '{task}'; choose 'classify' or 'causal_lm'")
    if kind == "bert" and task == "causal_lm":
        raise ValueError("bert is an encoder: tiny causal LMs are 'llama' or 'gpt2'")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if kind == "bert":
        source = Path(bundled_model_path("minilm-l6"))
        for name in _BERT_TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy(source / name, path / name)
        config = tiny_config(kind)
    else:
        tokenizer = tiny_tokenizer(kind, texts)
        tokenizer.save_pretrained(path)
        config = tiny_config(kind, vocab_size=len(tokenizer))
    torch.manual_seed(seed)
    config.num_labels = num_labels
    head_class = {"classify": AutoModelForSequenceClassification, "causal_lm": AutoModelForCausalLM}[task]
    model = head_class.from_config(config)
    model.save_pretrained(path)
    return str(path)


def tiny_tokenizer(
    kind: Literal["llama", "gpt2"], texts: Iterable[str] | None = None, vocab_size: int = BPE_VOCAB
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (~``vocab_size`` tokens) trained in-process; deterministic.

    Byte-level means every string is encodable (no unknown tokens), as with GPT-2 and SmolLM2.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if kind not in _SPECIALS:
        raise ValueError(f"tiny_tokenizer builds 'llama' or 'gpt2' tokenizers, not '{kind}'")
    specials = _SPECIALS[kind]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(list(texts) if texts is not None else _default_texts(), trainer=trainer)
    # llama: <|endoftext|>, <|im_start|>, <|im_end|> and pad = eos; gpt2: one token plays every role.
    unk, bos, eos = specials if kind == "llama" else specials * 3
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token=unk,
        bos_token=bos,
        eos_token=eos,
        pad_token=eos,
        model_max_length=MAX_POSITIONS,
    )
    if kind == "llama":
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@functools.lru_cache(maxsize=1)
def _default_texts(n_words: int = 3000, words_per_line: int = 12) -> tuple[str, ...]:
    """Training text for the tiny BPE, made from the English words of the bundled BERT vocabulary.

    The vocabulary is roughly frequency-ordered, so word ``i`` is repeated about ``3000 / (i + 30)``
    times (Zipf-like): common words such as "the" then become single tokens, as in a real tokenizer.
    """
    vocab = Path(bundled_model_path("minilm-l6")) / "vocab.txt"
    words = [w for w in vocab.read_text(encoding="utf-8").split("\n") if w.isascii() and w.isalpha()]
    repeats = [1 + n_words // (i + 30) for i in range(min(n_words, len(words)))]
    corpus = [words[i] for r in range(repeats[0]) for i, n in enumerate(repeats) if n > r]  # interleaved
    lines = [" ".join(corpus[i : i + words_per_line]) for i in range(0, len(corpus), words_per_line)]
    # Capitalised sentences with punctuation and digits, so these get merges of their own too.
    lines += [f"{line.capitalize()}, {i}. {line.title()}!" for i, line in enumerate(lines[:200])]
    return tuple(lines)


__all__ = ["CHAT_TEMPLATE", "KINDS", "TinyKind", "make_tiny_model_dir", "tiny_config", "tiny_tokenizer"]
