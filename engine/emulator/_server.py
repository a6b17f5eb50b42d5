"""The aiohttp application and the `Emulator` that runs it on a loopback port."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import structlog
from aiohttp import web

from engine.emulator._batches import (
    cancel_batches,
    handle_batch,
    handle_batch_create,
    handle_list_batches,
)
from engine.emulator._faults import parse_faults
from engine.emulator._files import (
    handle_delete_file,
    handle_download,
    handle_get_file,
    handle_list_files,
    handle_upload,
)
from engine.emulator._gemini import (
    METHODS,
    model_call_handler,
)
from engine.emulator._generate import ApiFailure
from engine.emulator._http import (
    STATE,
    RecordedRequest,
    ServerState,
    check_openai_key,
    gemini_error,
    json_body,
    openai_error,
)
from engine.emulator._interactions import handle_create_interaction, handle_interaction
from engine.emulator._models import handle_get_model, handle_list_models
from engine.emulator._openai import (
    handle_chat_completions,
    handle_image_edits,
    handle_image_generations,
    openai_models,
)
from engine.emulator._settings import EmulatorSettings

__all__ = ["Emulator", "create_app"]

log = structlog.get_logger("nanoedit.emulator")

# Room for multipart framing and headers above the byte limit; the limit itself is enforced by
# our own capped read so the client gets Google's 400 rather than aiohttp's 413 page.
_BODY_MARGIN = 1024 * 1024
_GEMINI_PREFIXES = ("/v1beta", "/v1", "/v1alpha")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """JSON errors for unknown paths, wrong methods and bugs (never aiohttp's HTML pages)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return gemini_error(ApiFailure(exc.status, exc.reason))
    except ApiFailure as failure:
        return gemini_error(failure)
    except Exception:
        log.exception("emulator.internal_error", path=request.path)
        return gemini_error(ApiFailure(500, "Internal error in the emulator."))


async def _stats(request: web.Request) -> web.Response:
    return web.Response(body=json_body(request.app[STATE].stats()), content_type="application/json")


async def _reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.reset()
    return web.Response(body=json_body(state.stats()), content_type="application/json")


async def _expire_files(request: web.Request) -> web.Response:
    # Tests and demos of re-upload: every stored file is past its expiry from now on.
    request.app[STATE].files.expire_all()
    return web.Response(body=b"{}", content_type="application/json")


async def _expire_interactions(request: web.Request) -> web.Response:
    # Tests of the chain's fallback: every stored interaction is past its retention from now.
    expired = request.app[STATE].interactions.expire()
    return web.Response(body=json_body({"expired": expired}), content_type="application/json")


async def _v1_models(request: web.Request) -> web.StreamResponse:
    # /v1/models is both Google's (v1) and OpenAI's listing: a Bearer key means OpenAI.
    google = "x-goog-api-key" in request.headers or "key" in request.query
    if not google and "Authorization" in request.headers:
        try:
            check_openai_key(request, request.app[STATE].settings.api_key)
        except ApiFailure as failure:
            return openai_error(failure)
        listing = json_body(openai_models(request.app[STATE]))
        return web.Response(body=listing, content_type="application/json")
    return await handle_list_models(request)


async def _close_pool(app: web.Application) -> None:
    await app[STATE].pool.aclose()


def create_app(settings: EmulatorSettings = EmulatorSettings()) -> web.Application:  # noqa: B008
    """The emulator as an aiohttp application (for embedding or aiohttp's test client)."""
    app = web.Application(
        client_max_size=settings.max_request_bytes + _BODY_MARGIN, middlewares=[_errors]
    )
    app[STATE] = ServerState.create(settings)
    routes = app.router
    handle_model_call = model_call_handler({**METHODS, "batchGenerateContent": handle_batch_create})
    for prefix in _GEMINI_PREFIXES:
        routes.add_post(prefix + "/models/{name}", handle_model_call)
        routes.add_get(prefix + "/models/{name}", handle_get_model)
        if prefix != "/v1":
            routes.add_get(prefix + "/models", handle_list_models)
    routes.add_post("/upload/v1beta/files", handle_upload)
    routes.add_get("/v1beta/files", handle_list_files)
    routes.add_get("/v1beta/files/{file_id}", handle_get_file)
    routes.add_delete("/v1beta/files/{file_id}", handle_delete_file)
    routes.add_get("/download/v1beta/files/{name}", handle_download)
    routes.add_get("/v1beta/batches", handle_list_batches)
    routes.add_route("*", "/v1beta/batches/{name}", handle_batch)
    for version in ("/v1beta", "/v1"):
        routes.add_post(version + "/interactions", handle_create_interaction)
        routes.add_route("*", version + "/interactions/{id}", handle_interaction)
    routes.add_get("/v1/models", _v1_models)
    routes.add_post("/v1/chat/completions", handle_chat_completions)
    routes.add_post("/v1/images/generations", handle_image_generations)
    routes.add_post("/v1/images/edits", handle_image_edits)
    routes.add_get("/emulator/stats", _stats)
    routes.add_post("/emulator/reset", _reset)
    routes.add_post("/emulator/expire-files", _expire_files)
    routes.add_post("/emulator/expire-interactions", _expire_interactions)
    app.on_shutdown.append(cancel_batches)
    app.on_cleanup.append(_close_pool)
    return app


class Emulator:
    """The embedded Gemini/OpenAI-compatible server; `async with Emulator() as emu: ...`."""

    def __init__(
        self,
        settings: EmulatorSettings = EmulatorSettings(),  # noqa: B008
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.base_url = ""
        self._app = create_app(settings)
        self._runner: web.AppRunner | None = None

    @property
    def _state(self) -> ServerState:
        return self._app[STATE]

    @property
    def requests(self) -> list[RecordedRequest]:
        """Requests that reached a handler (only kept with `record_requests=True`)."""
        return self._state.recorded

    def stats(self) -> dict[str, Any]:
        """Request and fault counters, as GET /emulator/stats answers them."""
        return self._state.stats()

    def set_faults(self, spec: str) -> None:
        """Replace the fault spec of a running server ("" = none); ConfigError if it is bad."""
        state = self._state
        state.plan = parse_faults(spec)
        state.injector.reset()

    def expire_files(self) -> None:
        """Make every uploaded file expire now (references then answer Google's 403)."""
        self._state.files.expire_all()

    def expire_interactions(self) -> int:
        """Age every stored interaction past its retention (the chain's 404 fallback)."""
        return self._state.interactions.expire()

    def reset_stats(self) -> None:
        """Zero the counters, fault state, recorded requests and render cache."""
        self._state.reset()

    async def start(self) -> str:
        """Listen and return the base URL, e.g. "http://127.0.0.1:41234"."""
        if self._runner is not None:
            return self.base_url
        runner = web.AppRunner(
            self._app,
            access_log=None,
            handler_cancellation=True,  # a client that hangs up stops its sleep/stream
            shutdown_timeout=0.5,
        )
        await runner.setup()
        try:
            # Load tests open a thousand connections at once; the default backlog (128) drops some.
            site = web.TCPSite(runner, self.host, self.port, backlog=4096)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        address = runner.addresses[0]
        self.port = int(address[1])
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.base_url = f"http://{host}:{self.port}"
        log.info("emulator.started", base_url=self.base_url, flat=self.settings.flat)
        return self.base_url

    async def aclose(self) -> None:
        """Stop listening and release everything; safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("emulator.stopped", base_url=self.base_url)

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"Emulator(base_url={self.base_url!r}, settings={self.settings!r})"
