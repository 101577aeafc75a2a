"""Bad-input cases, class 'message': Messages that point the right way: the file, line, key and the fix."""

from __future__ import annotations

import json

from helpers.bad_inputs import (
    BLAMES_DATA_LINE,
    BROKEN_TEMPLATE,
    CLS_COMMON,
    JSON_HINT,
    JSONL_HINT,
    TRAIN_ROWS,
    Spec,
    case,
)


@case("message", "no-data-train")
def _(c):
    return Spec(
        ["train", f"model.name={c.world.bert}", "train.progress=false", "--output-dir", "out"],
        ["data.train"],
        forbid=["None"],
    )


@case("message", "empty-config-file")
def _(c):
    c.file("empty.yaml", "")
    return Spec(c.yaml_train("empty.yaml"), ["data.train"], forbid=["None"])


@case("message", "data-train-is-a-directory")
def _(c):
    (c.tmp / "datadir").mkdir()
    return Spec(c.cls("data.train=datadir"), ["datadir", "directory"], forbid=["rename"])


@case("message", "data-train-unknown-extension")
def _(c):
    c.file("notes.txt", "a great film\tpos\n")
    return Spec(c.cls("data.train=notes.txt"), ["notes.txt", "data.format"])


@case("message", "json-array-saved-as-jsonl-one-line")
def _(c):
    c.file("array.jsonl", json.dumps(TRAIN_ROWS) + "\n")
    return Spec(c.cls("data.train=array.jsonl"), ["array.jsonl", JSON_HINT])


@case("message", "json-array-saved-as-jsonl-pretty")
def _(c):
    c.file("pretty.jsonl", json.dumps(TRAIN_ROWS, indent=2) + "\n")
    return Spec(c.cls("data.train=pretty.jsonl"), ["pretty.jsonl", JSON_HINT])


@case("message", "json-lines-saved-as-json")
def _(c):
    c.file("rows.json", "".join(json.dumps(r) + "\n" for r in TRAIN_ROWS))
    return Spec(c.cls("data.train=rows.json"), ["rows.json", JSONL_HINT])


for _cmd in ("eval", "predict", "merge"):

    def _killed_case(c, cmd=_cmd):
        run = c.use("killed")
        argv = {
            "eval": ["eval", run.name, "--data", "val.jsonl"],
            "predict": ["predict", run.name, "hello"],
            "merge": ["merge", run.name, "--out", "merged"],
        }[cmd]
        return Spec(argv, [run.name, "--resume"], protect=[run])

    case("message", f"{_cmd}-on-a-killed-run")(_killed_case)


@case("message", "jinja-template-syntax-error")
def _(c):
    return Spec(c.sft(f"data.template={BROKEN_TEMPLATE}"), ["data.template"], forbid=[BLAMES_DATA_LINE])


@case("message", "jinja-template-unknown-filter")
def _(c):
    return Spec(
        c.sft("data.template={% for m in messages %}{{ m.content | shout }}{% endfor %}"),
        ["data.template", "shout"],
        forbid=[BLAMES_DATA_LINE],
    )


@case("message", "jinja-template-file-missing")
def _(c):
    return Spec(c.sft("data.template=my_template.jinja"), ["my_template.jinja"])


@case("message", "jinja-template-file-syntax-error")
def _(c):
    c.file("mine.jinja", BROKEN_TEMPLATE)
    return Spec(c.sft("data.template=mine.jinja"), ["mine.jinja"], forbid=[BLAMES_DATA_LINE])


@case("message", "top-level-learning-rate")
def _(c):
    c.file(
        "flat.yaml", f"model: {{name: {c.world.bert}}}\ndata: {{train: train.jsonl}}\nlearning_rate: 1e-3\n"
    )
    return Spec(c.yaml_train("flat.yaml"), ["flat.yaml", "train.learning_rate"])


@case("message", "data-label-suggests-a-field")
def _(c):
    return Spec(c.cls("data.label=sentiment"), ["data.label", "label_field"])


@case("message", "yaml-section-is-a-string-plus-override")
def _(c):
    c.file("model_str.yaml", "model: minilm-l6\ndata: {train: train.jsonl}\n")
    return Spec(c.yaml_train("model_str.yaml", f"model.name={c.world.bert}"), ["model_str.yaml", "model"])


@case("message", "method-is-a-string")
def _(c):
    c.file("m.yaml", f"model: {{name: {c.world.bert}}}\ndata: {{train: train.jsonl}}\nmethod: lora\n")
    return Spec(c.yaml_train("m.yaml"), ["m.yaml", "method", ("method.name", "name:", "name=")])


@case("message", "model-dir-typo")
def _(c):
    return Spec(c.cls("model.name=./tiny-bret"), ["tiny-bret"])


@case("message", "eval-on-a-model-dir-not-a-run")
def _(c):
    c.model_copy("some-model")
    return Spec(["eval", "some-model", "--data", "val.jsonl"], ["some-model", "--output-dir"])


@case("message", "eval-classify-run-on-sft-data")
def _(c):
    run = c.use("cls")
    return Spec(["eval", run.name, "--data", "sft.jsonl"], ["sft.jsonl", "text"], protect=[run])


@case("message", "eval-unseen-label")
def _(c):
    run = c.use("cls")
    c.jsonl("neutral.jsonl", [{"text": "meh", "label": "neutral"}])
    return Spec(["eval", run.name, "--data", "neutral.jsonl"], ["neutral.jsonl", "neutral"], protect=[run])


@case("message", "predict-on-an-sft-run")
def _(c):
    run = c.use("sft")
    return Spec(["predict", run.name, "hello"], [run.name, "generate"], protect=[run])


# --------------------------------------------------------------------------- compare, bench, check (issue 17)


def measure_argv(c, command: str, *extra: str) -> list[str]:
    return [command, f"model.name={c.world.bert}", *CLS_COMMON, *extra]


@case("message", "compare-unknown-method")
def _(c):
    return Spec(
        measure_argv(c, "compare", "--methods", "lora,lorra", "--output-dir", "cmp"),
        ["lorra", "lora"],
        absent=[c.tmp / "cmp"],
    )


@case("message", "compare-seeds-not-integers")
def _(c):
    return Spec(measure_argv(c, "compare", "--methods", "lora", "--seeds", "0,one"), ["--seeds", "0,1,2"])


@case("lose", "compare-into-a-foreign-directory")
def _(c):
    c.file("mine/notes.txt", "keep me")
    return Spec(
        measure_argv(c, "compare", "--methods", "bitfit", "--output-dir", "mine"),
        ["mine", "choose"],
        protect=[c.tmp / "mine"],
    )


@case("message", "bench-not-a-run")
def _(c):
    return Spec(["bench", "val.jsonl"], ["val.jsonl", "not a deltatune run"])


@case("message", "bench-bad-batch-sizes")
def _(c):
    run = c.use("cls")
    return Spec(["bench", run.name, "--batch-sizes", "1,zero"], ["--batch-sizes", "1,16"], protect=[run])


@case("message", "check-missing-data-file")
def _(c):
    return Spec(measure_argv(c, "check", "data.train=missing.jsonl", "--fast"), ["missing.jsonl"])


@case("message", "check-negative-memory")
def _(c):
    return Spec(measure_argv(c, "check", "--memory-mb", "-5"), ["--memory-mb", "positive"])


@case("message", "eval-baseline-on-sft-data")
def _(c):
    run = c.use("cls")
    return Spec(["eval", run.name, "--data", "sft.jsonl", "--baseline"], ["sft.jsonl", "text"], protect=[run])


@case("message", "early-stopping-zero")
def _(c):
    return Spec(c.cls("train.early_stopping=0"), ["train.early_stopping", "0"])
