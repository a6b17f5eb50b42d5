"""The error middleware: every failure leaves as the JSON error shape with its documented status
-- never a traceback, a header value, a key or image bytes."""

from __future__ import annotations

import traceback
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from aiohttp import web

from engine._exceptions import NanoeditError
from engine.serve._http import JSON, HttpError, error_response, status_of

__all__ = ["errors"]

log = structlog.get_logger("nanoedit.serve")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Headers of aiohttp's own answers worth keeping on the JSON error (405's Allow).
_KEPT = ("Allow",)


_OPENAI_PATHS = ("/v1/models", "/v1/chat/", "/v1/responses", "/v1/images/generations",
                 "/v1/images/edits")  # fmt: skip


def _openai_shape(response: web.Response, status: int, kind: str, message: str) -> web.Response:
    """The same error in OpenAI's shape: `{"error": {"message", "type", "code", "param"}}`."""
    from engine.serve._openai import openai_type

    body = {"error": {"message": message, "type": openai_type(status), "code": kind,
                      "param": None}}  # fmt: skip
    response.body = msgspec.json.encode(body)
    response.content_type = JSON
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map what a handler raises onto `{"error": {...}}` and the status of its class (on the
    OpenAI-compatible routes, in OpenAI's error shape)."""
    response = await _errors(request, handler)
    if (
        isinstance(response, web.Response)
        and response.status >= 400
        and request.path.startswith(_OPENAI_PATHS)
        and isinstance(response.body, bytes)
    ):
        try:
            error = msgspec.json.decode(response.body)["error"]
        except (msgspec.DecodeError, KeyError, TypeError):
            return response
        return _openai_shape(response, response.status, error["type"], error["message"])
    return response


async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = {k: v for k in _KEPT if (v := exc.headers.get(k)) is not None}
        return error_response(exc.status, type(exc).__name__, exc.reason, headers=kept)
    except HttpError as exc:
        return error_response(exc.status, exc.kind, exc.message, exc.retry_after)
    except NanoeditError as exc:  # StoreError included
        status, retry_after = status_of(exc)
        return error_response(status, type(exc).__name__, str(exc), retry_after)
    except Exception as exc:
        # The traceback as plain text: frames only, no local variables (a renderer that shows
        # locals would print the request's headers, keys included).
        log.error(
            "serve.internal_error",
            path=request.path,
            error_type=type(exc).__name__,
            traceback="".join(traceback.format_exception(exc, chain=False)),
        )
        return error_response(500, "InternalError", "internal error in nanoedit serve")
