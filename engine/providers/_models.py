"""Reading Google's model list (`GET /v1beta/models`, paged) for `nanoedit models --refresh`."""

from __future__ import annotations

from typing import Any

import msgspec

from engine.providers._base import HttpProvider
from engine.providers._errors import json_http_error
from engine.wire import malformed
from sessions import ListedModel

__all__ = ["list_models"]

_MAX_PAGES = 100  # a model list longer than 100 pages is a server that loops
_any = msgspec.json.Decoder()


def _listed(entry: Any) -> ListedModel | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        return None

    def count(key: str) -> int:
        value = entry.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    methods = entry.get("supportedGenerationMethods")
    return ListedModel(
        id=entry["name"].removeprefix("models/"),
        input_token_limit=count("inputTokenLimit"),
        output_token_limit=count("outputTokenLimit"),
        methods=tuple(m for m in methods if isinstance(m, str))
        if isinstance(methods, list)
        else (),
    )


async def list_models(provider: HttpProvider) -> list[ListedModel]:
    """Every model the provider's Gemini endpoint lists, following `nextPageToken`."""
    found: list[ListedModel] = []
    token = ""
    for _ in range(_MAX_PAGES):
        url = f"{provider._base_url}/v1beta/models?pageSize=1000"
        if token:
            url += f"&pageToken={token}"
        resp = await provider._transport.request(
            "GET", url, headers=provider._headers, errors=json_http_error
        )
        try:
            doc = _any.decode(resp.body)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise malformed(
                resp.status, f"malformed model list: {exc}", provider._secrets
            ) from None
        if not isinstance(doc, dict):
            raise malformed(resp.status, "a model list must be a JSON object", provider._secrets)
        found.extend(m for m in map(_listed, doc.get("models") or []) if m is not None)
        token = doc.get("nextPageToken") or ""
        if not isinstance(token, str) or not token:
            return found
    raise malformed(200, f"the model list did not end after {_MAX_PAGES} pages", provider._secrets)
