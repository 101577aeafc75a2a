"""The sandbox contains hostile programs, judges normal ones, and the code metrics are exact.

Each test runs under a wall-clock alarm (:func:`within`), so a sandbox that failed to stop a program
fails the test instead of hanging the suite. Where this machine does not allow a protection
(``sandbox_capabilities()``), the test asserts what does happen and prints it.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from deltatune.codeeval.programs import (
    TESTS_DONE,
    extract_code,
    humaneval_program,
    load_humaneval,
    load_mbpp,
    mbpp_preamble,
    mbpp_program,
    run_tests,
)
from deltatune.codeeval.sandbox import SandboxLimits, Verdict, run_many, run_program, sandbox_capabilities
from deltatune.errors import ConfigError, DataError
from deltatune.metrics.code import mean_pass_at_k, pass_at_k
from helpers.paths import SHARED_DATA

DATA = SHARED_DATA
QUICK = SandboxLimits(timeout_s=5)


def within(seconds: float):
    """Fail the decorated test with TimeoutError if it runs longer than ``seconds`` (SIGALRM)."""

    def decorate(test):
        @functools.wraps(test)
        def bounded(*args, **kwargs):
            def expired(signum, frame):
                raise TimeoutError(f"{test.__name__} ran longer than {seconds} s")

            previous = signal.signal(signal.SIGALRM, expired)
            signal.setitimer(signal.ITIMER_REAL, seconds)
            try:
                return test(*args, **kwargs)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)

        return bounded

    return decorate


@pytest.fixture(scope="module")
def caps():
    found = sandbox_capabilities()
    print(f"\nsandbox protections here: {', '.join(found.active())}; notes: {found.notes or 'none'}")
    return found


def sandbox_processes() -> list[str]:
    """Command lines of live processes that run a sandbox program (none once a run is over)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "deltatune-sandbox-" in cmdline and "main.py" in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def own_process_count() -> int:
    return sum(1 for pid in filter(str.isdigit, os.listdir("/proc")) if _owner(pid) == os.getuid())


def _owner(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


# --- normal programs ---------------------------------------------------------------------------------


@within(30)
def test_passing_asserts_pass(caps):
    verdict = run_program("def add(a, b):\n    return a + b\n\nassert add(1, 2) == 3\nprint('ok')\n", QUICK)
    assert (verdict.status, verdict.reason, verdict.returncode, verdict.stdout) == ("passed", "", 0, "ok\n")
    assert "rlimits" in verdict.protections


@within(30)
def test_failing_assert_reports_the_assert_line(caps):
    verdict = run_program("def add(a, b):\n    return a - b\n\nassert add(1, 2) == 3\n", QUICK)
    assert verdict.status == "failed" and verdict.returncode == 1
    assert verdict.reason == "AssertionError: assert add(1, 2) == 3"
    with_message = run_program("assert 1 + 1 == 3, 'arithmetic'\n", QUICK)
    assert with_message.reason == (
        "AssertionError: assert 1 + 1 == 3, 'arithmetic' (AssertionError: arithmetic)"
    )


@within(30)
def test_syntax_error_and_exceptions_fail_with_their_type(caps):
    syntax = run_program("def f(:\n    pass\n", QUICK)
    assert syntax.status == "failed" and syntax.reason.startswith("SyntaxError")
    raised = run_program("{}['missing']\n", QUICK)
    assert (raised.status, raised.reason) == ("failed", "KeyError: 'missing'")
    exited = run_program("import sys\nsys.exit(3)\n", QUICK)
    assert (exited.status, exited.returncode, exited.reason) == ("failed", 3, "exit status 3")


@within(60)
def test_run_many_keeps_input_order_and_cleans_up(caps):
    before = set(Path(tempfile.gettempdir()).glob("deltatune-sandbox-*"))
    verdicts = run_many([f"print({i})" for i in range(12)] + ["raise SystemExit(1)"], QUICK, workers=4)
    assert [v.stdout for v in verdicts[:12]] == [f"{i}\n" for i in range(12)]
    assert verdicts[12].status == "failed"
    assert set(Path(tempfile.gettempdir()).glob("deltatune-sandbox-*")) <= before


def test_limits_are_validated():
    with pytest.raises(ConfigError, match="SandboxLimits.timeout_s must be > 0"):
        SandboxLimits(timeout_s=0)


# --- hostile programs --------------------------------------------------------------------------------


@within(30)
def test_infinite_loop_times_out(caps):
    for source in ("while True:\n    pass\n", "import time\nwhile True:\n    time.sleep(1)\n"):
        verdict = run_program(source, SandboxLimits(timeout_s=1))
        assert verdict.status == "timeout" and verdict.returncode is None
        assert verdict.seconds < 3
    assert sandbox_processes() == []


@within(30)
def test_cpu_time_limit_kills(caps):
    verdict = run_program("while True:\n    pass\n", SandboxLimits(timeout_s=10, cpu_s=1))
    assert (verdict.status, verdict.reason) == ("killed", "cpu time")
    assert verdict.seconds < 5


@within(60)
def test_fork_bomb_is_contained_and_leaves_nothing(caps):
    before = own_process_count()
    bombs = (
        "import os\nwhile True:\n    os.fork()\n",
        "import os, time\nwhile True:\n    try:\n        if os.fork() == 0:\n            os.setsid()\n"
        "    except OSError:\n        time.sleep(0.01)\n",
    )  # children leave the process group
    for bomb in bombs:
        verdict = run_program(bomb, SandboxLimits(timeout_s=3, max_processes=32))
        assert verdict.status in ("killed", "failed", "timeout"), verdict
        if caps.process_limit_enforced and verdict.status == "killed":
            assert verdict.reason == "processes"
        deadline = time.monotonic() + 5
        while sandbox_processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sandbox_processes() == []
    assert own_process_count() <= before + 10  # other work on the machine may start a few


@within(30)
def test_memory_bomb_is_killed(caps):
    bombs = (
        "x = bytearray(8 * 1024 ** 3)\n",
        "blocks = []\nwhile True:\n    blocks.append(bytearray(10 ** 7))\n",
    )
    for bomb in bombs:
        verdict = run_program(bomb, SandboxLimits(timeout_s=10, memory_mb=512))
        assert (verdict.status, verdict.reason) == ("killed", "memory"), verdict


@within(30)
def test_file_size_and_open_files_limits(caps):
    big = run_program("open('big', 'wb').write(b'x' * (3 * 2 ** 20))\n", SandboxLimits(max_file_mb=2))
    assert (big.status, big.reason) == ("killed", "file size")
    files = run_program(
        "handles = [open('/dev/null') for _ in range(100)]\n", SandboxLimits(max_open_files=32)
    )
    assert (files.status, files.reason) == ("killed", "open files")


@within(30)
def test_huge_output_is_capped_and_ends(caps):
    verdict = run_program(
        "while True:\n    print('x' * 1000)\n", SandboxLimits(timeout_s=20, max_output_kb=64)
    )
    assert (verdict.status, verdict.reason) == ("killed", "output")
    assert len(verdict.stdout) <= 64 * 1024 and verdict.seconds < 5


@within(30)
def test_writing_outside_the_temp_dir_is_blocked(caps, tmp_path):
    shared = Path(tempfile.mkdtemp(prefix="deltatune-test-shared-"))
    shared.chmod(0o777)  # writable by anyone: only a read-only mount stops the write
    private = tmp_path / "pwned"
    try:
        source = "".join(
            f"try:\n    open({str(p)!r}, 'w').write('x')\nexcept OSError as e:\n    print(e)\n"
            for p in (private, shared / "pwned")
        )
        verdict = run_program(source + "open('inside', 'w').write('fine')\n", QUICK)
        assert verdict.status == "passed", verdict  # its own work dir stays writable
        assert private.exists() is not (caps.filesystem_read_only or caps.separate_uid)
        assert (shared / "pwned").exists() is not caps.filesystem_read_only
        if not caps.filesystem_read_only:
            print("no mount namespace here: a sample can write where its uid may")
    finally:
        for leftover in shared.iterdir():
            leftover.unlink()
        shared.rmdir()


@within(30)
def test_deleting_files_in_the_working_directory_fails(caps, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("keep.txt", "data.csv"):
        (tmp_path / name).write_text("precious")
    source = (
        f"import os, shutil\nfor name in os.listdir({str(tmp_path)!r}):\n"
        f"    os.remove(os.path.join({str(tmp_path)!r}, name))\n"
    )
    verdict = run_program(source, QUICK)
    protected = caps.filesystem_read_only or caps.separate_uid
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if not protected else ["data.csv", "keep.txt"])
    assert verdict.status == ("failed" if protected else "passed")
    clear_own = run_program("import os\nfor name in os.listdir('.'):\n    os.remove(name)\n", QUICK)
    assert clear_own.status == "passed" and (tmp_path / "keep.txt").exists() is protected


@within(30)
def test_parent_environment_is_not_visible(caps, monkeypatch):
    secret = "sandbox-secret-4f1c9e"
    monkeypatch.setenv("DELTATUNE_TEST_SECRET", secret)
    monkeypatch.setenv("PYTHONPATH", "/should/not/matter")
    source = (
        f"import os, sys\nprint(dict(os.environ))\nprint(sys.path)\n"
        f"for pid in ({os.getpid()}, os.getppid(), 1):\n    try:\n"
        f"        print(open(f'/proc/{{pid}}/environ', 'rb').read())\n"
        f"    except OSError as e:\n        print('blocked', e)\n"
    )
    verdict = run_program(source, QUICK)
    assert verdict.status == "passed", verdict
    environment = eval(verdict.stdout.splitlines()[0])  # the dict the program printed
    assert sorted(environment) == ["HOME", "LANG", "PATH", "TMPDIR"]
    assert "/should/not/matter" not in verdict.stdout.splitlines()[1]
    if caps.pid_isolated or caps.separate_uid:
        assert secret not in verdict.stdout
    else:
        print(f"/proc/<host pid>/environ readable here: secret seen = {secret in verdict.stdout}")


@within(30)
def test_socket_to_a_local_listener(caps):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        source = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
        verdict = run_program(source, QUICK)
        try:
            listener.accept()[0].close()
            connected = True
        except socket.timeout:
            connected = False
    if caps.network_isolated:
        assert verdict.status == "failed" and not connected, verdict
        assert "Network is unreachable" in verdict.reason
    else:
        print(f"no network namespace here: the sample connected = {connected}")
        assert connected and verdict.status == "passed"


@within(60)
def test_killing_the_parent_leaves_the_host_alive(caps):
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )  # a host process the attacks must not reach
    attacks = [
        "import os\nos.kill(os.getppid(), 9)\n",
        "import os\nos.killpg(os.getpgid(os.getppid()), 9)\n",
        "import os\nos.killpg(0, 9)\n",
    ]
    if caps.pid_isolated or caps.separate_uid:  # else same-uid host processes are in reach: don't aim at them
        attacks += [
            f"import os\nos.kill({os.getpid()}, 9)\n",
            f"import os\nos.kill({bystander.pid}, 9)\n",
            "import os\nos.kill(-1, 9)\n",
        ]
    try:
        verdicts = [run_program(attack, QUICK) for attack in attacks]
        assert bystander.poll() is None  # and this test process is alive, since it got here
        assert all(v.status in ("failed", "killed", "passed") for v in verdicts), verdicts
        assert run_program("print('still working')", QUICK).stdout == "still working\n"
    finally:
        bystander.kill()
        bystander.wait()


# --- code metrics ------------------------------------------------------------------------------------


def test_pass_at_k_hand_computed():
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))  # 1 - 21/252
    assert pass_at_k(4, 2, 3) == 1.0  # any 3 of 4 hold a passing sample
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(3, 1, 4)


def test_pass_at_k_equals_enumeration_of_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                assert pass_at_k(n, c, k) == pytest.approx(sum(map(any, subsets)) / len(subsets))


def test_mean_pass_at_k_takes_bools_and_verdicts():
    passed = Verdict("passed", "", 0, "", "", 0.0)
    failed = Verdict("failed", "x", 1, "", "", 0.0)
    assert mean_pass_at_k([[True, False], [False, False]], 1) == pytest.approx(0.25)
    assert mean_pass_at_k({"a": [passed, failed], "b": [passed, passed]}, 1) == pytest.approx(0.75)


def test_extract_code():
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone.") == "def f():\n    return 1\n"
    assert extract_code("```\nx = 1\n```\n```python\ny = 2\n```") == "y = 2\n"  # python block first
    assert extract_code("```py\nx = 1\n```") == "x = 1\n"
    # an answer that continues the prompt's ```python block and closes it: the code before the fence
    assert extract_code("def f():\n    return 1\n```") == "def f():\n    return 1\n"
    assert extract_code("def f():\n    return 1\n```\n") == "def f():\n    return 1\n"
    assert extract_code("Sure, here it is:\n```\nx = 1\n```") == "x = 1\n"  # prose first: an opening fence
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("def g():\n    pass") == "def g():\n    pass\n"  # no fence: the raw answer
    assert extract_code("```python\ndef cut_off(") == "def cut_off(\n"  # unclosed fence
    prompt = 'def inc(x):\n    """Add one."""\n'
    completion = "    return x + 1\n\ndef unrelated():\n    pass\n"
    assert extract_code(completion, "completion", prompt) == prompt + "    return x + 1\n"
    fenced = "```python\ndef inc(x):\n    return x + 1\n```"
    assert extract_code(fenced, "completion", prompt) == prompt + "\n\ndef inc(x):\n    return x + 1\n"
    with pytest.raises(ValueError, match="instruct, completion"):
        extract_code("x", "chat")


@within(60)
def test_programs_that_exit_before_their_tests_do_not_pass(caps):
    task = {"task_id": 1, "test_setup_code": "", "test_list": ["assert f() == 2"]}
    verdicts = run_tests(
        [
            mbpp_program("def f():\n    return 2", task),
            mbpp_program("import sys\nsys.exit(0)\ndef f():\n    return 2", task),
            mbpp_program("def f():\n    return 3", task),
        ],
        QUICK,
    )
    assert [v.status for v in verdicts] == ["passed", "failed", "failed"]
    assert "exited before its tests finished" in verdicts[1].reason
    assert verdicts[2].reason == "AssertionError: assert f() == 2" and verdicts[0].stdout == TESTS_DONE + "\n"


def test_loaders_name_the_file_and_line(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_mbpp(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": 11, "text": "t", "code": "c", "test_list": []}\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: not valid JSON"):
        load_mbpp(bad)


@within(240)
def test_every_reference_solution_passes_in_the_sandbox(caps):
    if not (DATA / "mbpp" / "mbpp.jsonl").is_file():
        pytest.skip(f"no MBPP/HumanEval data at {DATA.resolve()}")
    mbpp = load_mbpp(DATA / "mbpp" / "mbpp.jsonl", "test")
    humaneval = load_humaneval(DATA / "humaneval" / "HumanEval.jsonl")
    assert [len(mbpp), len(humaneval)] == [500, 164]
    assert {t["task_id"] for t in mbpp} == set(range(11, 511))
    programs = [mbpp_program(t["code"], t, mbpp_preamble(t)) for t in mbpp] + [
        humaneval_program(t["prompt"], t["canonical_solution"], t) for t in humaneval
    ]
    start = time.monotonic()
    verdicts = run_tests(programs)
    seconds = time.monotonic() - start
    print(
        f"\n{len(programs)} reference solutions through the sandbox in {seconds:.1f} s "
        f"on {os.cpu_count()} cores ({len(programs) / seconds:.1f} samples/s)"
    )
    names = [f"MBPP/{t['task_id']}" for t in mbpp] + [t["task_id"] for t in humaneval]
    failing = {name: (v.status, v.reason) for name, v in zip(names, verdicts) if not v.passed}
    assert failing == {}
    assert mean_pass_at_k([[v] for v in verdicts], 1) == 1.0


@within(60)
def test_without_namespaces_runs_still_end_and_leave_nothing(caps):
    """The fallback for machines that forbid namespaces (e.g. containers): rlimits, session kill and
    the launcher's subreaper sweep still end everything a program starts, even a ``setsid`` escapee."""
    from deltatune.codeeval import sandbox

    bare = sandbox.SandboxCapabilities(namespaces=(), separate_uid=False)
    assert sandbox._run("print('hi')", QUICK, bare).stdout == "hi\n"
    assert sandbox._run("while True:\n    pass\n", SandboxLimits(timeout_s=1), bare).status == "timeout"
    escapee = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        time.sleep(30)\n    os._exit(0)\ntime.sleep(0.2)\nprint('parent done')\n"
    )
    verdict = sandbox._run(escapee, QUICK, bare)
    assert (verdict.status, verdict.stdout) == ("passed", "parent done\n") and verdict.seconds < 3
    deadline = time.monotonic() + 5
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sandbox_processes() == []
