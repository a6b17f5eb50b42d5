"""`nanoedit serve`: the HTTP gateway and studio in front of an engine (see `_app`)."""

from typing import Any as _Any

from engine.serve._app import create_app
from engine.serve._gateway import GATEWAY, Gateway, ServeOptions
from engine.serve._http import STATUS, status_of
from engine.serve._routes import ROUTES, Route
from engine.serve._tenants import load_keys

__all__ = [
    "GATEWAY",
    "ROUTES",
    "STATUS",
    "Gateway",
    "McpHttp",
    "Route",
    "ServeOptions",
    "build_mcp",
    "create_app",
    "load_keys",
    "status_of",
]


_LAZY = ("McpHttp", "build_mcp")


def __getattr__(name: str) -> _Any:
    # The MCP face imports the optional `mcp` SDK: loaded on first use only.
    if name in _LAZY:
        from engine.serve import _mcp

        return getattr(_mcp, name)
    raise AttributeError(f"module 'engine.serve' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
