"""The route table: each route declared once -- method, path, handler, body type, success and
error statuses -- and that one table drives aiohttp's router and the OpenAPI document (its error
statuses come from the exception map in `_http`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from engine.serve import _handlers as h
from engine.serve import _openai as o

__all__ = ["ROUTES", "Route"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_DIGITS = {"type": "string", "pattern": "^[0-9]+$"}
_TURN_ERRORS = (400, 401, 402, 404, 409, 413, 422, 429, 502, 503, 504)
_JSON_OBJECT = {"application/json": {"schema": {"type": "object"}}}
_OPENAI_TURN = {"application/json": {"schema": {"type": "object"}},
                "text/event-stream": {"schema": {"type": "string"}}}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Route:
    """One route: how it is served and how it is documented."""

    method: str
    path: str
    handler: Handler
    summary: str
    ok: int = 200
    # The success body: a schema name of `_api`, "sse" (events), "turn" (JSON or SSE), or an
    # inline OpenAPI media-type map.
    answer: str | dict[str, Any] | None = None
    body: str | None = None  # request body schema name
    errors: tuple[int, ...] = (401, 404)
    params: tuple[dict[str, Any], ...] = (_ID,)
    secured: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # more responses (304, ...)
    request: dict[str, Any] | None = None  # an inline request body media-type map
    openai: bool = False  # errors in OpenAI's shape


ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/sessions", h.create_session, "Create a session", ok=201,
          answer="SessionOut", body="SessionCreate", errors=(400, 401, 413, 503), params=()),
    Route("GET", "/v1/sessions", h.list_sessions, "List the key's sessions",
          answer="SessionList", errors=(401, 503), params=()),
    Route("GET", "/v1/sessions/{id}", h.get_session, "A session with its current branch",
          answer="SessionOut", params=(_ID, {"name": "tree", "in": "query", "required": False,
                                              "schema": {"type": "string", "enum": ["0", "1"]}})),
    Route("PATCH", "/v1/sessions/{id}", h.rename_session, "Rename a session",
          answer="SessionOut", body="RenameIn", errors=(400, 401, 404, 409)),
    Route("DELETE", "/v1/sessions/{id}", h.delete_session, "Delete a session", ok=204,
          errors=(401, 404, 409, 503)),
    Route("POST", "/v1/sessions/{id}/turns", h.create_turn, "Run a turn", answer="turn",
          body="TurnCreate", errors=_TURN_ERRORS),
    Route("GET", "/v1/sessions/{id}/events", h.session_events,
          "The session's events: replay after Last-Event-ID (or ?since=N), then live",
          answer="sse", errors=(400, 401, 404, 503),
          params=(_ID, {"name": "Last-Event-ID", "in": "header", "required": False,
                        "schema": _DIGITS},
                  {"name": "since", "in": "query", "required": False, "schema": _DIGITS})),
    Route("POST", "/v1/sessions/{id}/undo", h.undo, "Undo", answer="SessionOut",
          errors=(401, 404, 409)),
    Route("POST", "/v1/sessions/{id}/redo", h.redo, "Redo", answer="SessionOut",
          errors=(401, 404, 409)),
    Route("POST", "/v1/sessions/{id}/checkout", h.checkout, "Move the head",
          answer="SessionOut", body="CheckoutIn", errors=(400, 401, 404, 409)),
    Route("POST", "/v1/sessions/{id}/regenerate", h.regenerate,
          "Run the head turn's prompt again", answer="turn", errors=_TURN_ERRORS),
    Route("POST", "/v1/sessions/{id}/fork", h.fork, "Fork the current branch", ok=201,
          answer="SessionOut", body="ForkIn", errors=(400, 401, 404)),
    Route("POST", "/v1/sessions/{id}/cancel", h.cancel, "Cancel the running turn",
          answer={"application/json": {"schema": {
              "type": "object", "properties": {"cancelled": {"type": "boolean"}},
              "required": ["cancelled"]}}}),
    Route("GET", "/v1/sessions/{id}/export", h.export_session,
          "The session as a Gemini REST request",
          answer={"application/json": {"schema": {"type": "object"}}}),
    Route("GET", "/v1/images/{sha256}", h.get_image, "An image of one of the key's sessions",
          answer={"image/*": {"schema": {"type": "string", "format": "binary"}}},
          params=({"name": "sha256", "in": "path", "required": True,
                   "schema": {"type": "string"}},),
          extra={"304": {"description": "not modified (If-None-Match)"}}),
    # The OpenAI-compatible faces (errors in OpenAI's shape, same statuses).
    Route("GET", "/v1/models", o.list_models, "OpenAI: the image models and aliases",
          answer=_JSON_OBJECT, errors=(401,), params=(), openai=True),
    Route("POST", "/v1/chat/completions", o.chat_completions,
          "OpenAI: chat completions; a resent conversation continues its session",
          answer=_OPENAI_TURN, errors=_TURN_ERRORS, params=(), request=_JSON_OBJECT, openai=True),
    Route("POST", "/v1/images/generations", o.image_generations,
          "OpenAI: generate images (n sibling turns of a new session)",
          answer=_JSON_OBJECT, errors=_TURN_ERRORS, params=(), request=_JSON_OBJECT, openai=True),
    Route("POST", "/v1/images/edits", o.image_edits,
          "OpenAI: edit images (multipart); an edit of a session's latest image continues it",
          answer=_JSON_OBJECT, errors=_TURN_ERRORS, params=(), openai=True,
          request={"multipart/form-data": {"schema": {"type": "object"}}}),
    Route("POST", "/v1/responses", o.responses,
          "OpenAI: responses; previous_response_id names a turn",
          answer=_OPENAI_TURN, errors=_TURN_ERRORS, params=(), request=_JSON_OBJECT, openai=True),
    Route("GET", "/v1/responses/{id}", o.get_response, "OpenAI: a response again",
          answer=_JSON_OBJECT, openai=True),
    Route("GET", "/healthz", h.healthz, "Health: the store, Redis, draining",
          answer="Health", errors=(), params=(), secured=False,
          extra={"503": {"description": "draining, or the store or Redis is down"}}),
    Route("GET", "/metrics", h.metrics, "Prometheus metrics",
          answer={"text/plain": {"schema": {"type": "string"}}}, errors=(), params=(),
          secured=False),
    Route("GET", "/openapi.json", h.openapi, "This document",
          answer={"application/json": {"schema": {"type": "object"}}}, errors=(), params=(),
          secured=False),
    *(Route("GET", path, h.studio, "The studio", errors=(), params=(), secured=False,
            answer={"text/html": {"schema": {"type": "string"}}})
      for path in h.STUDIO_FILES),
)  # fmt: skip
"""Every route of `nanoedit serve`, in the order the router matches them."""
