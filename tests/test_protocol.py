"""engine._protocol: response decoding, typed fast path and raw fallback."""

from __future__ import annotations

import base64

import msgspec
import pytest

from engine._protocol import decode_response, response_decoder
from sessions import decode_part
from sessions._wire import StrictPart, part_from_wire

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


def body(*parts: dict[str, object]) -> bytes:
    """A one-candidate response with these parts."""
    return msgspec.json.encode(
        {
            "candidates": [
                {"content": {"role": "model", "parts": list(parts)}, "finishReason": "STOP"}
            ],
            "usageMetadata": {"promptTokenCount": 3},
        }
    )


IMAGE: dict[str, object] = {
    "inlineData": {"mimeType": "image/png", "data": base64.b64encode(PNG).decode()}
}


def test_server_shaped_parts_decode_in_one_pass() -> None:
    """camelCase standard-base64 parts come out already decoded, equal to the raw path."""
    data = body({"text": "hi", "thoughtSignature": "c2ln"}, {**IMAGE, "thoughtSignature": "c2ln"})
    fast = decode_response(data)
    parts = fast.candidates[0].content.parts  # type: ignore[union-attr]
    assert all(isinstance(p, StrictPart) for p in parts)
    raw = response_decoder.decode(data).candidates[0].content.parts  # type: ignore[union-attr]
    assert [part_from_wire(p) for p in parts] == [decode_part(p) for p in raw]
    assert fast.usage_metadata is not None and fast.usage_metadata.prompt_token_count == 3


@pytest.mark.parametrize(
    "odd",
    [
        {"text": "x", "futureField": {"a": 1}},
        {"inline_data": {"mime_type": "image/png", "data": base64.b64encode(PNG).decode()}},
        {"thoughtSignature": base64.urlsafe_b64encode(b"\xfb\xff").decode()},
    ],
)
def test_other_shapes_fall_back_to_raw_parts(odd: dict[str, object]) -> None:
    """Unknown fields, snake_case or URL-safe base64 take the raw path and lose nothing."""
    decoded = decode_response(body({"text": "a"}, odd))
    parts = [part_from_wire(p) for p in decoded.candidates[0].content.parts]  # type: ignore[union-attr]
    assert parts[1] == decode_part(msgspec.json.encode(odd))
    if "futureField" in odd:
        assert parts[1].extra is not None and "futureField" in parts[1].extra


def test_malformed_json_still_raises_decode_error() -> None:
    """Truncated JSON is a DecodeError for the caller to map, not silently accepted."""
    with pytest.raises(msgspec.DecodeError):
        decode_response(body(IMAGE)[:-10])
