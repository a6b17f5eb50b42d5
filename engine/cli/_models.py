"""`nanoedit models`: the catalog (built-in, plus NANOEDIT_CATALOG or --catalog): ids, aliases,
status, context window, sizes, thinking levels and prices.

`--refresh` reads the provider's model list (`GET /v1beta/models`, every page) and reports image
models the provider serves that the catalog lacks, catalog ids it no longer lists, and limits
that differ (inputTokenLimit, outputTokenLimit); what it learned is written to the TOML overlay
(--catalog FILE, NANOEDIT_CATALOG, or catalog.toml in the data directory), which the next start
reads with --catalog / NANOEDIT_CATALOG."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from engine._config import EngineConfig
from engine._exceptions import NanoeditError
from engine.cli._common import add_provider_options, config_from_args, run_loop
from sessions import Catalog, CatalogDrift, ModelSpec, default_store_path, overlay_toml

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `models`."""
    p = sub.add_parser(
        "models",
        help="list the models: ids, aliases, status, context, sizes, prices",
        description=__doc__,
        epilog="example:\n  nanoedit models\n  nanoedit models --json --catalog my-models.toml\n"
        "  nanoedit models --refresh --catalog ~/nanoedit-models.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--json", action="store_true", help="a JSON list, one object per model")
    p.add_argument(
        "--refresh",
        action="store_true",
        help="compare with the provider's model list and write what drifted to the overlay",
    )
    add_provider_options(p, model_default=None)
    p.set_defaults(run=run)


def _row(spec: ModelSpec) -> dict[str, Any]:
    prices = spec.prices
    return {
        "id": spec.id,
        "aliases": list(spec.aliases),
        "status": spec.status,
        "replacement": spec.replacement,
        "context_window": spec.context_window,
        "max_input_images": spec.max_input_images,
        "deprecated_on": spec.deprecated_on,
        "shut_down_on": spec.shut_down_on,
        "sizes": list(spec.sizes) or [spec.default_size],
        "thinking_levels": list(spec.thinking_levels),
        "default_thinking": spec.default_thinking,
        "ratios": list(spec.ratios),
        "image_price_usd": dict(prices.image_by_size),
        "input_per_million_usd": prices.input_per_million,
        "output_per_million_usd": prices.text_output_per_million,
        "cached_input_per_million_usd": prices.cached_rate(),
        "per_request_usd": dict(prices.per_request),
    }


def run(args: argparse.Namespace) -> int:
    """Print the catalog (or, with --refresh, what drifted); the exit code."""
    path = args.catalog or os.environ.get("NANOEDIT_CATALOG") or None
    if args.refresh:
        try:
            return _refresh(args, path)
        except (NanoeditError, OSError) as exc:
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return 1
    catalog = Catalog.load(path)
    rows = [_row(spec) for spec in catalog.models.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'id':31} {'aliases':18} {'status':10} {'use instead':23} {'context':>8}  "
        f"{'thinking':21} $ per image"
    )
    for r in rows:
        prices = ", ".join(f"{k} ${v:g}" for k, v in r["image_price_usd"].items())
        thinking = "/".join(r["thinking_levels"]) or "-"
        print(
            f"{r['id']:31} {','.join(r['aliases']) or '-':18} {r['status']:10} "
            f"{r['replacement'] or '-':23} {r['context_window']:>8,}  {thinking:21} {prices}"
        )
    return 0


def _refresh(args: argparse.Namespace, path: str | None) -> int:
    if path and not Path(path).exists():
        args.catalog = None  # the overlay is written, not read, this time
    cfg = config_from_args(args)
    if cfg.catalog is not None and not cfg.catalog.exists():
        cfg = dataclasses.replace(cfg, catalog=None)
    drift = run_loop(_drift(cfg))
    target = Path(path) if path else default_store_path(cfg.home).with_name("catalog.toml")
    written = _write_overlay(target, drift) if not drift.empty else None
    if args.json:
        doc: dict[str, Any] = {
            "added": [m.id for m in drift.added],
            "missing": drift.missing,
            "changed": [
                {"id": c.id, "field": c.field, "catalog": c.catalog, "provider": c.provider}
                for c in drift.changed
            ],
            "overlay": str(written) if written else None,
        }
        print(json.dumps(doc, indent=2))
        return 0
    _print_drift(drift)
    if written is not None:
        print(f"wrote {written}: start with --catalog {written} (or NANOEDIT_CATALOG) to use it")
    return 0


async def _drift(cfg: EngineConfig) -> CatalogDrift:
    from engine.runtime import Engine

    async with Engine(cfg) as engine:
        return await engine.refresh_catalog()


def _print_drift(drift: CatalogDrift) -> None:
    if drift.empty:
        print("the catalog matches the provider's model list")
        return
    for model in drift.added:
        print(f"new at the provider: {model.id} (input {model.input_token_limit:,} tokens)")
    for model_id in drift.missing:
        print(f"no longer listed:    {model_id}")
    for change in drift.changed:
        print(
            f"changed:             {change.id} {change.field} "
            f"{change.catalog:,} -> {change.provider:,}"
        )


def _write_overlay(target: Path, drift: CatalogDrift) -> Path:
    """Merge what drifted into the overlay file (its other entries kept); its path."""
    entries: dict[str, dict[str, Any]] = {}
    if target.exists():
        with open(target, "rb") as fh:
            existing = tomllib.load(fh).get("models", {})
        entries = {k: dict(v) for k, v in existing.items() if isinstance(v, dict)}
    for model_id, entry in drift.overlay(time.strftime("%Y-%m-%d")).items():
        entries.setdefault(model_id, {}).update(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = "# Written by `nanoedit models --refresh`; edit freely.\n\n" + overlay_toml(entries)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(target)
    Catalog.load(target)  # what was written loads
    return target
