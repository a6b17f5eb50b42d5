"""The error middleware: every failure leaves as the JSON error shape with its documented status
-- never a traceback, a header value, a key or image bytes."""

from __future__ import annotations

import traceback
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from engine._exceptions import NanoeditError
from engine.serve._http import HttpError, error_response, status_of

__all__ = ["errors"]

log = structlog.get_logger("nanoedit.serve")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Headers of aiohttp's own answers worth keeping on the JSON error (405's Allow).
_KEPT = ("Allow",)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map what a handler raises onto `{"error": {...}}` and the status of its class."""
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
