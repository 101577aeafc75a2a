"""The corpus of bad inputs driven through the CLI by tests/test_bad_inputs.py (issue 11).

Each case is a function ``(ctx) -> Spec`` registered with ``@case(class, name)``; its test id is
``<class>-<name>``. A case runs in its own directory (``ctx.tmp``, also the working directory), which
already holds the standard data files (``train.jsonl``, ``val.jsonl``, ``sft.jsonl``) and, when the
case asks ``ctx.use(...)``, a copy of one of the module's runs. Expectations are what a good
message MUST say (the file, line, key or flag, and the fix word), not what the code prints today.

Classes (the issue's headings): ``lose`` never lose outputs; ``traceback`` no tracebacks; ``silent``
no silent wrong results; ``message`` messages that point the wrong way.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

import yaml

# an expectation: a substring (case-insensitive), any one of several substrings, or a regex
Expect = Union[str, tuple, "re.Pattern[str]"]

POS = ["a great film", "wonderful acting", "i loved it", "superb and moving"]
NEG = ["a dull mess", "terrible acting", "i hated it", "boring and long"]
TRAIN_ROWS = [{"text": t, "label": "pos"} for t in POS * 2] + [{"text": t, "label": "neg"} for t in NEG * 2]
VAL_ROWS = [{"text": t, "label": "pos"} for t in POS] + [{"text": t, "label": "neg"} for t in NEG]
SFT_ROWS = [{"instruction": f"Repeat the word {w}", "output": w}
            for w in ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]]

# what every classify / sft training command shares (paths relative to the case directory)
CLS_COMMON = ["data.train=train.jsonl", "data.validation=val.jsonl", "train.max_steps=4",
              "train.batch_size=4", "train.checkpoint_every=2", "train.log_every=1",
              "train.progress=false", "train.precision=fp32"]
SFT_COMMON = ["task=sft", "data.train=sft.jsonl", "data.validation=sft.jsonl", "data.max_length=64",
              "train.max_steps=2", "train.batch_size=4", "train.checkpoint_every=2", "train.log_every=1",
              "generate.eval_samples=1", "generate.max_new_tokens=3", "train.progress=false",
              "train.precision=fp32"]



def cls_argv(model: str, out: str, *extra: str) -> list[str]:
    """A small classify training command; extra overrides come last and win."""
    return ["train", f"model.name={model}", *CLS_COMMON, "--output-dir", out, *extra]


def sft_argv(model: str, out: str, *extra: str) -> list[str]:
    return ["train", f"model.name={model}", *SFT_COMMON, "--output-dir", out, *extra]


def write_data(folder: Path) -> None:
    write_jsonl(folder / "train.jsonl", TRAIN_ROWS)
    write_jsonl(folder / "val.jsonl", VAL_ROWS)
    write_jsonl(folder / "sft.jsonl", SFT_ROWS)


BROKEN_TEMPLATE = "{% for m in messages %}{{ m.content }"  # unclosed '{{'
JSON_HINT = re.compile(r"json (list|array)|\.json(?!l)|data\.format|format: ?json\b", re.I)
JSONL_HINT = re.compile(r"\.jsonl|json ?lines|one (json )?object per line|data\.format|format: ?jsonl", re.I)
# the message leads with a data line as the place of the error (the template is to blame)
BLAMES_DATA_LINE = re.compile(r"^error: \S*sft\.jsonl, line", re.M)
CHANGED = ("changed", "differ", "modified", "fingerprint")
SINGLE_CLASS = ("one class", "one label", "single class", "single label", "only one", "1 class",
                "1 label", "a single", "same label", "same class")


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def junk(n: int, seed: int = 0) -> bytes:
    """Deterministic random bytes (not valid UTF-8, JSON, YAML or safetensors)."""
    return random.Random(seed).randbytes(n)


@dataclass
class Spec:
    argv: list[str]
    expect: list[Expect] = field(default_factory=list)   # all must appear in the error message
    forbid: list = field(default_factory=list)           # no substring / regex of these in the message
    forbid_stderr: list[str] = field(default_factory=list)  # none may appear anywhere in stderr
    protect: list[Path] = field(default_factory=list)    # byte-for-byte unchanged afterwards
    absent: list[Path] = field(default_factory=list)     # must not exist afterwards
    skip: str | None = None


def read_only_mounts_work() -> bool:
    """Whether this process may make a read-only bind mount in a private mount namespace (root with
    ``unshare``): then a read-only folder can be staged even for root."""
    import shutil
    import subprocess
    import tempfile

    if not shutil.which("unshare"):
        return False
    with tempfile.TemporaryDirectory() as d:
        probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                f"mount --bind {d} {d} && mount -o remount,bind,ro {d} && ! touch {d}/x"],
                               capture_output=True, timeout=30)
    return probe.returncode == 0


@dataclass
class World:
    """What the module built once: tiny models and finished/killed runs, each in a folder that
    also holds the run's (relative) data files."""
    root: Path
    bert: str
    llama: str
    bert_positions: int
    llama_positions: int
    folders: dict[str, Path]  # name -> folder holding the data files and the run directory
    runs: dict[str, str]      # name -> run directory name inside the folder


class Ctx:
    def __init__(self, tmp: Path, world: World):
        self.tmp, self.world = tmp, world
        self.locked: list[Path] = []  # chmod-ed paths, made writable again after the case
        self.read_only: list[Path] = []  # as root: bind-mounted read-only for the CLI's process
        write_data(tmp)

    def use(self, name: str) -> Path:
        """Copy one of the module's runs (with its data files) into the case directory."""
        shutil.copytree(self.world.folders[name], self.tmp, dirs_exist_ok=True)
        return self.tmp / self.world.runs[name]

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
        return path

    def jsonl(self, name: str, rows) -> Path:
        return write_jsonl(self.tmp / name, rows)

    def model_copy(self, name: str, kind: str = "bert") -> Path:
        dst = self.tmp / name
        shutil.copytree(self.world.bert if kind == "bert" else self.world.llama, dst)
        return dst

    def cls(self, *extra: str, out: str = "out") -> list[str]:
        return cls_argv(self.world.bert, out, *extra)

    def sft(self, *extra: str, out: str = "out") -> list[str]:
        return sft_argv(self.world.llama, out, *extra)

    def yaml_train(self, config: str, *extra: str) -> list[str]:
        """``train CONFIG`` with the small, fp32, quiet settings (a YAML case may otherwise train)."""
        quick = [o for o in CLS_COMMON if not o.startswith("data.")]
        return ["train", config, *quick, "--output-dir", "out", *extra]

    def readonly(self, path: Path) -> str | None:
        """chmod 0o555, or as root (whom chmod does not stop) a read-only bind mount of ``path`` in a
        private mount namespace around the CLI's process; a skip reason where neither works."""
        if os.geteuid() == 0:
            if read_only_mounts_work():
                self.read_only.append(path)
                return None
            return "running as root without `unshare --mount`: the case cannot be staged"
        path.chmod(0o555)
        self.locked.append(path)
        if os.access(path, os.W_OK):
            return f"chmod 0o555 does not stop writes for uid {os.geteuid()} here: the case cannot be staged"
        return None


CASES: list[tuple[str, Callable[[Ctx], Spec]]] = []


def case(cls: str, name: str):
    def register(fn):
        CASES.append((f"{cls}-{name}", fn))
        return fn
    return register


def _edit_run_config(run: Path, **changes) -> None:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def _unfinished(run: Path) -> Path:
    (run / "summary.json").unlink()
    return run


# ============================================================================ never lose outputs

@case("lose", "overwrite-then-missing-data")
def _(c):
    run = c.use("cls")
    return Spec(c.cls("--overwrite", "data.train=missing.jsonl", out=run.name), ["missing.jsonl"], protect=[run])


@case("lose", "overwrite-then-bad-json-line")
def _(c):
    run = c.use("cls")
    c.file("bad.jsonl", '{"text": "ok", "label": "pos"}\n{"text": "fine", "label": "neg"}\n{"text": "broken", "label": \n')
    return Spec(c.cls("--overwrite", "data.train=bad.jsonl", out=run.name), ["bad.jsonl", "line 3"], protect=[run])


@case("lose", "overwrite-then-missing-model")
def _(c):
    run = c.use("cls")
    return Spec(c.cls("--overwrite", "model.name=./no-such-model", out=run.name), ["no-such-model"], protect=[run])


@case("lose", "overwrite-then-config-typo")
def _(c):
    run = c.use("cls")
    return Spec(c.cls("--overwrite", "train.learnig_rate=1e-3", out=run.name),
                ["train.learnig_rate", "learning_rate"], protect=[run])


def long_rows(c, n: int) -> None:
    """train.jsonl with one text longer than the model's ``n`` positions."""
    c.jsonl("train.jsonl", [{"text": " ".join(["film"] * (n + 100)), "label": "pos"}] + TRAIN_ROWS)


def long_sft_rows(c, n: int) -> None:
    c.jsonl("sft.jsonl", [{"instruction": " ".join(["repeat"] * (n + 100)), "output": "red"}] + SFT_ROWS)


@case("lose", "overwrite-then-max-length-too-long")
def _(c):
    run = c.use("cls")
    n = c.world.bert_positions
    long_rows(c, n)
    return Spec(c.cls("--overwrite", f"data.max_length={2 * n}", out=run.name), ["data.max_length", str(n)],
                protect=[run])


@case("lose", "overwrite-then-single-class-data")
def _(c):
    run = c.use("cls")
    c.jsonl("onlypos.jsonl", [r for r in TRAIN_ROWS if r["label"] == "pos"])
    return Spec(c.cls("--overwrite", "data.train=onlypos.jsonl", "data.validation=onlypos.jsonl", out=run.name),
                ["onlypos.jsonl"], protect=[run])


@case("lose", "overwrite-sft-then-broken-template")
def _(c):
    run = c.use("sft")
    return Spec(c.sft("--overwrite", f"data.template={BROKEN_TEMPLATE}", out=run.name), ["data.template"],
                protect=[run])


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
    return Spec(c.cls("data.train=missing.jsonl", out=run.name), [("missing.jsonl", "--resume")], protect=[run])


@case("lose", "killed-run-without-resume-other-method")
def _(c):
    run = c.use("killed")
    return Spec(c.cls("method.name=ia3", out=run.name), [run.name, "--resume", "--overwrite"], protect=[run])


@case("lose", "killed-run-resume-changed-config")
def _(c):
    run = c.use("killed")
    return Spec(c.cls("--resume", "train.learning_rate=0.5", out=run.name), ["train.learning_rate"], protect=[run])


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
    return Spec(c.cls("--overwrite", "train.metric_for_best=f1", out=run.name), ["train.metric_for_best", "f1_macro"],
                protect=[run])


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


# ============================================================================ no tracebacks

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
for _how, _cmds in (("random", ("eval", "predict", "merge")), ("truncated", ("eval", "predict")),
                    ("empty", ("predict",))):
    for _cmd in _cmds:
        def _adapter_case(c, how=_how, cmd=_cmd):
            run = c.use("cls")
            _corrupt(run / ADAPTER, how)
            argv = {"eval": ["eval", run.name, "--data", "val.jsonl"], "predict": ["predict", run.name, "hello"],
                    "merge": ["merge", run.name, "--out", "merged"]}[cmd]
            return Spec(argv, ["adapter_model.safetensors"], protect=[run])
        case("traceback", f"{_how}-adapter-file-then-{_cmd}")(_adapter_case)


@case("traceback", "random-adapter-file-then-sft-generate")
def _(c):
    run = c.use("sft")
    _corrupt(run / ADAPTER, "random")
    return Spec(["generate", run.name, "hi", "--max-new-tokens", "2"], ["adapter_model.safetensors"], protect=[run])


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
        (run / "config.yaml").read_text().replace("task: classify", "task: regression")),
    "empty": lambda run: (run / "config.yaml").write_text(""),
}
_RUN_CONFIG_KEYS = {"wrong-value": ["data.max_length"], "unknown-task": ["task"]}
for _what, _damage in _RUN_CONFIGS.items():
    for _cmd in ("eval", "predict"):
        def _config_case(c, what=_what, damage=_damage, cmd=_cmd):
            run = c.use("cls")
            damage(run)
            argv = ["eval", run.name, "--data", "val.jsonl"] if cmd == "eval" else ["predict", run.name, "hello"]
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
    (model / "config.json").write_text("{\"model_type\": ")
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
    return Spec(c.cls(f"data.max_length={2 * n}", out="fresh"), ["data.max_length", str(n)],
                forbid_stderr=["untuned base"], absent=[c.tmp / "fresh/metrics.jsonl", c.tmp / "fresh/checkpoints"])


@case("traceback", "max-length-beyond-positions-sft")
def _(c):
    n = c.world.llama_positions
    long_sft_rows(c, n)
    return Spec(c.sft(f"data.max_length={2 * n}", out="fresh"), ["data.max_length", str(n)],
                forbid_stderr=["untuned base"], absent=[c.tmp / "fresh/metrics.jsonl", c.tmp / "fresh/checkpoints"])


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


for _key, _value in (("train.batch_size", "many"), ("train.batch_size", "2.5"), ("train.learning_rate", "fast"),
                     ("train.learning_rate", "[1, 2]"), ("train.epochs", "-1"), ("train.max_steps", "0"),
                     ("data.validation_split", "1.5"), ("data.max_length", "long"), ("method.r", "0"),
                     ("method.r", "big"), ("data.label_names", "5"), ("data.train", "[a.jsonl, b.jsonl]"),
                     ("model.dtype", "float64"), ("train.scheduler", "cosine_with_restarts")):
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
    return Spec(["train", "c.yaml", "train.epochs", "3", "train.precision=fp32", "--output-dir", "out"], ["train.epochs", "="])


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
    return Spec(["generate", run.name, "hi", "--sample", "--temperature", "0"], ["--temperature"], protect=[run])


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
    c.file("rows.tsv", "text\tlabel\na great film\tpos\na dull\tmess\tneg\n" +
           "".join(f"{r['text']}\t{r['label']}\n" for r in TRAIN_ROWS))
    return Spec(c.cls("data.train=rows.tsv"), ["rows.tsv", "line 3"])


@case("traceback", "classify-on-sft-data")
def _(c):
    return Spec(c.cls("data.train=sft.jsonl"), ["sft.jsonl", "line 1"])


@case("silent", "sft-message-with-unknown-role")
def _(c):
    # ("bot", "gpt", "human" are known aliases of ShareGPT-style data; "narrator" is not a role)
    c.jsonl("chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}, {"role": "narrator", "content": "yo"}]}] * 4)
    return Spec(c.sft("data.train=chat.jsonl", "data.validation=chat.jsonl"), ["chat.jsonl", "line 1", "narrator"])


@case("traceback", "sft-messages-not-a-list")
def _(c):
    c.jsonl("chat.jsonl", [{"messages": "hi there"}] * 4)
    return Spec(c.sft("data.train=chat.jsonl", "data.validation=chat.jsonl"), ["chat.jsonl", "line 1", "messages"])


@case("traceback", "sft-history-not-pairs")
def _(c):
    c.jsonl("hist.jsonl", [{"instruction": "hi", "output": "yo", "history": "earlier chat"}] * 4)
    return Spec(c.sft("data.train=hist.jsonl", "data.validation=hist.jsonl"), ["hist.jsonl", "line 1", "history"])


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
    return Spec(c.cls("train.metric_for_best=f1", out="fresh"), ["train.metric_for_best", "f1_macro"],
                absent=[c.tmp / "fresh/metrics.jsonl", c.tmp / "fresh/checkpoints"])


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


# ============================================================================ no silent wrong results

@case("silent", "single-class-training-data")
def _(c):
    c.jsonl("onlypos.jsonl", [r for r in TRAIN_ROWS if r["label"] == "pos"])
    return Spec(c.cls("data.train=onlypos.jsonl", "data.validation=onlypos.jsonl"), ["onlypos.jsonl", SINGLE_CLASS])


@case("silent", "single-class-integer-labels-with-names")
def _(c):
    c.jsonl("ones.jsonl", [{"text": r["text"], "label": 1} for r in TRAIN_ROWS])
    return Spec(c.cls("data.train=ones.jsonl", "data.validation_split=0.25", "data.validation=null",
                      "data.label_names=[neg, pos]"), ["ones.jsonl", SINGLE_CLASS])


@case("silent", "yaml-two-train-sections")
def _(c):
    c.file("dup.yaml", f"model: {{name: {c.world.bert}}}\ndata: {{train: train.jsonl}}\ntrain:\n  epochs: 1\n"
                       "train:\n  batch_size: 4\n")
    return Spec(c.yaml_train("dup.yaml"), ["dup.yaml", "line 5", "train"])


@case("silent", "yaml-duplicate-nested-key")
def _(c):
    c.file("dup2.yaml", f"model: {{name: {c.world.bert}}}\ndata: {{train: train.jsonl}}\ntrain:\n"
                        "  epochs: 1\n  batch_size: 4\n  epochs: 3\n")
    return Spec(c.yaml_train("dup2.yaml"), ["dup2.yaml", "line 6", "epochs"])


@case("silent", "yaml-duplicate-key-in-flow-mapping")
def _(c):
    c.file("dup3.yaml", f"model: {{name: {c.world.bert}}}\ndata: {{train: train.jsonl, train: val.jsonl}}\n")
    return Spec(c.yaml_train("dup3.yaml"), ["dup3.yaml", "line 2", "train"])


def _dup_key_lines(label_first: str, label_last: str) -> str:
    return f'{{"text": "a great film", "label": "{label_first}", "label": "{label_last}"}}\n'


@case("silent", "jsonl-duplicate-key-in-train")
def _(c):
    text = "".join(json.dumps(r) + "\n" for r in TRAIN_ROWS[:2]) + _dup_key_lines("pos", "neg") + \
        "".join(json.dumps(r) + "\n" for r in TRAIN_ROWS[2:])
    c.file("dupkey.jsonl", text)
    return Spec(c.cls("data.train=dupkey.jsonl"), ["dupkey.jsonl", "line 3", "label"])


@case("silent", "jsonl-duplicate-key-in-validation")
def _(c):
    c.file("dupval.jsonl", json.dumps(VAL_ROWS[0]) + "\n" + _dup_key_lines("pos", "neg") +
           "".join(json.dumps(r) + "\n" for r in VAL_ROWS[1:]))
    return Spec(c.cls("data.validation=dupval.jsonl"), ["dupval.jsonl", "line 2", "label"])


@case("silent", "jsonl-duplicate-key-in-eval-data")
def _(c):
    run = c.use("cls")
    c.file("dupeval.jsonl", json.dumps(VAL_ROWS[0]) + "\n" + _dup_key_lines("pos", "neg"))
    return Spec(["eval", run.name, "--data", "dupeval.jsonl"], ["dupeval.jsonl", "line 2", "label"], protect=[run])


@case("silent", "json-array-duplicate-key")
def _(c):
    c.file("dupkey.json", "[\n" + ",\n".join([json.dumps(r) for r in TRAIN_ROWS[:1]] + [_dup_key_lines("pos", "neg").strip()]
                                             + [json.dumps(r) for r in TRAIN_ROWS[1:]]) + "\n]\n")
    return Spec(c.cls("data.train=dupkey.json"), ["dupkey.json", "label"])


@case("silent", "sft-jsonl-duplicate-key")
def _(c):
    c.file("dupsft.jsonl", json.dumps(SFT_ROWS[0]) + "\n" +
           '{"instruction": "Repeat the word red", "output": "red", "output": "blue"}\n' +
           "".join(json.dumps(r) + "\n" for r in SFT_ROWS[1:]))
    return Spec(c.sft("data.train=dupsft.jsonl"), ["dupsft.jsonl", "line 2", "output"])


@case("silent", "labels-mix-int-and-string")
def _(c):
    rows = [{"text": r["text"], "label": (0 if r["label"] == "neg" else 1) if i % 2 else r["label"]}
            for i, r in enumerate(TRAIN_ROWS)]
    c.jsonl("mixed.jsonl", rows)
    return Spec(c.cls("data.train=mixed.jsonl", "data.validation_split=0.25", "data.validation=null"),
                ["mixed.jsonl", "label"])


@case("silent", "integer-labels-with-one-half")
def _(c):
    rows = [{"text": r["text"], "label": 0 if r["label"] == "neg" else 1} for r in TRAIN_ROWS]
    rows[3]["label"] = 0.5
    c.jsonl("half.jsonl", rows)
    return Spec(c.cls("data.train=half.jsonl", "data.validation_split=0.25", "data.validation=null"),
                ["half.jsonl", "line 4", "0.5"])


@case("silent", "labels-mix-int-and-fraction-string")
def _(c):
    # 1 and "1" are one class (CSV files give every label as a string); "0.5" among integers is not
    rows = [{"text": r["text"], "label": (0 if r["label"] == "neg" else 1)} for r in TRAIN_ROWS]
    rows[5]["label"] = "0.5"
    c.jsonl("strint.jsonl", rows)
    return Spec(c.cls("data.train=strint.jsonl", "data.validation_split=0.25", "data.validation=null"),
                ["strint.jsonl", "label"])


@case("silent", "labels-mix-bool-and-int")
def _(c):
    rows = [{"text": r["text"], "label": (0 if r["label"] == "neg" else 1)} for r in TRAIN_ROWS]
    rows[0]["label"], rows[-1]["label"] = True, False
    c.jsonl("bools.jsonl", rows)
    return Spec(c.cls("data.train=bools.jsonl", "data.validation_split=0.25", "data.validation=null"),
                ["bools.jsonl", "label"])


@case("silent", "label-names-fewer-than-labels")
def _(c):
    rows = [{"text": r["text"], "label": i % 3} for i, r in enumerate(TRAIN_ROWS)]
    c.jsonl("three.jsonl", rows)
    return Spec(c.cls("data.train=three.jsonl", "data.validation_split=0.25", "data.validation=null",
                      "data.label_names=[neg, pos]"), ["label_names"])


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
    return Spec(c.cls("data.validation=null", "data.validation_split=0.01"), ["validation_split"],
                forbid=["validation_path"])


# ============================================================================ messages that point the wrong way

@case("message", "no-data-train")
def _(c):
    return Spec(["train", f"model.name={c.world.bert}", "train.progress=false", "--output-dir", "out"],
                ["data.train"], forbid=["None"])


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
        argv = {"eval": ["eval", run.name, "--data", "val.jsonl"], "predict": ["predict", run.name, "hello"],
                "merge": ["merge", run.name, "--out", "merged"]}[cmd]
        return Spec(argv, [run.name, "--resume"], protect=[run])
    case("message", f"{_cmd}-on-a-killed-run")(_killed_case)


@case("message", "jinja-template-syntax-error")
def _(c):
    return Spec(c.sft(f"data.template={BROKEN_TEMPLATE}"), ["data.template"], forbid=[BLAMES_DATA_LINE])


@case("message", "jinja-template-unknown-filter")
def _(c):
    return Spec(c.sft("data.template={% for m in messages %}{{ m.content | shout }}{% endfor %}"),
                ["data.template", "shout"], forbid=[BLAMES_DATA_LINE])


@case("message", "jinja-template-file-missing")
def _(c):
    return Spec(c.sft("data.template=my_template.jinja"), ["my_template.jinja"])


@case("message", "jinja-template-file-syntax-error")
def _(c):
    c.file("mine.jinja", BROKEN_TEMPLATE)
    return Spec(c.sft("data.template=mine.jinja"), ["mine.jinja"], forbid=[BLAMES_DATA_LINE])


@case("message", "top-level-learning-rate")
def _(c):
    c.file("flat.yaml", f"model: {{name: {c.world.bert}}}\ndata: {{train: train.jsonl}}\nlearning_rate: 1e-3\n")
    return Spec(c.yaml_train("flat.yaml"), ["flat.yaml", "train.learning_rate"])


@case("message", "data-label-suggests-a-field")
def _(c):
    return Spec(c.cls("data.label=sentiment"), ["data.label", "label_field"])


@case("message", "yaml-section-is-a-string-plus-override")
def _(c):
    c.file("model_str.yaml", "model: minilm-l6\ndata: {train: train.jsonl}\n")
    return Spec(c.yaml_train("model_str.yaml", f"model.name={c.world.bert}"),
                ["model_str.yaml", "model"])


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


# ----------------------------------------------------------------------------- compare, bench, check (issue 17)


def measure_argv(c, command: str, *extra: str) -> list[str]:
    return [command, f"model.name={c.world.bert}", *CLS_COMMON, *extra]


@case("message", "compare-unknown-method")
def _(c):
    return Spec(measure_argv(c, "compare", "--methods", "lora,lorra", "--output-dir", "cmp"), ["lorra", "lora"],
                absent=[c.tmp / "cmp"])


@case("message", "compare-seeds-not-integers")
def _(c):
    return Spec(measure_argv(c, "compare", "--methods", "lora", "--seeds", "0,one"), ["--seeds", "0,1,2"])


@case("lose", "compare-into-a-foreign-directory")
def _(c):
    c.file("mine/notes.txt", "keep me")
    return Spec(measure_argv(c, "compare", "--methods", "bitfit", "--output-dir", "mine"), ["mine", "choose"],
                protect=[c.tmp / "mine"])


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
