"""Bad-input cases, class 'silent': No silent wrong results: what would train or report wrongly is refused or
warned."""

from __future__ import annotations

import json
import os

from helpers.bad_inputs import CHANGED, SFT_ROWS, SINGLE_CLASS, TRAIN_ROWS, VAL_ROWS, Spec, case


@case("silent", "single-class-training-data")
def _(c):
    c.jsonl("onlypos.jsonl", [r for r in TRAIN_ROWS if r["label"] == "pos"])
    return Spec(
        c.cls("data.train=onlypos.jsonl", "data.validation=onlypos.jsonl"), ["onlypos.jsonl", SINGLE_CLASS]
    )


@case("silent", "single-class-integer-labels-with-names")
def _(c):
    c.jsonl("ones.jsonl", [{"text": r["text"], "label": 1} for r in TRAIN_ROWS])
    return Spec(
        c.cls(
            "data.train=ones.jsonl",
            "data.validation_split=0.25",
            "data.validation=null",
            "data.label_names=[neg, pos]",
        ),
        ["ones.jsonl", SINGLE_CLASS],
    )


@case("silent", "yaml-two-train-sections")
def _(c):
    c.file(
        "dup.yaml",
        f"model: {{name: {c.world.bert}}}\ndata: {{train: train.jsonl}}\ntrain:\n  epochs: 1\n"
        "train:\n  batch_size: 4\n",
    )
    return Spec(c.yaml_train("dup.yaml"), ["dup.yaml", "line 5", "train"])


@case("silent", "yaml-duplicate-nested-key")
def _(c):
    c.file(
        "dup2.yaml",
        f"model: {{name: {c.world.bert}}}\ndata: {{train: train.jsonl}}\ntrain:\n"
        "  epochs: 1\n  batch_size: 4\n  epochs: 3\n",
    )
    return Spec(c.yaml_train("dup2.yaml"), ["dup2.yaml", "line 6", "epochs"])


@case("silent", "yaml-duplicate-key-in-flow-mapping")
def _(c):
    c.file("dup3.yaml", f"model: {{name: {c.world.bert}}}\ndata: {{train: train.jsonl, train: val.jsonl}}\n")
    return Spec(c.yaml_train("dup3.yaml"), ["dup3.yaml", "line 2", "train"])


def _dup_key_lines(label_first: str, label_last: str) -> str:
    return f'{{"text": "a great film", "label": "{label_first}", "label": "{label_last}"}}\n'


@case("silent", "jsonl-duplicate-key-in-train")
def _(c):
    text = (
        "".join(json.dumps(r) + "\n" for r in TRAIN_ROWS[:2])
        + _dup_key_lines("pos", "neg")
        + "".join(json.dumps(r) + "\n" for r in TRAIN_ROWS[2:])
    )
    c.file("dupkey.jsonl", text)
    return Spec(c.cls("data.train=dupkey.jsonl"), ["dupkey.jsonl", "line 3", "label"])


@case("silent", "jsonl-duplicate-key-in-validation")
def _(c):
    c.file(
        "dupval.jsonl",
        json.dumps(VAL_ROWS[0])
        + "\n"
        + _dup_key_lines("pos", "neg")
        + "".join(json.dumps(r) + "\n" for r in VAL_ROWS[1:]),
    )
    return Spec(c.cls("data.validation=dupval.jsonl"), ["dupval.jsonl", "line 2", "label"])


@case("silent", "jsonl-duplicate-key-in-eval-data")
def _(c):
    run = c.use("cls")
    c.file("dupeval.jsonl", json.dumps(VAL_ROWS[0]) + "\n" + _dup_key_lines("pos", "neg"))
    return Spec(
        ["eval", run.name, "--data", "dupeval.jsonl"], ["dupeval.jsonl", "line 2", "label"], protect=[run]
    )


@case("silent", "json-array-duplicate-key")
def _(c):
    c.file(
        "dupkey.json",
        "[\n"
        + ",\n".join(
            [json.dumps(r) for r in TRAIN_ROWS[:1]]
            + [_dup_key_lines("pos", "neg").strip()]
            + [json.dumps(r) for r in TRAIN_ROWS[1:]]
        )
        + "\n]\n",
    )
    return Spec(c.cls("data.train=dupkey.json"), ["dupkey.json", "label"])


@case("silent", "sft-jsonl-duplicate-key")
def _(c):
    c.file(
        "dupsft.jsonl",
        json.dumps(SFT_ROWS[0])
        + "\n"
        + '{"instruction": "Repeat the word red", "output": "red", "output": "blue"}\n'
        + "".join(json.dumps(r) + "\n" for r in SFT_ROWS[1:]),
    )
    return Spec(c.sft("data.train=dupsft.jsonl"), ["dupsft.jsonl", "line 2", "output"])


@case("silent", "labels-mix-int-and-string")
def _(c):
    rows = [
        {"text": r["text"], "label": (0 if r["label"] == "neg" else 1) if i % 2 else r["label"]}
        for i, r in enumerate(TRAIN_ROWS)
    ]
    c.jsonl("mixed.jsonl", rows)
    return Spec(
        c.cls("data.train=mixed.jsonl", "data.validation_split=0.25", "data.validation=null"),
        ["mixed.jsonl", "label"],
    )


@case("silent", "integer-labels-with-one-half")
def _(c):
    rows = [{"text": r["text"], "label": 0 if r["label"] == "neg" else 1} for r in TRAIN_ROWS]
    rows[3]["label"] = 0.5
    c.jsonl("half.jsonl", rows)
    return Spec(
        c.cls("data.train=half.jsonl", "data.validation_split=0.25", "data.validation=null"),
        ["half.jsonl", "line 4", "0.5"],
    )


@case("silent", "labels-mix-int-and-fraction-string")
def _(c):
    # 1 and "1" are one class (CSV files give every label as a string); "0.5" among integers is not
    rows = [{"text": r["text"], "label": (0 if r["label"] == "neg" else 1)} for r in TRAIN_ROWS]
    rows[5]["label"] = "0.5"
    c.jsonl("strint.jsonl", rows)
    return Spec(
        c.cls("data.train=strint.jsonl", "data.validation_split=0.25", "data.validation=null"),
        ["strint.jsonl", "label"],
    )


@case("silent", "labels-mix-bool-and-int")
def _(c):
    rows = [{"text": r["text"], "label": (0 if r["label"] == "neg" else 1)} for r in TRAIN_ROWS]
    rows[0]["label"], rows[-1]["label"] = True, False
    c.jsonl("bools.jsonl", rows)
    return Spec(
        c.cls("data.train=bools.jsonl", "data.validation_split=0.25", "data.validation=null"),
        ["bools.jsonl", "label"],
    )


@case("silent", "label-names-fewer-than-labels")
def _(c):
    rows = [{"text": r["text"], "label": i % 3} for i, r in enumerate(TRAIN_ROWS)]
    c.jsonl("three.jsonl", rows)
    return Spec(
        c.cls(
            "data.train=three.jsonl",
            "data.validation_split=0.25",
            "data.validation=null",
            "data.label_names=[neg, pos]",
        ),
        ["label_names"],
    )


@case("silent", "label-names-for-string-labels")
def _(c):
    return Spec(c.cls("data.label_names=[bad, good]"), ["label_names"])


def _resume_after_change(c, which: str, key: str, same_size: bool) -> Spec:
    run = c.use("killed")
    path = c.tmp / which
    st = path.stat()
    text = path.read_text()
    # flip one label: same rows, same size when 'pos' <-> 'neg'
    changed = text.replace('"label": "pos"', '"label": "neg"', 1)
    if not same_size:
        changed += json.dumps({"text": "one more row", "label": "pos"}) + "\n"
    assert changed != text
    path.write_text(changed)
    if same_size:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return Spec(c.cls("--resume", out=run.name), [(which, key), CHANGED], protect=[run])


@case("silent", "resume-after-train-file-grew")
def _(c):
    return _resume_after_change(c, "train.jsonl", "data.train", same_size=False)


@case("silent", "resume-after-train-label-flipped-same-size-and-mtime")
def _(c):
    return _resume_after_change(c, "train.jsonl", "data.train", same_size=True)


@case("silent", "resume-after-validation-file-changed")
def _(c):
    return _resume_after_change(c, "val.jsonl", "data.validation", same_size=False)


@case("silent", "sft-fields-typo-in-our-name")
def _(c):
    return Spec(c.sft("data.fields={instrucion: instruction}"), ["data.fields", "instrucion"])


@case("silent", "sft-no-response-tokens-left")
def _(c):
    return Spec(c.sft("data.max_length=4"), ["data.max_length"])


@case("silent", "sft-every-output-empty")
def _(c):
    c.jsonl("noout.jsonl", [{**r, "output": ""} for r in SFT_ROWS])
    return Spec(c.sft("data.train=noout.jsonl", "data.validation=noout.jsonl"), ["noout.jsonl", "output"])


@case("message", "validation-split-leaves-no-rows")
def _(c):  # the fix must name keys that exist
    return Spec(
        c.cls("data.validation=null", "data.validation_split=0.01"),
        ["validation_split"],
        forbid=["validation_path"],
    )
