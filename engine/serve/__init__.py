"""`nanoedit serve`: the HTTP gateway and studio in front of an engine (see `_app`)."""

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
    "Route",
    "ServeOptions",
    "create_app",
    "load_keys",
    "status_of",
]
