"""`nanoedit serve`: sessions over REST, turn events over SSE, images by URL, tenants by key.

The application is its route table (`_routes`: the router and `/openapi.json` both come from
it), the error middleware (`_middleware`: statuses by exception class, `_http.STATUS`), CORS by
aiohttp-cors (preflights answered per route), and one `Gateway` (`_gateway`) holding the engine
and what the HTTP side keeps while requests run. Turns run in tasks of their own: a client that
goes away mid-turn does not cancel it (`POST .../cancel` does), and a draining server lets them
finish. Everything a request asks for is checked before anything changes: a bad request never
changes a session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp_cors
from aiohttp import web

from engine.runtime import Engine
from engine.serve._gateway import GATEWAY, OPENAPI, Gateway, ServeOptions
from engine.serve._http import HttpError
from engine.serve._middleware import errors
from engine.serve._openapi import openapi_document
from engine.serve._routes import ROUTES

__all__ = ["create_app"]

# Request headers a browser app may send, and answer headers it may read.
_CORS_ALLOW = ("Authorization", "Content-Type", "Last-Event-ID")
_CORS_EXPOSE = ("Retry-After", "ETag")


def create_app(engine: Engine, options: ServeOptions | None = None) -> web.Application:
    """The gateway as an aiohttp application around a started engine."""
    options = options or ServeOptions()
    app = web.Application(
        middlewares=[errors], client_max_size=options.max_body_bytes + 1024 * 1024
    )
    app[GATEWAY] = Gateway(engine, options)
    app[OPENAPI] = openapi_document(ROUTES)
    routes = [
        # GET answers HEAD too (headers only), except the endless event stream.
        app.router.add_get(r.path, r.handler, allow_head=r.answer != "sse")
        if r.method == "GET"
        else app.router.add_route(r.method, r.path, r.handler)
        for r in ROUTES
    ]
    if options.cors_origins:
        defaults = {
            origin: aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]  # untyped lib
                allow_headers=_CORS_ALLOW, expose_headers=_CORS_EXPOSE, max_age=600
            )
            for origin in options.cors_origins
        }
        cors = aiohttp_cors.setup(app, defaults=defaults)
        for route in routes:
            cors.add(route)
    app.router.add_route("*", "/mcp", _mcp_handler(app))
    app.on_shutdown.append(_close_streams)
    return app


def _mcp_handler(app: web.Application) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """`/mcp` (Streamable HTTP): the MCP face when the SDK is installed, else 501 saying so."""
    try:
        import mcp  # noqa: F401
    except ImportError:  # pragma: no cover - the extra is not installed

        async def missing(request: web.Request) -> web.StreamResponse:
            raise HttpError(501, "NotImplemented", "MCP needs: pip install 'nanoedit[mcp]'")

        return missing
    from engine.serve._mcp import McpHttp

    face = McpHttp(app[GATEWAY])

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        await face.start()
        yield
        await face.stop()

    app.cleanup_ctx.append(lifetime)
    return face.handle


async def _close_streams(app: web.Application) -> None:
    app[GATEWAY].close_streams()
