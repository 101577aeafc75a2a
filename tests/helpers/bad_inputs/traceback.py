"""Bad-input cases, class 'traceback': No tracebacks: every failure a user can cause is one clear message."""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers.bad_inputs import TRAIN_ROWS, Spec, _edit_run_config, case, junk, long_rows, long_sft_rows


@case("traceback", "binary-config")
def _(c):
    c.file("binary.yaml", junk(2048))
    return Spec(c.yaml_train("binary.yaml"), ["binary.yaml"])


@case("traceback", "latin1-config")
def _(c):
    c.file("latin1.yaml", "# r\xe9glages\ntask: classify\n".encode("latin-1"))
    return Spec(c.yaml_train("latin1.yaml"), ["latin1.yaml"])


@case("message", "config-is-a-directory")
def _(c):  # not "not found": it is there, and it is a directory
    (c.tmp / "cfgdir").mkdir()
    return Spec(c.yaml_train("cfgdir"), ["cfgdir", "directory"])


@case("traceback", "config-with-tabs")
def _(c):
    c.file("tabs.yaml", f"model:\n  name: {c.world.bert}\ntrain:\n\tepochs: 1\n")
    return Spec(c.yaml_train("tabs.yaml"), ["tabs.yaml", "line 4"])


@case("traceback", "config-top-level-list")
def _(c):
    c.file("list.yaml", "- task: classify\n- model: {name: x}\n")
    return Spec(c.yaml_train("list.yaml"), ["list.yaml"])


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "random":
        path.write_bytes(junk(max(len(data), 256)))
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")


ADAPTER = "adapter/adapter_model.safetensors"
for _how, _cmds in (
    ("random", ("eval", "predict", "merge")),
    ("truncated", ("eval", "predict")),
    ("empty", ("predict",)),
):
    for _cmd in _cmds:

        def _adapter_case(c, how=_how, cmd=_cmd):
            run = c.use("cls")
            _corrupt(run / ADAPTER, how)
            argv = {
                "eval": ["eval", run.name, "--data", "val.jsonl"],
                "predict": ["predict", run.name, "hello"],
                "merge": ["merge", run.name, "--out", "merged"],
            }[cmd]
            return Spec(argv, ["adapter_model.safetensors"], protect=[run])

        case("traceback", f"{_how}-adapter-file-then-{_cmd}")(_adapter_case)


@case("traceback", "random-adapter-file-then-sft-generate")
def _(c):
    run = c.use("sft")
    _corrupt(run / ADAPTER, "random")
    return Spec(
        ["generate", run.name, "hi", "--max-new-tokens", "2"], ["adapter_model.safetensors"], protect=[run]
    )


@case("traceback", "truncated-adapter-file-then-sft-eval")
def _(c):
    run = c.use("sft")
    _corrupt(run / ADAPTER, "truncated")
    return Spec(["eval", run.name, "--data", "sft.jsonl"], ["adapter_model.safetensors"], protect=[run])


@case("traceback", "labels-json-corrupt-then-predict")
def _(c):
    run = c.use("cls")
    (run / "labels.json").write_text("{")
    return Spec(["predict", run.name, "hello"], ["labels.json"], protect=[run])


_RUN_CONFIGS = {
    "invalid-yaml": lambda run: (run / "config.yaml").write_text("task: classify\nmodel: {name: [unclosed\n"),
    "wrong-value": lambda run: _edit_run_config(run, data__max_length="long"),
    "top-level-list": lambda run: (run / "config.yaml").write_text("- task: classify\n"),
    "unknown-task": lambda run: (run / "config.yaml").write_text(
        (run / "config.yaml").read_text().replace("task: classify", "task: regression")
    ),
    "empty": lambda run: (run / "config.yaml").write_text(""),
}
_RUN_CONFIG_KEYS = {"wrong-value": ["data.max_length"], "unknown-task": ["task"]}
for _what, _damage in _RUN_CONFIGS.items():
    for _cmd in ("eval", "predict"):

        def _config_case(c, what=_what, damage=_damage, cmd=_cmd):
            run = c.use("cls")
            damage(run)
            argv = (
                ["eval", run.name, "--data", "val.jsonl"] if cmd == "eval" else ["predict", run.name, "hello"]
            )
            return Spec(argv, ["config.yaml", *_RUN_CONFIG_KEYS.get(what, [])], protect=[run])

        case("traceback", f"run-config-{_what}-then-{_cmd}")(_config_case)


@case("traceback", "sft-run-config-invalid-yaml-then-generate")
def _(c):
    run = c.use("sft")
    (run / "config.yaml").write_text("task: sft\nmodel: {name: [unclosed\n")
    return Spec(["generate", run.name, "hi", "--max-new-tokens", "2"], ["config.yaml"], protect=[run])


for _how in ("random", "truncated"):

    def _model_case(c, how=_how):
        model = c.model_copy("broken-bert")
        _corrupt(model / "model.safetensors", how)
        return Spec(c.cls("model.name=./broken-bert"), ["model.safetensors"])

    case("traceback", f"{_how}-model-safetensors-then-train")(_model_case)


@case("traceback", "random-model-safetensors-then-eval")
def _(c):
    run = c.use("cls")
    model = c.model_copy("broken-bert")
    _corrupt(model / "model.safetensors", "random")
    _edit_run_config(run, model__name=str(model))
    return Spec(["eval", run.name, "--data", "val.jsonl"], ["model.safetensors"], protect=[run])


@case("traceback", "random-model-safetensors-then-sft-train")
def _(c):
    model = c.model_copy("broken-llama", "llama")
    _corrupt(model / "model.safetensors", "random")
    return Spec(c.sft("model.name=./broken-llama"), ["model.safetensors"])


@case("traceback", "model-dir-without-config-json")
def _(c):
    model = c.model_copy("bare-bert")
    (model / "config.json").unlink()
    return Spec(c.cls("model.name=./bare-bert"), ["config.json"])


@case("traceback", "model-config-json-corrupt")
def _(c):
    model = c.model_copy("bad-config-bert")
    (model / "config.json").write_text('{"model_type": ')
    return Spec(c.cls("model.name=./bad-config-bert"), ["config.json"])


@case("traceback", "model-tokenizer-json-corrupt")
def _(c):
    model = c.model_copy("bad-tok-bert")
    (model / "tokenizer.json").write_bytes(junk(512))
    return Spec(c.cls("model.name=./bad-tok-bert"), [("tokenizer.json", "tokenizer")])


@case("traceback", "model-name-is-a-data-file")
def _(c):
    return Spec(c.cls("model.name=train.jsonl"), ["train.jsonl"])


@case("traceback", "readonly-output-parent")
def _(c):
    parent = c.tmp / "locked-parent"
    parent.mkdir()
    skip = c.readonly(parent)
    return Spec(c.cls(out="locked-parent/run"), ["locked-parent"], skip=skip)


@case("traceback", "readonly-output-dir")
def _(c):
    out = c.tmp / "locked-out"
    out.mkdir()
    skip = c.readonly(out)
    return Spec(c.cls(out="locked-out"), ["locked-out"], skip=skip)


@case("traceback", "max-length-beyond-positions")
def _(c):
    n = c.world.bert_positions
    long_rows(c, n)
    return Spec(
        c.cls(f"data.max_length={2 * n}", out="fresh"),
        ["data.max_length", str(n)],
        forbid_stderr=["untuned base"],
        absent=[c.tmp / "fresh/metrics.jsonl", c.tmp / "fresh/checkpoints"],
    )


@case("traceback", "max-length-beyond-positions-sft")
def _(c):
    n = c.world.llama_positions
    long_sft_rows(c, n)
    return Spec(
        c.sft(f"data.max_length={2 * n}", out="fresh"),
        ["data.max_length", str(n)],
        forbid_stderr=["untuned base"],
        absent=[c.tmp / "fresh/metrics.jsonl", c.tmp / "fresh/checkpoints"],
    )


@case("traceback", "precision-fp16-on-cpu")
def _(c):
    return Spec(c.cls("train.precision=fp16"), ["train.precision"], skip=_cuda_skip())


def _cuda_skip() -> str | None:
    import torch

    return "a GPU is present: fp16 is valid there" if torch.cuda.is_available() else None


@case("traceback", "report-to-missing-tracker")
def _(c):
    import importlib.util

    skip = "wandb is installed" if importlib.util.find_spec("wandb") else None
    return Spec(c.cls("train.report_to=[wandb]"), ["wandb"], skip=skip)


for _key, _value in (
    ("train.batch_size", "many"),
    ("train.batch_size", "2.5"),
    ("train.learning_rate", "fast"),
    ("train.learning_rate", "[1, 2]"),
    ("train.epochs", "-1"),
    ("train.max_steps", "0"),
    ("data.validation_split", "1.5"),
    ("data.max_length", "long"),
    ("method.r", "0"),
    ("method.r", "big"),
    ("data.label_names", "5"),
    ("data.train", "[a.jsonl, b.jsonl]"),
    ("model.dtype", "float64"),
    ("train.scheduler", "cosine_with_restarts"),
):

    def _type_case(c, key=_key, value=_value):
        return Spec(c.cls(f"{key}={value}"), [key])

    _shown_value = re.sub(r"[^\w.]+", "_", _value).strip("_")
    case("traceback", f"wrong-value-{_key}-{_shown_value}")(_type_case)


@case("traceback", "method-null")
def _(c):
    return Spec(c.cls("method=null"), ["method"])


@case("traceback", "train-section-null")
def _(c):
    return Spec(c.cls("train="), ["train"])


@case("traceback", "override-with-space-instead-of-equals")
def _(c):
    c.file("c.yaml", f"model: {{name: {c.world.bert}}}\ndata: {{train: train.jsonl}}\n")
    return Spec(
        ["train", "c.yaml", "train.epochs", "3", "train.precision=fp32", "--output-dir", "out"],
        ["train.epochs", "="],
    )


@case("traceback", "unknown-flag")
def _(c):
    return Spec(c.cls("--outdir", "x"), ["--outdir"])


@case("traceback", "eval-without-data-flag")
def _(c):
    run = c.use("cls")
    return Spec(["eval", run.name], ["--data"], protect=[run])


@case("traceback", "generate-max-new-tokens-word")
def _(c):
    run = c.use("sft")
    return Spec(["generate", run.name, "hi", "--max-new-tokens", "lots"], ["--max-new-tokens"], protect=[run])


@case("traceback", "generate-max-new-tokens-zero")
def _(c):
    run = c.use("sft")
    return Spec(["generate", run.name, "hi", "--max-new-tokens", "0"], ["--max-new-tokens"], protect=[run])


@case("traceback", "generate-temperature-zero")
def _(c):
    run = c.use("sft")
    return Spec(
        ["generate", run.name, "hi", "--sample", "--temperature", "0"], ["--temperature"], protect=[run]
    )


@case("traceback", "generate-batch-size-zero")
def _(c):
    run = c.use("sft")
    return Spec(["generate", run.name, "hi", "--batch-size", "0"], ["--batch-size"], protect=[run])


@case("traceback", "sft-eval-samples-negative")
def _(c):
    run = c.use("sft")
    return Spec(["eval", run.name, "--data", "sft.jsonl", "--samples", "-1"], ["--samples"], protect=[run])


@case("traceback", "generate-broken-template-flag")
def _(c):
    run = c.use("sft")
    return Spec(["generate", run.name, "hi", "--template", "{% for %}"], ["--template"], protect=[run])


@case("traceback", "eval-data-binary")
def _(c):
    run = c.use("cls")
    c.file("blob.jsonl", junk(1024))
    return Spec(["eval", run.name, "--data", "blob.jsonl"], ["blob.jsonl"], protect=[run])


@case("traceback", "eval-data-missing")
def _(c):
    run = c.use("cls")
    return Spec(["eval", run.name, "--data", "nowhere.jsonl"], ["nowhere.jsonl"], protect=[run])


@case("traceback", "predict-data-is-a-directory")
def _(c):
    run = c.use("cls")
    (c.tmp / "somedir").mkdir()
    return Spec(["predict", run.name, "--data", "somedir"], ["somedir"], forbid=["rename"], protect=[run])


@case("traceback", "train-data-utf16")
def _(c):
    c.file("utf16.jsonl", "".join(json.dumps(r) + "\n" for r in TRAIN_ROWS).encode("utf-16"))
    return Spec(c.cls("data.train=utf16.jsonl"), ["utf16.jsonl"])


@case("traceback", "train-data-gzipped")
def _(c):
    import gzip

    c.file("train.jsonl.gz", gzip.compress((c.tmp / "train.jsonl").read_bytes()))
    return Spec(c.cls("data.train=train.jsonl.gz"), ["train.jsonl.gz"])


@case("traceback", "train-data-empty-file")
def _(c):
    c.file("empty.jsonl", "")
    return Spec(c.cls("data.train=empty.jsonl"), ["empty.jsonl"])


@case("traceback", "train-data-blank-lines-only")
def _(c):
    c.file("blank.jsonl", "\n\n  \n")
    return Spec(c.cls("data.train=blank.jsonl"), ["blank.jsonl"])


@case("traceback", "validation-data-empty-file")
def _(c):
    c.file("empty.jsonl", "")
    return Spec(c.cls("data.validation=empty.jsonl"), ["empty.jsonl"])


@case("traceback", "json-file-holding-an-object")
def _(c):
    c.file("obj.json", json.dumps({"text": "a great film", "label": "pos"}))
    return Spec(c.cls("data.train=obj.json"), ["obj.json"])


@case("traceback", "jsonl-row-is-a-list")
def _(c):
    c.file("rows.jsonl", '{"text": "a great film", "label": "pos"}\n["a dull mess", "neg"]\n')
    return Spec(c.cls("data.train=rows.jsonl"), ["rows.jsonl", "line 2"])


@case("traceback", "jsonl-label-null")
def _(c):
    c.jsonl("nulls.jsonl", TRAIN_ROWS[:3] + [{"text": "meh", "label": None}] + TRAIN_ROWS[3:])
    return Spec(c.cls("data.train=nulls.jsonl"), ["nulls.jsonl", "line 4", "label"])


@case("traceback", "csv-without-text-column")
def _(c):
    c.file("x.csv", "sentence,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in TRAIN_ROWS))
    return Spec(c.cls("data.train=x.csv"), ["x.csv", "text"])


@case("traceback", "tsv-ragged-row")
def _(c):
    c.file(
        "rows.tsv",
        "text\tlabel\na great film\tpos\na dull\tmess\tneg\n"
        + "".join(f"{r['text']}\t{r['label']}\n" for r in TRAIN_ROWS),
    )
    return Spec(c.cls("data.train=rows.tsv"), ["rows.tsv", "line 3"])


@case("traceback", "classify-on-sft-data")
def _(c):
    return Spec(c.cls("data.train=sft.jsonl"), ["sft.jsonl", "line 1"])


@case("silent", "sft-message-with-unknown-role")
def _(c):
    # ("bot", "gpt", "human" are known aliases of ShareGPT-style data; "narrator" is not a role)
    c.jsonl(
        "chat.jsonl",
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "narrator", "content": "yo"}]}] * 4,
    )
    return Spec(
        c.sft("data.train=chat.jsonl", "data.validation=chat.jsonl"), ["chat.jsonl", "line 1", "narrator"]
    )


@case("traceback", "sft-messages-not-a-list")
def _(c):
    c.jsonl("chat.jsonl", [{"messages": "hi there"}] * 4)
    return Spec(
        c.sft("data.train=chat.jsonl", "data.validation=chat.jsonl"), ["chat.jsonl", "line 1", "messages"]
    )


@case("traceback", "sft-history-not-pairs")
def _(c):
    c.jsonl("hist.jsonl", [{"instruction": "hi", "output": "yo", "history": "earlier chat"}] * 4)
    return Spec(
        c.sft("data.train=hist.jsonl", "data.validation=hist.jsonl"), ["hist.jsonl", "line 1", "history"]
    )


@case("traceback", "sft-fields-map-to-missing-column")
def _(c):
    return Spec(c.sft("data.fields={output: reply}"), ["reply"])


@case("traceback", "sft-on-an-encoder-model")
def _(c):
    return Spec(c.sft(f"model.name={c.world.bert}"), ["decoder"])


@case("message", "generate-on-a-classify-run")
def _(c):
    run = c.use("cls")
    return Spec(["generate", run.name, "hi"], [run.name, "predict"], protect=[run])


@case("traceback", "unknown-metric-for-best-found-before-training")
def _(c):
    return Spec(
        c.cls("train.metric_for_best=f1", out="fresh"),
        ["train.metric_for_best", "f1_macro"],
        absent=[c.tmp / "fresh/metrics.jsonl", c.tmp / "fresh/checkpoints"],
    )


@case("traceback", "generate-data-missing")
def _(c):
    run = c.use("sft")
    return Spec(["generate", run.name, "--data", "prompts.jsonl"], ["prompts.jsonl"], protect=[run])


@case("traceback", "generate-with-missing-base-model")
def _(c):
    return Spec(["generate", "--model", "./no-model", "hi"], ["no-model"])


@case("traceback", "chat-on-a-missing-run")
def _(c):
    return Spec(["chat", "nowhere-run"], ["nowhere-run"])


@case("traceback", "methods-with-missing-model")
def _(c):
    return Spec(["methods", "--model", "./no-model"], ["no-model"])


@case("traceback", "predict-without-inputs")
def _(c):
    run = c.use("cls")
    return Spec(["predict", run.name], ["--data"], protect=[run])


@case("traceback", "preview-missing-config")
def _(c):
    return Spec(["preview", "nope.yaml"], ["nope.yaml"])


@case("traceback", "preview-a-classify-config")
def _(c):
    c.file("cls.yaml", f"model: {{name: {c.world.bert}}}\ndata: {{train: train.jsonl}}\n")
    return Spec(["preview", "cls.yaml"], ["sft"])
