"""What every command shares: logging, the provider/emulator/budget options, one way to build an
`EngineConfig` from them, opening a store, resolving abbreviated session ids."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, TypeVar

import structlog

from engine._config import PRESETS, EmulatorOptions, EngineConfig, RetryPolicy, Secret
from engine._exceptions import ConfigError
from engine._gc import tuned_gc
from engine.events import Event, encode_event
from engine.policy import Budget
from sessions import (
    Catalog,
    ImageConfig,
    MemoryStore,
    SessionError,
    SessionNotFound,
    SessionStore,
    check_available,
)

__all__ = [
    "EventWriter",
    "add_budget_options",
    "add_emulator_options",
    "add_history_option",
    "add_provider_options",
    "budget_from_args",
    "config_from_args",
    "configure_logging",
    "err",
    "event_loop_name",
    "image_config_from_args",
    "non_negative",
    "open_store",
    "resolve_session_id",
    "retry_from_args",
    "run_loop",
]

T = TypeVar("T")

PROVIDERS = tuple(PRESETS)


def err(msg: str) -> None:
    """One line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def configure_logging(verbose: int) -> None:
    """structlog to stderr: errors only by default (a failure is the command's own one line);
    -v warnings, -vv info, -vvv debug."""
    level = logging.ERROR - 10 * verbose
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(max(level, logging.DEBUG)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def non_negative(value: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 <= number < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {value!r}")
    return number


def add_provider_options(parser: argparse.ArgumentParser, *, model_default: str | None) -> None:
    """--model, --provider, --base-url, --api-key-env."""
    g = parser.add_argument_group("provider")
    g.add_argument(
        "--model",
        default=model_default,
        help="model id or alias (nano-banana-2.1, nano-banana-2-lite, nano-banana-pro, ...)",
    )
    g.add_argument(
        "--provider",
        choices=PROVIDERS,
        help="where requests go (default: from the environment; no key -> local emulator)",
    )
    g.add_argument("--base-url", help="base URL of the API (implies --provider custom)")
    g.add_argument(
        "--api",
        choices=("gemini", "interactions", "openai-chat", "openai-images"),
        help="wire protocol (default: the provider's; NANOEDIT_API): interactions keeps the "
        "conversation at Google and sends only each new turn",
    )
    g.add_argument(
        "--image-delivery",
        choices=("inline", "uri"),
        help="--api interactions: images in the answer as base64 (inline, the default) or as "
        "a URI downloaded with the key",
    )
    g.add_argument(
        "--auth-scheme",
        choices=("bearer", "raw", "goog"),
        help="how the key is sent: Authorization: Bearer KEY, Authorization: KEY, "
        "or x-goog-api-key (default: the provider's)",
    )
    g.add_argument("--api-key-env", metavar="NAME", help="read the key from this env variable")
    g.add_argument(
        "--catalog",
        metavar="FILE",
        help="TOML file of models to add or override (NANOEDIT_CATALOG)",
    )


def add_emulator_options(parser: argparse.ArgumentParser) -> None:
    """--latency, --faults, --flat for the embedded emulator."""
    g = parser.add_argument_group("embedded emulator (local provider)")
    g.add_argument("--latency", type=non_negative, default=0.0, help="seconds per generation")
    g.add_argument("--faults", default="", help="fault spec, see `nanoedit emulator --help`")
    g.add_argument("--flat", action="store_true", help="small flat images (cheap to render)")


def add_budget_options(parser: argparse.ArgumentParser) -> None:
    """--max-context-tokens, --max-request-mb, --max-cost, --budget-policy."""
    g = parser.add_argument_group("budget")
    g.add_argument("--max-context-tokens", type=int, default=0, help="0: the model's window")
    g.add_argument(
        "--max-request-mb",
        type=non_negative,
        default=0.0,
        help="0: the provider's limit (Google 100 MB, gateways and the emulator 20 MB)",
    )
    add_history_option(g)
    g.add_argument(
        "--max-cost", type=non_negative, default=0.0, help="USD per session; 0: no limit"
    )
    g.add_argument("--budget-policy", choices=("reject", "drop_oldest", "rebase"), default="reject")


def add_history_option(group: Any) -> None:
    """--history-images inline|files|auto."""
    group.add_argument(
        "--history-images",
        choices=("inline", "files", "auto"),
        help="earlier turns' images in requests: inline base64 every time, or uploaded once "
        "with the Files API and referred to (auto, the default: files where the provider "
        "has the Files API)",
    )


def config_from_args(
    args: argparse.Namespace,
    *,
    force_local: bool = False,
    local_unless_target: bool = False,
    env: dict[str, str] | None = None,
    **changes: Any,
) -> EngineConfig:
    """The EngineConfig the parsed options describe, on top of the environment.

    `force_local` ignores every key and target (demo); `local_unless_target` uses the embedded
    emulator unless --provider or --base-url names a target (bench: never spend by accident).
    """
    environ = dict(os.environ) if env is None else env
    key_env = getattr(args, "api_key_env", None)
    if key_env and not environ.get(key_env):
        raise ConfigError(f"--api-key-env {key_env}: the variable {key_env} is not set")
    provider = getattr(args, "provider", None)
    base_url = getattr(args, "base_url", None)
    if force_local or (local_unless_target and provider in (None, "local") and not base_url):
        cfg = EngineConfig(provider="local")
    else:
        cfg = EngineConfig.from_env(environ, key_env=key_env, warn=not (provider or base_url))
        if provider or base_url:
            provider = provider or "custom"
            key = cfg.api_key if provider != "local" else Secret("")
            cfg = _replace(cfg, provider=provider, base_url=base_url or "", api_key=key)
    if getattr(args, "api", None):
        changes["api"] = args.api
    if getattr(args, "image_delivery", None):
        changes["image_delivery"] = args.image_delivery
    if getattr(args, "auth_scheme", None):
        changes["auth"] = args.auth_scheme
    if getattr(args, "catalog", None):
        cfg = _replace(cfg, catalog=Path(args.catalog))
    if getattr(args, "model", None):
        spec = Catalog.load(cfg.catalog).resolve(args.model)
        # Google refuses a shut-down model (ConfigError here); elsewhere it runs, said once.
        warning = check_available(spec, cfg.provider)
        if warning is not None:
            err(f"warning: {warning}")
        changes["model"] = spec.id
    if getattr(args, "no_stream", False):
        changes["stream"] = False
    if getattr(args, "on_busy", None):
        changes["on_busy"] = args.on_busy
    if getattr(args, "history_images", None):
        changes["history_images"] = args.history_images
    if getattr(args, "max_request_mb", 0):
        changes["max_request_bytes"] = int(args.max_request_mb * 1024 * 1024)
    if hasattr(args, "latency"):
        changes.setdefault(
            "emulator",
            EmulatorOptions(
                flat=args.flat,
                latency=args.latency,
                faults=args.faults,
                seed=getattr(args, "seed", 0),
            ),
        )
    return _replace(cfg, **changes)


def _replace(cfg: EngineConfig, **changes: Any) -> EngineConfig:
    # EngineConfig validates itself; its ConfigError is the message a user sees.
    return replace(cfg, **changes)


def retry_from_args(args: argparse.Namespace, base: RetryPolicy) -> RetryPolicy:
    """`base` with --max-attempts / --retry-delay applied where given."""
    if getattr(args, "max_attempts", 0):
        base = replace(base, max_attempts=args.max_attempts)
    if getattr(args, "retry_delay", None) is not None:
        base = replace(base, base_delay=args.retry_delay)
    return base


def budget_from_args(args: argparse.Namespace) -> Budget:
    """The session Budget of the budget options."""
    return Budget(
        max_context_tokens=args.max_context_tokens,
        max_request_bytes=int(args.max_request_mb * 1024 * 1024),
        max_cost_usd=args.max_cost,
        policy=args.budget_policy,
    )


def image_config_from_args(args: argparse.Namespace) -> ImageConfig | None:
    """--aspect-ratio / --image-size as an ImageConfig (None when neither is given)."""
    if not args.aspect_ratio and not args.image_size:
        return None
    return ImageConfig(aspect_ratio=args.aspect_ratio, image_size=args.image_size)


def open_store(spec: str | None, cfg: EngineConfig, *, read_only: bool = False) -> SessionStore:
    """`memory`, a PostgreSQL DSN (`postgresql://...`), a SQLite path, or (none given) the
    config's store (`NANOEDIT_STORE`), else the default store file; read-only opens of a
    missing file answer from an empty MemoryStore instead of creating the file."""
    spec = spec or cfg.store
    if spec == "memory":
        return MemoryStore()
    if spec and spec.startswith(("postgresql://", "postgres://")):
        from sessions import PostgresStore

        return PostgresStore(spec)
    from sessions import SqliteStore, default_store_path

    path = Path(spec) if spec else default_store_path(cfg.home)
    if read_only and not path.exists():
        return MemoryStore()
    return SqliteStore(path)


async def resolve_session_id(store: SessionStore, given: str) -> str:
    """The full id for an id or a unique prefix of one (like git commits)."""
    ids = [s.id for s in await store.list()]
    if given in ids:
        return given
    matches = [i for i in ids if i.startswith(given)] if given else []
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise SessionNotFound(f"no session {given!r}")
    shown = ", ".join(m[:12] for m in matches[:4]) + (", ..." if len(matches) > 4 else "")
    raise SessionError(f"{given!r} matches {len(matches)} sessions ({shown}); give more of it")


class EventWriter:
    """Writes every event as one JSON line to a file or stdout (`-`); never image bytes."""

    def __init__(self, target: str) -> None:
        self._own = target != "-"
        self._fh: IO[bytes] = open(target, "ab") if self._own else sys.stdout.buffer  # noqa: SIM115
        self._broken = False

    def __call__(self, event: Event) -> None:
        if self._broken:
            return
        try:
            self._fh.write(encode_event(event) + b"\n")
            self._fh.flush()
        except BrokenPipeError:
            # The reader went away (`| head`): stop writing; the command ends quietly.
            self._broken = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._fh.fileno())

    def close(self) -> None:
        """Close the file (stdout stays open)."""
        if self._own:
            self._fh.close()


def event_loop_name() -> str:
    """The loop the command line runs on: "uvloop" when installed (the `uvloop` extra) unless
    NANOEDIT_LOOP=asyncio, else "asyncio"."""
    if os.environ.get("NANOEDIT_LOOP", "").strip().lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on uvloop when `event_loop_name()` says so (same Ctrl-C rules), with
    the collector tuned for many turns at once (`engine.tuned_gc`)."""
    with tuned_gc():
        if event_loop_name() == "uvloop":
            import uvloop

            result: T = uvloop.run(main)
            return result
        return asyncio.run(main)
