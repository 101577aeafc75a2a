"""SFT data: layouts, templates, token-exact response masks, truncation, packing."""

import pytest

from deltatune.data.batching import sft_collate
from deltatune.data.conversations import FieldMap, rows_to_conversations
from deltatune.data.masks import encode_conversations, encode_segments, prompt_ids
from deltatune.data.readers import Row, read_rows
from deltatune.data.templates import AlpacaTemplate, ChatTemplate, RawTemplate, bos_to_add, make_template
from deltatune.errors import ConfigError, DataError
from deltatune.losses.lm import IGNORE_INDEX
from deltatune.models.tiny import make_tiny_model_dir
from deltatune.tasks.sft.packing import pack
from helpers.paths import ASSETS

LIMA = ASSETS / "lima_sample.json"
ALPACA = ASSETS / "alpaca_sample.json"


def rows(*dicts, path="f.jsonl"):
    return [Row.make(d, path, i + 1) for i, d in enumerate(dicts)]


@pytest.fixture(scope="module")
def gpt2_tok(tmp_path_factory):
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("gpt2")
    make_tiny_model_dir("gpt2", d, task="causal_lm")
    return AutoTokenizer.from_pretrained(d)


@pytest.fixture(scope="module")
def llama_tok(tmp_path_factory):
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("llama")
    make_tiny_model_dir("llama", d, task="causal_lm")
    return AutoTokenizer.from_pretrained(d)


@pytest.fixture(scope="module")
def sentencepiece_style_tok():
    """A Llama-2/Mistral-style tokenizer: "▁" marks word starts and is put before the first word of
    every text encoded (Metaspace, prepend_scheme "first"), byte fallback, BOS added; trained here on
    LIMA so the test needs no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [m["content"] for c in rows_to_conversations(read_rows(LIMA))[:200] for m in c.messages]
    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tk.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tk.train_from_iterator(
        texts, trainers.BpeTrainer(vocab_size=2000, special_tokens=["<unk>", "<s>", "</s>"])
    )
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% elif m['role'] == 'assistant' %} {{ m['content'] }}</s>{% endif %}{% endfor %}"
    )
    return tok


# ----------------------------------------------------------------------------- layouts


def test_alpaca_with_history_and_input():
    [c] = rows_to_conversations(
        rows({"instruction": "Add", "input": "2 and 3", "output": "5", "history": [["hi", "hello"]]})
    )
    assert [m["role"] for m in c.messages] == ["user", "assistant", "user", "assistant"]
    assert c.messages[2]["content"] == "Add\n\n2 and 3"
    assert c.reference == "5" and c.prompt_messages[-1]["content"] == "Add\n\n2 and 3"


def test_layout_detection_and_field_mapping():
    msgs = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"},
        ]
    }
    assert rows_to_conversations(rows(msgs))[0].messages[0]["role"] == "system"
    share = {"conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "a"}]}
    assert [m["role"] for m in rows_to_conversations(rows(share))[0].messages] == ["user", "assistant"]
    [pc] = rows_to_conversations(rows({"prompt": "p", "completion": "c"}))
    assert pc.raw and pc.reference == "c"
    [t] = rows_to_conversations(rows({"text": "plain"}))
    assert t.raw and t.messages == [{"role": "assistant", "content": "plain"}]
    [m] = rows_to_conversations(
        rows({"q": "Q", "a": "A"}), "alpaca", FieldMap({"instruction": "q", "output": "a"})
    )
    assert m.messages[0]["content"] == "Q" and m.reference == "A"
    [s] = rows_to_conversations(rows({"instruction": "i", "output": "o"}), system_prompt="be brief")
    assert s.messages[0] == {"role": "system", "content": "be brief"}


@pytest.mark.parametrize(
    "row, layout, fields, message",
    [
        ({"instrction": "x", "output": "y"}, "alpaca", None, "did you mean 'instrction'"),
        ({"question": "x"}, "auto", None, "cannot tell the layout"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages", None, "unknown role 'robot'"),
        ({"messages": [{"role": "user", "content": "x"}]}, "messages", None, "no assistant message"),
        ({"instruction": "x", "output": None}, "alpaca", None, "expected text"),
        ({"instruction": "x", "output": "y", "history": ["a"]}, "alpaca", None, "history must be"),
        (
            {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "user", "content": "c"}]},
            "prompt_completion",
            None,
            "completion has no assistant message",
        ),
    ],
)
def test_bad_rows_name_file_line_and_field(row, layout, fields, message):
    with pytest.raises(DataError, match=message) as err:
        rows_to_conversations(
            rows({"instruction": "ok", "output": "ok"}, row, path="d.json")
            if layout == "alpaca"
            else rows(row, row, path="d.json"),
            layout,
            fields,
        )
    assert "d.json, line" in str(err.value)


def test_prompt_only_rows_for_generation():
    convs = rows_to_conversations(rows({"instruction": "Add", "input": "2, 3"}), require_response=False)
    convs += rows_to_conversations(
        rows(
            {
                "messages": [
                    {"role": "user", "content": "q1"},
                    {"role": "assistant", "content": "a1"},
                    {"role": "user", "content": "q2"},
                ]
            }
        ),
        require_response=False,
    )
    assert convs[0].prompt_messages[-1]["content"] == "Add\n\n2, 3" and convs[0].reference is None
    assert [m["content"] for m in convs[1].prompt_messages] == ["q1", "a1", "q2"]
    with pytest.raises(DataError, match="no assistant message"):  # training still needs answers
        rows_to_conversations(rows({"messages": [{"role": "user", "content": "q"}]}))


def test_unknown_field_name_in_config():
    with pytest.raises(ConfigError, match="did you mean `instruction`"):
        FieldMap({"instructoin": "q"})


# ----------------------------------------------------------------------------- templates and masks


def _check_exact(tok, template, convs):
    """decode(ids) == the rendered text, and the trained ids decode to exactly the trained text."""
    for conv in convs:
        segs = template.segments(conv)
        ids, labels = encode_segments(tok, segs)
        start = len(bos_to_add(tok, segs[0][0]))  # a BOS the tokenizer adds is not in the rendered text
        assert tok.decode(ids[start:]) == "".join(t for t, _ in segs)
        expected = "".join(t for t, tr in segs if tr)
        # the first token is never a target; every conversation here starts with context. Each run of
        # trained tokens decodes (in context, as decoders may strip a leading space) to its text.
        trained_text, i = "", start
        while i < len(ids):
            if labels[i] == IGNORE_INDEX:
                i += 1
                continue
            j = i
            while j < len(ids) and labels[j] != IGNORE_INDEX:
                j += 1
            trained_text += tok.decode(ids[start:j])[len(tok.decode(ids[start:i])) :]
            i = j
        assert trained_text == expected
        # token by token: a label is either -100 or the id itself
        assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(ids, labels))
        for m in conv.messages:
            if m["role"] == "assistant":
                assert m["content"] in expected


def _lima_sample():
    convs = rows_to_conversations(read_rows(LIMA))
    multi = [c for c in convs if len(c.messages) > 2]
    return multi[:10] + convs[:30]


def test_mask_is_exact_on_gpt2_style_tokenizer(gpt2_tok):
    convs = _lima_sample()
    _check_exact(gpt2_tok, AlpacaTemplate(gpt2_tok), convs)
    _check_exact(gpt2_tok, RawTemplate(gpt2_tok), convs)


def test_mask_is_exact_on_sentencepiece_style_tokenizer(sentencepiece_style_tok, gpt2_tok):
    """Encoding each segment on its own would put a word-start mark (a space) at the start of every
    response here; later segments are encoded behind a sentinel instead."""
    from deltatune.data.templates import continuation_prefixes

    tok = sentencepiece_style_tok
    assert continuation_prefixes(tok) and not continuation_prefixes(gpt2_tok)
    assert tok("Hi")["input_ids"][0] == tok.bos_token_id
    convs = _lima_sample()
    _check_exact(tok, AlpacaTemplate(tok), convs)
    _check_exact(tok, RawTemplate(tok), convs)
    _check_exact(tok, ChatTemplate(tok), [c for c in convs if c.messages[0]["role"] != "system"])


def test_batched_segment_encoding_equals_one_by_one(sentencepiece_style_tok, gpt2_tok, llama_tok):
    """The token cache encodes every piece of a chunk in one call; ids and labels stay those of
    encode_segments, on the sentinel (SentencePiece-style), byte-level and chat-template tokenizers."""
    from deltatune.data.masks import encode_segments_many

    convs = _lima_sample() + rows_to_conversations(read_rows(ALPACA))[:20]
    for tok in (sentencepiece_style_tok, gpt2_tok, llama_tok):
        for template in (AlpacaTemplate(tok), RawTemplate(tok)) + (
            (ChatTemplate(tok),) if tok.chat_template else ()
        ):
            picked = (
                [c for c in convs if c.messages[0]["role"] != "system"]
                if tok is sentencepiece_style_tok
                else convs
            )
            many = [template.segments(c) for c in picked] + [[]]
            assert encode_segments_many(tok, many) == [encode_segments(tok, s) for s in many]


def test_mask_is_exact_with_chat_template(llama_tok):
    _check_exact(llama_tok, ChatTemplate(llama_tok), _lima_sample())


@pytest.mark.slow
def test_mask_is_exact_on_bundled_smollm2_tokenizer():
    from deltatune.models.loading import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    convs = _lima_sample() + rows_to_conversations(read_rows(ALPACA))[:40]
    _check_exact(tok, ChatTemplate(tok), convs)
    _check_exact(tok, AlpacaTemplate(tok), convs)
    # every assistant turn is trained, including its end-of-turn token, and nothing else
    conv = [c for c in convs if len(c.messages) > 2][0]
    segs = ChatTemplate(tok).segments(conv)
    trained = [t for t, tr in segs if tr]
    assert len(trained) == sum(m["role"] == "assistant" for m in conv.messages)
    assert all(t.endswith("<|im_end|>\n") for t in trained)
    # the prompt used for generation is the untrained text before the last answer
    ids = prompt_ids(tok, ChatTemplate(tok), conv.prompt_messages)
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")


def test_alpaca_template_text(gpt2_tok):
    [c] = rows_to_conversations(rows({"instruction": "Add", "input": "2, 3", "output": "5"}))
    segs = AlpacaTemplate(gpt2_tok).segments(c)
    eos = gpt2_tok.eos_token
    assert segs == [
        (
            "Below is an instruction that describes a task, paired with an input that provides "
            "further context. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\nAdd\n\n### Input:\n2, 3\n\n### Response:\n",
            False,
        ),
        ("5" + eos, True),
    ]


def test_user_jinja_template_and_auto_choice(llama_tok, gpt2_tok, tmp_path):
    jinja = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    t = make_template(jinja, llama_tok)
    [c] = rows_to_conversations(rows({"instruction": "q", "output": "a"}))
    assert t.segments(c) == [("<user>q</user><assistant>", False), ("a</assistant>", True)]
    f = tmp_path / "t.jinja"
    f.write_text(jinja)
    assert make_template(str(f), llama_tok).segments(c) == t.segments(c)
    assert isinstance(make_template("auto", llama_tok), ChatTemplate)  # has a chat template
    assert isinstance(make_template("auto", gpt2_tok), AlpacaTemplate)  # has none
    assert isinstance(make_template("auto", llama_tok, raw_data=True), RawTemplate)
    with pytest.raises(ConfigError, match="no chat template"):
        make_template("chat", gpt2_tok)
    with pytest.raises(ConfigError, match="not auto, chat"):
        make_template("chatml", gpt2_tok)


def test_template_that_rewrites_history_is_refused(llama_tok):
    # renders only the last message: earlier text disappears when turns are added
    jinja = "{{ messages[-1].content }}{% if add_generation_prompt %}>{% endif %}"
    [c] = rows_to_conversations(rows({"instruction": "q", "output": "a"}, path="x.json"))
    with pytest.raises(DataError, match="x.json, line 1: the chat template renders earlier turns"):
        make_template(jinja, llama_tok).segments(c)


def test_truncation_policy_counts(gpt2_tok):
    convs = rows_to_conversations(
        rows(
            {"instruction": "short", "output": "ok"},
            {"instruction": "long " * 50, "output": "answer " * 50},
            {"instruction": "prompt " * 200, "output": "lost"},
        )
    )
    t = AlpacaTemplate(gpt2_tok)
    feats, stats = encode_conversations(convs, t, gpt2_tok, 120, "truncate")
    assert (stats.truncated, stats.dropped_too_long, stats.dropped_no_target, stats.kept) == (2, 0, 1, 2)
    assert all(len(f["input_ids"]) <= 120 for f in feats)
    feats, stats = encode_conversations(convs, t, gpt2_tok, 120, "drop")
    assert (stats.truncated, stats.dropped_too_long, stats.kept) == (0, 2, 1)


# ----------------------------------------------------------------------------- batches


def test_pack_and_collate(gpt2_tok):
    convs = rows_to_conversations(read_rows(ALPACA))[:30]
    feats, _ = encode_conversations(convs, AlpacaTemplate(gpt2_tok), gpt2_tok, 256)
    packed = pack(feats, 256, seed=0)
    assert len(packed) < len(feats)
    assert sorted(n for r in packed for n in r["lengths"]) == sorted(len(f["input_ids"]) for f in feats)
    assert all(len(r["input_ids"]) <= 256 for r in packed)
    batch = sft_collate(packed[:3], pad_token_id=0)
    assert "attention_mask" not in batch
    row = packed[0]
    starts = [sum(row["lengths"][:k]) for k in range(len(row["lengths"]))]
    assert all(int(batch["position_ids"][0, s]) == 0 for s in starts)
    assert int(batch["num_units"]) == sum(sum(x != -100 for x in r["labels"]) for r in packed[:3])
    assert int(batch["num_tokens"]) == sum(len(r["input_ids"]) for r in packed[:3])
    plain = sft_collate(feats[:4], pad_token_id=0)
    assert plain["attention_mask"].sum() == sum(len(f["input_ids"]) for f in feats[:4])
