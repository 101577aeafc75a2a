"""Instruction data through the token cache: the streamed route gives the in-memory route's examples,
counts and generation samples, is reused by a second run, raises the in-memory route's errors, feeds
the pre-flight checks the same findings, and trains end to end."""

import json

import pytest

from deltatune.checks import run_checks
from deltatune.cli import main
from deltatune.config import load_config
from deltatune.errors import DataError
from deltatune.models.tiny import make_tiny_model_dir
from deltatune.tasks.sft.job import SftJob
from helpers.paths import ASSETS

ALPACA = ASSETS / "alpaca_sample.json"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_tiny_model_dir("llama", tmp_path_factory.mktemp("m") / "llama", task="causal_lm")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DELTATUNE_HOME", str(tmp_path / "home"))  # never the user's cache


def alpaca_rows(n, start=0):
    rows = json.loads(ALPACA.read_text())
    out = [dict(rows[(start + i) % len(rows)]) for i in range(n)]
    for i in range(3, n, 10):
        out[i]["output"] = ""  # dropped with empty_answers: drop
    for i in range(7, n, 10):
        out[i]["instruction"] = "long " * 250  # over max_length
    out[9 % n] = dict(out[2])  # a duplicate for the checks
    return out


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def job_data(job):
    feats = {s: [dict(f) for f in rows] for s, rows in job.feats.items()}
    return (
        job.template.name,
        feats,
        {s: vars(v) for s, v in job.stats.items()},
        [(c.line, c.messages) for c in job.samples],
    )


CASES = {
    "split-sample-truncate": [
        "data.validation_split=0.25",
        "data.max_train_samples=20",
        "data.truncation=truncate",
    ],
    "files-drop-alpaca": ["data.truncation=drop", "data.template=alpaca", "VALIDATION", "TEST"],
}


def config(tmp_path, llama, case, cache, *extra):
    opts = [o for o in CASES[case] if o.isupper() is False]
    if "VALIDATION" in CASES[case]:
        opts.append(f"data.validation={write_jsonl(tmp_path / 'val.jsonl', alpaca_rows(12, 40))}")
    if "TEST" in CASES[case]:
        opts.append(f"data.test={write_jsonl(tmp_path / 'test.jsonl', alpaca_rows(10, 60))}")
    return load_config(
        None,
        [
            "task=sft",
            f"model.name={llama}",
            f"data.train={tmp_path / 'train.jsonl'}",
            "data.max_length=200",
            "data.empty_answers=drop",
            "generate.eval_samples=4",
            f"data.cache={cache}",
            *opts,
            *extra,
        ],
    )


@pytest.mark.parametrize("case", CASES)
def test_streamed_examples_are_the_in_memory_ones(tmp_path, llama, case, monkeypatch):
    write_jsonl(tmp_path / "train.jsonl", alpaca_rows(50))
    memory = job_data(SftJob(config(tmp_path, llama, case, "false")))
    streamed_cfg = config(tmp_path, llama, case, "true")
    streamed = job_data(SftJob(streamed_cfg))
    assert streamed == memory
    counts = {
        k: sum(st[k] for st in memory[2].values())
        for k in ("truncated", "dropped_too_long", "dropped_no_target")
    }
    assert counts["truncated"] + counts["dropped_too_long"] >= 1 and counts["dropped_no_target"] >= 1
    assert list((tmp_path / "home" / "tokens").glob("sft-*"))
    # a second run reads the tables back: building anything now fails the test
    from deltatune.data import token_cache

    monkeypatch.setattr(token_cache.TokenCache, "_build_on_disk", lambda *a, **k: pytest.fail("built again"))
    assert job_data(SftJob(config(tmp_path, llama, case, "true"))) == memory
    # the pre-flight checks read the same tables and find what the in-memory route finds
    found = {f.check: (f.title, f.evidence) for f in run_checks(streamed_cfg, slow=False).findings}
    assert found == {
        f.check: (f.title, f.evidence)
        for f in run_checks(config(tmp_path, llama, case, "false"), slow=False).findings
    }
    assert "duplicates" in found


def test_a_bad_row_gives_the_in_memory_error(tmp_path, llama):
    rows = alpaca_rows(30)
    del rows[12]["output"]
    write_jsonl(tmp_path / "train.jsonl", rows)
    errors = []
    for cache in ("false", "true"):
        with pytest.raises(DataError) as err:
            SftJob(config(tmp_path, llama, "split-sample-truncate", cache))
        errors.append(str(err.value))
    assert errors[0] == errors[1] and "line 13" in errors[0]


def test_train_on_the_streamed_route_through_the_cli(tmp_path, llama, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", alpaca_rows(40))
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "task=sft",
                f"model.name={llama}",
                f"data.train={train}",
                "data.cache=true",
                "data.validation_split=0.2",
                "data.max_length=96",
                "data.empty_answers=drop",
                "train.batch_size=4",
                "train.max_steps=3",
                "train.progress=false",
                "generate.eval_samples=2",
                "generate.max_new_tokens=4",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    err = capsys.readouterr()
    assert "entries built" in err.out + err.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["tuned_loss"] > 0
