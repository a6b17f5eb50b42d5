"""`nanoedit serve`: the HTTP gateway and studio in front of an engine (see `_app`)."""

from engine.serve._app import GATEWAY, Gateway, ServeOptions, create_app, status_of
from engine.serve._tenants import load_keys

__all__ = ["GATEWAY", "Gateway", "ServeOptions", "create_app", "load_keys", "status_of"]
