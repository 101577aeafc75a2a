"""Evaluate a causal LM on code by running what it writes: MBPP and HumanEval, pass@k, execution rate, BLEU.

Pipeline: benchmark file -> tasks (all, ``tasks`` id ranges, or a seeded sample of ``limit``) -> one
prompt per task in a stated format -> ``samples`` answers per task -> code extracted
(:func:`~deltatune.codeeval.programs.extract_code`) -> one program per answer with the task's
tests appended -> the sandbox, all programs in parallel -> metrics and a report
(:mod:`deltatune.codeeval.report` renders it).

Prompt formats (``prompt_format``; the report repeats the one that ran, with its text):

- MBPP, "instruct" (the only one): the task's text, its three asserts, and "answer with the code in a
  ```python block" as one user message, rendered with the model's template (a chat model's chat
  template); tasks 367 and 927 get the reference code run before their ``test_setup_code``.
- HumanEval, "completion" (default, as in Chen et al. 2021): the function prompt itself, no template;
  the model continues it and the answer is cut at the next top-level statement
  (:data:`~deltatune.codeeval.programs.COMPLETION_STOPS`).
- HumanEval, "instruct" (for chat models): "complete this function" with the prompt in a fenced block;
  the answer's code is run after the prompt (whose imports it may need).

Decoding: one sample per task is greedy (pass@1 as most papers report it); more samples are drawn at
``temperature`` (default 0.8) with top-p 0.95, seeded. An instruct answer stops once its first fenced
block is closed (the code is all that is scored; explanations after it cost generation time only).

Metrics: pass@k by the unbiased estimator (Chen et al. 2021) for each k <= samples; execution rate =
share of samples whose program ran without an error other than a failing assert (no syntax error,
no exception, no timeout or killed limit); BLEU (sacrebleu, corpus level) of each sample's solution
against the reference (MBPP ``code``; HumanEval ``canonical_solution``, compared with the part after
the prompt).
"""

from __future__ import annotations

import dataclasses
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from deltatune.codeeval.programs import (
    COMPLETION_STOPS,
    MBPP_SPLITS,
    extract_code,
    humaneval_program,
    load_humaneval,
    load_mbpp,
    mbpp_preamble,
    mbpp_program,
    run_tests,
)
from deltatune.codeeval.sandbox import SandboxLimits, Verdict, sandbox_capabilities
from deltatune.errors import ConfigError, DataError
from deltatune.metrics.code import pass_at_k

DATA_ROOT = Path("..") / "shared" / "data"  # where the project's data README puts the benchmarks
DEFAULT_TEMPERATURE = 0.8
DEFAULT_K = (1, 5, 10)
MBPP_ASK = (
    "{text}\nYour code should pass these tests:\n\n{tests}\n\n"
    "Write the Python function and answer with the code in a ```python block."
)
HUMANEVAL_ASK = (
    "Complete the following Python function. Answer with the whole function in a "
    "```python block.\n\n```python\n{prompt}```"
)
_CLOSED_FENCE = re.compile(r"```[^\n]*\n.*?\n[ \t]*```", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """What differs between code benchmarks: their file, ids, prompts, programs and references."""

    name: str
    default_file: str
    formats: tuple[str, ...]  # the first is the default
    split: str
    load: Callable[[Path], list[dict]]
    number: Callable[[dict], int]  # the task's id as a number (``tasks`` ranges select on it)
    ask: Callable[[dict, str], str]  # (task, format) -> the prompt text
    program: Callable[[str, dict, str], tuple[str, str]]  # (answer, task, format) -> (code, program)
    solution: Callable[[str, dict], str]  # the generated part of ``code`` compared with ``reference``
    reference: Callable[[dict], str]
    summary: Callable[[dict], str]  # short task description for the report


def _mbpp_program(answer: str, task: dict, prompt_format: str) -> tuple[str, str]:
    code = extract_code(answer, "instruct")
    return code, mbpp_program(code, task, mbpp_preamble(task))


def _humaneval_program(answer: str, task: dict, prompt_format: str) -> tuple[str, str]:
    if prompt_format == "completion":
        code = extract_code(answer, "completion", task["prompt"])
    else:  # the whole function after the prompt (a new def replaces the prompt's), or a body to append
        body = extract_code(answer, "instruct")
        code = task["prompt"] + ("\n\n" + body if re.search(r"^\s*def ", body, re.M) else body)
    return code, humaneval_program("", code, task)


BENCHMARKS = {
    "mbpp": Benchmark(
        name="mbpp",
        default_file="mbpp/mbpp.jsonl",
        formats=("instruct",),
        split="test split, task ids {}-{}".format(*MBPP_SPLITS["test"]),
        load=lambda path: load_mbpp(path, "test"),
        number=lambda t: int(t["task_id"]),
        ask=lambda t, fmt: MBPP_ASK.format(text=t["text"], tests="\n".join(t["test_list"])),
        program=_mbpp_program,
        solution=lambda code, t: code,
        reference=lambda t: t["code"],
        summary=lambda t: t["text"],
    ),
    "humaneval": Benchmark(
        name="humaneval",
        default_file="humaneval/HumanEval.jsonl",
        formats=("completion", "instruct"),
        split="all 164 problems, ids HumanEval/0-163",
        load=load_humaneval,
        number=lambda t: int(str(t["task_id"]).rsplit("/", 1)[-1]),
        ask=lambda t, fmt: t["prompt"] if fmt == "completion" else HUMANEVAL_ASK.format(prompt=t["prompt"]),
        program=_humaneval_program,
        solution=lambda code, t: code[len(t["prompt"]) :] if code.startswith(t["prompt"]) else code,
        reference=lambda t: t["canonical_solution"],
        summary=lambda t: t["prompt"],
    ),
}


@dataclasses.dataclass(frozen=True)
class CodeEvalSettings:
    """One code evaluation. Messages name the CLI flags (``deltatune eval --code``)."""

    benchmark: str = "mbpp"
    prompt_format: str | None = None  # None: the benchmark's default
    samples: int = 1  # answers per task (n of pass@k); 1 = greedy
    temperature: float | None = None  # None: greedy for 1 sample, else DEFAULT_TEMPERATURE
    top_p: float = 0.95
    k: tuple[int, ...] | None = None  # None: those of DEFAULT_K that are <= samples
    limit: int | None = None  # a seeded sample of this many tasks
    tasks: str | None = None  # id ranges, e.g. "11-60,100"
    seed: int = 0  # the task sample and the sampling
    max_new_tokens: int = 512
    batch_size: int = 8  # prompts generated together
    data_path: str | None = None  # None: DATA_ROOT / the benchmark's file
    timeout_s: float = 10.0  # wall clock per sample in the sandbox
    workers: int | None = None  # concurrent samples (None: all cores)
    show: int = 5  # tasks shown side by side with the reference

    def __post_init__(self):
        if self.benchmark not in BENCHMARKS:
            raise ConfigError(
                f"--code {self.benchmark!r}: unknown benchmark; use one of {', '.join(BENCHMARKS)}"
            )
        formats = BENCHMARKS[self.benchmark].formats
        if self.prompt_format is not None and self.prompt_format not in formats:
            raise ConfigError(
                f"--prompt-format {self.prompt_format!r}: {self.benchmark} prompts come as "
                f"{' or '.join(formats)}"
            )
        for name in ("samples", "max_new_tokens", "batch_size", "timeout_s", "limit", "workers"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')}: must be > 0 (got {value!r})")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p: must be in (0, 1] (got {self.top_p!r})")
        if self.temperature is not None and self.temperature < 0:
            raise ConfigError(f"--temperature: must be >= 0 (got {self.temperature!r}); 0 means greedy")
        if self.temperature == 0 and self.samples > 1:
            raise ConfigError(
                f"--temperature 0 is greedy decoding, which gives the same answer {self.samples} "
                "times; use --samples 1, or a temperature > 0 (e.g. 0.8) to sample"
            )
        bad = [k for k in self.pass_ks if not 1 <= k <= self.samples]
        if bad:
            raise ConfigError(
                f"--k {','.join(map(str, bad))}: pass@k needs k between 1 and --samples "
                f"({self.samples}); raise --samples to {max(bad)} or more, or lower --k"
            )

    @property
    def spec(self) -> Benchmark:
        return BENCHMARKS[self.benchmark]

    @property
    def format(self) -> str:
        return self.prompt_format or self.spec.formats[0]

    @property
    def pass_ks(self) -> tuple[int, ...]:
        ks = self.k if self.k is not None else tuple(k for k in DEFAULT_K if k <= self.samples)
        return tuple(sorted(set(ks)))

    @property
    def sampled_temperature(self) -> float | None:
        """The sampling temperature, or None for greedy decoding."""
        if self.temperature is None:
            return None if self.samples == 1 else DEFAULT_TEMPERATURE
        return self.temperature or None

    @property
    def path(self) -> Path:
        return Path(self.data_path) if self.data_path else DATA_ROOT / self.spec.default_file

    def decoding(self) -> str:
        t = self.sampled_temperature
        return (
            "greedy" if t is None else f"sampling, temperature {t:g}, top-p {self.top_p:g}, seed {self.seed}"
        )


@dataclasses.dataclass(frozen=True)
class CodePrompt:
    """One task as the model is asked it."""

    task: dict
    text: str
    format: str

    @property
    def task_id(self):
        return self.task["task_id"]


AnswerFn = Callable[[list[CodePrompt], CodeEvalSettings], list[list[str]]]
"""``(prompts, settings) -> settings.samples answers per prompt``: a model, or a stub in tests."""


def load_tasks(settings: CodeEvalSettings) -> list[dict]:
    """The benchmark's tasks this evaluation covers (ids ascending)."""
    path, spec = settings.path, settings.spec
    if not path.is_file():
        default = "" if settings.data_path else " (the default path is relative to the current directory)"
        raise DataError(
            f"no {spec.name} file here{default}; pass the benchmark's .jsonl with --data "
            "(see ../shared/data/README.md)",
            path=str(path),
        )
    rows = sorted(spec.load(path), key=spec.number)
    if not rows:
        raise DataError(
            f"no {spec.name} task of the {spec.split} in this file; pass the benchmark's .jsonl "
            "with --data (see ../shared/data/README.md)",
            path=str(path),
        )
    if settings.tasks:
        wanted = parse_id_ranges(settings.tasks)
        have = {spec.number(r) for r in rows}
        missing = sorted(wanted - have)
        if missing:
            raise ConfigError(
                f"--tasks {settings.tasks}: no task {', '.join(map(str, missing[:5]))} in "
                f"{spec.name} ({spec.split}); pick ids from {min(have)}-{max(have)}"
            )
        rows = [r for r in rows if spec.number(r) in wanted]
    if settings.limit and settings.limit < len(rows):
        rows = sorted(random.Random(settings.seed).sample(rows, settings.limit), key=spec.number)
    return rows


def parse_id_ranges(text: str) -> set[int]:
    """``"11-15,20"`` -> {11, 12, 13, 14, 15, 20}."""
    ids: set[int] = set()
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        low, _, high = part.partition("-")
        try:
            a, b = int(low), int(high or low)
        except ValueError:
            raise ConfigError(
                f"--tasks {text}: '{part}' is not an id or a range; write e.g. 11-60 or 11-20,35"
            ) from None
        if b < a:
            raise ConfigError(f"--tasks {text}: range '{part}' runs backwards; write it low-high")
        ids.update(range(a, b + 1))
    if not ids:
        raise ConfigError(f"--tasks {text!r}: no ids; write e.g. 11-60 or 11-20,35")
    return ids


def build_prompts(tasks: list[dict], settings: CodeEvalSettings) -> list[CodePrompt]:
    return [CodePrompt(t, settings.spec.ask(t, settings.format), settings.format) for t in tasks]


def fence_closed(text: str) -> bool:
    """True once ``text`` holds a complete fenced block (where an instruct answer's code ends)."""
    return "```" in text and _CLOSED_FENCE.search(text) is not None


def model_answers(model, tokenizer, template) -> AnswerFn:
    """An :data:`AnswerFn` generating with a causal LM. Instruct prompts are rendered with ``template``
    (the run's or the model's), completion prompts as raw text."""

    def answer(prompts: list[CodePrompt], settings: CodeEvalSettings) -> list[list[str]]:
        from deltatune.config import GenerateConfig
        from deltatune.data.masks import prompt_ids
        from deltatune.data.templates import make_template
        from deltatune.inference.generation import generate_texts

        n, temperature = settings.samples, settings.sampled_temperature
        raw = make_template("raw", tokenizer)
        ids = [
            prompt_ids(
                tokenizer,
                raw if p.format == "completion" else template,
                [{"role": "user", "content": p.text}],
            )
            for p in prompts
            for _ in range(n)
        ]
        completion = bool(prompts) and prompts[0].format == "completion"
        gen = GenerateConfig(
            max_new_tokens=settings.max_new_tokens,
            do_sample=temperature is not None,
            temperature=temperature or 1.0,
            top_p=settings.top_p,
            stop=list(COMPLETION_STOPS) if completion else [],
            batch_size=settings.batch_size,
        )
        texts = generate_texts(
            model, tokenizer, ids, gen, seed=settings.seed, stop_when=None if completion else fence_closed
        )
        return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]

    return answer


def run_code_eval(
    answer_fn: AnswerFn, settings: CodeEvalSettings, model_name: str = "", template_name: str = ""
) -> dict:
    """Ask, generate, run and score; the report (see :mod:`deltatune.codeeval.report`)."""
    tasks = load_tasks(settings)
    prompts = build_prompts(tasks, settings)
    start = time.monotonic()
    answers = answer_fn(prompts, settings)
    generation_s = time.monotonic() - start
    if len(answers) != len(prompts) or any(len(a) != settings.samples for a in answers):
        raise ValueError(
            f"the answer function returned {[len(a) for a in answers][:5]}... answers for "
            f"{len(prompts)} prompts; it must return {settings.samples} per prompt"
        )
    built = [
        [settings.spec.program(a, p.task, p.format) for a in task_answers]
        for p, task_answers in zip(prompts, answers)
    ]
    start = time.monotonic()
    flat = run_tests(
        [program for row in built for _, program in row],
        SandboxLimits(timeout_s=settings.timeout_s),
        settings.workers,
    )
    sandbox_s = time.monotonic() - start
    n = settings.samples
    verdicts = [flat[i * n : (i + 1) * n] for i in range(len(prompts))]
    report = {
        "header": _header(settings, len(tasks), model_name, template_name),
        "metrics": _metrics(prompts, built, verdicts, settings),
        "timing": {
            "generation_s": round(generation_s, 2),
            "sandbox_s": round(sandbox_s, 2),
            "sandbox_samples_per_s": round(len(flat) / max(sandbox_s, 1e-9), 2),
        },
    }
    report.update(_details(prompts, answers, built, verdicts, settings))
    return report


def _header(settings: CodeEvalSettings, tasks: int, model_name: str, template_name: str) -> dict:
    spec, fmt = settings.spec, settings.format
    how = f"ids {settings.tasks}" if settings.tasks else "the whole split"
    if settings.limit and settings.limit <= tasks:
        how = f"a seeded sample of {settings.limit} (seed {settings.seed}) from {how}"
    shown = spec.ask({"text": "{text}", "test_list": ["{the 3 asserts}"], "prompt": "{prompt}"}, fmt)
    return {
        "benchmark": spec.name,
        "split": spec.split,
        "data": str(settings.path),
        "tasks": tasks,
        "selection": how,
        "model": model_name,
        "prompt_format": fmt,
        "prompt": shown
        + ("" if fmt == "completion" else f"  [as one user message, {template_name} template]"),
        "template": template_name,
        "decoding": settings.decoding(),
        "samples_per_task": settings.samples,
        "max_new_tokens": settings.max_new_tokens,
        "k": list(settings.pass_ks),
        "sandbox": {"timeout_s": settings.timeout_s, "protections": list(sandbox_capabilities().active())},
    }


def ran_without_error(verdict: Verdict) -> bool:
    """Passed, or stopped only at a failing assert (the code itself ran)."""
    return verdict.passed or (verdict.status == "failed" and verdict.reason.startswith("AssertionError"))


def _metrics(prompts, built, verdicts, settings: CodeEvalSettings) -> dict:
    from deltatune.metrics.text import bleu

    spec = settings.spec
    flat = [v for row in verdicts for v in row]
    out = {
        f"pass@{k}": round(
            sum(pass_at_k(len(row), sum(v.passed for v in row), k) for row in verdicts) / len(verdicts), 6
        )
        for k in settings.pass_ks
    }
    solutions = [spec.solution(code, p.task) for p, row in zip(prompts, built) for code, _ in row]
    references = [spec.reference(p.task) for p, row in zip(prompts, built) for _ in row]
    out.update(
        {
            "execution_rate": round(sum(map(ran_without_error, flat)) / len(flat), 6),
            "bleu": round(bleu(solutions, references), 4),
            "tasks": len(verdicts),
            "samples": len(flat),
            "tasks_solved": sum(any(v.passed for v in row) for row in verdicts),
            "verdicts": dict(Counter(v.status for v in flat)),
        }
    )
    return out


def _details(prompts, answers, built, verdicts, settings: CodeEvalSettings) -> dict:
    """Per-task results, the failing tasks with their error, and a few solutions side by side."""
    spec = settings.spec
    tasks, failing = [], []
    for p, task_answers, row, vs in zip(prompts, answers, built, verdicts):
        samples = [
            {"status": v.status, "reason": v.reason, "code": code, "answer": a}
            for a, (code, _), v in zip(task_answers, row, vs)
        ]
        tasks.append(
            {"task_id": p.task_id, "passed": sum(v.passed for v in vs), "n": len(vs), "samples": samples}
        )
        if not any(v.passed for v in vs):
            failing.append(
                {
                    "task_id": p.task_id,
                    "status": vs[0].status,
                    "error": vs[0].reason or vs[0].status,
                    "statuses": dict(Counter(v.status for v in vs)),
                }
            )
    examples = [
        {
            "task_id": p.task_id,
            "task": spec.summary(p.task),
            "generated": spec.solution(row[0][0], p.task),
            "reference": spec.reference(p.task),
            "status": vs[0].status,
            "error": vs[0].reason,
        }
        for p, row, vs in list(zip(prompts, built, verdicts))[: settings.show]
    ]
    return {"failing": failing, "examples": examples, "tasks": tasks}


def evaluate_model_code(model, tokenizer, template, settings: CodeEvalSettings, model_name: str = "") -> dict:
    """:func:`run_code_eval` with answers generated by ``model`` (see :func:`model_answers`)."""
    return run_code_eval(
        model_answers(model, tokenizer, template), settings, model_name, getattr(template, "name", "")
    )


__all__ = [
    "BENCHMARKS",
    "CodeEvalSettings",
    "CodePrompt",
    "build_prompts",
    "evaluate_model_code",
    "fence_closed",
    "load_tasks",
    "model_answers",
    "parse_id_ranges",
    "ran_without_error",
    "run_code_eval",
]
