"""sessions._protocol: response decoding, typed fast path and raw fallback."""

from __future__ import annotations

import base64

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine._exceptions import EventTooLarge
from engine.wire import RawSSEDecoder
from sessions import decode_part
from sessions._protocol import PayloadCutter, _put_back, _splice, decode_response, response_decoder
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


# --- long payloads are cut out before parsing -------------------------------------------------

BIG = bytes(range(256)) * 200  # 51 KB: base64 longer than the splice threshold


def _parts(data: bytes) -> list[object]:
    decoded = decode_response(data)
    return [
        part_from_wire(p)
        for c in decoded.candidates
        for p in (c.content.parts if c.content is not None else [])
    ]


def _unspliced(data: bytes) -> list[object]:
    decoded = response_decoder.decode(data)
    return [
        decode_part(p)
        for c in decoded.candidates
        for p in (c.content.parts if c.content is not None else [])
    ]


def _image(payload: bytes, **extra: object) -> dict[str, object]:
    return {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(payload).decode()}}


def test_long_payloads_are_spliced_and_put_back_exactly() -> None:
    """Two long images and a short one in one answer: every byte and signature as sent."""
    other = BIG[::-1]
    data = body(
        {"text": "t", "thought": True},
        {**_image(BIG), "thoughtSignature": "c2ln"},
        _image(PNG),
        _image(other),
    )
    spliced = _splice(data)
    assert spliced is not None and len(spliced[1]) == 2  # the short PNG stays in place
    parts = _parts(data)
    assert parts == _unspliced(data)
    blobs = [p.inline_data.data for p in parts if p.inline_data is not None]  # type: ignore[attr-defined]
    assert blobs == [BIG, PNG, other]


def test_a_long_data_string_outside_an_image_is_not_mistaken_for_one() -> None:
    """The key pattern in a function call's arguments: the document is parsed whole."""
    text = "A" * 40_000
    data = body({"functionCall": {"name": "f", "args": {"data": text}}}, _image(BIG))
    parts = _parts(data)
    assert parts == _unspliced(data)
    assert parts[0].function_call == {"name": "f", "args": {"data": text}}  # type: ignore[attr-defined]


def test_a_key_ending_in_an_escaped_quote_is_parsed_whole() -> None:
    """`{"x\\"data":"..."}` matches the pattern inside a key: nothing is lost or misplaced."""
    data = body({"text": "t", "futureField": {'x"data': "B" * 40_000}}, _image(BIG))
    assert _parts(data) == _unspliced(data)


def test_escaped_payloads_still_decode() -> None:
    """A server escaping '/' as '\\/' in base64 (allowed JSON) gives the same bytes."""
    encoded = base64.b64encode(BIG).decode()
    assert "/" in encoded
    data = body(_image(BIG)).replace(encoded.encode(), encoded.replace("/", "\\/").encode())
    parts = _parts(data)
    assert parts[0].inline_data.data == BIG  # type: ignore[attr-defined]


def test_a_placeholder_lookalike_in_a_short_image_is_not_confused() -> None:
    """A short data string spelled like the splice's placeholder stays what it was."""
    data = body(_image(BIG), {"inlineData": {"mimeType": "image/png", "data": "\u00000"}})
    with pytest.raises(Exception) as spliced:
        _parts(data)
    with pytest.raises(Exception) as whole:
        _unspliced(data)
    assert type(spliced.value) is type(whole.value)


def test_truncated_long_answers_raise_decode_error() -> None:
    """A body cut inside or after the payload is malformed JSON either way."""
    data = body(_image(BIG))
    for cut in (len(data) // 2, len(data) - 3):
        with pytest.raises(msgspec.DecodeError):
            decode_response(data[:cut])


def test_an_escaped_quote_in_a_long_image_string_is_an_error_either_way() -> None:
    """Not base64: cut at the escaped quote or parsed whole, the part fails the same way."""
    data = body(_image(BIG))
    encoded = base64.b64encode(BIG)
    data = data.replace(encoded, encoded[:30_000] + b'\\"' + encoded[30_000:])
    with pytest.raises(Exception) as spliced:
        _parts(data)
    with pytest.raises(Exception) as whole:
        _unspliced(data)
    assert type(spliced.value) is type(whole.value)


# --- image payloads cut out of a stream as it arrives -------------------------------------------


def _sse(*docs: bytes, crlf: bool = False) -> bytes:
    end = b"\r\n" if crlf else b"\n"
    return b"".join(b"data: " + doc + end + end for doc in docs)


def _chunks(stream: bytes, sizes: list[int]) -> list[bytes]:
    out, at = [], 0
    for size in sizes:
        out.append(stream[at : at + size])
        at += size
    return [c for c in [*out, stream[at:]] if c]


def _read(chunks: list[bytes], cutter: PayloadCutter | None) -> list[object]:
    """Parts of every event, read the way GeminiProvider._read_events reads a stream."""
    decoder = RawSSEDecoder(1 << 30)
    parts: list[object] = []
    for chunk in chunks:
        for piece in cutter.feed(chunk) if cutter is not None else [chunk]:
            for event in decoder.feed(piece):
                payloads = cutter.payloads if cutter is not None else None
                try:
                    response = decode_response(event.data, payloads)
                    parts += [
                        part_from_wire(p)
                        for c in response.candidates
                        for p in (c.content.parts if c.content is not None else [])
                    ]
                except Exception as exc:  # the same failure either way is what is compared
                    parts.append(type(exc))
    return parts


def _output(chunks: list[bytes], cutter: PayloadCutter) -> bytes:
    return b"".join(piece for chunk in chunks for piece in cutter.feed(chunk))


def test_a_streamed_image_is_cut_decoded_and_put_in_its_part() -> None:
    """A 2K-sized payload in 64 KiB chunks: the SSE decoder sees a placeholder, the part gets
    every byte, and the cutter keeps nothing once the event is decoded."""
    image = bytes(range(256)) * 9000  # 2.3 MB
    stream = _sse(
        body({"text": "planning", "thought": True}),
        body({**_image(image), "thoughtSignature": "c2ln"}),
        crlf=True,
    )
    chunks = _chunks(stream, [65536] * (len(stream) // 65536))
    cutter = PayloadCutter(1 << 30)
    assert len(_output(chunks, PayloadCutter(1 << 30))) < 1000
    parts = _read(chunks, cutter)
    assert parts == _read(chunks, None)
    assert parts[1].inline_data.data == image  # type: ignore[attr-defined]
    assert parts[1].thought_signature == b"sig"  # type: ignore[attr-defined]
    assert cutter.payloads == {}


def test_a_payload_over_the_event_limit_raises_while_it_arrives() -> None:
    """The limit the SSE decoder enforces holds for the text the cutter takes out of it."""
    stream = _sse(body(_image(BIG)))
    cutter = PayloadCutter(limit=20_000)
    with pytest.raises(EventTooLarge) as caught:
        for chunk in _chunks(stream, [4096] * 20):
            cutter.feed(chunk)
    assert caught.value.limit == 20_000 and caught.value.size > 20_000


def test_placeholders_differ_per_stream() -> None:
    """A server cannot spell a placeholder: each cutter's carries its own random token."""
    stream = _sse(body(_image(BIG)))
    assert _output([stream], PayloadCutter(1 << 30)) != _output([stream], PayloadCutter(1 << 30))


_B64 = st.binary(max_size=60).map(lambda b: base64.b64encode(b).decode())
_DATA_STRINGS = st.one_of(
    _B64,
    _B64.map(lambda s: s.replace("/", "\\/")),  # escaped slashes: valid JSON, not plain
    st.just("QR=="),  # non-canonical padding: decodes, but not back to the same text
    st.just("QQ==QQ=="),  # padding inside
    st.sampled_from(["", "A", "AB\\nCD", "\\u0000p1", "AAAA\\u0000pAAA"]),
)
_TEXTS = st.text(alphabet='ab"\\:/=\x00p\n', max_size=30)


@st.composite
def _documents(draw: st.DrawFn) -> bytes:
    parts: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["image", "text", "call", "key"]))
        if kind == "image":
            data = draw(_DATA_STRINGS)
            parts.append('{"inlineData":{"mimeType":"image/png","data":"' + data + '"}}')
        elif kind == "text":
            parts.append(msgspec.json.encode({"text": draw(_TEXTS)}).decode())
        elif kind == "call":
            args = {"data": draw(_B64), "x": draw(_TEXTS)}
            call = {"functionCall": {"name": "f", "args": args}}
            parts.append(msgspec.json.encode(call).decode())
        else:  # the key pattern after an escaped quote, inside another key
            parts.append('{"text":"t","future":{"x\\"data":"' + draw(_B64) + '"}}')
    joined = ",".join(parts)
    return ('{"candidates":[{"content":{"role":"model","parts":[' + joined + "]}}]}").encode()


_PADDED = body({"inlineData": {"mimeType": "image/png", "data": "QQ==QQ=="}})


@settings(max_examples=1500, deadline=None)
@example(  # padding inside, the chunk ending just after it
    docs=[_PADDED],
    crlf=False,
    sizes=[len(b"data: ") + _PADDED.index(b"QQ==QQ==") + 8],
    min_len=0,
)
@given(
    docs=st.lists(_documents(), min_size=1, max_size=3),
    crlf=st.booleans(),
    sizes=st.lists(st.integers(1, 40), max_size=60),
    min_len=st.integers(0, 12),
)
def test_a_cut_stream_reads_exactly_as_the_whole_one(
    docs: list[bytes], crlf: bool, sizes: list[int], min_len: int
) -> None:
    """Any answer, split anywhere: the cutter's output with its placeholders put back is the
    input byte for byte, and the parts read (or the failure) are the same as without it."""
    stream = _sse(*docs, crlf=crlf)
    chunks = _chunks(stream, sizes)
    cutter = PayloadCutter(1 << 30, min_len=min_len)
    out = _output(chunks, cutter)
    assert _put_back(out, dict(cutter.payloads)) == stream
    assert _read(chunks, PayloadCutter(1 << 30, min_len=min_len)) == _read(chunks, None)
