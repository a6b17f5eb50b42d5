"""`nanoedit mcp`: nanoedit's sessions as Model Context Protocol tools over stdio.

MCP clients (Claude Desktop, IDE agents, agent frameworks) launch it with an empty environment
but for the variables their config names: with no key it runs on the embedded emulator, as
every command does. The same provider, store and budget options as `serve`; stdout carries the
protocol only (logs go to stderr).
"""

from __future__ import annotations

import argparse

from engine._config import EngineConfig
from engine._exceptions import ConfigError
from engine.cli._common import (
    add_budget_options,
    add_emulator_options,
    add_provider_options,
    budget_from_args,
    config_from_args,
    open_store,
    run_loop,
)
from engine.policy import Budget

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `mcp`."""
    p = sub.add_parser(
        "mcp",
        help="serve sessions as MCP tools over stdio (for MCP clients)",
        description=__doc__,
        epilog='example (an MCP client\'s config):\n  {"mcpServers": {"nanoedit": '
        '{"command": "nanoedit", "args": ["mcp"]}}}',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument(
        "--store",
        help="a SQLite PATH, a postgresql:// DSN, or 'memory' (default: NANOEDIT_STORE, "
        "else sessions.db under NANOEDIT_HOME)",
    )
    add_provider_options(p, model_default=None)
    add_budget_options(p)
    add_emulator_options(p)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (stderr)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Carry out `mcp`; the exit code."""
    try:
        import mcp  # noqa: F401
    except ImportError:  # pragma: no cover - the extra is not installed
        raise ConfigError("nanoedit mcp needs the MCP SDK: pip install 'nanoedit[mcp]'") from None
    cfg = config_from_args(args)
    budget = budget_from_args(args)
    return run_loop(_mcp(args, cfg, budget if budget != Budget() else None))


async def _mcp(args: argparse.Namespace, cfg: EngineConfig, budget: Budget | None) -> int:
    from engine.runtime import Engine
    from engine.serve import Gateway, ServeOptions, build_mcp

    async with open_store(args.store, cfg) as store, Engine(cfg, store=store) as engine:
        gateway = Gateway(engine, ServeOptions(default_budget=budget))
        await build_mcp(gateway).run_stdio_async()
    return 0
