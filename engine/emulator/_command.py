"""The emulator as a command (`nanoedit emulator`, `python -m engine.emulator`): serve until
SIGINT/SIGTERM. Its options live here, with the emulator, which imports nothing of the engine."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from engine.emulator._faults import FAULT_GRAMMAR, parse_faults
from engine.emulator._server import Emulator
from engine.emulator._settings import EmulatorSettings
from sessions import Catalog, ConfigError

__all__ = ["add_arguments", "main", "run", "unmap_freed_blocks"]

LoopRunner = Callable[[Coroutine[Any, Any, None]], None]


def _faults(value: str) -> str:
    try:
        parse_faults(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options (and the fault grammar as the help epilog)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument(
        "--api-key",
        default="",
        help="require this key (x-goog-api-key, ?key= or Authorization: Bearer); default: none",
    )
    parser.add_argument(
        "--latency", type=non_negative, default=0.0, help="seconds per generation (e.g. 20)"
    )
    parser.add_argument(
        "--latency-jitter", type=non_negative, default=0.0, help="up to this many extra seconds"
    )
    parser.add_argument(
        "--faults",
        type=_faults,
        default="",
        metavar="SPEC",
        help="inject faults, e.g. '429:retry=2', 'rate=0.1:429,500,cut:1', "
        "'fail_first=2:503' (grammar below)",
    )
    parser.add_argument(
        "--flat", action="store_true", help="images without grain (small, fast PNGs)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for images and signatures")
    parser.add_argument(
        "--catalog", metavar="FILE", help="TOML file of models to serve besides the built-in ones"
    )
    parser.add_argument(
        "--openai-dialect",
        choices=("images", "parts", "markdown", "json"),
        default="images",
        help="how chat completions carry images (per request: header x-emulator-dialect)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=20 * 1024 * 1024,
        help="largest accepted request body (default 20 MiB)",
    )
    g = parser.add_argument_group("Files, Batch and Interactions APIs")
    g.add_argument(
        "--file-ttl",
        type=_positive,
        default=48 * 3600.0,
        metavar="SECONDS",
        help="uploaded files expire after this long (default 48 h, as Google's)",
    )
    g.add_argument(
        "--interaction-ttl",
        type=_positive,
        default=55 * 86400.0,
        metavar="SECONDS",
        help="Interactions API: a stored interaction can be continued for this long (default "
        "55 days, Google's paid tier; the free tier keeps 1 day); older: 404 not_found",
    )
    g.add_argument(
        "--upload-mbps",
        type=non_negative,
        default=0.0,
        help="read request bodies and uploads no faster than this many Mbit/s, like a "
        "client's uplink (default: unlimited)",
    )
    g.add_argument(
        "--batch-seconds",
        type=non_negative,
        default=2.0,
        help="how long a batch job takes from PENDING to SUCCEEDED (default 2)",
    )
    g.add_argument(
        "--batch-expiry",
        type=_positive,
        default=48 * 3600.0,
        metavar="SECONDS",
        help="a batch job still unfinished after this long ends EXPIRED (default 48 h)",
    )
    if parser.epilog is None:
        parser.epilog = FAULT_GRAMMAR
        parser.formatter_class = argparse.RawDescriptionHelpFormatter


def non_negative(value: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 <= number < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {value!r}")
    return number


def _positive(value: str) -> float:
    number = non_negative(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {value!r}")
    return number


def _settings(args: argparse.Namespace) -> EmulatorSettings:
    return EmulatorSettings(
        api_key=args.api_key,
        latency=args.latency,
        latency_jitter=args.latency_jitter,
        faults=args.faults,
        flat=args.flat,
        seed=args.seed,
        max_request_bytes=args.max_request_bytes,
        catalog=Catalog.load(args.catalog),
        openai_dialect=args.openai_dialect,
        file_ttl=args.file_ttl,
        upload_mbps=args.upload_mbps,
        batch_seconds=args.batch_seconds,
        batch_expiry=args.batch_expiry,
        interaction_ttl=args.interaction_ttl,
    )


async def _serve(settings: EmulatorSettings, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with Emulator(settings, host=host, port=port) as emulator:
            print(emulator.base_url, flush=True)
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _log_to_stderr() -> None:
    # stdout carries exactly one line, the base URL, for scripts to read; logs go to stderr.
    # The nanoedit CLI may have configured structlog already; then its choice stands.
    if not structlog.is_configured():
        structlog.configure(
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        )


def unmap_freed_blocks() -> bool:
    """Make glibc give each large block back to the system when it is freed; False where that
    cannot be set (another C library, another system).

    glibc raises its mmap threshold after large blocks are freed (up to 32 MiB), and blocks
    below the threshold come from heaps that keep what was freed: an emulator process that
    had held 3 GiB of requests and answers (6,000 concurrent 1K grain edits) kept 8 GB of RSS
    after they were sent, and twice that load was killed for lack of memory. With the
    threshold fixed at its initial 128 KiB, its RSS fell back to 1-2 GB as the answers went
    out. Done for the emulator's own process only: a library must not change an
    application's allocator.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 128 * 1024))


def run(args: argparse.Namespace, run_loop: LoopRunner = asyncio.run) -> int:
    """Serve until SIGINT/SIGTERM; print the base URL on stdout first. Returns the exit code.

    `run_loop` runs the server coroutine (the nanoedit CLI passes its own: uvloop, tuned gc)."""
    _log_to_stderr()
    unmap_freed_blocks()
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"nanoedit emulator: {exc}", file=sys.stderr)
        return 2
    try:
        run_loop(_serve(settings, args.host, args.port))
    except OSError as exc:
        print(
            f"nanoedit emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.emulator`: the same command without the nanoedit CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m engine.emulator",
        description="Run the nanoedit emulator.",
        allow_abbrev=False,
    )
    add_arguments(parser)
    with contextlib.suppress(KeyboardInterrupt):
        return run(parser.parse_args(argv))
    return 0
