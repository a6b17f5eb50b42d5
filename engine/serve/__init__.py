"""`nanoedit serve`: the HTTP gateway and studio in front of an engine (see `_app`)."""

from engine.serve._app import Gateway, ServeOptions, create_app, status_of

__all__ = ["Gateway", "ServeOptions", "create_app", "status_of"]
