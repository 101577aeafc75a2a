"""`deltatune compare` on tiny models: every method row measured, the base row, mean ± std over seeds,
reuse and resume on a rerun, one failing method reported while the others go on, any task (SFT too),
and the `eval --baseline` / `bench` commands."""

import json
import re
import shutil

import pytest

from deltatune.cli import main
from deltatune.compare.runner import compare, entry_config, plan_compare
from deltatune.config import load_config
from deltatune.errors import UserError
from deltatune.models import make_tiny_model_dir
from helpers.paths import ASSETS

POS = [
    "a great film",
    "wonderful acting",
    "i loved it",
    "superb and moving",
    "a joy to watch",
    "brilliant story",
    "funny and warm",
    "truly excellent",
]
NEG = [
    "a dull mess",
    "terrible acting",
    "i hated it",
    "boring and long",
    "a waste of time",
    "awful story",
    "flat and cold",
    "truly bad",
]
ALPACA = ASSETS / "alpaca_sample.json"
BENCH = {"batch_sizes": [1, 4], "warmup": 1, "repeats": 3}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cmp")
    model = make_tiny_model_dir("bert", tmp / "bert", task="classify")
    train = write_jsonl(
        tmp / "train.jsonl",
        [{"text": t, "label": "pos"} for t in POS * 3] + [{"text": t, "label": "neg"} for t in NEG * 3],
    )
    val = write_jsonl(
        tmp / "val.jsonl",
        [{"text": t + " indeed", "label": "pos"} for t in POS]
        + [{"text": t + " indeed", "label": "neg"} for t in NEG],
    )
    overrides = [
        f"model.name={model}",
        f"data.train={train}",
        f"data.validation={val}",
        "train.epochs=2",
        "train.batch_size=8",
        "train.precision=fp32",
        "train.log_every=1",
    ]
    return tmp, overrides


@pytest.fixture(scope="module")
def compared(setup, one_thread):
    tmp, overrides = setup
    cfg = load_config(None, overrides)
    result = compare(
        cfg, ["lora", "bitfit", "prompt_tuning"], [0, 1], tmp / "cmp", isolate=False, bench=BENCH, checks=True
    )
    return tmp, overrides, result


def test_every_method_and_the_base_are_measured(compared):
    tmp, _, result = compared
    out = tmp / "cmp"
    for name in ("compare.json", "compare.md", "compare.html"):
        assert (out / name).is_file(), name
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["base (untuned)", "lora", "bitfit", "prompt_tuning"]
    base = rows["base (untuned)"]
    assert base["baseline"] and base["trainable"] == 0 and base["quality"]["accuracy"]["n"] == 2
    assert set(base["latency_ms"]["base"]) == {"1", "4"}
    for name in ("lora", "bitfit", "prompt_tuning"):
        row = rows[name]
        assert row["status"] == "ok", row["errors"]
        assert 0 < row["trainable"] < row["total"] and 0 < row["trainable_percent"] < 100
        assert row["saved_bytes"] > 0 and row["peak_train_memory_mb"] > 0 and row["train_tokens_per_s"] > 0
        q = row["quality"]["accuracy"]
        assert q["n"] == 2 and len(q["values"]) == 2 and q["std"] >= 0
        assert row["change"]["accuracy"]["abs"] == pytest.approx(
            q["mean"] - base["quality"]["accuracy"]["mean"]
        )
        assert set(row["curves"]) == {"0", "1"} and row["curves"]["0"]["loss"]
        assert {"params", "memory", "speed", "quality"} <= set(row["labels"])
        assert all(v > 0 for v in row["latency_ms"]["tuned"].values())
    assert "merged" in rows["lora"]["latency_ms"] and "merged" not in rows["prompt_tuning"]["latency_ms"]
    assert rows["bitfit"]["trainable"] < rows["lora"]["trainable"]
    assert rows["lora"]["lr_source"] == "method default" and rows["prompt_tuning"]["learning_rate"] == 3e-2
    assert result["verdict"] and result["metrics"][0] == "accuracy"
    assert any(f["check"] == "leakage" or f["check"] == "duplicates" for f in result["findings"])
    md = (out / "compare.md").read_text()
    assert "| method | accuracy | change vs base |" in md and "| bitfit |" in md
    html = (out / "compare.html").read_text()
    assert html.count("<svg") == 4
    assert not re.search(
        r"""(src|href)=["']?(https?:)?//|url\((https?:)?//|@import""", html
    )  # nothing loaded


def test_rerun_reuses_resumes_and_retrains(compared, one_thread):
    tmp, overrides, first = compared
    out = tmp / "cmp"
    (out / "runs" / "bitfit-seed1" / "summary.json").unlink()  # as if killed after its last checkpoint
    result = compare(
        load_config(None, overrides),
        ["lora", "bitfit", "prompt_tuning"],
        [0, 1],
        out,
        isolate=False,
        bench=BENCH,
        checks=False,
    )
    status = {(r["name"], run["seed"]): run["status"] for r in result["rows"][1:] for run in r["runs"]}
    assert status.pop(("bitfit", 1)) == "resumed"
    assert set(status.values()) == {"reused"}
    same = {r["name"]: r["quality"]["accuracy"]["values"] for r in result["rows"][1:]}
    assert same == {r["name"]: r["quality"]["accuracy"]["values"] for r in first["rows"][1:]}
    # a run from before classifiers evaluated 4 times a run (no auto_evals in its summary) trains again
    summary = out / "runs" / "lora-seed0" / "summary.json"
    old = json.loads(summary.read_text())
    assert old.pop("auto_evals") == 4
    summary.write_text(json.dumps(old))
    again = compare(
        load_config(None, overrides), ["lora"], [0], out, isolate=False, bench={"skip": True}, checks=False
    )
    assert again["rows"][1]["runs"][0]["status"] == "retrained"
    # a changed budget trains the runs again
    changed = compare(
        load_config(None, [*overrides, "train.epochs=1"]),
        ["bitfit"],
        [0],
        out,
        isolate=False,
        bench={"skip": True},
        checks=False,
    )
    assert changed["rows"][1]["runs"][0]["status"] == "retrained"


def test_a_failing_method_is_reported_and_the_others_continue(setup, tmp_path, one_thread):
    _, overrides = setup
    cfg = load_config(None, [*overrides, "method.name=lora", "method.target_modules=[no_such_module]"])
    result = compare(
        cfg, ["lora", "bitfit"], [0], tmp_path / "c", isolate=True, bench={"skip": True}, checks=False
    )
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["lora"]["status"] == "failed" and "no_such_module" in rows["lora"]["errors"][0]
    assert rows["bitfit"]["status"] == "ok" and rows["bitfit"]["quality"]["accuracy"]["n"] == 1
    assert (tmp_path / "c" / "logs" / "lora-seed0.log").is_file()
    assert any("lora failed" in line for line in result["verdict"])
    assert "failed: " in (tmp_path / "c" / "compare.html").read_text()


def test_process_death_is_named():
    from deltatune.compare.isolate import exit_reason

    assert "out of memory" in exit_reason(-9) and exit_reason(3) == "exit status 3"


def test_plan_variants_and_learning_rates(setup, tmp_path):
    _, overrides = setup
    cfg = load_config(None, [*overrides, "method.r=4", "train.learning_rate=5e-4"])
    plan = {e.label: e for e in plan_compare(cfg, ["lora", "dora", "full", "ia3"], [3], tmp_path)}
    assert plan["dora"].method == "lora" and plan["dora"].options["use_dora"] is True
    assert plan["dora"].options["r"] == 4 and plan["lora"].options["r"] == 4  # the config's own options
    assert plan["lora"].learning_rate == 5e-4 and plan["lora"].lr_source == "config"
    assert (
        plan["full"].learning_rate == 1e-4 and plan["ia3"].learning_rate == 1e-2
    )  # full: classify's own rate
    raw = entry_config(cfg, plan["full"])
    assert raw["train"]["seed"] == 3 and raw["method"] == {"name": "full"}
    assert raw["output_dir"].endswith("full-seed3")
    with pytest.raises(UserError, match="did you mean `lora`"):
        plan_compare(cfg, ["lorra"], [0], tmp_path)


def test_cli_errors_and_output(setup, tmp_path, capsys, one_thread):
    _, overrides = setup
    assert main(["compare", *overrides, "--methods", "lora,nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["compare", *overrides, "--seeds", "0,x"]) == 2
    assert "--seeds" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["compare", *overrides, "--methods", "bitfit", "--output-dir", str(tmp_path / "other")]) == 2
    assert "holds no earlier comparison" in capsys.readouterr().err
    out = tmp_path / "c"
    assert (
        main(
            [
                "compare",
                *overrides,
                "--methods",
                "bitfit",
                "--output-dir",
                str(out),
                "--in-process",
                "--batch-sizes",
                "1,2",
                "--repeats",
                "2",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "base (untuned)" in text and "bitfit" in text and f"{out}/compare.html" in text


def test_any_task_sft(tmp_path, one_thread):
    model = make_tiny_model_dir("llama", tmp_path / "llama", task="causal_lm")
    shutil.copy(ALPACA, tmp_path / "a.json")
    rows = json.load(open(ALPACA))[:16]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    cfg = load_config(
        None,
        [
            "task=sft",
            f"model.name={model}",
            f"data.train={tmp_path / 'a.json'}",
            "data.validation_split=0.25",
            "data.max_length=64",
            "train.batch_size=4",
            "train.max_steps=3",
            "generate.eval_samples=0",
            "train.precision=fp32",
        ],
    )
    result = compare(
        cfg, ["lora", "prompt_tuning"], [0], tmp_path / "c", isolate=False, bench=BENCH, checks=False
    )
    assert result["metric"] == "loss" and not result["greater_is_better"]
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["lora"]["status"] == "ok" and rows["prompt_tuning"]["status"] == "ok"
    assert rows["lora"]["quality"]["loss"]["mean"] > 0 and "perplexity" in result["metrics"]
    assert rows["base (untuned)"]["latency_ms"]["base"]["1"] > 0


def test_eval_baseline_and_bench(compared, capsys):
    tmp, _, _ = compared
    run = tmp / "cmp" / "runs" / "lora-seed0"
    assert main(["eval", str(run), "--data", str(tmp / "val.jsonl"), "--baseline", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    acc = out["change"]["accuracy"]
    assert acc["abs"] == pytest.approx(out["tuned"]["accuracy"] - out["base"]["accuracy"])
    assert "n" not in out["change"]
    assert main(["eval", str(run), "--data", str(tmp / "val.jsonl"), "--baseline"]) == 0
    assert "| accuracy |" in capsys.readouterr().out
    assert main(["bench", str(run), "--batch-sizes", "1,3", "--repeats", "3", "--baseline", "--json"]) == 0
    bench = json.loads(capsys.readouterr().out)
    assert set(bench["variants"]) == {"tuned", "merged", "base"}
    for rows in bench["variants"].values():
        assert [r["batch_size"] for r in rows] == [1, 3]
        assert all(
            r["latency_ms"] > 0
            and r["latency_ms_min"] <= r["latency_ms"] <= r["latency_ms_max"]
            and r["repeats"] == 3
            for r in rows
        )
    assert main(["bench", str(run), "--batch-sizes", "0"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err
