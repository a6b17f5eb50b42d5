"""sessions._wire: Content/Part decoding and encoding."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessions import (
    Blob,
    Content,
    Part,
    SessionRecord,
    SqliteStore,
    TurnRecord,
    WireError,
    decode_content,
    decode_contents,
    decode_part,
    encode_contents,
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
SIG = bytes([0xFB, 0xFF, 0xFE, 0x00, 0x10])


def test_camel_case_part_decodes() -> None:
    """camelCase fields decode into the modelled attributes."""
    raw = msgspec.json.encode(
        {
            "text": "hi",
            "thought": True,
            "thoughtSignature": base64.b64encode(SIG).decode(),
            "inlineData": {"mimeType": "image/png", "data": base64.b64encode(PNG).decode()},
        }
    )
    part = decode_part(raw)
    assert part.text == "hi"
    assert part.thought is True
    assert part.thought_signature == SIG
    assert part.inline_data == Blob(mime_type="image/png", data=PNG)


def test_snake_case_and_url_safe_base64_decode() -> None:
    """snake_case names and URL-safe base64 (what the official SDK sends) are accepted."""
    raw = msgspec.json.encode(
        {
            "thought_signature": base64.urlsafe_b64encode(SIG).decode().rstrip("="),
            "inline_data": {
                "mime_type": "image/png",
                "data": base64.urlsafe_b64encode(PNG).decode(),
            },
        }
    )
    part = decode_part(raw)
    assert part.thought_signature == SIG
    assert part.inline_data is not None and part.inline_data.data == PNG


def test_output_is_camel_case_standard_base64() -> None:
    """Encoding always writes camelCase names and standard base64."""
    content = Content(role="model", parts=[Part(thought_signature=SIG, text="x")])
    out = msgspec.json.decode(encode_contents([content]))
    assert out == [
        {
            "role": "model",
            "parts": [{"text": "x", "thoughtSignature": base64.b64encode(SIG).decode()}],
        }
    ]


def test_unknown_part_field_survives_round_trip() -> None:
    """A field the engine does not model is kept and sent back unchanged, in place."""
    raw = b'{"text":"a","futureThing":{"nested":[1,2,{"x":null}]},"other":7}'
    part = decode_part(raw)
    assert part.extra is not None and set(part.extra) == {"futureThing", "other"}
    out = msgspec.json.decode(encode_contents([Content(role="model", parts=[part])]))
    assert out[0]["parts"][0] == {
        "text": "a",
        "futureThing": {"nested": [1, 2, {"x": None}]},
        "other": 7,
    }


def test_unknown_only_part_round_trips() -> None:
    """A part made only of unmodelled fields encodes as exactly those fields."""
    part = decode_part(b'{"mystery":true}')
    assert msgspec.json.decode(encode_contents([Content(role="model", parts=[part])])) == [
        {"role": "model", "parts": [{"mystery": True}]}
    ]


def test_extra_does_not_pin_response_buffer() -> None:
    """Unmodelled raw JSON is copied out of the (possibly huge) response buffer."""
    big = b'{"text":"a","keep":1,"pad":"' + b"x" * 100_000 + b'"}'
    part = decode_part(big)
    assert part.extra is not None
    assert len(bytes(part.extra["keep"])) == 1


def test_empty_text_is_kept() -> None:
    """An empty text part (the carrier of a trailing signature) is not dropped."""
    part = decode_part(b'{"text":"","thoughtSignature":"AAE="}')
    assert part.text == ""
    out = msgspec.json.decode(encode_contents([Content(role="model", parts=[part])]))
    assert out[0]["parts"][0] == {"text": "", "thoughtSignature": "AAE="}


def test_false_thought_flag_is_kept_verbatim() -> None:
    """An explicit `thought: false` goes back out as it came in."""
    part = decode_part(b'{"text":"a","thought":false}')
    out = msgspec.json.decode(encode_contents([Content(role="model", parts=[part])]))
    assert out[0]["parts"][0] == {"text": "a", "thought": False}


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"text": 5}',
        b'{"inlineData": {"data": "AAAA"}}',
        b'{"thoughtSignature": "%%%"}',
        b"[1]",
    ],
)
def test_malformed_part_raises_wire_error(raw: bytes) -> None:
    """Malformed parts raise WireError, never a msgspec exception."""
    with pytest.raises(WireError):
        decode_part(raw)


def test_decode_contents_round_trip() -> None:
    """decode_contents(encode_contents(x)) == x for a multi-turn history."""
    history = [
        Content(
            role="user",
            parts=[Part(text="a mug"), Part(inline_data=Blob(mime_type="image/png", data=PNG))],
        ),
        Content(
            role="model",
            parts=[
                Part(text="thinking", thought=True),
                Part(text="Here.", thought_signature=SIG),
                Part(inline_data=Blob(mime_type="image/png", data=PNG), thought_signature=SIG),
            ],
        ),
    ]
    assert decode_contents(encode_contents(history)) == history
    assert decode_content(msgspec.json.encode(history[1])) == history[1]


def test_malformed_contents_raise_wire_error() -> None:
    """A contents array of the wrong shape raises WireError."""
    with pytest.raises(WireError):
        decode_contents(b'{"contents": 1}')
    with pytest.raises(WireError):
        decode_content(b"[]")


def test_content_helpers_skip_thoughts() -> None:
    """images() and text() leave out thought parts."""
    c = Content(
        role="model",
        parts=[
            Part(text="hmm", thought=True),
            Part(inline_data=Blob(mime_type="image/png", data=b"t"), thought=True),
            Part(text="Done."),
            Part(inline_data=Blob(mime_type="image/png", data=PNG)),
        ],
    )
    assert c.text() == "Done."
    assert [b.data for b in c.images()] == [PNG]


_parts = st.builds(
    Part,
    text=st.one_of(st.none(), st.text()),
    thought=st.one_of(st.none(), st.booleans()),
    thought_signature=st.one_of(st.none(), st.binary(max_size=64)),
    inline_data=st.one_of(
        st.none(),
        st.builds(
            Blob,
            mime_type=st.sampled_from(["image/png", "image/jpeg"]),
            data=st.binary(max_size=256),
        ),
    ),
)


@given(st.lists(st.lists(_parts, max_size=5), max_size=4))
def test_any_history_round_trips(parts_lists: list[list[Part]]) -> None:
    """Any history of modelled parts survives encode → decode unchanged."""
    history = [Content(role=("user", "model")[i % 2], parts=ps) for i, ps in enumerate(parts_lists)]
    assert decode_contents(encode_contents(history)) == history


def test_unknown_field_inside_file_data_takes_the_general_path() -> None:
    """A fileData with an unmodelled field still decodes (the strict fast path defers)."""
    part = decode_part(b'{"fileData":{"fileUri":"gs://b/x.png","mimeType":"image/png","extraX":1}}')
    assert part.file_data is not None and part.file_data.file_uri == "gs://b/x.png"


def test_fast_and_general_paths_agree() -> None:
    """camelCase standard-base64 parts decode the same whichever path decodes them."""
    raw = msgspec.json.encode(
        {
            "text": "t",
            "thought": False,
            "thoughtSignature": base64.b64encode(SIG).decode(),
            "inlineData": {
                "mimeType": "image/png",
                "data": base64.b64encode(PNG).decode(),
                "displayName": "d",
            },
            "fileData": {"fileUri": "u", "mimeType": "image/png"},
            "functionCall": {"name": "f", "args": {}},
        }
    )
    from sessions._wire import _decode_part_general

    assert decode_part(raw) == _decode_part_general(raw)


@pytest.mark.parametrize(
    "spell",
    [
        lambda b: b,
        lambda b: b.replace(b"+", b"-").replace(b"/", b"_").rstrip(b"="),
        lambda b: b.replace(b"/", b"\\/"),
    ],
    ids=["standard", "url-safe", "escaped-slash"],
)
def test_image_payloads_decode_in_every_spelling(spell: Any) -> None:
    """The SIMD fast path and the general path agree: standard, URL-safe without padding, and
    JSON-escaped slashes all give the image's bytes; bad base64 is a WireError."""
    data = bytes(range(256)) * 64
    encoded = spell(base64.b64encode(data))
    raw = b'{"inlineData": {"mimeType": "image/png", "data": "' + encoded + b'"}}'
    assert decode_part(raw).inline_data == Blob(mime_type="image/png", data=data)
    with pytest.raises(WireError):
        decode_part(b'{"inlineData": {"mimeType": "image/png", "data": "@@@@"}}')


@pytest.mark.parametrize("value", ["null", "5", "{}", "[1]", "true"])
def test_inline_data_that_is_not_a_string_is_a_wire_error(value: str) -> None:
    """Found by the import fuzzer: `data: null` went through the strict fast path and came out
    as msgspec's ValidationError instead of a WireError."""
    raw = b'{"inlineData": {"mimeType": "image/png", "data": ' + value.encode() + b"}}"
    with pytest.raises(WireError, match="base64"):
        decode_part(raw)


@pytest.mark.parametrize(
    "spelling",
    [
        base64.urlsafe_b64encode(b"\xfb\xff\xfe\x01sig").decode(),  # URL-safe, padded
        base64.urlsafe_b64encode(b"\xfb\xff\xfe\x01").decode().rstrip("="),  # and unpadded
        base64.b64encode(b"\xfb\xff\xfe\x01").decode().rstrip("="),  # standard, unpadded
    ],
)
async def test_a_signature_goes_back_in_the_spelling_it_came_in(
    spelling: str, tmp_path: Path
) -> None:
    """A thoughtSignature in another base64 spelling than the standard one is sent back as the
    same string (after a store round trip too), and its bytes are still the part's."""
    raw = json.dumps({"role": "model", "parts": [{"text": "ok", "thoughtSignature": spelling}]})
    content = decode_content(raw.encode())
    part = content.parts[0]
    padded = spelling + "=" * (-len(spelling) % 4)
    assert part.thought_signature == base64.b64decode(padded, altchars=b"-_")
    assert f'"thoughtSignature":"{spelling}"'.encode() in encode_contents([content])
    async with SqliteStore(tmp_path / "s.db") as store:
        await store.create(SessionRecord(id="s", model="gemini-3.1-flash-image"))
        user = Content(role="user", parts=[Part(text="hi")])
        turn = TurnRecord(
            id="t",
            parent=None,
            index=1,
            user=user,
            model=content,
            model_id="gemini-3.1-flash-image",
        )
        await store.commit_turn("s", turn, expected_version=1)
        stored = (await store.load("s")).turn("t").model
    body = encode_contents([stored])
    assert f'"thoughtSignature":"{spelling}"'.encode() in body
    assert body.count(b"thoughtSignature") == 1


def test_a_standard_signature_keeps_no_copy() -> None:
    """A standard-alphabet signature is held as bytes only (no extra copy of its string)."""
    spelling = base64.b64encode(b"\xfb\xff\xfe\x01").decode()
    part = decode_content(
        json.dumps(
            {"role": "model", "parts": [{"thoughtSignature": spelling, "text": "x"}]}
        ).encode()
    ).parts[0]
    assert part.extra is None
