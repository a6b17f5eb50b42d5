"""`nanoedit batch`: many single-turn requests through the Batch API, at half price.

    nanoedit batch items.jsonl --out results/      submit, wait (a live progress line), write
    nanoedit batch items.jsonl --no-wait           submit and print the job id
    nanoedit batch status|results|cancel ID        follow a job from any process (same --store)
    nanoedit batch ls                              the jobs recorded in the store

Each line of the file is `{"key": "...", "prompt": "...", "images": ["path", ...],
"image_config": {"aspect_ratio": ..., "image_size": ...}}` (image paths relative to the file).
Results: `DIR/<key>.<ext>` per image and `DIR/results.jsonl` (key, status, image paths, usage,
cost, error). An item that failed is a line with its error, not a failed command; a job that
failed, was cancelled or expired exits 1 saying so.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import anyio.to_thread
import msgspec

from engine._exceptions import ConfigError
from engine.cli._common import (
    add_provider_options,
    config_from_args,
    open_store,
    run_loop,
)
from engine.providers import BatchOperation
from engine.runtime import FINAL_STATES, BatchItem, BatchResult, Engine, read_items
from sessions import ImageConfig

__all__ = ["add_parser", "run"]

_ACTIONS = ("status", "results", "cancel", "ls")
_SAFE_KEY = re.compile(r"[^A-Za-z0-9._-]+")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `batch`."""
    p = sub.add_parser(
        "batch",
        help="many single-turn requests through the Batch API (half price, within 24 h)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument(
        "target",
        nargs="+",
        metavar="FILE.jsonl | status ID | results ID | cancel ID | ls",
    )
    p.add_argument("--out", help="results directory (default: batch-<id>)")
    p.add_argument("--image-size", help="default imageSize of items that set none")
    p.add_argument("--aspect-ratio", help="default aspectRatio of items that set none")
    p.add_argument("--display-name", default="", help="the job's display name")
    p.add_argument("--no-wait", action="store_true", help="submit, print the job id, exit")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--poll", type=float, default=2.0, help="first poll after this many seconds")
    p.add_argument(
        "--store",
        help="store that records the job: a SQLite PATH or a postgresql:// DSN "
        "(default: NANOEDIT_STORE, else NANOEDIT_HOME's file)",
    )
    add_provider_options(p, model_default=None)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log lines")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Carry out `batch`; the exit code."""
    action, rest = args.target[0], args.target[1:]
    if action in _ACTIONS:
        if action == "ls":
            if rest:
                raise ConfigError("batch ls takes no arguments")
        elif len(rest) != 1:
            raise ConfigError(f"batch {action} takes one job id (batches/...)")
    elif rest:
        raise ConfigError("give one FILE.jsonl (or status|results|cancel ID, ls)")
    elif not Path(action).is_file():
        raise ConfigError(f"{action}: no such file")
    cfg = config_from_args(args)
    if cfg.preset.api != "gemini":
        raise ConfigError(f"the Batch API is Gemini-native; provider {cfg.provider!r} has none")
    items = [] if action in _ACTIONS else read_items(Path(action))
    return run_loop(_run(args, cfg, action, rest[0] if rest else "", items))


def _job_name(given: str) -> str:
    return given if given.startswith("batches/") else f"batches/{given}"


async def _run(
    args: argparse.Namespace, cfg: Any, action: str, job: str, items: list[BatchItem]
) -> int:
    async with open_store(args.store, cfg) as store, Engine(cfg, store=store) as engine:
        if action == "ls":
            jobs = await store.list_batches()
            rows: list[dict[str, Any]] = [
                {
                    "name": j.name,
                    "state": j.state,
                    "items": len(j.keys),
                    "model": j.model,
                    "created": j.created_at,
                }
                for j in jobs
            ]
            if args.json:
                print(json.dumps({"batches": rows}))
            for r in rows if not args.json else []:
                print(
                    f"{r['name']}  {r['state'].removeprefix('BATCH_STATE_'):10}  "
                    f"{r['items']:4d} items  {r['model']}"
                )
            return 0
        if action == "status":
            op = await engine.batches.status(_job_name(job))
            _print_status(op, args.json)
            return 0
        if action == "cancel":
            op = await engine.batches.cancel(_job_name(job))
            _print_status(op, args.json)
            return 0
        if action == "results":
            name = _job_name(job)
            op = await engine.batches.status(name)
            if not op.done and op.state not in FINAL_STATES:
                raise ConfigError(
                    f"{name} is still {op.state.removeprefix('BATCH_STATE_').lower()}: "
                    "try again later (or `nanoedit batch status`)"
                )
            return await _collect(engine, name, op, args)
        default = None
        if args.image_size or args.aspect_ratio:
            default = ImageConfig(aspect_ratio=args.aspect_ratio, image_size=args.image_size)
        record = await engine.batches.submit(
            items, model=args.model, image_config=default, display_name=args.display_name
        )
        if args.no_wait:
            if args.json:
                print(
                    json.dumps(
                        {"name": record.name, "state": record.state, "items": len(record.keys)}
                    )
                )
            else:
                print(record.name)
                print(
                    f"submitted {len(record.keys)} items; follow with `nanoedit batch status "
                    f"{record.name}`",
                    file=sys.stderr,
                )
            return 0
        progress = _Progress(live=sys.stderr.isatty() and not args.json)
        op = await engine.batches.wait(
            record.name, on_progress=progress, first_poll=max(args.poll, 0.01)
        )
        progress.finish()
        return await _collect(engine, record.name, op, args)


class _Progress:
    """The job's state and counts on stderr: one live line on a terminal, a line per change
    otherwise."""

    def __init__(self, *, live: bool) -> None:
        self.live = live
        self.started = time.monotonic()
        self.last = ""

    def __call__(self, op: BatchOperation) -> None:
        c = op.counts
        total = c.get("requestCount", 0)
        done = c.get("successfulRequestCount", 0) + c.get("failedRequestCount", 0)
        text = (
            f"  {time.monotonic() - self.started:6.1f}s  {op.name}  "
            f"{op.state.removeprefix('BATCH_STATE_').lower():9}  {done}/{total} done"
            f"  {c.get('failedRequestCount', 0)} failed"
        )
        state_line = text.split("s  ", 1)[1]
        if self.live:
            sys.stderr.write("\r" + text)
            sys.stderr.flush()
        elif state_line != self.last:
            print(text, file=sys.stderr, flush=True)
        self.last = state_line

    def finish(self) -> None:
        if self.live:
            print(file=sys.stderr, flush=True)


def _print_status(op: BatchOperation, as_json: bool) -> None:
    doc = {"name": op.name, "state": op.state, "done": op.done, "counts": op.counts}
    if op.error:
        doc["error"] = op.error
    if as_json:
        print(json.dumps(doc))
        return
    counts = ", ".join(f"{k} {v}" for k, v in op.counts.items())
    print(f"{op.name}: {op.state}" + (f" ({counts})" if counts else ""))
    if op.error:
        print(f"  error: {op.error}")


async def _collect(engine: Engine, name: str, op: BatchOperation, args: argparse.Namespace) -> int:
    results = await engine.batches.results(name, op)  # BatchJobFailed: exit 1 with its state
    out = Path(args.out or f"batch-{name.removeprefix('batches/')}")
    await anyio.to_thread.run_sync(_write_results, results, out)
    ok = sum(r.status == "succeeded" for r in results)
    cost = sum(r.cost_usd for r in results)
    summary = {
        "name": name,
        "state": op.state,
        "items": len(results),
        "succeeded": ok,
        "failed": len(results) - ok,
        "cost_usd": round(cost, 6),
        "out": str(out),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{name}: {ok}/{len(results)} succeeded, ${cost:.4f} at the batch price, "
            f"results in {out}/results.jsonl"
        )
    return 0


def _write_results(results: list[BatchResult], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = [_result_line(result, out) for result in results]
    (out / "results.jsonl").write_bytes(b"".join(msgspec.json.encode(x) + b"\n" for x in lines))


def _result_line(result: BatchResult, out: Path) -> dict[str, Any]:
    stem = _SAFE_KEY.sub("_", result.key) or "item"
    paths = []
    for i, image in enumerate(result.images, start=1):
        suffix = "" if i == 1 else f"-{i}"
        paths.append(str(image.save(out / f"{stem}{suffix}{image.extension}")))
    return {
        "key": result.key,
        "status": result.status,
        "images": paths,
        "text": result.text,
        "usage": msgspec.to_builtins(result.usage),
        "cost_usd": result.cost_usd,
        "finish_reason": result.finish_reason,
        "error": result.error,
    }
