"""Run untrusted Python (generated code) in a sandbox: one fresh process per sample, judged by its exit.

Layers, each used where the OS allows it (:func:`sandbox_capabilities` says which; probed once):

- namespaces (``unshare(2)``; for non-root inside a new user namespace): network (a loopback that is
  down: no connection leaves, not even to the host's 127.0.0.1); PID (the sample sees only its own
  processes, and when its first one ends the kernel kills the rest: fork bombs, ``setsid`` escapees);
  mount (all mounts read-only, the program too; its work dir a private tmpfs; a fresh /proc); IPC; UTS.
- as root, an unprivileged uid per concurrent sample (``_UID_BASE + slot``): file permissions apply,
  RLIMIT_NPROC is enforced (the kernel exempts uid 0), no host process can be signalled. Parents it
  could not traverse to the interpreter (``/root`` of a pyenv Python) are covered by an empty tmpfs
  with only that path bound back, which also hides everything else in them.
- always: ``python -I`` in a fresh temp dir, removed afterwards; only PATH, LANG, HOME, TMPDIR set;
  rlimits on CPU, address space, processes, file size, open files, core dumps (0); PR_SET_NO_NEW_PRIVS;
  its own session, SIGKILLed as a group at the wall-clock timeout; stdout/stderr read as they come,
  and past ``max_output_kb`` the sample is killed.

Without namespaces (a container forbidding ``unshare``) a sample can open sockets, write where its uid
may, and a ``setsid`` child leaves the process group (as a separate uid it is still killed). Without a
separate uid or user namespace RLIMIT_NPROC stays as inherited (it would count all the user's
processes; root is exempt). No seccomp or cgroups: a sample's memory is bounded per process only.

How: the host runs this file as the launcher L (``python -I -S sandbox.py --launch CONFIG``). L
unshares and forks C (pid 1 of the new PID namespace), which mounts, forks P, reaps and reports P's fate
on a pipe; P sets the limits, drops privileges and execs ``python -I main.py``. The launcher part comes
first and imports little, so it starts fast.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import resource
import signal
import sys

_NAMESPACES = {
    "user": 0x10000000,
    "mount": 0x00020000,
    "pid": 0x20000000,
    "net": 0x40000000,
    "ipc": 0x08000000,
    "uts": 0x04000000,
}
_MS = {
    "rdonly": 1,
    "nosuid": 2,
    "nodev": 4,
    "noexec": 8,
    "remount": 32,
    "noatime": 1024,
    "nodiratime": 2048,
    "bind": 4096,
    "rec": 16384,
    "private": 1 << 18,
    "relatime": 1 << 21,
    "strictatime": 1 << 24,
}
_PR_SET_PDEATHSIG, _PR_CAPBSET_DROP, _PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 1, 24, 36, 38
_ATIME_OPTIONS = ("noatime", "nodiratime", "relatime")
_MOUNTINFO_ESCAPES = ((b"\\040", b" "), (b"\\011", b"\t"), (b"\\012", b"\n"), (b"\\134", b"\\"))


# --- launcher: runs in the sandbox's processes ------------------------------------------------------


def _sys(name: str, *args) -> None:
    """Call libc ``name`` (unshare, mount, prctl); OSError naming the call when it returns non-zero."""
    call = getattr(ctypes.CDLL(None, use_errno=True), name)
    if call(*(os.fsencode(a) if isinstance(a, str) else a for a in args)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}{tuple(args[:2])}: {os.strerror(err)}")


def _unshare(flags: int) -> None:
    """Enter new namespaces; in a new user namespace map our own uid/gid to themselves."""
    uid, gid = os.getuid(), os.getgid()
    _sys("unshare", flags)
    if flags & _NAMESPACES["user"]:
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", f"{uid} {uid} 1"),
            ("gid_map", f"{gid} {gid} 1"),
        ):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)


def _read_only_everything(keep: str) -> None:
    """Remount every mount read-only and nosuid, except ``keep`` (the work dir); other flags stay as
    they are (a user namespace may not change locked ones, and ``nodev`` would break /dev/null)."""
    with open("/proc/self/mountinfo", "rb") as f:
        table = [line.split()[4:6] for line in f]
    for point, options in table:
        for escaped, char in _MOUNTINFO_ESCAPES:
            point = point.replace(escaped, char)
        point, opts = os.fsdecode(point), options.decode().split(",")
        if point == keep or point.startswith(keep + "/"):
            continue
        flags = _MS["remount"] | _MS["bind"] | _MS["rdonly"] | _MS["nosuid"]
        flags |= sum(_MS[o] for o in opts if o in ("nodev", "noexec") + _ATIME_OPTIONS)
        flags |= 0 if any(o in _ATIME_OPTIONS for o in opts) else _MS["strictatime"]
        try:
            _sys("mount", None, point, None, flags, None)
        except OSError:
            pass  # e.g. a mount hidden under a tmpfs we put on top; the probe checks /tmp is read-only


def _expose(paths: list[str]) -> None:
    """Make directories ``paths`` reachable for an unprivileged uid (it must traverse every parent): the
    shallowest parent others cannot traverse (``/root``, mode 700) is covered by an empty tmpfs into
    which only the entries leading to ``paths`` are bound back; repeat until all are reachable."""
    parents = {os.sep.join(p.split(os.sep)[:i]) for p in paths for i in range(2, p.count(os.sep) + 1)}
    while blocked := sorted((d for d in parents if not os.stat(d).st_mode & 0o001), key=len):
        top = blocked[0]
        entries = {
            os.path.join(top, os.path.relpath(p, top).split(os.sep)[0])
            for p in paths
            if p.startswith(top + os.sep)
        }
        fds = {entry: os.open(entry, os.O_PATH) for entry in entries}  # open before the tmpfs hides them
        _sys("mount", "tmpfs", top, "tmpfs", _MS["nosuid"] | _MS["nodev"], "mode=0755,size=64k")
        for entry, fd in fds.items():
            os.mkdir(entry)  # ``paths`` are directories, so each entry on the way is one
            _sys("mount", f"/proc/self/fd/{fd}", entry, None, _MS["bind"] | _MS["rec"], None)
            os.close(fd)


def _setup_filesystem(cfg: dict) -> None:
    """In the new mount namespace: private mounts, the work dir a tmpfs, the rest (program too) read-only."""
    _sys("mount", None, "/", None, _MS["rec"] | _MS["private"], None)  # nothing leaks to the host
    if cfg["uid"] >= 0:
        _expose(cfg["expose"])
    owner = f",uid={cfg['uid']},gid={cfg['uid']}" if cfg["uid"] >= 0 else ""
    _sys(
        "mount",
        "tmpfs",
        cfg["workdir"],
        "tmpfs",
        _MS["nosuid"] | _MS["nodev"],
        f"size={cfg['work_mb']}m,mode=0700{owner}",
    )
    _read_only_everything(cfg["workdir"])
    if cfg["pidns"]:
        try:
            _sys("mount", "proc", "/proc", "proc", _MS["nosuid"] | _MS["nodev"] | _MS["noexec"], None)
        except OSError:
            pass  # e.g. a container masking parts of /proc; the probe measures what is visible


def _fail(fd: int, message: str) -> None:
    os.write(fd, f"error {message}\n".encode())
    os._exit(125)


def _exec_program(cfg: dict) -> None:
    """P: limits, no new privileges, the sandbox uid, then exec the program (never returns)."""
    try:
        for name, soft, hard in cfg["rlimits"]:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        _sys("prctl", _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if cfg["uid"] < 0 and os.geteuid() == 0:  # root keeping uid 0: no capability survives the exec
            for cap in range(int(open("/proc/sys/kernel/cap_last_cap").read()) + 1):
                _sys("prctl", _PR_CAPBSET_DROP, cap, 0, 0, 0)
        if cfg["uid"] >= 0:
            os.setgroups([])
            os.setresgid(cfg["uid"], cfg["uid"], cfg["uid"])
            os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
        os.chdir(cfg["workdir"])
        os.execv(cfg["python"], [cfg["python"], "-I", cfg["program"]])
    except OSError as e:
        _fail(cfg["report_fd"], f"starting the program: {e}")


def _init(cfg: dict) -> None:
    """C: set up the mounts, run P, reap every orphan until P ends, report P's fate (never returns)."""
    try:
        _sys("prctl", _PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        _sys("prctl", _PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        if cfg["flags"] & _NAMESPACES["mount"]:
            _setup_filesystem(cfg)
    except OSError as e:
        _fail(cfg["report_fd"], f"setting up the sandbox: {e}")
    if (program := os.fork()) == 0:
        _exec_program(cfg)
    while (waited := os.wait4(-1, 0))[0] != program:
        pass  # an orphan of P's: reaped, nothing else to do
    _, status, usage = waited
    fate = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
    os.write(cfg["report_fd"], f"{fate} {usage.ru_utime + usage.ru_stime:.3f}\n".encode())
    children = f"/proc/self/task/{os.getpid()}/children"
    while not cfg["pidns"] and os.path.exists(children):  # else the kernel ends them with us
        with open(children) as f:  # what P left running: as subreaper we inherit every orphan
            for kid in f.read().split():
                os.kill(int(kid), signal.SIGKILL)
        try:
            os.wait()
        except ChildProcessError:
            break
    os._exit(0)


def _launch(cfg: dict) -> None:
    """L: unshare, fork C, wait for it (never returns). P's fate travels on the report pipe."""
    os.set_inheritable(cfg["report_fd"], False)  # the program itself never holds the pipe
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        _unshare(cfg["flags"])  # unshare(0) does nothing
    except OSError as e:
        _fail(cfg["report_fd"], f"creating namespaces: {e}")
    if (child := os.fork()) == 0:
        _init(cfg)
    os.waitpid(child, 0)
    os._exit(0)


def _probe_namespaces() -> list[str]:
    """Names of the namespaces this process may create, each tried alone in a forked child."""
    user = 0 if os.geteuid() == 0 else _NAMESPACES["user"]
    allowed = []
    for name, flag in _NAMESPACES.items():
        if (child := os.fork()) == 0:
            try:
                _unshare(flag | user)
            except OSError:
                os._exit(1)
            os._exit(0)
        allowed += [name] if os.waitpid(child, 0)[1] == 0 else []
    return allowed


if __name__ == "__main__":
    if sys.argv[1] == "--probe":
        print(" ".join(_probe_namespaces()))
    else:
        _launch(marshal.loads(bytes.fromhex(sys.argv[2])))
    sys.exit(0)


# --- host side: imported only by the parent (kept below so the launcher starts fast) -----------------

import contextlib  # noqa: E401, E402
import dataclasses
import json
import math
import selectors
import shutil  # noqa: E401, E402
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from deltatune.errors import ConfigError, UserError  # noqa: E402

_UID_BASE = 1_990_000_000  # sample uids: far above ordinary users and the usual subuid ranges
_LAUNCHER, _PYTHON = os.path.abspath(__file__), sys.executable
_LOCK = threading.RLock()  # re-entered: the probe runs samples while holding it
_STATE: dict = {"caps": None, "slots": set()}


class SandboxError(UserError):
    """The sandbox itself could not start a program (not the program's fault)."""


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Per-sample limits. ``cpu_s=None`` means ``timeout_s + 1``, so the wall clock usually decides."""

    timeout_s: float = 10.0
    cpu_s: float | None = None
    memory_mb: int = 1024  # address space (RLIMIT_AS) of each process
    max_processes: int = 32  # processes + threads of the sample (RLIMIT_NPROC)
    max_file_mb: int = 64  # largest file (RLIMIT_FSIZE); a mount namespace's work dir holds twice that
    max_open_files: int = 128
    max_output_kb: int = 256  # per stream; more and the sample is killed

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if (value := getattr(self, field.name)) is not None and not value > 0:
                raise ConfigError(
                    f"SandboxLimits.{field.name} must be > 0, got {value!r}: pass a "
                    f"positive number (default {field.default})"
                )

    @property
    def cpu_limit(self) -> int:
        return math.ceil(self.cpu_s if self.cpu_s is not None else self.timeout_s + 1)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """How one sample ended. ``status``: "passed" (exit 0), "failed" (``reason``: the failing assert,
    or the exception's last line), "timeout" (wall clock) or "killed" (``reason`` names the limit: memory,
    cpu time, file size, disk space, open files, processes, output, signal N). ``returncode``: the
    program's exit status, -N for signal N, None when it did not end by itself."""

    status: str
    reason: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    protections: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclasses.dataclass(frozen=True)
class SandboxCapabilities:
    """Which protections samples get on this machine; the last four are measured inside a probe sample."""

    namespaces: tuple[str, ...]  # the namespaces each sample gets
    separate_uid: bool  # each concurrent sample runs as its own unprivileged uid
    network_isolated: bool = False  # only a loopback interface is visible
    filesystem_read_only: bool = False  # /tmp (outside the work dir) cannot be written
    pid_isolated: bool = False  # no host process is visible in /proc
    process_limit_enforced: bool = False  # RLIMIT_NPROC counts only the sample's own processes
    notes: tuple[str, ...] = ()  # why a protection is missing

    def active(self) -> tuple[str, ...]:
        """Short names of the active protections (also in every :class:`Verdict`)."""
        named = {
            "network namespace": self.network_isolated,
            "pid namespace": self.pid_isolated,
            "read-only filesystem": self.filesystem_read_only,
            "separate uid": self.separate_uid,
            "process limit": self.process_limit_enforced,
        }
        return tuple(name for name, on in named.items() if on) + (
            "rlimits",
            "no new privileges",
            "scrubbed environment",
            "python -I",
            "process group kill",
        )


_FACTS_PROGRAM = """import json, os, socket  # access() is also False on a read-only mount
print(json.dumps({"interfaces": [n for _, n in socket.if_nameindex()], "visible_pids": sum(
    d.isdigit() for d in os.listdir("/proc")), "tmp_writable": os.access("/tmp", os.W_OK)}))"""


def sandbox_capabilities() -> SandboxCapabilities:
    """What the sandbox enforces on this machine; probed once (a few sample runs), then cached."""
    with _LOCK:
        if _STATE["caps"] is None:
            _STATE["caps"] = _detect_capabilities()
        return _STATE["caps"]


def _detect_capabilities() -> SandboxCapabilities:
    """Try the strongest setup first and keep the first that runs the probe program; measure it."""
    root = os.geteuid() == 0
    out = subprocess.run(
        [_PYTHON, "-I", "-S", _LAUNCHER, "--probe"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    allowed = set(out.stdout.split())
    names = tuple(n for n in ("mount", "pid", "net", "ipc", "uts") if n in allowed)
    notes = [f"namespaces refused: {' '.join(sorted(set(_NAMESPACES) - allowed))}"] if len(names) < 5 else []
    if not root:
        names = ("user",) + names if names and "user" in allowed else ()
    for plan in dict.fromkeys([(names, root), (names, False), ((), root), ((), False)]):
        trial = SandboxCapabilities(*plan, process_limit_enforced=plan[1] or "user" in plan[0])
        try:
            verdict = _run(_FACTS_PROGRAM, SandboxLimits(timeout_s=20), trial)
        except SandboxError as e:
            verdict = Verdict("failed", str(e), None, "", "", 0.0)
        if verdict.passed:
            facts = json.loads(verdict.stdout.splitlines()[-1])
            if not trial.process_limit_enforced:
                notes.append("no separate uid or user namespace: RLIMIT_NPROC left as inherited")
            return dataclasses.replace(
                trial,
                network_isolated=facts["interfaces"] in ([], ["lo"]),
                notes=tuple(notes),
                filesystem_read_only=not facts["tmp_writable"],
                pid_isolated=facts["visible_pids"] <= 3,
            )
        notes.append(f"namespaces={plan[0]} separate_uid={plan[1]} failed: {verdict.reason}")
    raise SandboxError(
        "the sandbox cannot start Python here: "
        + "; ".join(notes)
        + ". Check that this Python can start as a child process."
    )


def run_program(source: str, limits: SandboxLimits | None = None) -> Verdict:
    """Run one Python program in the sandbox and judge how it ended (see :class:`Verdict`)."""
    return _run(source, limits or SandboxLimits(), sandbox_capabilities())


def run_many(sources, limits: SandboxLimits | None = None, workers: int | None = None) -> list[Verdict]:
    """:func:`run_program` for each source, ``workers`` (default: all cores) at a time, in input order."""
    sources, limits = list(sources), limits or SandboxLimits()
    caps = sandbox_capabilities()  # probe once, before the threads start
    workers = max(1, min(workers or os.cpu_count() or 1, len(sources) or 1))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda source: _run(source, limits, caps), sources))


def _config(limits: SandboxLimits, caps: SandboxCapabilities, workdir: str, uid: int) -> dict:
    """What the launcher needs (marshalled onto its command line)."""
    mb, cpu = 1024 * 1024, limits.cpu_limit
    rlimits = [
        ("RLIMIT_CORE", 0, 0),
        ("RLIMIT_CPU", cpu, cpu + 1),  # SIGXCPU first, SIGKILL a second later
        ("RLIMIT_AS", limits.memory_mb * mb, limits.memory_mb * mb),
        ("RLIMIT_FSIZE", limits.max_file_mb * mb, limits.max_file_mb * mb),
        ("RLIMIT_NOFILE", limits.max_open_files, limits.max_open_files),
    ]
    if caps.process_limit_enforced:
        rlimits.append(("RLIMIT_NPROC", limits.max_processes, limits.max_processes))
    interpreter = {os.path.realpath(d) for d in (sys.prefix, sys.base_prefix, os.path.dirname(_PYTHON))}
    return {
        "flags": sum(_NAMESPACES[n] for n in caps.namespaces),
        "pidns": "pid" in caps.namespaces,
        "uid": uid,
        "workdir": workdir,
        "program": os.path.join(os.path.dirname(workdir), "main.py"),
        "python": _PYTHON,
        "rlimits": rlimits,
        "work_mb": 2 * limits.max_file_mb,
        "expose": sorted(interpreter) + [workdir],
    }


def _run(source: str, limits: SandboxLimits, caps: SandboxCapabilities) -> Verdict:
    """One sample: temp dir (main.py + work dir w/), launcher, output under the deadline, verdict."""
    tmp = os.path.realpath(tempfile.mkdtemp(prefix="deltatune-sandbox-"))  # as mountinfo shows it
    workdir, slot = os.path.join(tmp, "w"), None
    try:
        os.mkdir(workdir)
        if caps.separate_uid:
            with _LOCK:  # the lowest uid slot no running sample holds
                slot = next(i for i in range(len(_STATE["slots"]) + 1) if i not in _STATE["slots"])
                _STATE["slots"].add(slot)
            os.chmod(tmp, 0o711)  # the uid may reach main.py and w/, not list or change them
            os.chown(workdir, _UID_BASE + slot, _UID_BASE + slot)
        cfg = _config(limits, caps, workdir, -1 if slot is None else _UID_BASE + slot)
        with open(cfg["program"], "w", encoding="utf-8") as f:
            f.write(source)
        report_r, cfg["report_fd"] = os.pipe()
        start = time.monotonic()
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
        try:
            proc = subprocess.Popen(
                [_PYTHON, "-I", "-S", _LAUNCHER, "--launch", marshal.dumps(cfg).hex()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(cfg["report_fd"],),
                cwd=workdir,
                env=env,
                start_new_session=True,
            )
        except BaseException:
            os.close(report_r)
            raise
        finally:
            os.close(cfg["report_fd"])
        out, err, report, ended = _collect(proc, report_r, limits, start)
        return _judge(out, err, report, ended, proc.returncode, limits, time.monotonic() - start, caps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        with _LOCK:
            _STATE["slots"].discard(slot)


def _read_ready(sel, bufs: dict[str, bytearray], cap: int, timeout: float) -> str | None:
    """Read what the pipes ready within ``timeout`` hold into ``bufs``; "output" when a pipe would pass
    ``cap`` bytes (that chunk is not kept; the other ready pipes are still read), else None. A closed
    pipe is unregistered."""
    ended = None
    for key, _ in sel.select(timeout):
        chunk = os.read(key.fd, 65536)
        if not chunk:
            sel.unregister(key.fd)
        elif len(bufs[key.data]) + len(chunk) > cap:
            ended = "output"
        else:
            bufs[key.data] += chunk
    return ended


def _collect(proc: subprocess.Popen, report_fd: int, limits: SandboxLimits, start: float):
    """(stdout, stderr, report, "done" | "timeout" | "output"): read the pipes till they close, the
    deadline or too much output. The group is SIGKILLed before the launcher is reaped (till then its
    pid, the group id, cannot be reused), which also ends whatever the program left running in it."""
    cap, deadline = limits.max_output_kb * 1024, start + limits.timeout_s
    bufs = {"stdout": bytearray(), "stderr": bytearray(), "report": bytearray()}
    sel = selectors.DefaultSelector()
    for fd, name in (
        (proc.stdout.fileno(), "stdout"),
        (proc.stderr.fileno(), "stderr"),
        (report_fd, "report"),
    ):
        sel.register(fd, selectors.EVENT_READ, name)
    ended, launcher_gone = "done", None
    try:
        while sel.get_map() and ended == "done":
            now = time.monotonic()
            if now >= deadline:
                ended = "timeout"
            elif launcher_gone is not None and now - launcher_gone > 0.5:
                break  # a grace period is over: only processes that left the group hold the pipes
            ended = _read_ready(sel, bufs, cap, min(deadline - now, 0.1)) or ended
            # WNOWAIT: notice the launcher's end without reaping it, so its group id stays reserved
            gone = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if launcher_gone is None and gone:
                launcher_gone = time.monotonic()
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        sel.close()
        while chunk := os.read(report_fd, 65536):  # only L and C held it, and both are dead now
            bufs["report"] += chunk
        for f in (proc.stdout, proc.stderr):
            f.close()
        os.close(report_fd)
    return bytes(bufs["stdout"]), bytes(bufs["stderr"]), bufs["report"].decode(errors="replace"), ended


# Last stderr line of a program that hit a limit -> the limit (Python turns most into exceptions).
_LIMIT_ERRORS = {
    "MemoryError": "memory",
    "[Errno 27]": "file size",
    "[Errno 28]": "disk space",
    "[Errno 24]": "open files",
    "BlockingIOError: [Errno 11]": "processes",
    "can't start new thread": "processes",
}


def _judge(
    out: bytes,
    err: bytes,
    report: str,
    ended: str,
    launcher_rc: int,
    limits: SandboxLimits,
    seconds: float,
    caps: SandboxCapabilities,
) -> Verdict:
    """The verdict from how collection ended, the launcher's report and the program's stderr."""
    lines = [line.split(" ", 1) for line in report.splitlines() if line.strip()]
    errors = [rest for kind, *rest in lines if kind == "error"]
    if errors and ended == "done":
        raise SandboxError(
            f"sandbox setup failed: {errors[0][0]}. sandbox_capabilities().notes says "
            "what this machine allows."
        )
    fate = next(([kind] + rest[0].split() for kind, *rest in lines if kind in ("exit", "signal")), None)
    returncode = None if fate is None else int(fate[1]) * (1 if fate[0] == "exit" else -1)
    stderr = err.decode(errors="replace")
    if ended == "timeout":
        status, reason = "timeout", f"wall-clock limit of {limits.timeout_s:g} s"
    elif ended == "output":
        status, reason = "killed", "output"
    elif fate is None:  # e.g. the program killed its own process group, launcher included
        status, reason = "killed", f"the sandbox's launcher ended without a report (status {launcher_rc})"
    elif returncode < 0:
        status, reason = "killed", _signal_reason(-returncode, float(fate[2]), limits)
    elif returncode == 0:
        status, reason = "passed", ""
    else:
        status, reason = _failure(stderr, returncode)
    return Verdict(status, reason, returncode, out.decode(errors="replace"), stderr, seconds, caps.active())


def _signal_reason(signum: int, cpu_seconds: float, limits: SandboxLimits) -> str:
    if signum == signal.SIGXCPU or (signum == signal.SIGKILL and cpu_seconds >= limits.cpu_limit - 0.05):
        return "cpu time"
    if signum == signal.SIGXFSZ:
        return "file size"
    name = signal.Signals(signum).name if signum in signal.valid_signals() else "?"
    return f"signal {signum} ({name})"


def _failure(stderr: str, returncode: int) -> tuple[str, str]:
    """("failed", the failing assert or the last exception line) or ("killed", the limit it hit)."""
    lines = [line.rstrip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return "failed", f"exit status {returncode}"
    last = lines[-1].strip()
    for marker, limit in _LIMIT_ERRORS.items():
        if marker in last:
            return "killed", limit
    frames = [i for i, line in enumerate(lines) if line.lstrip().startswith('File "')]
    if last.startswith("AssertionError") and frames and frames[-1] + 1 < len(lines) - 1:
        source = lines[frames[-1] + 1].strip()  # the traceback's last frame shows the assert line
        return "failed", f"AssertionError: {source}" + (f" ({last})" if last != "AssertionError" else "")
    return "failed", last
