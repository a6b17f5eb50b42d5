"""The `nanoedit` command: one module per command, one way to build an EngineConfig
(`engine.cli._common`).

Errors are one line on stderr (`error: Type: message`) and exit 1; a closed stdout pipe exits
quietly; Ctrl-C and SIGTERM cancel what runs and release what it held.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from engine._exceptions import NanoeditError
from engine.cli import _batch as batch
from engine.cli import _bench as bench
from engine.cli import _edit as edit
from engine.cli import _emulator as emulator
from engine.cli import _mcp as mcp
from engine.cli import _models as models
from engine.cli import _serve as serve
from engine.cli import _sessions as sessions
from engine.cli._common import configure_logging, err

__all__ = ["build_parser", "main"]


def _version() -> str:
    try:
        return version("nanoedit")
    except PackageNotFoundError:  # pragma: no cover - running from a tree that is not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every command (abbreviated options are refused)."""
    parser = argparse.ArgumentParser(
        prog="nanoedit",
        description="Multi-turn image editing with Gemini image models (Nano Banana).",
        epilog="example:\n  nanoedit demo\n  nanoedit edit 'a mug on a table' 'add a sprig'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"nanoedit {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    edit.add_demo_parser(sub)
    edit.add_edit_parser(sub)
    emulator.add_parser(sub)
    bench.add_parser(sub)
    batch.add_parser(sub)
    serve.add_parser(sub)
    sessions.add_parser(sub)
    models.add_parser(sub)
    mcp.add_parser(sub)
    return parser


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    # systemd, containers and `timeout` stop with SIGTERM: treat it like Ctrl-C, so a running
    # turn is cancelled and its lease released instead of blocking the session for lease_ttl.
    def interrupt(signum: int, frame: Any) -> None:
        on_sigint = signal.getsignal(signal.SIGINT)
        if callable(on_sigint) and on_sigint is not signal.default_int_handler:
            on_sigint(signal.SIGINT, frame)  # asyncio.run's: cancels the main task
        else:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `nanoedit` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    configure_logging(getattr(args, "verbose", 0))
    try:
        with _sigterm_as_interrupt():
            code: int = args.run(args)
            sys.stdout.flush()
            return code
    except NanoeditError as exc:
        err(f"error: {type(exc).__name__}: {exc}")
        return 1
    except KeyboardInterrupt:
        err("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (`nanoedit sessions ls | head`): stop quietly, and keep Python
        # from complaining while it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:
        err(f"error: {type(exc).__name__}: {exc}")
        return 1
