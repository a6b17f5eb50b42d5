"""`nanoedit edit` and `nanoedit demo`: one session, one turn per prompt, images and history on
disk.

`DIR/session.json` is written once, when the command ends (also after a failed turn or Ctrl-C),
and holds every committed turn of the session; `DIR/.nanoedit-session` names that session, so
`edit --session ID --out DIR` continues in the directory where the session started.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

import msgspec

from engine._config import EngineConfig
from engine._exceptions import ConfigError
from engine.cli._common import (
    EventWriter,
    add_budget_options,
    add_emulator_options,
    add_provider_options,
    budget_from_args,
    config_from_args,
    err,
    image_config_from_args,
    open_store,
    resolve_session_id,
    run_loop,
)
from engine.events import Event, TurnImage, TurnRetrying, TurnStarted, TurnTextDelta
from engine.runtime import Engine, Reference, Region, Session, Turn
from sessions import encode_contents

__all__ = ["DEMO_PROMPTS", "add_demo_parser", "add_edit_parser", "run"]

DEMO_PROMPTS = (
    "A ceramic mug on an oak table, morning light",
    "Add a eucalyptus sprig to the left. Keep everything else.",
    "Change the light to a warm golden sunset glow.",
)
_TICK = 0.1  # seconds between redraws of the live progress line


def _add_shared(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("image")
    g.add_argument("--aspect-ratio", help="e.g. 1:1, 16:9, 4:1 (not on 3 Pro)")
    g.add_argument(
        "--thinking",
        metavar="LEVEL",
        help="thinking level: minimal, medium, high (what the model takes; `nanoedit models`)",
    )
    g.add_argument("--image-size", help="512 (3.1 Flash), 1K, 2K, 4K; uppercase K")
    g.add_argument(
        "--modalities", default="TEXT,IMAGE", help="response modalities (default TEXT,IMAGE)"
    )
    g.add_argument("--no-stream", action="store_true", help="use generateContent, not SSE")
    add_budget_options(p)
    add_emulator_options(p)
    p.add_argument("--force", action="store_true", help="write into a non-empty --out DIR")
    p.add_argument("--events", metavar="FILE", help="write every event as a JSON line (- = stdout)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log lines")


def add_edit_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `edit`."""
    p = sub.add_parser(
        "edit",
        help="one session, one turn per PROMPT",
        description="Run one editing session with one turn per PROMPT; write each turn's "
        "images as DIR/turn-NN.png and the history as DIR/session.json.",
        epilog="example:\n  nanoedit edit 'a mug on an oak table' 'add a sprig' --out mug/\n"
        "  nanoedit edit 'make it warmer' --session 3f2a --store sessions.db",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("prompts", nargs="+", metavar="PROMPT")
    p.add_argument("--image", action="append", default=[], help="image for the first turn")
    p.add_argument(
        "--ref",
        action="append",
        default=[],
        metavar="ROLE=PATH",
        help="a reference image for the first turn with its role: subject, style, object, "
        "character or background (e.g. --ref style=painting.png)",
    )
    p.add_argument(
        "--variants",
        type=int,
        default=1,
        metavar="N",
        help="N takes of each prompt at once (up to 8), kept as sibling turns: "
        "turn-02a.png, turn-02b.png, ...; the first to finish continues the session",
    )
    p.add_argument(
        "--region",
        metavar="X0,Y0,X1,Y1",
        help="change only this box of the head image (pixels); every other pixel stays "
        "(every prompt that has an image to edit: a new session's first prompt draws it)",
    )
    p.add_argument(
        "--mask",
        metavar="FILE",
        help="change only where this mask image is white (black: keep); soft edges blend",
    )
    p.add_argument("--out", default="out", help="output directory (default: out)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--session", help="continue a stored session (an id or a unique prefix)")
    p.add_argument("--title", default="", help="title of a new session")
    p.add_argument(
        "--store",
        help="a SQLite PATH, a postgresql:// DSN, or 'memory' (default: NANOEDIT_STORE, "
        "else sessions.db under NANOEDIT_HOME)",
    )
    p.add_argument(
        "--on-busy",
        choices=("raise", "wait"),
        default="raise",
        help="another process is sending to the session: fail at once, or wait for it",
    )
    add_provider_options(p, model_default=None)
    _add_shared(p)
    p.set_defaults(run=run, demo=False)


def add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `demo`."""
    p = sub.add_parser(
        "demo",
        help="3-turn edit on the embedded emulator, writes PNGs",
        description="A 3-turn editing session on the embedded emulator: offline, no key.",
        epilog="example:\n  nanoedit demo --out nanoedit-demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--out", default="nanoedit-demo", help="output directory")
    p.add_argument("--model", help="model id or alias (default nano-banana-2)")
    _add_shared(p)
    p.set_defaults(
        run=run,
        demo=True,
        prompts=DEMO_PROMPTS,
        image=[],
        session=None,
        title="nanoedit demo",
        store="memory",
        json=False,
        on_busy=None,
    )


# --- output ------------------------------------------------------------------------------------


_MARK = ".nanoedit-session"
"""A file in --out naming the session whose output it holds (so `edit --session` continues)."""


def _prepare_out(out: Path, *, force: bool, continuing: bool = False) -> None:
    """Refuse a file, or a directory with anything in it (checked again once the session is
    known when `continuing`: it may hold that session's own output)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: not a directory")
    if out.is_dir() and any(out.iterdir()) and not (force or continuing):
        raise ConfigError(f"--out {out} is not empty: choose another directory or add --force")
    out.mkdir(parents=True, exist_ok=True)


def _holds_only(out: Path, session_id: str) -> bool:
    """Whether `out` holds this session's output and nothing else (its mark, session.json and
    turn images)."""
    mark = out / _MARK
    if not mark.is_file() or mark.read_text().strip() != session_id:
        return False
    return all(
        p.name in (_MARK, "session.json") or (p.is_file() and p.name.startswith("turn-"))
        for p in out.iterdir()
    )


def _check_continued_out(out: Path, session_id: str, *, force: bool) -> None:
    if force or not any(out.iterdir()) or _holds_only(out, session_id):
        return
    raise ConfigError(
        f"--out {out} is not empty and holds no output of session {session_id}: "
        "choose another directory or add --force"
    )


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


def _save_images(turn: Turn, out: Path, take: str = "") -> list[Path]:
    """turn-NN.png (turn-NNa.png, turn-NNb.png ... for the takes of a --variants turn)."""
    paths = []
    for i, img in enumerate(turn.images, start=1):
        suffix = "" if i == 1 else f"-{i}"
        paths.append(img.save(out / f"turn-{turn.index:02d}{take}{suffix}{img.extension}"))
    return paths


def _save_takes(turn: Turn, session: Session, out: Path) -> list[Path]:
    """Every take of a variants turn, in the order they finished (a, b, ...)."""
    records = [
        r
        for r in session.state.turns.values()
        if r.parent == turn.record.parent and r.index == turn.index and "variant" in r.metadata
    ]
    records.sort(key=lambda r: r.created_at)
    paths: list[Path] = []
    for n, record in enumerate(records):
        paths += _save_images(Turn.from_record(record), out, chr(ord("a") + n))
    return paths


def _write_history(session: Session, out: Path, *, mark: bool) -> Path:
    path = out / "session.json"
    path.write_bytes(b'{"contents":' + encode_contents(session.contents()) + b"}\n")
    if mark:
        (out / _MARK).write_text(session.id + "\n")
    return path


class ReceivedBytes(Protocol):
    """What the progress line reads: a live count of response bytes received."""

    @property
    def bytes_received(self) -> int:
        """Bytes so far."""
        ...


class Progress:
    """A turn's progress on stderr as the bus publishes it.

    On a terminal: one live line (elapsed, attempt, bytes received, the thought summary as it
    streams), the answer text and retries as lines of their own. Off a terminal: the answer text
    and retries only.
    """

    def __init__(self, engine: ReceivedBytes, stream: TextIO, *, live: bool) -> None:
        self._engine = engine
        self._out = stream
        self.live = live
        self.started = time.monotonic()
        self.attempt = 1
        self.received_at_start = engine.bytes_received
        self.thought = ""
        self.images = 0
        self._drawn = 0
        self._text_open = False

    def __call__(self, event: Event) -> None:
        if isinstance(event, TurnStarted):
            self.started = time.monotonic()
            self.received_at_start = self._engine.bytes_received
        elif isinstance(event, TurnTextDelta):
            if event.thought:
                self.thought = (self.thought + event.text).replace("\n", " ")[-200:]
            else:
                self._clear()
                print(event.text, end="", file=self._out, flush=True)
                self._text_open = True
        elif isinstance(event, TurnImage) and not event.thought:
            self.images += 1
        elif isinstance(event, TurnRetrying):
            self.attempt = event.attempt + 1
            self._clear()
            self._end_text()
            print(f"  retrying in {event.delay_s:.1f}s: {event.error}", file=self._out, flush=True)

    def line(self, width: int = 100) -> str:
        """The live line's text."""
        elapsed = time.monotonic() - self.started
        received = max(self._engine.bytes_received - self.received_at_start, 0)
        text = f"  {elapsed:5.1f}s  attempt {self.attempt}  {received / 1e6:.1f} MB"
        if self.images:
            text += f"  {self.images} image(s)"
        if self.thought:
            room = width - len(text) - 4
            if room > 10:
                text += "  " + self.thought[-room:].strip()
        return text[:width]

    def draw(self) -> None:
        """Redraw the live line (terminal only; never while answer text is mid-line)."""
        if not self.live or self._text_open:
            return
        text = self.line()
        self._out.write("\r" + text.ljust(self._drawn))
        self._out.flush()
        self._drawn = len(text)

    def _clear(self) -> None:
        if self._drawn:
            self._out.write("\r" + " " * self._drawn + "\r")
            self._drawn = 0

    def _end_text(self) -> None:
        if self._text_open:
            print(file=self._out)
            self._text_open = False

    def finish(self) -> None:
        """Leave the terminal on a fresh line."""
        self._clear()
        self._end_text()


async def _run_turn(
    engine: Engine,
    session: Session,
    prompt: str,
    images: list[Path | Reference],
    *,
    stream: bool,
    quiet: bool,
    region: Region | None = None,
    variants: int = 1,
) -> Turn:
    # Progress comes from the bus and the turn from send(): a failed turn then raises its own
    # error (BudgetExceeded, Unauthorized, ...), where a stream() consumer sees only the
    # turn.failed event.
    if quiet:
        return await session.send(prompt, images, stream=stream, region=region, variants=variants)
    progress = Progress(engine, sys.stderr, live=sys.stderr.isatty())
    unsubscribe = engine.bus.on("turn.*", progress, session_id=session.id)
    ticker = asyncio.ensure_future(_tick(progress)) if progress.live else None
    try:
        return await session.send(prompt, images, stream=stream, region=region, variants=variants)
    finally:
        unsubscribe()
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        progress.finish()


async def _tick(progress: Progress) -> None:
    while True:
        progress.draw()
        await asyncio.sleep(_TICK)


async def _open_or_create(
    engine: Engine, args: argparse.Namespace, cfg: EngineConfig
) -> tuple[Session, bool]:
    if args.session:
        sid = await resolve_session_id(engine.store, args.session)
        return await engine.open_session(sid), False
    session = await engine.create_session(
        cfg.model,
        image_config=image_config_from_args(args),
        response_modalities=[m.strip() for m in args.modalities.split(",")],
        budget=budget_from_args(args),
        title=args.title,
        thinking_level=args.thinking,
    )
    return session, True


async def _edit(args: argparse.Namespace, cfg: EngineConfig) -> int:
    demo: bool = args.demo
    if args.json:
        pass  # stderr carries nothing but an error line
    elif demo:
        err("nanoedit demo: 3 turns on the embedded emulator (offline, no key needed)")
    elif cfg.provider == "local":
        err("nanoedit: no API key configured; using the embedded emulator (offline)")
    out = Path(args.out)
    prompts: Sequence[str] = args.prompts
    images: list[Path | Reference] = [Path(p) for p in args.image]
    images += _references(args)
    summaries: list[dict[str, Any]] = []
    store = open_store(args.store, cfg)
    writer = EventWriter(args.events) if args.events else None
    session: Session | None = None
    history: Path | None = None
    async with store, Engine(cfg, store=store) as engine:
        unsubscribe = engine.bus.on("*", writer) if writer else None
        created = False
        try:
            session, created = await _open_or_create(engine, args, cfg)
            if not created:
                _check_continued_out(out, session.id, force=args.force)
            if not args.json:
                err(f"session {session.id} ({session.model})")
            before = len(session.state.path())  # the turns the session already has
            for n, prompt in enumerate(prompts, start=1):
                if not args.json:
                    err(f"turn {before + n}/{before + len(prompts)}: {prompt}")
                turn = await _run_turn(
                    engine,
                    session,
                    prompt,
                    images if n == 1 else [],
                    stream=cfg.stream,
                    quiet=args.json,
                    # A new session's first prompt draws the picture the region then edits.
                    region=_region(args) if session.head is not None else None,
                    variants=getattr(args, "variants", 1),
                )
                if getattr(args, "variants", 1) > 1:
                    takes = _save_takes(turn, session, out)
                    paths = takes[: len(turn.images)]  # the head take's, in the summary
                    summary = _turn_summary(turn, session, paths)
                    summary["takes"] = [str(p) for p in takes]
                else:
                    paths = _save_images(turn, out)
                    summary = _turn_summary(turn, session, paths)
                summaries.append(summary)
                if not args.json:
                    sizes = ", ".join(f"{i['width']}x{i['height']}" for i in summary["images"])
                    err(
                        f"  done in {turn.latency_s:.2f}s, attempts {turn.attempts}, "
                        f"images [{sizes}], tokens {summary['tokens_used']} "
                        f"(window left {summary['window_left']}), ${turn.cost_usd:.4f}"
                    )
                    for p in paths:
                        err(f"  wrote {p}")
        finally:
            if unsubscribe:
                unsubscribe()
            if writer:
                writer.close()
            if session is not None:
                if created and not session.contents():
                    # A new session whose first turn failed holds nothing worth keeping.
                    await store.delete(session.id)
                    session = None
                else:
                    # A memory store's session (the demo's) cannot be continued: no mark.
                    history = _write_history(session, out, mark=args.store != "memory")
    assert session is not None
    if args.json:
        doc = {"session_id": session.id, "model": session.model, "turns": summaries}
        sys.stdout.write(msgspec.json.encode(doc).decode() + "\n")
    else:
        err(f"wrote {history}")
        if not demo and args.events != "-":
            # A session in the demo's memory store cannot be continued: no id to print.
            print(session.id)
    return 0


def _references(args: argparse.Namespace) -> list[Reference]:
    """--ref ROLE=PATH, in order."""
    out = []
    for given in getattr(args, "ref", []):
        role, sep, path = given.partition("=")
        if not sep or not path:
            raise ConfigError(f"--ref {given!r}: expected ROLE=PATH, e.g. style=painting.png")
        if not Path(path).is_file():
            raise ConfigError(f"--ref {given}: no such file")
        out.append(Reference(Path(path), role.strip()))
    return out


def _region(args: argparse.Namespace) -> Region | None:
    """--region X0,Y0,X1,Y1 or --mask FILE."""
    box, mask = getattr(args, "region", None), getattr(args, "mask", None)
    if box and mask:
        raise ConfigError("--region and --mask: give one of them")
    if box:
        try:
            x0, y0, x1, y1 = (int(v) for v in box.split(","))
        except ValueError:
            raise ConfigError(f"--region {box!r}: expected X0,Y0,X1,Y1 in pixels") from None
        return Region.from_box(x0, y0, x1, y1)
    if mask:
        try:
            return Region.from_mask(Path(mask).read_bytes())
        except OSError as exc:
            raise ConfigError(f"--mask {mask}: {exc.strerror}") from None
    return None


def run(args: argparse.Namespace) -> int:
    """Carry out `edit` or `demo`; the exit code."""
    if args.json and args.events == "-":
        raise ConfigError("--json and --events - both want stdout: give --events a FILE")
    cfg = config_from_args(args, force_local=args.demo)
    # A malformed --region or --ref, a missing file: refused before anything starts.
    _region(args)
    _references(args)
    for image in args.image:
        path = Path(image)
        if not path.is_file():
            raise ConfigError(f"--image {image}: no such file")
    _prepare_out(Path(args.out), force=args.force, continuing=bool(args.session))
    return run_loop(_edit(args, cfg))
