"""Generation helpers (batched, streamed, chat) on tiny random causal LMs, and the text metrics."""

import re
import threading

import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer

from deltatune.config import GenerateConfig
from deltatune.inference.generation import (
    _StopScanner,
    chat_loop,
    cut_at_stop,
    end_token_ids,
    generate_texts,
    stream_text,
)
from deltatune.methods.prompt_tuning import PROMPT_TUNING
from deltatune.methods.prompt_tuning.model import set_prompt_enabled
from deltatune.methods.prompt_tuning.options import PromptOptions
from deltatune.methods.registry import ModelContext
from deltatune.metrics.text import bleu, exact_match, normalize_answer, rouge_l, text_generation_metrics
from deltatune.models.loading import load_for_causal_lm
from deltatune.models.tiny import make_tiny_model_dir

pytestmark = pytest.mark.usefixtures("one_thread")

NEW = 10  # max_new_tokens of most tests: short keeps the tests fast
TEXTS = ["the cat sat", "a", "one two three four five six seven eight", "hello world"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_lm")
    return {kind: make_tiny_model_dir(kind, root / kind, task="causal_lm") for kind in ("llama", "gpt2")}


def load(model_dirs, kind):
    """A tiny causal LM whose weights are scaled up: greedy answers vary instead of repeating a word."""
    model, tokenizer, _ = load_for_causal_lm(model_dirs[kind])
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model, tokenizer


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm(request, model_dirs):
    return load(model_dirs, request.param)


@pytest.fixture(scope="module")
def llama(model_dirs):
    return load(model_dirs, "llama")


def encode(tokenizer, texts):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def reference_ids(model, tokenizer, ids, max_new_tokens=NEW):
    """New token ids of one unbatched, unpadded greedy ``model.generate``, up to the first end token."""
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=end_token_ids(tokenizer),
        )
    new = out[0, len(ids) :].tolist()
    ends = [i for i, t in enumerate(new) if t in end_token_ids(tokenizer)]
    return new[: ends[0]] if ends else new


def reference_text(model, tokenizer, ids, max_new_tokens=NEW):
    return tokenizer.decode(reference_ids(model, tokenizer, ids, max_new_tokens), skip_special_tokens=True)


def stop_string_in(tokenizer, ids):
    """A printable word that the greedy answer ``ids`` reaches within its first 6 tokens."""
    for end in range(1, 7):
        for start in range(end - 1, -1, -1):
            piece = tokenizer.decode(ids[start:end]).strip()
            if re.fullmatch(r"[A-Za-z]{2,}", piece):
                return piece
    pytest.skip("the random model's answer has no plain word early on")


# --------------------------------------------------------------------------- end tokens


def test_end_token_ids_add_end_of_turn_special_tokens(lm):
    model, tokenizer = lm
    if tokenizer.eos_token == "<|im_end|>":  # llama: eos <|im_end|> (2), plus <|endoftext|> (0)
        assert end_token_ids(tokenizer) == [2, 0]
    else:  # gpt2: <|endoftext|> is eos itself, counted once
        assert end_token_ids(tokenizer) == [0]


def test_end_of_turn_text_that_is_no_special_token_is_ignored(llama):
    _, tokenizer = llama
    assert "<|eot_id|>" not in tokenizer.get_vocab()
    assert all(
        tokenizer.convert_ids_to_tokens(i) in tokenizer.all_special_tokens for i in end_token_ids(tokenizer)
    )


# --------------------------------------------------------------------------- generate_texts


def test_batched_left_padded_greedy_equals_one_prompt_at_a_time_in_input_order(lm):
    model, tokenizer = lm
    prompts = encode(tokenizer, TEXTS)
    assert len({len(p) for p in prompts}) > 2  # different lengths: rows really are padded
    expected = [reference_text(model, tokenizer, p) for p in prompts]
    assert len(set(expected)) == len(expected)  # distinct answers, so a wrong order would show
    got = generate_texts(model, tokenizer, prompts, GenerateConfig(max_new_tokens=NEW, batch_size=3))
    assert got == expected


def test_max_new_tokens_is_respected(llama):
    model, tokenizer = llama
    prompts = encode(tokenizer, TEXTS[:2])
    got = generate_texts(model, tokenizer, prompts, GenerateConfig(max_new_tokens=3, batch_size=2))
    for text, prompt in zip(got, prompts):
        longer = reference_ids(model, tokenizer, prompt, max_new_tokens=NEW)
        assert len(longer) > 3
        assert text == tokenizer.decode(longer[:3], skip_special_tokens=True)


def test_stop_strings_cut_the_answer_and_end_generation_early(llama):
    model, tokenizer = llama
    prompt = encode(tokenizer, TEXTS[:1])
    full_ids = reference_ids(model, tokenizer, prompt[0], max_new_tokens=20)
    full = tokenizer.decode(full_ids, skip_special_tokens=True)
    stop = stop_string_in(tokenizer, full_ids)
    calls = []
    hook = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        got = generate_texts(
            model, tokenizer, prompt, GenerateConfig(max_new_tokens=20, stop=["#never#", stop])
        )
    finally:
        hook.remove()
    assert got == [full[: full.index(stop)]]
    assert len(calls) <= 6  # transformers' stop_strings ended generation, not max_new_tokens


def test_cut_at_stop_cuts_at_the_earliest_stop_string():
    assert cut_at_stop("answer: 42\nUser: hi ###", ["###", "\nUser:"]) == "answer: 42"
    assert cut_at_stop("no stop here", ["###"]) == "no stop here"
    assert cut_at_stop("kept", []) == "kept"


def test_seeded_sampling_is_reproducible(llama):
    model, tokenizer = llama
    prompts = encode(tokenizer, TEXTS)
    settings = GenerateConfig(max_new_tokens=NEW, do_sample=True, temperature=1.0, top_p=0.95, batch_size=2)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = generate_texts(model, tokenizer, prompts, settings, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is left alone
    assert generate_texts(model, tokenizer, prompts, settings, seed=7) == first
    assert generate_texts(model, tokenizer, prompts, settings, seed=8) != first


def test_generation_restores_train_mode_and_rejects_empty_prompts(llama):
    model, tokenizer = llama
    model.train()
    generate_texts(model, tokenizer, encode(tokenizer, ["a"]), GenerateConfig(max_new_tokens=2))
    assert model.training
    model.eval()
    assert generate_texts(model, tokenizer, [], GenerateConfig()) == []
    with pytest.raises(ValueError, match="prompt 1 has no tokens"):
        generate_texts(model, tokenizer, [[5], []], GenerateConfig())


def test_prompt_tuned_model_generates_through_its_hook(model_dirs):
    model, tokenizer = load(model_dirs, "llama")
    torch.manual_seed(1)
    PROMPT_TUNING.apply(
        model,
        PromptOptions(num_virtual_tokens=4, init="random", placement="start"),
        ModelContext("tiny", "CAUSAL_LM"),
    )
    prompts = encode(tokenizer, TEXTS)
    settings = GenerateConfig(max_new_tokens=NEW, batch_size=4)
    tuned = generate_texts(model, tokenizer, prompts, settings)
    assert tuned == [reference_text(model, tokenizer, p) for p in prompts]
    set_prompt_enabled(model, False)
    assert generate_texts(model, tokenizer, prompts, settings) != tuned  # the soft prompt was read


# --------------------------------------------------------------------------- stream_text


def test_stream_pieces_join_to_the_greedy_answer(lm):
    model, tokenizer = lm
    prompt = max(encode(tokenizer, TEXTS), key=lambda p: len(reference_ids(model, tokenizer, p)))
    settings = GenerateConfig(max_new_tokens=NEW)
    pieces = []
    for piece in stream_text(model, tokenizer, prompt, settings):
        assert torch.is_grad_enabled()  # no_grad stays inside the generation thread
        pieces.append(piece)
    assert len(pieces) > 1
    assert "".join(pieces) == generate_texts(model, tokenizer, [prompt], settings)[0]


def test_stream_ends_at_a_stop_string(llama):
    model, tokenizer = llama
    prompt = encode(tokenizer, TEXTS[:1])[0]
    stop = stop_string_in(tokenizer, reference_ids(model, tokenizer, prompt, max_new_tokens=20))
    settings = GenerateConfig(max_new_tokens=20, stop=[stop])
    streamed = "".join(stream_text(model, tokenizer, prompt, settings))
    assert streamed == generate_texts(model, tokenizer, [prompt], settings)[0]
    assert stop not in streamed


def test_stop_scanner_holds_back_a_stop_string_split_across_pieces():
    scanner = _StopScanner(["##", "END"])
    assert [scanner.feed(p) for p in ["ab#", "c#", "#d"]] == ["ab", "#c", ""]
    assert scanner.stopped and scanner.flush() == ""
    scanner = _StopScanner(["END"])
    assert [scanner.feed(p) for p in ["xE", "N"]] == ["x", ""]
    assert not scanner.stopped and scanner.flush() == "EN"


def test_stream_reraises_errors_of_the_generation_thread(llama, monkeypatch):
    model, tokenizer = llama

    def broken(**kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(model, "generate", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        list(stream_text(model, tokenizer, [5, 6], GenerateConfig(max_new_tokens=NEW)))
    with pytest.raises(ValueError, match="no tokens"):
        stream_text(model, tokenizer, [], GenerateConfig())


def test_leaving_the_stream_early_stops_the_generation_thread(llama):
    model, tokenizer = llama
    prompt = encode(tokenizer, TEXTS[:1])[0]
    stream = stream_text(model, tokenizer, prompt, GenerateConfig(max_new_tokens=500))
    next(stream)
    stream.close()
    assert not any(t.name == "deltatune-generate" for t in threading.enumerate())


# --------------------------------------------------------------------------- chat_loop


def test_chat_loop_streams_answers_keeps_history_and_resets(llama):
    model, tokenizer = llama
    settings = GenerateConfig(max_new_tokens=6)
    seen, written = [], []

    def encode_conversation(messages):
        seen.append(messages)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    lines = iter(["hello", "  ", "how are you", "/reset", "again"])

    def scripted(prompt):
        assert prompt == "you> "
        line = next(lines, None)
        if line is None:
            raise EOFError  # like input() at the end of a closed stdin
        return line

    final = chat_loop(
        model,
        tokenizer,
        encode_conversation,
        settings,
        system_prompt="Be brief.",
        input_fn=scripted,
        write=lambda *a, **k: written.append("".join(a)),
    )
    assert [len(m) for m in seen] == [2, 4, 2]  # the history grows, and /reset empties it
    assert [m["role"] for m in seen[1]] == ["system", "user", "assistant", "user"]
    assert (
        seen[1][2]["content"] == generate_texts(model, tokenizer, [encode_conversation(seen[0])], settings)[0]
    )
    assert [m["role"] for m in final] == ["system", "user", "assistant"]
    assert final[1]["content"] == "again"
    assert final[2]["content"] in "".join(written)


def test_chat_loop_exits_on_command_and_interrupt(llama):
    model, tokenizer = llama
    for last in ("/exit", "/quit", KeyboardInterrupt()):
        lines = iter(["hi", last])

        def input_fn(prompt, lines=lines):
            line = next(lines)
            if isinstance(line, BaseException):
                raise line
            return line

        final = chat_loop(
            model,
            tokenizer,
            lambda m: [5, 6, 7],
            GenerateConfig(max_new_tokens=3),
            input_fn=input_fn,
            write=lambda *a, **k: None,
        )
        assert [m["role"] for m in final] == ["user", "assistant"]


def test_chat_loop_drops_oldest_exchanges_to_fit_context(llama):
    model, tokenizer = llama
    seen, written = [], []

    def encode(messages):  # 4 tokens per message; the message "long" alone overflows
        seen.append([m["content"] for m in messages])
        return [5] * (4 * len(messages) + (100 if messages[-1]["content"] == "long" else 0))

    lines = iter(["a", "b", "c", "long", "d"])

    def input_fn(prompt):
        line = next(lines, None)
        if line is None:
            raise EOFError
        return line

    final = chat_loop(
        model,
        tokenizer,
        encode,
        GenerateConfig(max_new_tokens=3),
        system_prompt="S",
        input_fn=input_fn,
        write=lambda *a, **k: written.append("".join(map(str, a))),
        max_context=4 * 4 + 3,
    )  # room for 4 messages plus the answer
    prompts = [m for m in seen if m[-1] in ("a", "b", "c", "d")]  # every rendering tried, in order
    assert [len(m) for m in prompts] == [2, 4, 6, 4, 6, 4]
    assert prompts[3][:2] == ["S", "b"] and prompts[5][:2] == ["S", "c"]  # oldest exchange gone, system kept
    assert sum("dropped the oldest 2 message(s)" in w for w in written) == 2
    assert any("message too long" in w for w in written)
    assert [m["content"] for m in final][:3] == ["S", "c", final[2]["content"]] and final[3]["content"] == "d"
    assert "long" not in [m["content"] for m in final]


# --------------------------------------------------------------------------- text metrics


def test_identical_texts_score_perfectly_and_disjoint_texts_score_zero():
    same = ["the cat sat on the mat today", "a quick brown fox jumps over it"]
    assert text_generation_metrics(same, same) == pytest.approx(
        {"rouge_l": 1.0, "bleu": 100.0, "exact_match": 1.0, "mean_words": 7.0}
    )
    other = ["zebra yak walrus", "piano violin cello"]
    assert text_generation_metrics(other, same) == pytest.approx(
        {"rouge_l": 0.0, "bleu": 0.0, "exact_match": 0.0, "mean_words": 3.0}
    )


def test_metrics_match_the_libraries():
    pred, ref = "the cats were sitting on a mat", "the cat sat on the mat"
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    assert rouge_l([pred], [ref]) == pytest.approx(scorer.score(ref, pred)["rougeL"].fmeasure)
    assert 0 < rouge_l([pred], [ref]) < 1
    assert bleu([pred, ref], [ref, ref]) == pytest.approx(
        sacrebleu.corpus_bleu([pred, ref], [[ref, ref]]).score
    )


def test_exact_match_normalises_case_space_and_trailing_punctuation():
    assert normalize_answer("  The  Answer\n is 42. ") == "the answer is 42"
    assert exact_match(["Paris!", "paris", "Lyon"], ["paris", "  PARIS?", "Paris"]) == pytest.approx(2 / 3)


def test_metrics_reject_empty_and_mismatched_inputs():
    with pytest.raises(ValueError, match="no predictions"):
        text_generation_metrics([], [])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        bleu(["a", "b"], ["a"])
