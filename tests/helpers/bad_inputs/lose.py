"""Bad-input cases, class 'lose': Never lose outputs: earlier runs, checkpoints and reports survive every
failure."""

from __future__ import annotations

from helpers.bad_inputs import BROKEN_TEMPLATE, TRAIN_ROWS, Spec, _unfinished, case, long_rows


@case("lose", "overwrite-then-missing-data")
def _(c):
    run = c.use("cls")
    return Spec(
        c.cls("--overwrite", "data.train=missing.jsonl", out=run.name), ["missing.jsonl"], protect=[run]
    )


@case("lose", "overwrite-then-bad-json-line")
def _(c):
    run = c.use("cls")
    c.file(
        "bad.jsonl",
        '{"text": "ok", "label": "pos"}\n{"text": "fine", "label": "neg"}\n{"text": "broken", "label": \n',
    )
    return Spec(
        c.cls("--overwrite", "data.train=bad.jsonl", out=run.name), ["bad.jsonl", "line 3"], protect=[run]
    )


@case("lose", "overwrite-then-missing-model")
def _(c):
    run = c.use("cls")
    return Spec(
        c.cls("--overwrite", "model.name=./no-such-model", out=run.name), ["no-such-model"], protect=[run]
    )


@case("lose", "overwrite-then-config-typo")
def _(c):
    run = c.use("cls")
    return Spec(
        c.cls("--overwrite", "train.learnig_rate=1e-3", out=run.name),
        ["train.learnig_rate", "learning_rate"],
        protect=[run],
    )


@case("lose", "overwrite-then-max-length-too-long")
def _(c):
    run = c.use("cls")
    n = c.world.bert_positions
    long_rows(c, n)
    return Spec(
        c.cls("--overwrite", f"data.max_length={2 * n}", out=run.name),
        ["data.max_length", str(n)],
        protect=[run],
    )


@case("lose", "overwrite-then-single-class-data")
def _(c):
    run = c.use("cls")
    c.jsonl("onlypos.jsonl", [r for r in TRAIN_ROWS if r["label"] == "pos"])
    return Spec(
        c.cls("--overwrite", "data.train=onlypos.jsonl", "data.validation=onlypos.jsonl", out=run.name),
        ["onlypos.jsonl"],
        protect=[run],
    )


@case("lose", "overwrite-sft-then-broken-template")
def _(c):
    run = c.use("sft")
    return Spec(
        c.sft("--overwrite", f"data.template={BROKEN_TEMPLATE}", out=run.name),
        ["data.template"],
        protect=[run],
    )


@case("lose", "unfinished-dir-without-resume")
def _(c):
    run = _unfinished(c.use("cls"))
    return Spec(c.cls(out=run.name), [run.name, "--resume", "--overwrite"], protect=[run])


@case("lose", "killed-run-without-resume")
def _(c):
    run = c.use("killed")
    return Spec(c.cls(out=run.name), [run.name, "--resume", "--overwrite"], protect=[run])


@case("lose", "killed-run-without-resume-then-missing-data")
def _(c):
    run = c.use("killed")
    return Spec(
        c.cls("data.train=missing.jsonl", out=run.name), [("missing.jsonl", "--resume")], protect=[run]
    )


@case("lose", "killed-run-without-resume-other-method")
def _(c):
    run = c.use("killed")
    return Spec(c.cls("method.name=ia3", out=run.name), [run.name, "--resume", "--overwrite"], protect=[run])


@case("lose", "killed-run-resume-changed-config")
def _(c):
    run = c.use("killed")
    return Spec(
        c.cls("--resume", "train.learning_rate=0.5", out=run.name), ["train.learning_rate"], protect=[run]
    )


@case("lose", "killed-run-resume-and-overwrite-together")
def _(c):
    run = c.use("killed")
    return Spec(c.cls("--resume", "--overwrite", out=run.name), ["--resume", "--overwrite"], protect=[run])


@case("lose", "resume-a-finished-run")
def _(c):
    run = c.use("cls")
    return Spec(c.cls("--resume", out=run.name), [run.name, "--overwrite"], protect=[run])


@case("lose", "killed-run-readonly-checkpoints-resume")
def _(c):
    run = c.use("killed")
    skip = c.readonly(run / "checkpoints")
    return Spec(c.cls("--resume", out=run.name), ["checkpoints"], protect=[run], skip=skip)


@case("lose", "overwrite-then-unknown-metric-for-best")
def _(c):  # found only at the first evaluation today: after training, after the old run was cleared
    run = c.use("cls")
    return Spec(
        c.cls("--overwrite", "train.metric_for_best=f1", out=run.name),
        ["train.metric_for_best", "f1_macro"],
        protect=[run],
    )


@case("lose", "merge-out-onto-nonempty-dir")
def _(c):
    run = c.use("cls")
    keep = c.tmp / "keep"
    c.file("keep/notes.txt", "my notes\n")
    return Spec(["merge", run.name, "--out", "keep"], ["keep"], protect=[run, keep])


@case("lose", "merge-out-onto-the-run-itself")
def _(c):
    run = c.use("cls")
    return Spec(["merge", run.name, "--out", run.name], [run.name], protect=[run])


@case("lose", "merge-out-onto-a-file")
def _(c):
    run = c.use("cls")
    notes = c.file("notes.txt", "my notes\n")
    return Spec(["merge", run.name, "--out", "notes.txt"], ["notes.txt"], protect=[run, notes])


@case("lose", "output-dir-is-a-file")
def _(c):
    notes = c.file("notes.txt", "my notes\n")
    return Spec(c.cls(out="notes.txt"), ["notes.txt"], protect=[notes])
