"""Command line: ``deltatune train | preview | eval | predict | generate | chat | merge | models | methods |
tasks | demo | compare | bench | check`` (the last three in :mod:`deltatune.cli.measure`).

Every command is a thin shell over a plain Python function. Errors a user can cause print one
line (``error: ...``) and exit with status 2 — no traceback.
"""

from __future__ import annotations

import os
import sys

from deltatune.cli.parser import build_parser, parse
from deltatune.errors import UserError


def _setup_environment() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from deltatune.training.memory import limit_allocator_retention

    limit_allocator_retention()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if not torch.cuda.is_available():
            # torchrun on CPUs: without this Accelerate sees no distributed setup and every
            # process would train alone (gloo DDP needs Accelerate's MULTI_CPU mode).
            os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status: 0 done, 2 a problem with the input (one ``error:`` line),
    1 a deltatune bug (one line; the traceback goes to a file, or to the screen with
    ``DELTATUNE_DEBUG=1``), 130 interrupted."""
    _setup_environment()
    try:
        args = parse(argv)
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `deltatune eval ... --json | head`: the reader left; nothing to report
        _silence_stdout()
        return 0
    except OSError as exc:
        if exc.filename is None:
            return _internal_error(exc)
        print(f"error: {exc.filename}: {exc.strerror}; check the path and its permissions", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last line of defence against a traceback
        return _internal_error(exc)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _internal_error(exc: BaseException) -> int:
    """An unexpected exception: one line for the user, the traceback kept in a file."""
    import tempfile
    import traceback

    if os.environ.get("DELTATUNE_DEBUG"):
        raise exc
    path = os.path.join(tempfile.gettempdir(), f"deltatune-error-{os.getpid()}.txt")
    try:
        with open(path, "w", encoding="utf-8") as fh:
            traceback.print_exception(exc, file=fh)
    except OSError:
        path = "(could not be saved)"
    print(
        f"error: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n"
        f"  this is a deltatune bug: please report it with the traceback in {path} "
        "(DELTATUNE_DEBUG=1 shows it here)",
        file=sys.stderr,
    )
    return 1


__all__ = ["build_parser", "main"]


if __name__ == "__main__":
    raise SystemExit(main())
