"""The corpus of bad inputs driven through the CLI by tests/contracts/test_bad_inputs.py (issue 11).

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
SFT_ROWS = [
    {"instruction": f"Repeat the word {w}", "output": w}
    for w in ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]
]

# what every classify / sft training command shares (paths relative to the case directory)
CLS_COMMON = [
    "data.train=train.jsonl",
    "data.validation=val.jsonl",
    "train.max_steps=4",
    "train.batch_size=4",
    "train.checkpoint_every=2",
    "train.log_every=1",
    "train.progress=false",
    "train.precision=fp32",
]
SFT_COMMON = [
    "task=sft",
    "data.train=sft.jsonl",
    "data.validation=sft.jsonl",
    "data.max_length=64",
    "train.max_steps=2",
    "train.batch_size=4",
    "train.checkpoint_every=2",
    "train.log_every=1",
    "generate.eval_samples=1",
    "generate.max_new_tokens=3",
    "train.progress=false",
    "train.precision=fp32",
]


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
SINGLE_CLASS = (
    "one class",
    "one label",
    "single class",
    "single label",
    "only one",
    "1 class",
    "1 label",
    "a single",
    "same label",
    "same class",
)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def junk(n: int, seed: int = 0) -> bytes:
    """Deterministic random bytes (not valid UTF-8, JSON, YAML or safetensors)."""
    return random.Random(seed).randbytes(n)


@dataclass
class Spec:
    argv: list[str]
    expect: list[Expect] = field(default_factory=list)  # all must appear in the error message
    forbid: list = field(default_factory=list)  # no substring / regex of these in the message
    forbid_stderr: list[str] = field(default_factory=list)  # none may appear anywhere in stderr
    protect: list[Path] = field(default_factory=list)  # byte-for-byte unchanged afterwards
    absent: list[Path] = field(default_factory=list)  # must not exist afterwards
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
        probe = subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                f"mount --bind {d} {d} && mount -o remount,bind,ro {d} && ! touch {d}/x",
            ],
            capture_output=True,
            timeout=30,
        )
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
    runs: dict[str, str]  # name -> run directory name inside the folder


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


def long_rows(c, n: int) -> None:
    """train.jsonl with one text longer than the model's ``n`` positions."""
    c.jsonl("train.jsonl", [{"text": " ".join(["film"] * (n + 100)), "label": "pos"}] + TRAIN_ROWS)


def long_sft_rows(c, n: int) -> None:
    c.jsonl("sft.jsonl", [{"instruction": " ".join(["repeat"] * (n + 100)), "output": "red"}] + SFT_ROWS)


# The cases, one module per class, register themselves in CASES in this order.
from helpers.bad_inputs import lose, message, silent, traceback  # noqa: E402, F401
