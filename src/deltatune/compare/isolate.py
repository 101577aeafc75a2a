"""Run one function in a child process of its own: its peak memory is its own, and a crash (an
out-of-memory kill, a segfault in a native library) ends only that child. Children start from a
fork server that has already imported deltatune and torch, so each one starts in well under a second
instead of re-importing for several seconds."""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import sys
import traceback
from pathlib import Path

from deltatune.errors import UserError

PRELOAD = ["deltatune.compare.warm"]
_context = None


def _get_context():
    global _context
    if _context is None:
        methods = multiprocessing.get_all_start_methods()
        _context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            _context.set_forkserver_preload(PRELOAD)
    return _context


def _child(conn, target: str, args: tuple, log_path: str, threads: int | None) -> None:
    """In the child: output to ``log_path``, the parent's torch thread count, call ``module:function``,
    send back the result."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        module, name = target.split(":")
        result = getattr(importlib.import_module(module), name)(*args)
        conn.send({"ok": True, "result": result})
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        conn.send({"ok": False, "error": str(exc)})
    except BaseException as exc:  # noqa: BLE001 - reported in the parent's table, traceback in the log
        traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        conn.send({"ok": False, "error": f"{type(exc).__name__}: {first} (traceback in {log_path})"})
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        sig = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        hint = (
            ": out of memory, most likely (the kernel's OOM killer sends it)"
            if -code == signal.SIGKILL
            else ""
        )
        return f"killed by {sig}{hint}"
    return f"exit status {code}"


def run_isolated(target: str, args: tuple, log_path: str | Path) -> tuple[bool, object]:
    """``(True, result)`` or ``(False, one-line error)`` of ``module:function(*args)`` run in a child.
    Its output goes to ``log_path``. Ctrl-C stops the child too."""
    import torch

    ctx = _get_context()
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_child, args=(sender, target, args, str(log_path), torch.get_num_threads()), daemon=True
    )
    proc.start()
    sender.close()
    try:
        try:
            message = receiver.recv()
        except EOFError:
            message = None
        proc.join()
    except BaseException:
        proc.terminate()
        proc.join()
        raise
    if message is None:
        return (
            False,
            f"the process running it died ({exit_reason(proc.exitcode)}); its output is in {log_path}",
        )
    return (True, message["result"]) if message["ok"] else (False, message["error"])
