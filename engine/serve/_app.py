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

import aiohttp_cors
from aiohttp import web

from engine.runtime import Engine
from engine.serve._gateway import GATEWAY, OPENAPI, Gateway, ServeOptions
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
    app.on_shutdown.append(_close_streams)
    return app


async def _close_streams(app: web.Application) -> None:
    app[GATEWAY].close_streams()
