"""Bad inputs through the real CLI (issue 11): nothing lost, no tracebacks, no silent wrong results.

Every case of the corpus in ``tests/_bad_inputs_cases.py`` runs ``deltatune.cli.main(argv)`` in
process and must end with exit code 2, no traceback (an exception escaping ``main`` counts as one),
exactly one ``error: ...`` message that names the file / line / key / flag the case gives, and every
directory or file the case protects (a previous run, a merge target) byte-for-byte unchanged.

Besides the corpus: ``--resume`` with nothing to resume (exit 0, and says so), resumed runs report
like uninterrupted ones, a retry after a failed first attempt, broken pipes (subprocesses), and SFT
with full fine-tuning end to end (train, generate, eval, chat, merge).

The module builds two tiny random models, one finished classify run, one finished sft run and two
killed classify runs (SIGKILL through the ``DELTATUNE_FAULT_AT_STEP`` hook, in subprocesses) once;
cases copy what they damage.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deltatune.cli import main
from deltatune.models import make_tiny_model_dir
from helpers.bad_inputs import CASES, Ctx, World, cls_argv, sft_argv, write_data, write_jsonl

# "error: ..." from deltatune, or "deltatune [cmd]: error: ..." from argparse
ERROR_LINE = re.compile(r"^(?:deltatune(?: [\w-]+)?: )?error: ", re.M)


# ----------------------------------------------------------------------------- the module's runs


def _positions(model_dir: str) -> int:
    return json.loads((Path(model_dir) / "config.json").read_text())["max_position_embeddings"]


def _cli_quietly(argv: list[str], cwd: Path) -> tuple[int | None, str, BaseException | None]:
    """main(argv) in ``cwd`` with stderr captured (fixtures cannot use capsys)."""
    err = io.StringIO()
    with (
        pytest.MonkeyPatch.context() as mp,
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        mp.chdir(cwd)
        try:
            return main(argv), err.getvalue(), None
        except SystemExit as exc:
            return exc.code, err.getvalue(), None
        except Exception as exc:  # noqa: BLE001 - reported by the tests that need this run
            return None, err.getvalue(), exc


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread) -> World:
    root = tmp_path_factory.mktemp("bad_inputs")
    bert = make_tiny_model_dir("bert", root / "bert", task="classify")
    llama = make_tiny_model_dir("llama", root / "llama", task="causal_lm")
    folders = {name: root / name for name in ("cls", "sft", "killed", "killed_end")}
    for folder in folders.values():
        folder.mkdir()
        write_data(folder)
    # Killed runs: SIGKILL right after checkpoint 2 (mid-run) and 4 (after the last step, before the
    # adapter and summary are written). Subprocesses, started first so they run alongside.
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "deltatune", *cls_argv(bert, "killed-run")],
            cwd=folders[name],
            env={**env, "DELTATUNE_FAULT_AT_STEP": str(step)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, step in (("killed", 2), ("killed_end", 4))
    }
    for name, argv in (("cls", cls_argv(bert, "cls-run")), ("sft", sft_argv(llama, "sft-run"))):
        code, err, exc = _cli_quietly(argv, folders[name])
        assert code == 0 and exc is None, f"module setup: {name} run failed ({exc!r}):\n{err[-3000:]}"
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == -9, (
            f"module setup: {name} run was not killed (rc {proc.returncode}):\n{err[-3000:]}"
        )
        run = folders[name] / "killed-run"
        assert (run / "checkpoints").is_dir() and not (run / "summary.json").exists(), (
            f"{name}: not a killed run"
        )
    return World(
        root=root,
        bert=bert,
        llama=llama,
        bert_positions=_positions(bert),
        llama_positions=_positions(llama),
        folders=folders,
        runs={"cls": "cls-run", "sft": "sft-run", "killed": "killed-run", "killed_end": "killed-run"},
    )


# ----------------------------------------------------------------------------- running and judging


def run_cli(argv: list[str], capsys) -> tuple[int | None, str, str, BaseException | None]:
    """main(argv) in process: (exit code, stdout, stderr, exception that escaped main or None)."""
    capsys.readouterr()
    escaped = None
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) or exc.code is None else 1
        code = 0 if code is None else code
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a traceback for the user
        code, escaped = None, exc
    out, err = capsys.readouterr()
    return code, out, err, escaped


def run_cli_read_only(argv: list[str], paths: list[Path]) -> tuple[int | None, str, str, None]:
    """The CLI in a child process that sees ``paths`` read-only (bind mounts in its own mount
    namespace: how a read-only folder is staged for root, whom chmod does not stop)."""
    import shlex

    mounts = " && ".join(
        f"mount --bind {shlex.quote(str(p))} {shlex.quote(str(p))} && "
        f"mount -o remount,bind,ro {shlex.quote(str(p))}"
        for p in paths
    )
    command = f"{mounts} && exec {shlex.join([sys.executable, '-m', 'deltatune', *argv])}"
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    return done.returncode, done.stdout, done.stderr, None


def snapshot(path: Path) -> dict[str, str] | None:
    """Every file's bytes (hashed) and every directory under ``path``; None when it does not exist."""
    if path.is_symlink() or path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    if not path.exists():
        return None
    out = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        out[rel] = (
            f"link:{os.readlink(p)}"
            if p.is_symlink()
            else "dir"
            if p.is_dir()
            else hashlib.sha256(p.read_bytes()).hexdigest()
        )
    return out


def describe_change(before: dict | None, after: dict | None) -> str:
    if after is None:
        return "deleted"
    if before is None:
        return "created"
    removed = sorted(set(before) - set(after))
    added = sorted(set(after) - set(before))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    parts = [
        f"{label} {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
        for label, names in (("removed", removed), ("added", added), ("changed", changed))
        if names
    ]
    return "; ".join(parts)


def _matches(message: str, expected) -> bool:
    if isinstance(expected, re.Pattern):
        return bool(expected.search(message))
    if isinstance(expected, tuple):
        return any(_matches(message, e) for e in expected)
    return expected.lower() in message.lower()


def _shown(expected) -> str:
    if isinstance(expected, re.Pattern):
        return f"/{expected.pattern}/"
    if isinstance(expected, tuple):
        return " or ".join(repr(e) for e in expected)
    return repr(expected)


def _traceback_problems(code, err: str, escaped) -> list[str]:
    problems = []
    if escaped is not None:
        first = (str(escaped).strip().splitlines() or [""])[0][:160]
        problems.append(f"traceback: uncaught {type(escaped).__name__}: {first}")
    if "Traceback (most recent call last)" in err:
        last = [ln for ln in err.splitlines() if ln.strip()][-1][:160]
        problems.append(f"traceback on stderr: {last}")
    return problems


def judge(spec, code, err: str, escaped, before: dict) -> list[str]:
    problems = _traceback_problems(code, err, escaped)
    if escaped is None and code != 2:
        problems.append(f"exit {code}, want 2")
    starts = [m.start() for m in ERROR_LINE.finditer(err)]
    if len(starts) != 1 and escaped is None:
        problems.append(f"{len(starts)} 'error:' messages, want 1")
    message = err[starts[0] :] if starts else ""
    first_line = message.splitlines()[0][:220] if message else ""
    missing = [_shown(e) for e in spec.expect if not _matches(message, e)]
    if missing and message:
        problems.append(f"message lacks {', '.join(missing)}: «{first_line}»")
    said = [_shown(f) for f in spec.forbid if _matches(message, f)]
    if said:
        problems.append(f"message says {', '.join(said)}: «{first_line}»")
    said = [f for f in spec.forbid_stderr if f in err]
    if said:
        problems.append(f"stderr shows {', '.join(map(repr, said))} (ran before failing)")
    for path, snap in before.items():
        after = snapshot(path)
        if after != snap:
            problems.append(f"{path.name} not unchanged: {describe_change(snap, after)}")
    for path in spec.absent:
        if path.exists():
            problems.append(
                f"{path.relative_to(path.parents[1]).as_posix()} exists (work done before failing)"
            )
    return problems


# ----------------------------------------------------------------------------- the corpus


@pytest.mark.parametrize("build", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(build, world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ctx = Ctx(tmp_path, world)
    try:
        spec = build(ctx)
        if spec.skip:
            print(f"skipped: {spec.skip}")
            pytest.skip(spec.skip)
        before = {p: snapshot(p) for p in spec.protect}
        if ctx.read_only:
            code, _, err, escaped = run_cli_read_only(spec.argv, ctx.read_only)
        else:
            code, _, err, escaped = run_cli(spec.argv, capsys)
        problems = judge(spec, code, err, escaped, before)
        print(
            "exit", code, "|", " | ".join(m.group(0)[:300] for m in re.finditer(r"^.*error: .*$", err, re.M))
        )
    finally:
        for path in ctx.locked:
            path.chmod(0o755)
    if problems:
        pytest.fail(
            "; ".join(problems) + f"\n--- argv: {spec.argv}\n--- stderr:\n{err[-3000:]}", pytrace=False
        )


def test_corpus_ids_are_unique_and_classed():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))
    assert {i.split("-")[0] for i in ids} == {"lose", "traceback", "silent", "message"}


# ----------------------------------------------------------------------------- not errors, but said


NOTHING_TO_RESUME = re.compile(
    r"nothing to resume|no checkpoint|(new|fresh) run|from scratch|starting (fresh|over|anew)", re.I
)


@pytest.mark.parametrize("kind", ["missing-dir", "empty-dir"], ids=lambda k: f"silent-resume-{k}-says-so")
def test_resume_with_nothing_to_resume_says_so(kind, world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ctx = Ctx(tmp_path, world)
    if kind == "empty-dir":
        (tmp_path / "out").mkdir()
    code, _, err, escaped = run_cli(ctx.cls("--resume", out="out"), capsys)
    problems = _traceback_problems(code, err, escaped)
    if code != 0:
        problems.append(f"exit {code}, want 0")
    if not any("resum" in ln.lower() and NOTHING_TO_RESUME.search(ln) for ln in err.splitlines()):
        problems.append("stderr does not say there was nothing to resume")
    if problems:
        pytest.fail("; ".join(problems) + f"\n--- stderr:\n{err[-3000:]}", pytrace=False)


def _loss_steps(run: Path) -> list[int]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [r["step"] for r in rows if "loss" in r]


@pytest.mark.parametrize(
    "killed",
    ["killed", "killed_end"],
    ids=[
        "lose-resumed-after-mid-run-kill-reports-like-uninterrupted",
        "lose-resumed-after-kill-at-last-step-reports-like-uninterrupted",
    ],
)
def test_resumed_run_reports_like_uninterrupted(killed, world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ctx = Ctx(tmp_path, world)
    run = ctx.use(killed)
    code, _, err, escaped = run_cli(ctx.cls("--resume", out=run.name), capsys)
    problems = _traceback_problems(code, err, escaped)
    if code != 0:
        pytest.fail(f"resume: exit {code}, want 0; {problems}\n{err[-3000:]}", pytrace=False)
    ref_run = world.folders["cls"] / "cls-run"
    ref = json.loads((ref_run / "summary.json").read_text())
    got = json.loads((run / "summary.json").read_text())
    for key in ("steps", "train_tokens", "best_step"):
        if got.get(key) != ref.get(key):
            problems.append(f"summary {key}={got.get(key)}, uninterrupted {ref.get(key)}")
    if not got.get("train_tokens_per_s"):
        problems.append(f"summary train_tokens_per_s={got.get('train_tokens_per_s')}")
    if _loss_steps(run) != _loss_steps(ref_run):
        problems.append(
            f"metrics.jsonl loss lines at steps {_loss_steps(run)}, uninterrupted {_loss_steps(ref_run)}"
        )
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.mark.parametrize("name", ["lose-retry-after-a-failed-first-run"])
def test_retry_after_a_failed_run(name, world, tmp_path, monkeypatch, capsys):
    """A first attempt that fails (here: a typo in the data path) must not leave a directory that
    blocks the corrected second attempt."""
    monkeypatch.chdir(tmp_path)
    ctx = Ctx(tmp_path, world)
    code, _, err, escaped = run_cli(ctx.cls("data.train=trian.jsonl", out="out"), capsys)
    assert code == 2 and escaped is None, err
    code, _, err, escaped = run_cli(ctx.cls(out="out"), capsys)
    problems = _traceback_problems(code, err, escaped)
    if code != 0:
        problems.append(f"second attempt: exit {code}, want 0: {err.strip().splitlines()[-1:]}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


# ----------------------------------------------------------------------------- broken pipe (subprocess)


def _pipe_problems(rc: int, err: str) -> list[str]:
    problems = []
    if "Traceback" in err or "Exception ignored" in err or "BrokenPipeError" in err:
        problems.append(f"traceback on stderr: {[ln for ln in err.splitlines() if ln.strip()][-1][:160]}")
    if rc not in (0, 1, 2, 141, -13):  # quiet success, an error exit, or the SIGPIPE convention
        problems.append(f"exit {rc} (want 0, 1, 2 or 141)")
    return problems


@pytest.mark.parametrize("name", ["traceback-predict-json-into-head"])
def test_broken_pipe_into_head_is_quiet(name, world, tmp_path):
    """``deltatune predict RUN --data FILE --json | head -c 10``: the output is far beyond a pipe buffer,
    so deltatune is certainly still writing when head has its 10 bytes and quits."""
    ctx = Ctx(tmp_path, world)
    run = ctx.use("cls")
    write_jsonl(tmp_path / "many.jsonl", [{"text": f"sentence number {i} is fine"} for i in range(1500)])
    script = (
        f"'{sys.executable}' -m deltatune predict {run.name} --data many.jsonl --json 2> err.txt "
        "| head -c 10 > head.txt; echo ${PIPESTATUS[0]} > rc.txt"
    )
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, timeout=300, check=True)
    problems = _pipe_problems(int((tmp_path / "rc.txt").read_text()), (tmp_path / "err.txt").read_text())
    if len((tmp_path / "head.txt").read_bytes()) != 10:
        problems.append("head did not get 10 bytes")
    if problems:
        pytest.fail(
            "; ".join(problems) + f"\n--- stderr:\n{(tmp_path / 'err.txt').read_text()[-3000:]}",
            pytrace=False,
        )


@pytest.mark.parametrize("name", ["traceback-eval-json-into-closed-pipe"])
def test_eval_json_into_a_closed_pipe_is_quiet(name, world, tmp_path):
    """``deltatune eval RUN --json | head -c 10`` fails only sometimes: the report (~600 bytes) goes out
    in two writes, and whether head has quit between them is a race. Here the reader is gone before
    deltatune writes anything (as with `| head -c 10` losing the race, or `| jq` when jq is missing),
    so every run sees the broken pipe."""
    ctx = Ctx(tmp_path, world)
    run = ctx.use("cls")
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "deltatune", "eval", run.name, "--data", "val.jsonl", "--json"],
            cwd=tmp_path,
            env=env,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(write_end)
    problems = _pipe_problems(proc.returncode, proc.stderr)
    if problems:
        pytest.fail("; ".join(problems) + f"\n--- stderr:\n{proc.stderr[-3000:]}", pytrace=False)


# ----------------------------------------------------------------------------- bug: sft + full


@pytest.fixture(scope="module")
def sft_full(world):
    folder = world.root / "sft_full"
    folder.mkdir()
    write_data(folder)
    code, err, exc = _cli_quietly(sft_argv(world.llama, "full-run", "method.name=full"), folder)
    return folder / "full-run", code, err, exc


def _full_run_or_fail(sft_full) -> Path:
    run, code, err, exc = sft_full
    if code != 0 or exc is not None:
        pytest.fail(f"the sft + full run did not train (exit {code}, {exc!r})", pytrace=False)
    return run


@pytest.mark.parametrize("name", ["bug-sft-full-trains"])
def test_sft_full_trains(name, sft_full):
    run, code, err, exc = sft_full
    problems = _traceback_problems(code, err, exc)
    if code != 0:
        problems.append(f"exit {code}, want 0: {err.strip().splitlines()[-1:]}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)
    assert (run / "model").is_dir() and (run / "summary.json").is_file()


@pytest.mark.parametrize(
    "command",
    ["generate", "eval", "chat"],
    ids=["bug-sft-full-generate", "bug-sft-full-eval", "bug-sft-full-chat"],
)
def test_sft_full_run_is_usable(command, sft_full, world, capsys, monkeypatch):
    run = _full_run_or_fail(sft_full)
    argv = {
        "generate": ["generate", str(run), "hi", "--max-new-tokens", "3"],
        "eval": ["eval", str(run), "--data", str(world.folders["sft"] / "sft.jsonl"), "--samples", "1"],
        "chat": ["chat", str(run), "--max-new-tokens", "3"],
    }[command]
    answers = iter(["hi", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    code, out, err, escaped = run_cli(argv, capsys)
    problems = _traceback_problems(code, err, escaped)
    if code != 0:
        problems.append(f"exit {code}, want 0: {err.strip().splitlines()[-1:]}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.mark.parametrize("name", ["bug-sft-full-merge"])
def test_sft_full_merge_works_or_says_why_not(name, sft_full, tmp_path, capsys):
    """A full fine-tune is already a whole model, so merge may either write it
    out (exit 0, a loadable model directory) or refuse with one clear message that says so."""
    run = _full_run_or_fail(sft_full)
    code, _, err, escaped = run_cli(["merge", str(run), "--out", str(tmp_path / "merged")], capsys)
    problems = _traceback_problems(code, err, escaped)
    if code == 0:
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    elif code == 2:
        lines = [m.group(0) for m in re.finditer(r"^error: .*$", err, re.M)]
        if len(lines) != 1 or not re.search(r"already|whole|complete|model/", lines[0]):
            problems.append(f"exit 2 without one message saying the run already is a whole model: {lines}")
    else:
        problems.append(f"exit {code}, want 0 or 2")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)
