"""Code evaluation by execution (issue 16): prompts, extraction, the sandbox, pass@k, reports, the CLI.

Answers come from stubs (the reference solution, broken code, a set share of right answers) or from a
tiny random Llama; tasks from small MBPP and HumanEval samples shipped in tests/assets.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from deltatune.cli import main
from deltatune.codeeval.evaluate import (
    CodeEvalSettings,
    build_prompts,
    fence_closed,
    load_tasks,
    model_answers,
    parse_id_ranges,
    run_code_eval,
)
from deltatune.codeeval.report import code_markdown, code_text, write_code_reports
from deltatune.errors import ConfigError, DataError
from deltatune.metrics.code import pass_at_k
from helpers.paths import ASSETS

DATA = ASSETS
MBPP = str(DATA / "mbpp_sample.jsonl")  # tasks 11-14 and 367
HUMANEVAL = str(DATA / "humaneval_sample.jsonl")  # HumanEval/0-3


def settings(benchmark="mbpp", **kw) -> CodeEvalSettings:
    return CodeEvalSettings(
        benchmark=benchmark, data_path=MBPP if benchmark == "mbpp" else HUMANEVAL, timeout_s=5, **kw
    )


def stub(answer_of):
    """An answer function giving ``answer_of(task, sample_index)`` for every sample."""
    return lambda prompts, s: [[answer_of(p.task, i) for i in range(s.samples)] for p in prompts]


def reference_answer(task, i, fmt="instruct"):
    if "canonical_solution" not in task:
        return f"Here is the function:\n```python\n{task['code']}\n```\nIt passes the tests."
    if fmt == "completion":
        return task["canonical_solution"]
    return f"```python\n{task['prompt']}{task['canonical_solution']}```"


# --- stub answers through the sandbox ----------------------------------------------------------------


def test_reference_solutions_score_one_on_mbpp():
    report = run_code_eval(stub(reference_answer), settings())
    m = report["metrics"]
    assert (m["pass@1"], m["execution_rate"], m["tasks"], m["tasks_solved"]) == (1.0, 1.0, 5, 5)
    assert m["bleu"] > 95 and report["failing"] == []
    assert [t["task_id"] for t in report["tasks"]] == [11, 12, 13, 14, 367]  # 367 ran its preamble


@pytest.mark.parametrize("fmt", ["completion", "instruct"])
def test_reference_solutions_score_one_on_humaneval(fmt):
    report = run_code_eval(
        stub(lambda t, i: reference_answer(t, i, fmt)),
        settings("humaneval", prompt_format=fmt),
        template_name="chat",
    )
    assert report["metrics"]["pass@1"] == 1.0 and report["metrics"]["execution_rate"] == 1.0
    assert report["header"]["prompt_format"] == fmt and report["header"]["template"] == "chat"
    if fmt == "completion":  # the generated part is compared with canonical_solution: identical
        assert report["metrics"]["bleu"] == pytest.approx(100.0)


def test_broken_and_wrong_code_score_zero_with_their_error():
    def answer(task, i):
        if task["task_id"] in (11, 12):
            return "```python\ndef broken(:\n    pass\n```"
        name = task["test_list"][0].split("assert ")[1].split("(")[0]
        return f"```python\ndef {name}(*args):\n    return None\n```"  # runs, but fails the asserts

    report = run_code_eval(stub(answer), settings())
    m = report["metrics"]
    assert (m["pass@1"], m["tasks_solved"], m["execution_rate"]) == (0.0, 0, 3 / 5)
    errors = {f["task_id"]: f["error"] for f in report["failing"]}
    assert sorted(errors) == [11, 12, 13, 14, 367]
    assert errors[11].startswith("SyntaxError") and errors[13].startswith("AssertionError: assert ")
    assert report["examples"][0]["error"].startswith("SyntaxError")


def test_pass_at_k_from_n_samples_is_the_unbiased_estimate():
    right = {11: 0, 12: 1, 13: 2, 14: 4, 367: 3}  # correct answers among 4 samples per task

    def answer(task, i):
        return (
            reference_answer(task, i)
            if i < right[task["task_id"]]
            else "```python\nraise ValueError('no')\n```"
        )

    report = run_code_eval(stub(answer), settings(samples=4, k=(1, 2, 4)))
    for k in (1, 2, 4):
        expected = sum(pass_at_k(4, c, k) for c in right.values()) / len(right)
        assert report["metrics"][f"pass@{k}"] == pytest.approx(expected, abs=1e-6)
    assert report["metrics"]["samples"] == 20 and [t["passed"] for t in report["tasks"]] == [0, 1, 2, 4, 3]
    assert report["failing"] == [
        {"task_id": 11, "status": "failed", "error": "ValueError: no", "statuses": {"failed": 4}}
    ]
    assert report["metrics"]["execution_rate"] == pytest.approx(10 / 20)


def test_a_hostile_answer_is_a_failed_sample_not_a_hung_evaluation():
    answers = {
        11: "```python\nwhile True:\n    pass\n```",
        12: "```python\nimport os\nos.kill(os.getppid(), 9)\n```",
    }
    report = run_code_eval(
        stub(lambda t, i: answers.get(t["task_id"], reference_answer(t, i))),
        CodeEvalSettings(data_path=MBPP, timeout_s=1),
    )
    statuses = {t["task_id"]: t["samples"][0]["status"] for t in report["tasks"]}
    assert statuses[11] == "timeout" and statuses[12] != "passed" and statuses[13] == "passed"
    assert report["metrics"]["pass@1"] == pytest.approx(3 / 5)


def test_reports_render_and_are_written(tmp_path):
    report = run_code_eval(stub(reference_answer), settings(show=2))
    md = code_markdown(report)
    assert "| pass@1 | execution rate | BLEU | tasks solved |" in md and "No failing task." in md
    assert md.count("<th>generated (first sample)</th>") == 2 and "prompt format**: instruct" in md
    assert "pass@1=1.0000" in code_text(report)
    json_path, md_path = write_code_reports(report, tmp_path)
    assert json.loads(json_path.read_text())["metrics"]["pass@1"] == 1.0 and md_path.read_text() == md


# --- settings, task selection, prompts ---------------------------------------------------------------


def test_settings_are_checked_with_the_flag_named():
    with pytest.raises(ConfigError, match=r"--code 'mbbp': unknown benchmark; use one of mbpp, humaneval"):
        CodeEvalSettings(benchmark="mbbp")
    with pytest.raises(ConfigError, match=r"--k 5: .* raise --samples to 5"):
        CodeEvalSettings(k=(1, 5))
    with pytest.raises(ConfigError, match="--temperature 0 is greedy"):
        CodeEvalSettings(samples=3, temperature=0)
    with pytest.raises(ConfigError, match="--prompt-format 'completion': mbpp prompts come as instruct"):
        CodeEvalSettings(prompt_format="completion")
    assert CodeEvalSettings(samples=10).pass_ks == (1, 5, 10)
    assert CodeEvalSettings(samples=10).decoding().startswith("sampling, temperature 0.8")
    assert CodeEvalSettings().decoding() == "greedy"


def test_task_selection_by_ids_and_seeded_sample():
    assert parse_id_ranges("11-13, 367") == {11, 12, 13, 367}
    assert [t["task_id"] for t in load_tasks(settings(tasks="12-13"))] == [12, 13]
    sample = [t["task_id"] for t in load_tasks(settings(limit=3, seed=1))]
    assert sample == sorted(sample) and len(sample) == 3
    assert sample == [t["task_id"] for t in load_tasks(settings(limit=3, seed=1))]
    assert [t["task_id"] for t in load_tasks(settings("humaneval", tasks="1-2"))] == [
        "HumanEval/1",
        "HumanEval/2",
    ]
    with pytest.raises(ConfigError, match=r"--tasks 9-11: no task 9, 10 in mbpp"):
        load_tasks(settings(tasks="9-11"))
    with pytest.raises(ConfigError, match="'x' is not an id or a range"):
        parse_id_ranges("x")
    with pytest.raises(DataError, match="nowhere.jsonl: no mbpp file here; pass the benchmark's .jsonl"):
        load_tasks(CodeEvalSettings(data_path="nowhere.jsonl"))


def test_prompts_state_their_format():
    mbpp = build_prompts(load_tasks(settings(tasks="11")), settings())[0]
    assert mbpp.format == "instruct" and "```python block" in mbpp.text
    assert all(a in mbpp.text for a in mbpp.task["test_list"])
    he = load_tasks(settings("humaneval", tasks="0"))
    assert build_prompts(he, settings("humaneval"))[0].text == he[0]["prompt"]
    assert he[0]["prompt"] in build_prompts(he, settings("humaneval", prompt_format="instruct"))[0].text


def test_fence_closed():
    assert not fence_closed("```python\ndef f():\n    return 1\n")
    assert fence_closed("```python\ndef f():\n    return 1\n```")
    assert fence_closed("Sure:\n```\nx = 1\n```\nmore")
    assert not fence_closed("no code yet")


# --- a real (tiny) model -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, one_thread):
    from deltatune.models import load_for_causal_lm, make_tiny_model_dir

    path = make_tiny_model_dir("llama", tmp_path_factory.mktemp("llama"), task="causal_lm")
    model, tokenizer, _ = load_for_causal_lm(path)
    return path, model, tokenizer


def test_tiny_model_generates_samples_that_are_run(tiny_llama):
    from deltatune.data.templates import make_template

    _, model, tokenizer = tiny_llama
    answer = model_answers(model, tokenizer, make_template("auto", tokenizer))
    s = settings(tasks="11-12", samples=3, k=(1, 3), max_new_tokens=6, seed=3)
    report = run_code_eval(answer, s, "tiny")
    assert report["metrics"]["samples"] == 6 and report["metrics"]["pass@1"] == 0.0
    assert report["header"]["decoding"].startswith("sampling, temperature 0.8")
    again = answer(build_prompts(load_tasks(s), s), s)
    assert again == [[x["answer"] for x in t["samples"]] for t in report["tasks"]]  # seeded
    completion = settings("humaneval", tasks="0", max_new_tokens=4)
    assert run_code_eval(answer, completion)["tasks"][0]["samples"][0]["code"].startswith(
        load_tasks(completion)[0]["prompt"]
    )


def test_generation_stops_when_asked(tiny_llama):
    from deltatune.config import GenerateConfig
    from deltatune.inference.generation import generate_texts

    _, model, tokenizer = tiny_llama
    ids = [tokenizer("def add(a, b):", add_special_tokens=False)["input_ids"]]
    full = generate_texts(model, tokenizer, ids, GenerateConfig(max_new_tokens=12))[0]
    short = generate_texts(model, tokenizer, ids, GenerateConfig(max_new_tokens=12), stop_when=bool)[0]
    assert full.startswith(short) and len(short) < len(full)


# --- the command line ----------------------------------------------------------------------------------


def test_cli_evaluates_a_base_model(tiny_llama, tmp_path, capsys):
    path, _, _ = tiny_llama
    code = main(
        [
            "eval",
            "--model",
            path,
            "--code",
            "mbpp",
            "--data",
            MBPP,
            "--tasks",
            "11-12",
            "--max-new-tokens",
            "4",
            "--out",
            str(tmp_path),
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["metrics"]["tasks"] == 2 and report["header"]["model"] == path
    assert (tmp_path / "code_eval_mbpp.json").is_file() and (tmp_path / "code_eval_mbpp.md").is_file()


def _fake_classify_run(root: Path) -> Path:
    run = root / "cls-run"
    run.mkdir()
    (run / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "classify",
                "model": {"name": "minilm-l6"},
                "method": {"name": "lora"},
                "data": {"train": "train.jsonl"},
            }
        )
    )
    (run / "summary.json").write_text("{}")
    return run


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--model", "m", "--code", "mbppp"], "--code 'mbppp': unknown benchmark"),
        (["--model", "m", "--code", "mbpp", "--samples", "2", "--k", "1,5"], "--k 5"),
        (["--model", "m", "--code", "mbpp", "--k", "one"], "--k one: write integers"),
        (
            ["--model", "m", "--code", "humaneval", "--data", "nowhere.jsonl"],
            "nowhere.jsonl: no humaneval file",
        ),
        (["--model", "m", "--code", "mbpp", "--tasks", "1-3"], "--tasks 1-3: no task 1, 2, 3"),
        (
            ["RUN", "--code", "mbpp"],
            "is a 'classify' run (a classifier), which cannot be evaluated on generated code",
        ),
        (["RUN", "--limit", "3", "--data", "x.jsonl"], "--limit only apply with --code"),
        (["RUN"], "give --data FILE"),
        (["--code", "mbpp"], "give a RUN_DIR"),
    ],
)
def test_cli_errors_are_one_message(argv, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = _fake_classify_run(tmp_path)
    argv = [str(run) if a == "RUN" else a for a in argv]
    data = [] if "--data" in argv or "--code" not in argv else ["--data", MBPP]
    assert main(["eval", *argv, *data]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and err.count("error:") == 1 and len(err.splitlines()) == 1, err


# --- code SFT data: Code Alpaca has rows with an empty answer ---------------------------------------------


def test_empty_answers_stop_by_default_and_are_dropped_when_asked(tiny_llama, tmp_path):
    from deltatune.config import validate_config
    from deltatune.data.conversations import read_conversations
    from deltatune.data.masks import encode_conversations
    from deltatune.data.templates import RawTemplate

    rows = [
        {"instruction": "Add 1 and 2.", "input": "", "output": "3"},
        {"instruction": "Print hi.", "input": "", "output": "  "},
    ]
    path = tmp_path / "code.json"
    path.write_text(json.dumps(rows))
    data = lambda **kw: validate_config({"task": "sft", "data": {"train": str(path), **kw}}).data  # noqa: E731
    with pytest.raises(DataError, match=r"code.json, line \d+, field 'output': the text is empty"):
        read_conversations(str(path), data())
    convs = read_conversations(str(path), data(empty_answers="drop"))
    tokenizer = tiny_llama[2]
    feats, stats = encode_conversations(convs, RawTemplate(tokenizer), tokenizer)
    assert len(feats) == 1 and (stats.examples, stats.dropped_no_target, stats.kept) == (2, 1, 1)
