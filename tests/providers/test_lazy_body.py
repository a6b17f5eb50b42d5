"""GeminiProvider.encode_body: the request encoded while written, identical to encode()."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import Secret
from engine.providers import GeminiProvider, GenerateRequest
from engine.wire import LazyBody, Transport, body_size
from sessions import Blob, Content, Part, SessionSettings, decode_part

PNG = b"\x89PNG\r\n\x1a\n"


def provider() -> GeminiProvider:
    """A provider that never connects (encoding only)."""
    return GeminiProvider(Transport(), base_url="http://127.0.0.1:1", api_key=Secret(""))


FULL_SETTINGS = SessionSettings(
    image_config={"aspectRatio": "16:9", "imageSize": "2K"},
    response_modalities=["TEXT", "IMAGE"],
    system_instruction=Content(parts=[Part(text="Be brief.")]),
    tools=[{"google_search": {}}],
    safety_settings=[{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
    generation_config={"temperature": 0.4},
)


@pytest.mark.parametrize("settings_", [SessionSettings(), FULL_SETTINGS])
@pytest.mark.parametrize("n_images", [0, 1, 3])
def test_lazy_body_equals_encode(settings_: SessionSettings, n_images: int) -> None:
    """Pieces join to exactly encode()'s bytes and `size` is their length."""
    history: list[Content] = []
    for i in range(n_images):
        image = Blob(mime_type="image/png", data=PNG + bytes([i]) * (1000 + i))
        history.append(Content(role="user", parts=[Part(text=f"turn {i} é ✓")]))
        history.append(
            Content(
                role="model",
                parts=[
                    Part(text="thinking", thought=True),
                    Part(text="Here.", thought_signature=b"\x01\x02"),
                    Part(inline_data=image, thought_signature=bytes([i, 255])),
                ],
            )
        )
    history.append(Content(role="user", parts=[Part(text="next")]))
    request = GenerateRequest("gemini-3.1-flash-image", history, settings_)
    p = provider()
    body = p.encode_body(request)
    assert isinstance(body, LazyBody)
    assert body.join() == p.encode(request)
    assert body_size(body) == len(p.encode(request))
    assert body.join() == body.join()  # re-iterable, for retries


def test_lazy_body_with_unmodelled_fields() -> None:
    """Parts carrying unknown fields (spliced raw JSON) size and encode correctly."""
    odd = decode_part(b'{"text":"a","futureField":{"k":[1,2]},"thoughtSignature":"AAE="}')
    image = Part(inline_data=Blob(mime_type="image/png", data=PNG * 50))
    history = [
        Content(role="user", parts=[Part(text="x"), image]),
        Content(role="model", parts=[odd]),
    ]
    request = GenerateRequest("gemini-3.1-flash-image", history, FULL_SETTINGS)
    p = provider()
    body = p.encode_body(request)
    assert body.size == len(body.join()) and body.join() == p.encode(request)
    assert msgspec.json.decode(body.join())["contents"][1]["parts"][0]["futureField"] == {
        "k": [1, 2]
    }


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(st.text(max_size=20), st.binary(max_size=300), st.binary(max_size=8)),
        max_size=5,
    )
)
def test_any_history_size_is_exact(turns: list[tuple[str, bytes, bytes]]) -> None:
    """For any text, image length (every length mod 3) and signature, size == len(body)."""
    history: list[Content] = []
    for text, data, sig in turns:
        history.append(Content(role="user", parts=[Part(text=text)]))
        history.append(
            Content(
                role="model",
                parts=[
                    Part(inline_data=Blob(mime_type="image/png", data=data), thought_signature=sig)
                ],
            )
        )
    request = GenerateRequest("gemini-3.1-flash-image", history, SessionSettings())
    body = provider().encode_body(request)
    assert isinstance(body, LazyBody)
    assert body.size == len(body.join())


def test_small_pieces_are_coalesced() -> None:
    """A text-only history goes out as one piece; an image Content is a piece of its own."""
    text_only = [
        Content(role=("user", "model")[i % 2], parts=[Part(text=f"t{i}")]) for i in range(9)
    ]
    p = provider()
    body = p.encode_body(GenerateRequest("m", text_only, FULL_SETTINGS))
    assert isinstance(body, LazyBody) and len(list(body.pieces())) == 1
    big = Content(
        role="model", parts=[Part(inline_data=Blob(mime_type="image/png", data=PNG * 20_000))]
    )
    body = p.encode_body(GenerateRequest("m", [*text_only[:2], big, text_only[0]], FULL_SETTINGS))
    pieces = list(body.pieces())
    assert len(pieces) == 3 and b"".join(pieces) == body.join()
    assert body.size == len(body.join())


def test_the_pieces_match_msgspec_whatever_the_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SIMD codec and the scalar fallback write the bytes msgspec writes; text that happens
    to hold the sentinel's base64 falls back to msgspec rather than splitting wrongly."""
    import binascii

    from engine.providers import _gemini as gemini

    image = Part(inline_data=Blob(mime_type="image/png", data=bytes(range(256)) * 40))
    tricky = Part(text=gemini._SENTINEL_B64.decode())
    history = [
        Content(role="user", parts=[Part(text="a mug")]),
        Content(role="model", parts=[tricky, image]),
        Content(role="user", parts=[Part(text="again")]),
    ]
    request = GenerateRequest("gemini-3.1-flash-image", history, SessionSettings())
    p = provider()
    assert p.encode_body(request).join() == p.encode(request)
    monkeypatch.setattr(gemini, "b64encode", lambda s: binascii.b2a_base64(s, newline=False))
    assert p.encode_body(request).join() == p.encode(request)


@pytest.mark.parametrize("settings_", [SessionSettings(), FULL_SETTINGS])
@pytest.mark.parametrize("n_images", [0, 1, 3])
def test_chat_lazy_body_equals_encode(settings_: SessionSettings, n_images: int) -> None:
    """The chat provider's body, each history image's base64 written as it goes, is exactly
    encode()'s bytes, sized right, and again for a retry; a user text that happens to hold
    the image marker gets the whole body instead."""
    from engine.providers._openai_chat import _MARKER, OpenAIChatProvider

    chat = OpenAIChatProvider(Transport(), base_url="http://127.0.0.1:1", api_key=Secret(""))
    history: list[Content] = []
    for i in range(n_images):
        image = Blob(mime_type="image/webp" if i else "image/png", data=PNG + bytes([i]) * 999)
        history.append(Content(role="user", parts=[Part(text=f"turn {i} é ✓")]))
        history.append(Content(role="model", parts=[Part(text="Here."), Part(inline_data=image)]))
    for last in ("next", f"a marker {_MARKER} in the text"):
        request = GenerateRequest(
            "gemini-3.1-flash-image",
            [*history, Content(role="user", parts=[Part(text=last)])],
            settings_,
        )
        body = chat.encode_body(request)
        assert isinstance(body, LazyBody) is (n_images > 0 and last == "next")
        joined = body.join() if isinstance(body, LazyBody) else body
        assert joined == chat.encode(request)
        assert body_size(body) == len(joined)
        if isinstance(body, LazyBody):
            assert body.join() == joined
