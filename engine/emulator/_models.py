"""The model list the emulator serves (`GET /v1beta/models`, paged; `GET /v1beta/models/{id}`)
and the model look-up every model call starts with."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engine.emulator._generate import ApiFailure
from engine.emulator._http import STATE, check_gemini_key, gemini_error, json_body
from sessions import ConfigError, ModelSpec

__all__ = ["handle_get_model", "handle_list_models", "model_spec"]

_DISPLAY = {
    "gemini-nano-banana-2.1": "Nano Banana 2.1",
    "gemini-3.1-flash-lite-image": "Nano Banana 2 Lite (Gemini 3.1 Flash Lite Image)",
    "gemini-3.1-flash-image": "Nano Banana 2 (Gemini 3.1 Flash Image)",
    "gemini-3-pro-image": "Nano Banana Pro (Gemini 3 Pro Image)",
    "gemini-3.1-flash-image-preview": "Nano Banana 2 (Gemini 3.1 Flash Image Preview)",
    "gemini-3-pro-image-preview": "Nano Banana Pro (Gemini 3 Pro Image Preview)",
    "gemini-2.5-flash-image": "Nano Banana (Gemini 2.5 Flash Image)",
}


def _unknown_model(name: str, version: str) -> ApiFailure:
    return ApiFailure(
        404,
        f"models/{name} is not found for API version {version}, or is not supported for "
        "generateContent. Call ListModels to see the list of available models and their "
        "supported methods.",
        openai_code="model_not_found",
    )


def _version(request: web.Request) -> str:
    return request.path.split("/", 2)[1]


def model_spec(name: str, request: web.Request) -> ModelSpec:
    """The catalog entry a model call names (id, alias, `models/` spelling); 404 otherwise."""
    try:
        return request.app[STATE].settings.catalog.resolve(name)
    except ConfigError:
        raise _unknown_model(name.removeprefix("models/"), _version(request)) from None


def _model_info(spec: ModelSpec) -> dict[str, Any]:
    return {
        "name": f"models/{spec.id}",
        "version": spec.id.split("-")[1],
        "displayName": _DISPLAY.get(spec.id, spec.id),
        "description": f"Image generation and editing ({', '.join(spec.aliases)}).",
        "inputTokenLimit": spec.context_window,
        "outputTokenLimit": spec.output_token_limit,
        "supportedGenerationMethods": [
            "generateContent",
            "streamGenerateContent",
            "countTokens",
            "batchGenerateContent",
        ],
        "thinking": spec.thinking,
    }


async def handle_list_models(request: web.Request) -> web.Response:
    """GET /v1beta/models: the catalogue in Google's shape."""
    state = request.app[STATE]
    try:
        check_gemini_key(request, state.settings.api_key)
    except ApiFailure as failure:
        return gemini_error(failure)
    # Paged as Google pages it (pageSize, default 50, at most 1000; pageToken); a model Google
    # shut down is no longer listed.
    listed = [s for s in state.settings.catalog.models.values() if s.status != "shut down"]
    try:
        size = min(1000, max(1, int(request.query.get("pageSize", "50"))))
        start = int(request.query.get("pageToken") or 0)
    except ValueError:
        return gemini_error(ApiFailure(400, "Invalid pageSize or pageToken."))
    page = listed[start : start + size]
    body: dict[str, Any] = {"models": [_model_info(spec) for spec in page]}
    if start + size < len(listed):
        body["nextPageToken"] = str(start + size)
    return web.Response(body=json_body(body), content_type="application/json")


async def handle_get_model(request: web.Request) -> web.Response:
    """GET /v1beta/models/{model}: one model, aliases accepted."""
    state = request.app[STATE]
    try:
        check_gemini_key(request, state.settings.api_key)
        spec = model_spec(request.match_info["name"], request)
    except ApiFailure as failure:
        return gemini_error(failure)
    return web.Response(body=json_body(_model_info(spec)), content_type="application/json")
