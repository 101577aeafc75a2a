"""Tokenize once (classification): the token cache gives the batches of the in-memory route, is reused by
a second run, missed when the data, max_length or tokenizer change, rebuilt when damaged, and skipped
(in memory, one log line) when its folder cannot be written."""

import json
import random

import pytest
import torch

from deltatune.data.batching import LengthGroupedBatchSampler, pad_collate
from deltatune.data.readers import iter_rows, read_rows
from deltatune.data.token_cache import TokenCache, feature_lengths
from deltatune.errors import DataError
from deltatune.models import make_tiny_model_dir
from deltatune.models.loading import load_tokenizer
from deltatune.tasks.classify.options import ClassifyData
from deltatune.tasks.classify.tokens import ClassificationInputs

WORDS = (
    "a great film dull mess wonderful acting terrible story i loved hated it truly bad boring warm".split()
)


@pytest.fixture(scope="module")
def bert_tok(tmp_path_factory):
    return load_tokenizer(make_tiny_model_dir("bert", tmp_path_factory.mktemp("m") / "bert"))


@pytest.fixture(scope="module")
def gpt2_tok(tmp_path_factory):
    return load_tokenizer(make_tiny_model_dir("gpt2", tmp_path_factory.mktemp("m") / "gpt2", texts=WORDS * 5))


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DELTATUNE_HOME", str(tmp_path / "home"))  # never the user's cache


def rows(n, seed=0):
    rng = random.Random(seed)
    return [
        {
            "text": " ".join(rng.choices(WORDS, k=rng.randint(1, 30))),
            "pair": rng.choice(WORDS),
            "label": rng.choice(["neg", "pos", "meh"]),
        }
        for _ in range(n)
    ]


def write(path, items):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in items))
    else:
        sep = "\t" if path.suffix == ".tsv" else ","
        path.write_text(
            "text"
            + sep
            + "pair"
            + sep
            + "label\n"
            + "".join(sep.join([r["text"], r["pair"], r["label"]]) + "\n" for r in items)
        )
    return path


def inputs(d, tok, cache=None, seed=3, max_length=16):
    data = ClassificationInputs(d, seed, cache)
    return data, data.features(tok, max_length)


def batches(feats, pad_id):
    sampler = LengthGroupedBatchSampler(feature_lengths(feats), 8, seed=5)
    return [pad_collate([feats[i] for i in idx], pad_id) for idx in sampler]


def assert_same(a, b, pad_id):
    assert a.keys() == b.keys()
    for split in a:
        assert len(a[split]) == len(b[split])
        for x, y in zip(batches(a[split], pad_id), batches(b[split], pad_id)):
            assert x.keys() == y.keys()
            for k in x:
                assert torch.equal(x[k], y[k]), (split, k)


@pytest.mark.parametrize(
    "suffix,options",
    [
        (".jsonl", {}),
        (".csv", {"text_pair_field": "pair", "validation_split": 0.2, "max_train_samples": 50}),
        (
            ".tsv",
            {
                "test_split": 0.25,
                "validation_split": 0.1,
                "label_names": {"neg": "N", "pos": "P", "meh": "M"},
            },
        ),
    ],
)
def test_same_batches_with_and_without_the_cache(bert_tok, tmp_path, suffix, options):
    train = write(tmp_path / f"train{suffix}", rows(120))
    extra = (
        {}
        if "validation_split" in options
        else {"validation": str(write(tmp_path / f"val{suffix}", rows(30, 1)))}
    )
    cached = ClassifyData(train=str(train), cache=True, **options, **extra)
    memory = ClassifyData(train=str(train), cache=False, **options, **extra)
    (a, fa), (b, fb) = inputs(cached, bert_tok, TokenCache(tmp_path / "c")), inputs(memory, bert_tok)
    assert a.streamed and not b.streamed
    assert (a.labels, a.counts, a.train_size) == (b.labels, b.counts, b.train_size)
    assert [e.label for e in a.learnable] == list(dict.fromkeys(e.label for e in b.learnable))
    assert_same(fa, fb, bert_tok.pad_token_id)
    assert all(list(fa[s]) == fb[s] for s in fa)  # the very dicts of the in-memory route


def test_a_second_run_reuses_the_cache_and_changes_miss_it(bert_tok, gpt2_tok, tmp_path, monkeypatch, capsys):
    train = write(tmp_path / "train.jsonl", rows(80))
    d = ClassifyData(train=str(train), test=str(write(tmp_path / "test.jsonl", rows(20, 2))), cache=True)
    first = TokenCache(tmp_path / "c")
    _, feats = inputs(d, bert_tok, first)
    assert first.built == 3  # labels, train tokens, test tokens
    monkeypatch.setattr("deltatune.tasks.classify.tokens._encode_cut", lambda *a: pytest.fail("re-tokenized"))
    monkeypatch.setattr("deltatune.tasks.classify.tokens.iter_rows", lambda *a: pytest.fail("re-read"))
    second = TokenCache(tmp_path / "c")
    _, again = inputs(d, bert_tok, second)
    assert second.built == 0 and "0 entries built" in capsys.readouterr().err
    assert_same(feats, again, bert_tok.pad_token_id)
    monkeypatch.undo()
    for change, expected in [("max_length", 2), ("tokenizer", 2), ("file", 2)]:
        cache, tok, max_length = TokenCache(tmp_path / "c"), bert_tok, 16
        if change == "max_length":
            max_length = 9
        elif change == "tokenizer":
            tok = gpt2_tok
        else:
            write(train, rows(81))
        inputs(d, tok, cache, max_length=max_length)
        assert cache.built == expected, (
            change
        )  # tokens of train and test; a new train file: its labels and tokens


def test_a_damaged_entry_is_rebuilt(bert_tok, tmp_path, capsys):
    d = ClassifyData(train=str(write(tmp_path / "train.csv", rows(60))), cache=True)
    inputs(d, bert_tok, TokenCache(tmp_path / "c"))
    _, feats = inputs(ClassifyData(train=d.train, cache=False), bert_tok)
    entries = sorted((tmp_path / "c").glob("tokens-*"))
    assert len(entries) == 1
    data = entries[0] / "data.arrow"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2 :] = b"\xff" * (len(raw) - len(raw) // 2)  # same size, garbage offsets and ids
    data.write_bytes(bytes(raw))
    cache = TokenCache(tmp_path / "c")
    _, again = inputs(d, bert_tok, cache)
    assert cache.built == 1 and "is damaged" in capsys.readouterr().err
    assert_same(feats, again, bert_tok.pad_token_id)
    (entries[0] / "meta.json").write_text("{not json")
    cache = TokenCache(tmp_path / "c")
    inputs(d, bert_tok, cache)
    assert cache.built == 1


def test_an_unwritable_cache_folder_falls_back_to_memory(bert_tok, tmp_path, capsys):
    d = ClassifyData(train=str(write(tmp_path / "train.tsv", rows(50))), cache=True)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    _, feats = inputs(d, bert_tok, TokenCache(blocked / "tokens"))
    _, memory = inputs(ClassifyData(train=d.train, cache=False), bert_tok)
    assert_same(feats, memory, bert_tok.pad_token_id)
    assert capsys.readouterr().err.count("cannot write to") == 1


def test_bad_rows_give_the_in_memory_error(bert_tok, tmp_path):
    items = rows(40)
    items[17]["label"] = ""
    train = write(tmp_path / "train.jsonl", items)
    val = write(tmp_path / "val.jsonl", rows(10, 1) + [{"text": "fine", "label": "unseen"}])
    messages = []
    for cache in (True, False):
        with pytest.raises(DataError) as exc:
            inputs(ClassifyData(train=str(train), cache=cache), bert_tok, TokenCache(tmp_path / "c"))
        messages.append(str(exc.value))
    assert messages[0] == messages[1] and "line 18" in messages[0]
    train = write(tmp_path / "train.jsonl", rows(40))
    for cache in (True, False):
        with pytest.raises(DataError) as exc:
            inputs(
                ClassifyData(train=str(train), validation=str(val), cache=cache),
                bert_tok,
                TokenCache(tmp_path / "c"),
            )
        messages.append(str(exc.value))
    assert messages[2] == messages[3] and "unseen" in messages[2]


def test_streamed_rows_are_the_rows_read_in_memory(tmp_path):
    (tmp_path / "a.csv").write_bytes(
        b'\xef\xbb\xbf text , label\r\n"two\r\nlines, quoted",1\r\n\r\nplain,0\r\n'
    )
    (tmp_path / "b.jsonl").write_text('{"text": "x", "label": 1}\n\n  \n{"text": "y\\u00e9", "label": 0}\r\n')
    (tmp_path / "c.tsv").write_text('text\tlabel\n"un"balanced\t1\n\nlast\t0')
    import datasets

    datasets.Dataset.from_list([{"text": "p", "label": 1}, {"text": "q", "label": None}]).to_parquet(
        tmp_path / "d.parquet"
    )
    for name in ("a.csv", "b.jsonl", "c.tsv", "d.parquet"):
        streamed, read = list(iter_rows(tmp_path / name)), read_rows(tmp_path / name)
        assert [(dict(r), r.line) for r in streamed] == [(dict(r), r.line) for r in read], name


def test_train_then_eval_through_the_cli(tmp_path, capsys):
    from deltatune.cli import main

    model = make_tiny_model_dir("bert", tmp_path / "bert")
    train, val = write(tmp_path / "train.jsonl", rows(48)), write(tmp_path / "val.jsonl", rows(16, 1))
    out = tmp_path / "run"
    args = [
        "train",
        f"model.name={model}",
        f"data.train={train}",
        f"data.validation={val}",
        "data.cache=true",
        "train.epochs=1",
        "train.batch_size=8",
        "train.progress=false",
        "--output-dir",
        str(out),
    ]
    assert main(args) == 0
    assert "3 entries built" in capsys.readouterr().err
    assert list((tmp_path / "home" / "tokens").glob("tokens-*"))
    report = json.loads((out / "eval_report.json").read_text())
    assert main(["eval", str(out), "--data", str(val), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(report["validation"]["accuracy"])


@pytest.mark.parametrize("split_special", [False, True])
def test_untruncated_ids_read_from_the_rust_encodings_are_the_tokenizers(bert_tok, gpt2_tok, split_special):
    from deltatune.data.masks import encode_untruncated

    texts = [
        "a great film",
        "dull [SEP] mess <|endoftext|> it",
        "  wonderful\tacting  ",
        "naïve café 😀 " * 40,
    ]
    pairs = ["truly bad", "[CLS]", "warm", "boring"]
    for tok in (bert_tok, gpt2_tok):
        tok.split_special_tokens = split_special
        try:
            tok(texts[:1], truncation=True, max_length=4)  # leave truncation switched on in the backend
            for p in (None, pairs):
                want = tok(
                    texts, p, truncation=False, return_attention_mask=False, return_token_type_ids=True
                )
                ids, types = encode_untruncated(tok, texts, p)
                assert ids == want["input_ids"] and types == want["token_type_ids"]
                assert max(len(x) for x in ids) > 100
        finally:
            tok.split_special_tokens = False
