"""`nanoedit emulator`: the emulator's own command (`engine.emulator`), on the CLI's loop."""

from __future__ import annotations

import argparse

from engine.cli._common import run_loop
from engine.emulator import add_arguments, run_command

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `emulator`."""
    p = sub.add_parser(
        "emulator",
        help="run the local Gemini/OpenAI-compatible server",
        description="Serve the Gemini-native and OpenAI-compatible image APIs on loopback "
        "until SIGINT/SIGTERM; the first line on stdout is the base URL.\n\n"
        "example:\n  nanoedit emulator --port 8700 --latency 2 --faults 'rate=0.1:429'",
        allow_abbrev=False,
    )
    add_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM (see `engine.emulator.run_command`)."""
    return run_command(args, run_loop)
