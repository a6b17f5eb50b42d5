"""`nanoedit` command line: demo, edit, emulator, bench, sessions."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import msgspec
import structlog

from engine._config import EmulatorOptions, EngineConfig, Secret
from engine._exceptions import NanoeditError
from engine.budget import Budget
from engine.catalog import ImageConfig, resolve_model
from engine.events import Event, TurnRetrying, TurnTextDelta, encode_event
from engine.runtime import Engine, Session, Turn
from sessions import MemoryStore, SessionStore, encode_contents

__all__ = ["main"]

DEMO_PROMPTS = (
    "A ceramic mug on an oak table, morning light",
    "Add a eucalyptus sprig to the left. Keep everything else.",
    "Change the light to a warm golden sunset glow.",
)


def _configure_logging(verbose: int) -> None:
    # The library never configures structlog; the command line does, to stderr.
    level = logging.WARNING - 10 * verbose
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(max(level, logging.DEBUG)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- shared options --------------------------------------------------------------------------


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("provider")
    g.add_argument("--model", help="model id or alias (nano-banana-2, nano-banana-pro, ...)")
    g.add_argument(
        "--provider",
        choices=("local", "google", "wisdom-gate", "custom"),
        help="where requests go (default: from the environment; no key -> local emulator)",
    )
    g.add_argument("--base-url", help="Gemini-native base URL (implies --provider custom)")
    g.add_argument("--api-key-env", metavar="NAME", help="read the key from this env variable")
    g = p.add_argument_group("image")
    g.add_argument("--aspect-ratio", help="e.g. 1:1, 16:9, 4:1 (3.1 Flash only)")
    g.add_argument("--image-size", help="512 (3.1 Flash), 1K, 2K, 4K; uppercase K")
    g.add_argument(
        "--modalities", default="TEXT,IMAGE", help="response modalities (default TEXT,IMAGE)"
    )
    g.add_argument("--no-stream", action="store_true", help="use generateContent, not SSE")
    g = p.add_argument_group("budget")
    g.add_argument("--max-context-tokens", type=int, default=0, help="0: the model's window")
    g.add_argument("--max-request-mb", type=float, default=0.0, help="0: 20 MB")
    g.add_argument("--max-cost", type=float, default=0.0, help="USD per session; 0: no limit")
    g.add_argument("--budget-policy", choices=("reject", "drop_oldest", "rebase"), default="reject")
    g = p.add_argument_group("emulator (local provider)")
    g.add_argument("--latency", type=float, default=0.0, help="seconds per generation")
    g.add_argument("--faults", default="", help="fault spec, see `nanoedit emulator --help`")
    g.add_argument("--flat", action="store_true", help="small flat images")
    p.add_argument("--events", metavar="FILE", help="write every event as a JSON line (- = stdout)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log lines")


def _engine_config(args: argparse.Namespace, *, force_local: bool = False) -> EngineConfig:
    cfg = EngineConfig.from_env(key_env=args.api_key_env)
    changes: dict[str, Any] = {}
    if force_local:
        changes.update(provider="local", base_url="", api_key=Secret(""))
    elif args.provider or args.base_url:
        provider = args.provider or "custom"
        changes.update(provider=provider, base_url=args.base_url or "")
    if args.model:
        changes["model"] = resolve_model(args.model).id
    if args.no_stream:
        changes["stream"] = False
    if getattr(args, "on_busy", "raise") != "raise":
        changes["on_busy"] = args.on_busy
    if args.max_request_mb:
        changes["max_request_bytes"] = int(args.max_request_mb * 1024 * 1024)
    changes["emulator"] = EmulatorOptions(flat=args.flat, latency=args.latency, faults=args.faults)
    return replace(cfg, **changes)


def _budget(args: argparse.Namespace) -> Budget:
    return Budget(
        max_context_tokens=args.max_context_tokens,
        max_request_bytes=int(args.max_request_mb * 1024 * 1024),
        max_cost_usd=args.max_cost,
        policy=args.budget_policy,
    )


def _image_config(args: argparse.Namespace) -> ImageConfig | None:
    if not args.aspect_ratio and not args.image_size:
        return None
    return ImageConfig(aspect_ratio=args.aspect_ratio, image_size=args.image_size)


class _EventWriter:
    """Writes every event as a JSON line; never bytes (events hold image references only)."""

    def __init__(self, target: str) -> None:
        self._own = target != "-"
        self._fh: IO[bytes] = open(target, "ab") if self._own else sys.stdout.buffer  # noqa: SIM115

    def __call__(self, event: Event) -> None:
        self._fh.write(encode_event(event) + b"\n")
        self._fh.flush()

    def close(self) -> None:
        if self._own:
            self._fh.close()


def _open_store(spec: str | None, cfg: EngineConfig) -> SessionStore:
    if spec == "memory":
        return MemoryStore()
    from sessions._sqlite import SqliteStore, default_store_path

    return SqliteStore(Path(spec) if spec else default_store_path(cfg.home))


# --- edit / demo -------------------------------------------------------------------------------


def _turn_summary(turn: Turn, session: Session, paths: list[Path]) -> dict[str, Any]:
    spec = session.spec
    window = session.budget.max_context_tokens or spec.context_window
    used = turn.usage.prompt_tokens + turn.usage.output_tokens
    return {
        "index": turn.index,
        "text": turn.text,
        "finish_reason": turn.finish_reason,
        "attempts": turn.attempts,
        "latency_s": round(turn.latency_s, 4),
        "usage": msgspec.to_builtins(turn.usage),
        "tokens_used": used,
        "window_left": max(window - used, 0),
        "cost_usd": round(turn.cost_usd, 6),
        "images": [
            {
                "path": str(path),
                "mime_type": img.mime_type,
                "width": img.width,
                "height": img.height,
                "sha256": img.sha256,
                "bytes": len(img.data),
            }
            for img, path in zip(turn.images, paths, strict=True)
        ],
    }


def _save_images(turn: Turn, out: Path) -> list[Path]:
    paths = []
    for i, img in enumerate(turn.images, start=1):
        suffix = "" if i == 1 else f"-{i}"
        paths.append(img.save(out / f"turn-{turn.index:02d}{suffix}{img.extension}"))
    return paths


def _write_history(session: Session, out: Path) -> Path:
    path = out / "session.json"
    path.write_bytes(b'{"contents":' + encode_contents(session.contents()) + b"}\n")
    return path


class _Progress:
    """Prints a turn's answer text and its retries on stderr as the bus publishes them."""

    def __init__(self) -> None:
        self.open_line = False

    def __call__(self, event: Event) -> None:
        if isinstance(event, TurnTextDelta) and not event.thought:
            print(event.text, end="", file=sys.stderr, flush=True)
            self.open_line = True
        elif isinstance(event, TurnRetrying):
            _err(f"\n  retrying after {event.delay_s:.1f}s: {event.error}")


async def _run_turn_verbose(
    engine: Engine,
    session: Session,
    prompt: str,
    images: list[Path],
    *,
    n: int,
    total: int,
    stream: bool,
    quiet: bool,
) -> Turn:
    if not quiet:
        _err(f"turn {n}/{total}: {prompt}")
    # Progress comes from the bus and the turn from send(): a failed turn then raises its own
    # error (BudgetExceeded, Unauthorized, ...), where a stream() consumer sees only the
    # turn.failed event.
    progress = _Progress()
    unsubscribe = None if quiet else engine.bus.on("turn.*", progress, session_id=session.id)
    try:
        return await session.send(prompt, images, stream=stream)
    finally:
        if unsubscribe is not None:
            unsubscribe()
        if progress.open_line:
            _err("")


async def _edit(args: argparse.Namespace, *, demo: bool = False) -> int:
    cfg = _engine_config(args, force_local=demo)
    if demo:
        _err("nanoedit demo: 3 turns on the embedded emulator (offline, no key needed)")
    elif cfg.provider == "local":
        _err("nanoedit: no API key configured; using the embedded emulator (offline)")
    out = Path(args.out)
    prompts: Sequence[str] = DEMO_PROMPTS if demo else args.prompts
    store = MemoryStore() if demo else _open_store(args.store, cfg)
    writer = _EventWriter(args.events) if args.events else None
    summaries: list[dict[str, Any]] = []
    async with store, Engine(cfg, store=store) as engine:
        unsubscribe = engine.bus.on("*", writer) if writer else None
        try:
            if args.session:
                session = await engine.open_session(args.session)
            else:
                session = await engine.create_session(
                    cfg.model,
                    image_config=_image_config(args),
                    response_modalities=[m.strip() for m in args.modalities.split(",")],
                    budget=_budget(args),
                )
            _err(f"session {session.id} ({session.model})")
            for n, prompt in enumerate(prompts, start=1):
                images = [Path(p) for p in args.image] if n == 1 else []
                turn = await _run_turn_verbose(
                    engine,
                    session,
                    prompt,
                    images,
                    n=n,
                    total=len(prompts),
                    stream=cfg.stream,
                    quiet=args.json,
                )
                paths = _save_images(turn, out)
                summary = _turn_summary(turn, session, paths)
                summaries.append(summary)
                if not args.json:
                    sizes = ", ".join(f"{i['width']}x{i['height']}" for i in summary["images"])
                    _err(
                        f"  done in {turn.latency_s:.2f}s, attempts {turn.attempts}, "
                        f"images [{sizes}], tokens {summary['tokens_used']} "
                        f"(window left {summary['window_left']}), ${turn.cost_usd:.4f}"
                    )
                    for p in paths:
                        _err(f"  wrote {p}")
            history = _write_history(session, out)
        finally:
            if unsubscribe:
                unsubscribe()
            if writer:
                writer.close()
    if args.json:
        doc = {"session_id": session.id, "model": session.model, "turns": summaries}
        sys.stdout.write(msgspec.json.encode(doc).decode() + "\n")
    else:
        _err(f"wrote {history}")
        print(session.id)
    return 0


# --- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="nanoedit", description="Multi-turn image editing with Gemini image models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="3-turn edit on the embedded emulator, writes PNGs")
    p.add_argument("--out", default="nanoedit-demo", help="output directory")
    _add_engine_options(p)
    p.set_defaults(prompts=DEMO_PROMPTS, image=[], session=None, store="memory", json=False)

    p = sub.add_parser("edit", help="one session, one turn per PROMPT")
    p.add_argument("prompts", nargs="+", metavar="PROMPT")
    p.add_argument("--image", action="append", default=[], help="image for the first turn")
    p.add_argument("--out", default="out", help="output directory (default: out)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--session", help="continue a stored session")
    p.add_argument("--store", help="PATH of a SQLite store, or 'memory' (default: NANOEDIT_HOME)")
    p.add_argument(
        "--on-busy",
        choices=("raise", "wait"),
        default="raise",
        help="another process is sending to the session: fail at once, or wait for it",
    )
    _add_engine_options(p)

    from engine.emulator._cli import add_arguments as add_emulator_arguments

    p = sub.add_parser("emulator", help="run the local Gemini/OpenAI-compatible server")
    add_emulator_arguments(p)

    from engine._bench import add_arguments as add_bench_arguments

    p = sub.add_parser("bench", help="concurrency benchmark with latency percentiles")
    add_bench_arguments(p)

    from engine._cli_sessions import add_parser as add_sessions_parser

    add_sessions_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `nanoedit` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(getattr(args, "verbose", 0))
    try:
        if args.command in ("demo", "edit"):
            Path(args.out).mkdir(parents=True, exist_ok=True)
            return asyncio.run(_edit(args, demo=args.command == "demo"))
        if args.command == "emulator":
            from engine.emulator._cli import run as run_emulator

            return run_emulator(args)
        if args.command == "bench":
            from engine._bench import run as run_bench

            return run_bench(args)
        if args.command == "sessions":
            from engine._cli_sessions import run as run_sessions

            return run_sessions(args)
    except NanoeditError as exc:
        _err(f"error: {type(exc).__name__}: {exc}")
        return 1
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except OSError as exc:
        _err(f"error: {type(exc).__name__}: {exc}")
        return 1
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2
