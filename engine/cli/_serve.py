"""`nanoedit serve`: the HTTP gateway and studio (engine.serve) on one port.

The first line on stdout is `nanoedit serve: listening on http://HOST:PORT` (with `--port 0`,
the port chosen). SIGTERM or Ctrl-C stops taking turns, lets the running ones finish within
`--drain-seconds`, then stops.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal
import sys
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from engine._config import EngineConfig
from engine._exceptions import ConfigError
from engine.cli._common import (
    add_budget_options,
    add_emulator_options,
    add_provider_options,
    budget_from_args,
    config_from_args,
    non_negative,
    open_store,
    run_loop,
)
from engine.policy import Budget
from engine.runtime import Engine
from engine.serve import GATEWAY, ServeOptions, create_app, load_keys
from sessions import SessionNotFound, SessionStore, StoreError

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `serve`."""
    p = sub.add_parser(
        "serve",
        help="the HTTP gateway and studio for web front ends",
        description="Serve editing sessions over REST, turn events over SSE, images by URL and "
        "the studio page, on the embedded emulator unless a provider is configured.",
        epilog="example:\n  nanoedit serve --port 8800\n"
        "  nanoedit serve --host 0.0.0.0 --keys keys.json --store sessions.db",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    g.add_argument("--port", type=int, default=8800, help="port (0: any free port)")
    g.add_argument(
        "--store",
        help="a SQLite PATH, a postgresql:// DSN, or 'memory' (default: NANOEDIT_STORE, "
        "else sessions.db under NANOEDIT_HOME)",
    )
    g.add_argument(
        "--keys",
        metavar="FILE",
        help='JSON {"tenant": ["key", ...]}: requests need Authorization: Bearer KEY; '
        "without it the server has one tenant and binds only loopback addresses",
    )
    g.add_argument("--max-body-mb", type=non_negative, default=50.0, help="largest request body")
    g.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow this browser origin (repeatable; '*' for any)",
    )
    g.add_argument(
        "--tenant-max-cost", type=non_negative, default=0.0, help="USD per key; 0: no limit"
    )
    g.add_argument(
        "--tenant-turns-per-minute",
        type=non_negative,
        default=0.0,
        help="turns per minute per key; 0: no limit",
    )
    g.add_argument(
        "--drain-seconds",
        type=non_negative,
        default=30.0,
        help="on SIGTERM, how long running turns may take to finish",
    )
    g.add_argument(
        "--max-in-flight",
        type=int,
        default=64,
        help="upstream calls at once (with --redis: across every node)",
    )
    g.add_argument(
        "--redis",
        metavar="URL",
        help="redis://HOST:PORT/DB shared by the nodes of a cluster: session events (and their "
        "seq) and the in-flight cap hold across nodes; sessions go in --store (PostgreSQL)",
    )
    g.add_argument(
        "--redis-prefix", default="nanoedit", help="the cluster's Redis keys start with this"
    )
    g.add_argument("--no-stream", action="store_true", help="use generateContent, not SSE")
    g.add_argument(
        "--chat-images",
        choices=("data", "url"),
        default="data",
        help="how /v1/chat/completions returns images: data URLs (default) or absolute URLs of "
        "/v1/images/{sha256}",
    )
    add_provider_options(p, model_default=None)
    add_budget_options(p)
    add_emulator_options(p)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log lines")
    p.set_defaults(run=run)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    """Carry out `serve`; the exit code."""
    keys = load_keys(Path(args.keys)) if args.keys else None
    if keys is None and not _loopback(args.host):
        raise ConfigError(
            f"--host {args.host}: without --keys the server has no authentication and binds "
            "only loopback addresses (127.0.0.1, ::1)"
        )
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be within 0..65535, not {args.port}")
    if args.max_in_flight < 1:
        raise ConfigError("--max-in-flight must be at least 1")
    if args.redis and args.store == "memory":
        raise ConfigError(
            "--redis with --store memory: the nodes of a cluster share one store "
            "(--store postgresql://...)"
        )
    cfg = replace(
        config_from_args(args),
        max_in_flight=args.max_in_flight,
        redis_url=args.redis or "",
        redis_prefix=args.redis_prefix,
    )
    budget = budget_from_args(args)
    options = ServeOptions(
        keys=keys,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        cors_origins=tuple(args.cors_origin),
        tenant_max_cost_usd=args.tenant_max_cost,
        tenant_turns_per_minute=args.tenant_turns_per_minute,
        drain_s=args.drain_seconds,
        default_budget=budget if budget != Budget() else None,
        chat_images=args.chat_images,
    )
    return run_loop(_serve(args, cfg, options))


async def _check_store(store: SessionStore, where: str) -> None:
    try:
        await store.load_record("startup-probe")
    except SessionNotFound:
        return
    except StoreError as exc:
        raise StoreError(f"--store {_redacted(where)}: cannot use it: {exc}") from None


def _redacted(where: str) -> str:
    # A DSN may carry a password: never print it.
    parts = urlsplit(where)
    if parts.password is None:
        return where
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


async def _serve(args: argparse.Namespace, cfg: EngineConfig, options: ServeOptions) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with open_store(args.store, cfg) as store, Engine(cfg, store=store) as engine:
            # Both checked before listening (Redis when the engine started): a server that
            # could only answer errors says so now, in one line.
            await _check_store(store, args.store)
            app = create_app(engine, options)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            try:
                site = web.TCPSite(runner, args.host, args.port, backlog=1024)
                await site.start()
                host, port = runner.addresses[0][:2]
                shown = f"[{host}]" if ":" in host else host
                print(f"nanoedit serve: listening on http://{shown}:{port}", flush=True)
                await stop.wait()
                print("nanoedit serve: stopping (running turns may finish)", file=sys.stderr)
                await app[GATEWAY].drain()
            finally:
                await runner.cleanup()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0
