"""The wire layer: plain HTTP transport, the SSE decoder, the merge of streamed parts.

It knows HTTP, not Google: providers map what an API's error bodies mean.
"""

from engine.wire._merge import (
    ContentMerger,
    Delta,
    ImageDelta,
    PartialImageDelta,
    TextDelta,
)
from engine.wire._retry_after import (
    parse_retry_after,
)
from engine.wire._sse import (
    DEFAULT_MAX_EVENT_BYTES,
    RawServerSentEvent,
    RawSSEDecoder,
)
from engine.wire._transport import (
    MAX_MESSAGE,
    SNIPPET,
    ErrorMapper,
    Headers,
    LazyBody,
    RequestBody,
    Response,
    StreamResponse,
    Transport,
    body_size,
    clean_message,
    html_title,
    http_error,
    looks_like_html,
    malformed,
    secrets_of,
)

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "MAX_MESSAGE",
    "SNIPPET",
    "ContentMerger",
    "Delta",
    "ErrorMapper",
    "Headers",
    "ImageDelta",
    "LazyBody",
    "PartialImageDelta",
    "RawSSEDecoder",
    "RawServerSentEvent",
    "RequestBody",
    "Response",
    "StreamResponse",
    "TextDelta",
    "Transport",
    "body_size",
    "clean_message",
    "html_title",
    "http_error",
    "looks_like_html",
    "malformed",
    "parse_retry_after",
    "secrets_of",
]
