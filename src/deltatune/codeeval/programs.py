"""Execution-based code metrics: pass@k, code extraction, and MBPP / HumanEval test programs.

A task's program is the candidate code followed by the task's tests; it runs in the sandbox
(:mod:`deltatune.codeeval.sandbox`) and passes when it exits 0 *after* its last test, which
:func:`run_tests` checks with a marker line the builders append (a candidate that calls ``sys.exit(0)``
before the tests would otherwise pass).

Data: MBPP (Austin et al. 2021, https://arxiv.org/abs/2108.07732) as one JSON object per line with
``task_id``, ``text``, ``code``, ``test_setup_code``, ``test_list``; official split by task id (1-10
few-shot, 11-510 test, 511-600 validation, 601-974 train). HumanEval (Chen et al. 2021) with
``task_id``, ``prompt``, ``entry_point``, ``canonical_solution``, ``test`` (defines ``check(candidate)``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from deltatune.codeeval.sandbox import SandboxLimits, Verdict, run_many
from deltatune.errors import DataError

MBPP_SPLITS = {"fewshot": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}
# Their test_setup_code builds trees from the reference solution's Node class (see the data README).
MBPP_NEEDS_REFERENCE = frozenset({367, 927})
PROMPT_FORMATS = ("instruct", "completion")
# Where a HumanEval-style completion usually stops: the next top-level statement (Chen et al. 2021).
COMPLETION_STOPS = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#")
TESTS_DONE = "__deltatune_tests_done__"

_FENCE = re.compile(r"```[ \t]*([\w+.#-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(answer: str, prompt_format: str = "instruct", prompt: str = "") -> str:
    """The program a model's ``answer`` stands for.

    "instruct" (a chat answer): the first ```python fenced block, else the first fenced block of any
    language, else the whole answer; an unclosed fence runs to the end (the answer was cut off), and
    Python ended by a bare ``` line it never opened (continuing the prompt's block) is the code.
    "completion" (HumanEval-style, the answer continues ``prompt``): ``prompt`` + the answer cut at the
    first :data:`COMPLETION_STOPS`; if the model answered with a fenced block instead, that block after
    ``prompt`` (a full ``def`` in it replaces the prompt's, whose imports stay).
    """
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt_format {prompt_format!r}: use one of {', '.join(PROMPT_FORMATS)}")
    before = _before_closing_fence(answer) if prompt_format == "instruct" else None
    if before is not None:
        return before
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(answer)]
    fenced = next(
        (body for lang, body in blocks if lang in ("python", "py", "python3")),
        blocks[0][1] if blocks else None,
    )
    if prompt_format == "instruct":
        return (fenced if fenced is not None else answer).strip("\n") + "\n"
    if fenced is not None:
        return prompt + ("\n\n" if "def " in fenced else "") + fenced
    cut = min((i for i in (answer.find(stop) for stop in COMPLETION_STOPS) if i >= 0), default=len(answer))
    return prompt + answer[:cut]


_BARE_FENCE = re.compile(r"^[ \t]*```[ \t]*$", re.MULTILINE)


def _before_closing_fence(answer: str) -> str | None:
    """The code of an answer that continues a block the prompt opened: its first fence is a bare
    ``` line (no language) with Python before it, so that fence closes the block instead of opening
    one. None otherwise. The text is only compiled, never run."""
    fence = _BARE_FENCE.search(answer)
    if fence is None or "```" in answer[: fence.start()]:
        return None
    code = answer[: fence.start()].strip("\n")
    if not code.strip():
        return None
    try:
        compile(code, "<answer>", "exec")
    except (SyntaxError, ValueError):
        return None
    return code + "\n"


def mbpp_program(code: str, task: dict, preamble: str = "") -> str:
    """``preamble``, the task's ``test_setup_code``, ``code``, its asserts, then the done marker.

    Pass ``preamble=mbpp_preamble(task)`` for the tasks whose setup needs the reference code first.
    """
    parts = [
        preamble,
        task.get("test_setup_code") or "",
        code,
        "\n".join(task["test_list"]),
        f"print({TESTS_DONE!r})",
    ]
    return "\n\n".join(part.strip("\n") for part in parts if part.strip()) + "\n"


def mbpp_preamble(task: dict) -> str:
    """The reference ``code`` for tasks in :data:`MBPP_NEEDS_REFERENCE` (their setup uses it), else ""."""
    return task["code"] if task["task_id"] in MBPP_NEEDS_REFERENCE else ""


def humaneval_program(prompt: str, completion: str, task: dict) -> str:
    """``prompt`` + ``completion``, the task's ``test``, ``check(entry_point)``, then the done marker.

    Pass ``prompt=""`` when ``completion`` already holds the whole program (as :func:`extract_code`
    returns it).
    """
    return f"{prompt}{completion}\n\n{task['test']}\n\ncheck({task['entry_point']})\nprint({TESTS_DONE!r})\n"


def run_tests(programs, limits: SandboxLimits | None = None, workers: int | None = None) -> list[Verdict]:
    """Run programs built by the builders above in the sandbox; "passed" only if the tests ran to the end."""
    verdicts = run_many(programs, limits, workers)
    return [
        v
        if not v.passed or _tests_done(v.stdout)
        else dataclasses.replace(
            v, status="failed", reason="exited before its tests finished (sys.exit or os._exit in the code?)"
        )
        for v in verdicts
    ]


def _tests_done(stdout: str) -> bool:
    lines = stdout.rstrip("\n").rsplit("\n", 1)
    return lines[-1] == TESTS_DONE


def load_mbpp(path: str | Path, split: str = "test") -> list[dict]:
    """MBPP rows of ``split`` (by task id, see :data:`MBPP_SPLITS`; "all" for every row) from a jsonl."""
    if split != "all" and split not in MBPP_SPLITS:
        raise ValueError(f"unknown MBPP split {split!r}: use one of {', '.join(MBPP_SPLITS)}, all")
    rows = _read_jsonl(path, ("task_id", "text", "code", "test_list"))
    low, high = MBPP_SPLITS.get(split, (float("-inf"), float("inf")))
    return [row for row in rows if low <= row["task_id"] <= high]


def load_humaneval(path: str | Path) -> list[dict]:
    """HumanEval rows from a jsonl (HumanEval.jsonl as OpenAI ships it, uncompressed)."""
    return _read_jsonl(path, ("task_id", "prompt", "entry_point", "test"))


def _read_jsonl(path: str | Path, required: tuple[str, ...]) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(
            "no such file: pass the path of a .jsonl file (e.g. ../shared/data/mbpp/mbpp.jsonl)",
            path=str(path),
        )
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"not valid JSON ({e.msg}): write one JSON object per line", path=str(path), line=number
            ) from None
        missing = [name for name in required if name not in row]
        if missing:
            raise DataError(
                f"missing {', '.join(missing)}: each row needs {', '.join(required)}",
                path=str(path),
                line=number,
            )
        rows.append(row)
    return rows
