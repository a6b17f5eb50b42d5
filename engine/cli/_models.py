"""`nanoedit models`: the catalog (built-in, plus NANOEDIT_CATALOG or --catalog): ids, aliases,
status, context window, sizes and prices."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from sessions import Catalog, ModelSpec

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `models`."""
    p = sub.add_parser(
        "models",
        help="list the models: ids, aliases, status, context, sizes, prices",
        description=__doc__,
        epilog="example:\n  nanoedit models\n  nanoedit models --json --catalog my-models.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--json", action="store_true", help="a JSON list, one object per model")
    p.add_argument("--catalog", metavar="FILE", help="TOML file of models to add or override")
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
        "sizes": list(spec.sizes) or [spec.default_size],
        "ratios": list(spec.ratios),
        "image_price_usd": dict(prices.image_by_size),
        "input_per_million_usd": prices.input_per_million,
        "output_per_million_usd": prices.text_output_per_million,
        "cached_input_per_million_usd": prices.cached_rate(),
        "per_request_usd": dict(prices.per_request),
    }


def run(args: argparse.Namespace) -> int:
    """Print the catalog; the exit code."""
    path = args.catalog or os.environ.get("NANOEDIT_CATALOG") or None
    catalog = Catalog.load(path)
    rows = [_row(spec) for spec in catalog.models.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'id':31} {'aliases':16} {'status':10} {'use instead':23} {'context':>8}  $ per image")
    for r in rows:
        prices = ", ".join(f"{k} ${v:g}" for k, v in r["image_price_usd"].items())
        print(
            f"{r['id']:31} {','.join(r['aliases']) or '-':16} {r['status']:10} "
            f"{r['replacement'] or '-':23} {r['context_window']:>8,}  {prices}"
        )
    return 0
