"""`nanoedit sessions`: list, show, export, import, undo, redo, checkout, fork and remove
stored sessions.

Session ids may be given as a unique prefix, like git commits. Turn numbers are 1-based along
the current branch, matching the image files `turn-01.png`, `turn-02.png`, ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.to_thread

from engine._config import EngineConfig
from engine.cli._common import event_loop_name, open_store, resolve_session_id
from engine.providers import scope_of
from engine.runtime import Lease, describe_holder, holder_is_dead, new_owner
from sessions import (
    Blob,
    Catalog,
    Content,
    NanoeditError,
    SessionError,
    SessionState,
    SessionStore,
    TurnRecord,
    check_store,
    checkout,
    delete,
    export_session,
    fork,
    image_dimensions,
    import_session,
    redo,
    undo,
)

__all__ = ["add_parser", "run"]

_READ_ONLY = ("ls", "show", "export", "check")
_EXAMPLES = {
    "ls": "ls --json",
    "show": "show 3f2a",
    "export": "export 3f2a -o mug.json",
    "import": "import mug.json",
    "undo": "undo 3f2a",
    "redo": "redo 3f2a",
    "checkout": "checkout 3f2a 2",
    "fork": "fork 3f2a --at 2",
    "rm": "rm 3f2a",
    "check": "check",
}


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `sessions` and its subcommands on the `nanoedit` parser."""
    store_help = (
        "SQLite file of the session store, a postgresql:// DSN, or 'memory' (default: "
        "$NANOEDIT_STORE, else $NANOEDIT_HOME/sessions.db, else the platform's user data dir)"
    )
    p = subparsers.add_parser(
        "sessions",
        help="inspect, export, import, undo, redo and fork stored sessions",
        description=__doc__,
        epilog="example:\n  nanoedit sessions ls\n  nanoedit sessions show 3f2a\n"
        "  nanoedit sessions export 3f2a -o mug.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.set_defaults(run=run)
    p.add_argument("--store", metavar="PATH|DSN|memory", help=store_help)
    sub = p.add_subparsers(dest="sessions_command", required=True, metavar="SUBCOMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=f"example:\n  nanoedit sessions {_EXAMPLES[name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,
        )
        # Also accepted after the subcommand; SUPPRESS keeps it from clobbering the outer one.
        c.add_argument(
            "--store", metavar="PATH|DSN|memory", default=argparse.SUPPRESS, help=store_help
        )
        return c

    c = command("ls", "list sessions, most recently updated first")
    c.add_argument(
        "--json",
        action="store_true",
        help="a JSON list of {id, model, title, turns, total_turns, created, updated}; "
        "times are ISO-8601 in UTC",
    )
    c = command("show", "the turn tree of a session, branches and head marked")
    c.add_argument("id", metavar="ID")
    c.add_argument("--json", action="store_true", help="the session and every turn as JSON")
    c = command("export", "write a session as a Gemini REST request (JSON)")
    c.add_argument("id", metavar="ID")
    c.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    g = c.add_mutually_exclusive_group()
    g.add_argument(
        "--all-branches", action="store_true", help="every turn of the tree in the metadata"
    )
    g.add_argument(
        "--request-only",
        action="store_true",
        help="only the request fields, so a real server accepts the file",
    )
    c.add_argument(
        "--keep-file-refs",
        action="store_true",
        help="images uploaded with the Files API (to the configured provider, with its key) "
        "stay fileData references instead of inline bytes; the file is then not "
        "self-contained and only works there for the uploads' 48 hours",
    )
    c = command("import", 'store a session from an export or a {"contents": [...]} file')
    c.add_argument("file", metavar="FILE", help="the JSON file, or - for stdin")
    c.add_argument("--model", help="model for files that name none (default: $NANOEDIT_MODEL)")
    c = command("undo", "move the head back one turn")
    c.add_argument("id", metavar="ID")
    c = command("redo", "move the head forward one turn")
    c.add_argument("id", metavar="ID")
    c = command("checkout", "put the head on a turn: its number on the branch, or a turn id")
    c.add_argument("id", metavar="ID")
    c.add_argument("turn", metavar="TURN")
    c = command("fork", "copy turns 1..N of the current branch into a new session; prints its id")
    c.add_argument("id", metavar="ID")
    c.add_argument("--at", type=int, metavar="N", help="last turn to keep (default: the head)")
    c = command("rm", "delete a session (refused while another process holds its lease)")
    c.add_argument("id", metavar="ID")
    c = command(
        "check",
        "verify the store: roles, parts, images, blob digests, heads, parents, stale leases; "
        "exits 1 on any problem",
    )
    c.add_argument("ids", nargs="*", metavar="ID", help="sessions to check (default: all)")
    for name in ("undo", "redo", "checkout", "rm"):
        sub.choices[name].add_argument(
            "--on-busy",
            choices=("raise", "wait"),
            default="raise",
            help="another process is changing the session: fail at once, or wait for it",
        )


def run(args: argparse.Namespace) -> int:
    """Carry out a parsed `sessions` command; print errors as one line; return the exit code."""
    try:
        uvloop = event_loop_name() == "uvloop"
        return anyio.run(_run, args, backend_options={"use_uvloop": uvloop})
    except (NanoeditError, OSError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1


async def _run(args: argparse.Namespace) -> int:
    command: str = args.sessions_command
    cfg = EngineConfig.from_env(warn=False)
    async with open_store(args.store, cfg, read_only=command in _READ_ONLY) as store:
        if command == "ls":
            await _ls(store, as_json=args.json)
        elif command == "show":
            state = await store.load(await resolve_session_id(store, args.id))
            print(json.dumps(_show_json(state), indent=2) if args.json else _show_text(state))
        elif command == "export":
            await _export(store, args)
        elif command == "import":
            await _import(store, args)
        elif command in ("undo", "redo", "checkout"):
            sid = await resolve_session_id(store, args.id)
            async with _lease(store, sid, args).held():
                if command == "undo":
                    await undo(store, sid)
                elif command == "redo":
                    await redo(store, sid)
                else:
                    await checkout(store, sid, _turn_id(await store.load(sid), args.turn))
            print(_head_line(await store.load(sid)))
        elif command == "fork":
            rec = await fork(store, await resolve_session_id(store, args.id), at_index=args.at)
            print(rec.id)
        elif command == "rm":
            sid = await resolve_session_id(store, args.id)
            async with _lease(store, sid, args).held():
                await delete(store, sid)
            print(f"deleted {sid}")
        elif command == "check":
            return await _check(store, args.ids)
        else:  # pragma: no cover - argparse only lets the names above through
            raise SessionError(f"unknown sessions command {command!r}")
    return 0


def _lease(store: SessionStore, session_id: str, args: argparse.Namespace) -> Lease:
    # A head move or a removal takes the session's lease like a turn: a turn running in another
    # process is never pulled from under its commit.
    return Lease(store, session_id, new_owner(), ttl=30.0, on_busy=args.on_busy)


async def _check(store: SessionStore, given: list[str]) -> int:
    ids = [await resolve_session_id(store, g) for g in given] if given else None
    problems = list(await check_store(store, ids))
    for summary in await store.list():
        if ids is not None and summary.id not in ids:
            continue
        holder = await store.lease_holder(summary.id)
        if holder is not None and holder_is_dead(holder.owner):
            problems.append(
                f"session {summary.id}: stale lease of a process that is gone "
                f"({describe_holder(holder)})"
            )
    for problem in problems:
        print(problem)
    checked = len(ids) if ids is not None else len(await store.list())
    print(f"{checked} session(s) checked, {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


def _turn_id(state: SessionState, given: str) -> str:
    """A turn id from a number on the current branch, or a (prefix of a) turn id."""
    if given.isdigit() and len(given) < 6:
        return state.at_index(int(given)).id
    matches = [t for t in state.turns if t.startswith(given)]
    if len(matches) != 1:
        what = "no turn" if not matches else "more than one turn"
        raise SessionError(f"{what} {given!r} in session {state.id}")
    return matches[0]


# --- ls --------------------------------------------------------------------------------------


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _local(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


async def _ls(store: SessionStore, *, as_json: bool) -> None:
    rows = await store.list()
    if as_json:
        out = [
            {
                "id": s.id,
                "model": s.model,
                "title": s.title,
                "turns": s.turns,
                "total_turns": s.total_turns,
                "created": _iso(s.created),
                "updated": _iso(s.updated),
            }
            for s in rows
        ]
        print(json.dumps(out, indent=2))
        return
    if not rows:
        print("no sessions")
        return
    table = [("ID", "TURNS", "MODEL", "UPDATED", "TITLE")]
    table += [
        (s.id, f"{s.turns}/{s.total_turns}", s.model, _local(s.updated), s.title) for s in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)) + "  " + r[4])


# --- show ------------------------------------------------------------------------------------


def _bytes(n: int) -> str:
    for unit, scale in (("MB", 1_000_000), ("kB", 1_000)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _images(content: Content) -> str:
    imgs = content.images()
    if not imgs:
        return ""
    return f"{len(imgs)} img (" + ", ".join(_image_text(b) for b in imgs) + ")"


def _image_text(blob: Blob) -> str:
    size = image_dimensions(blob.data)
    dims = f"{size[0]}x{size[1]} " if size else ""
    return f"{dims}{_bytes(len(blob.data))}"


def _user_text(turn: TurnRecord, width: int = 40) -> str:
    text = " ".join(turn.user.text().split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _label(turn: TurnRecord, state: SessionState, on_branch: set[str]) -> str:
    mark = "*" if turn.id in on_branch else " "
    bits = [f"{mark} #{turn.index} {turn.id[:8]}", json.dumps(_user_text(turn), ensure_ascii=False)]
    if shown := _images(turn.user):
        bits.append("in " + shown)
    if shown := _images(turn.model):
        bits.append("out " + shown)
    bits.append(f"{turn.usage.prompt_tokens}/{turn.usage.output_tokens} tok")
    bits.append(f"${turn.cost_usd:.4f}")
    line = "  ".join(bits)
    if turn.id == state.record.head:
        line += "  <- head"
    elif turn.id == state.record.tip:
        line += "  <- tip (redo)"
    return line


def _tree(state: SessionState) -> list[str]:
    """One line per turn; a straight run stays in its column, each branch point indents."""
    kids: dict[str | None, list[TurnRecord]] = {}
    for t in sorted(state.turns.values(), key=lambda t: t.created_at):
        kids.setdefault(t.parent, []).append(t)
    on_branch = {t.id for t in state.path()}
    lines: list[str] = []

    def chain(turn: TurnRecord, first: str, rest: str) -> None:
        prefix = first
        while True:  # iterate along single-child runs; recurse only at branch points
            lines.append(prefix + _label(turn, state, on_branch))
            children = kids.get(turn.id, [])
            if len(children) != 1:
                break
            turn, prefix = children[0], rest
        fan(children, rest)

    def fan(children: list[TurnRecord], rest: str) -> None:
        for i, child in enumerate(children):
            last = i == len(children) - 1
            chain(child, rest + ("└─ " if last else "├─ "), rest + ("   " if last else "│  "))

    roots = kids.get(None, [])
    if len(roots) == 1:
        chain(roots[0], "", "")
    else:
        fan(roots, "")
    return lines


def _head_line(state: SessionState) -> str:
    head = state.record.head
    where = f"turn {state.turn(head).index} ({head[:8]})" if head else "before turn 1"
    return f"{state.id}: head at {where} of {len(state.turns)} turns"


def _show_text(state: SessionState) -> str:
    rec = state.record
    n_branches = len(state.branches())
    cost = sum(t.cost_usd for t in state.turns.values())
    out = [f"session  {rec.id}" + (f"  {rec.title!r}" if rec.title else "")]
    out.append(f"model    {rec.model}")
    out.append(f"created  {_local(rec.created_at)}   updated {_local(rec.updated_at)}")
    if rec.parent_id:
        out.append(f"forked   from {rec.parent_id} at turn {rec.forked_at}")
    head = state.turn(rec.head).index if rec.head else 0
    out.append(
        f"head     turn {head} of {len(state.turns)} turns, "
        f"{n_branches} branch{'es' if n_branches != 1 else ''}, ${cost:.4f} total"
    )
    out.append("")
    out.extend(_tree(state) or ["(no turns)"])
    return "\n".join(out)


def _image_json(blob: Blob) -> dict[str, Any]:
    size = image_dimensions(blob.data)
    return {
        "mime_type": blob.mime_type,
        "bytes": len(blob.data),
        "width": size[0] if size else None,
        "height": size[1] if size else None,
    }


def _show_json(state: SessionState) -> dict[str, Any]:
    rec = state.record
    on_branch = {t.id for t in state.path()}
    return {
        "id": rec.id,
        "model": rec.model,
        "title": rec.title,
        "head": rec.head,
        "tip": rec.tip,
        "version": rec.version,
        "created": _iso(rec.created_at),
        "updated": _iso(rec.updated_at),
        "parent_id": rec.parent_id,
        "forked_at": rec.forked_at,
        "branches": len(state.branches()),
        "turns": [
            {
                "id": t.id,
                "parent": t.parent,
                "index": t.index,
                "on_branch": t.id in on_branch,
                "head": t.id == rec.head,
                "text": t.user.text(),
                "model_text": t.model.text(),
                "user_images": [_image_json(b) for b in t.user.images()],
                "model_images": [_image_json(b) for b in t.model.images()],
                "prompt_tokens": t.usage.prompt_tokens,
                "output_tokens": t.usage.output_tokens,
                "cost_usd": t.cost_usd,
                "finish_reason": t.finish_reason,
                "created": _iso(t.created_at),
            }
            for t in sorted(state.turns.values(), key=lambda t: t.created_at)
        ],
    }


# --- export / import -------------------------------------------------------------------------


async def _export(store: SessionStore, args: argparse.Namespace) -> None:
    state = await store.load(await resolve_session_id(store, args.id))
    refs = None
    if args.keep_file_refs:
        cfg = EngineConfig.from_env(warn=False)
        scope = scope_of(cfg.resolved_base_url, cfg.api_key.reveal())
        digests = {hashlib.sha256(b.data).hexdigest() for c in state.contents() for b in c.images()}
        refs = await store.file_refs(scope, digests)
    data = export_session(
        state,
        include_all_branches=args.all_branches,
        request_only=args.request_only,
        file_refs=refs,
    )
    if args.output and args.output != "-":
        await anyio.Path(args.output).write_bytes(data)
        print(f"wrote {args.output} ({_bytes(len(data))})", file=sys.stderr)
    else:
        sys.stdout.buffer.write(data + b"\n")
        sys.stdout.buffer.flush()


async def _import(store: SessionStore, args: argparse.Namespace) -> None:
    if args.file == "-":
        data = await anyio.to_thread.run_sync(sys.stdin.buffer.read)
    else:
        data = await anyio.Path(args.file).read_bytes()
    cfg = EngineConfig.from_env(warn=False)
    # The models this installation knows (NANOEDIT_CATALOG included): a session naming another
    # could not be opened, so it is refused now.
    rec = await import_session(
        store, data, model=args.model or cfg.model, catalog=Catalog.load(cfg.catalog)
    )
    print(rec.id)
