"""Gemini REST request/response structs (the envelope around `Content`).

Shared by the Gemini provider and the emulator. Response parts are decoded lazily as raw JSON and
turned into `Part`s by `sessions.decode_part`, which keeps unmodelled fields and accepts both
naming styles.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from sessions._b64 import b64decode_strict, b64encode
from sessions._errors import EventTooLarge
from sessions._wire import _PLACEHOLDER_MAX, Content, DecodedBlob, StrictPart, _WireContent

__all__ = [
    "Candidate",
    "ErrorBody",
    "ErrorEnvelope",
    "GenerateContentRequest",
    "GenerateContentResponse",
    "ModalityTokenCount",
    "PayloadCutter",
    "PromptFeedback",
    "ResponseContent",
    "UsageMetadata",
    "cut_strings",
    "decode_response",
    "request_decoder",
    "response_decoder",
    "splice_payloads",
]


class GenerateContentRequest(msgspec.Struct, omit_defaults=True, rename="camel", kw_only=True):
    """The body of `:generateContent` / `:streamGenerateContent` (encoding side)."""

    contents: list[Content | _WireContent]
    system_instruction: Content | _WireContent | None = None
    tools: list[dict[str, Any]] | None = None
    tool_config: dict[str, Any] | None = None
    safety_settings: list[dict[str, Any]] | None = None
    generation_config: dict[str, Any] | None = None
    cached_content: str | None = None


class RequestContent(msgspec.Struct):
    """A Content in an incoming request, parts still raw JSON."""

    role: str | None = None
    parts: list[msgspec.Raw] = msgspec.field(default_factory=list)


class IncomingRequest(msgspec.Struct, kw_only=True):
    """The body of a generateContent request as a server receives it (either naming style).

    snake_case twins are separate fields because msgspec has one name per field; `normalized`
    folds them into the camelCase ones.
    """

    contents: list[RequestContent] = msgspec.field(default_factory=list)
    systemInstruction: RequestContent | None = None
    system_instruction: RequestContent | None = None
    generationConfig: dict[str, Any] | None = None
    generation_config: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    safetySettings: list[dict[str, Any]] | None = None
    safety_settings: list[dict[str, Any]] | None = None
    generateContentRequest: dict[str, Any] | None = None  # countTokens wraps the request
    generate_content_request: dict[str, Any] | None = None
    model: str | None = None

    def normalized(self) -> IncomingRequest:
        """The same request with snake_case twins folded into the camelCase fields."""
        return IncomingRequest(
            contents=self.contents,
            systemInstruction=self.systemInstruction or self.system_instruction,
            generationConfig=self.generationConfig or self.generation_config,
            tools=self.tools,
            safetySettings=self.safetySettings or self.safety_settings,
            generateContentRequest=self.generateContentRequest or self.generate_content_request,
            model=self.model,
        )


class ResponseContent(msgspec.Struct):
    """A candidate's content with parts still raw JSON."""

    role: str | None = None
    parts: list[msgspec.Raw] = msgspec.field(default_factory=list)


class Candidate(msgspec.Struct, rename="camel", kw_only=True):
    """One candidate of a response (or of one stream chunk)."""

    content: ResponseContent | None = None
    finish_reason: str | None = None
    finish_message: str | None = None
    index: int | None = None
    safety_ratings: list[dict[str, Any]] | None = None
    grounding_metadata: dict[str, Any] | None = None
    citation_metadata: dict[str, Any] | None = None


class PromptFeedback(msgspec.Struct, rename="camel", kw_only=True):
    """Why the prompt itself was blocked, if it was."""

    block_reason: str | None = None
    block_reason_message: str | None = None
    safety_ratings: list[dict[str, Any]] | None = None


class ModalityTokenCount(msgspec.Struct, rename="camel", kw_only=True):
    """Tokens of one modality."""

    modality: str = "MODALITY_UNSPECIFIED"
    token_count: int = 0


class UsageMetadata(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """`usageMetadata` as the server reports it."""

    prompt_token_count: int = 0
    candidates_token_count: int = 0
    thoughts_token_count: int = 0
    total_token_count: int = 0
    cached_content_token_count: int = 0
    tool_use_prompt_token_count: int = 0
    prompt_tokens_details: list[ModalityTokenCount] | None = None
    candidates_tokens_details: list[ModalityTokenCount] | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    """Google's `error` object."""

    code: int = 0
    message: str = ""
    status: str = ""
    details: list[dict[str, Any]] = msgspec.field(default_factory=list)


class ErrorEnvelope(msgspec.Struct):
    """`{"error": {...}}`."""

    error: ErrorBody


class GenerateContentResponse(msgspec.Struct, rename="camel", kw_only=True):
    """A whole response, or one SSE chunk of a streamed one (same shape)."""

    candidates: list[Candidate] = msgspec.field(default_factory=list)
    prompt_feedback: PromptFeedback | None = None
    usage_metadata: UsageMetadata | None = None
    model_version: str | None = None
    response_id: str | None = None
    error: ErrorBody | None = None


class _TypedContent(msgspec.Struct, gc=False):
    role: str | None = None
    parts: list[StrictPart] = msgspec.field(default_factory=list)


class _TypedCandidate(Candidate, kw_only=True):
    # Same fields, parts decoded in the same pass (see `decode_response`).
    content: _TypedContent | None = None  # type: ignore[assignment]


class _TypedResponse(GenerateContentResponse, kw_only=True):
    candidates: list[_TypedCandidate] = msgspec.field(default_factory=list)  # type: ignore[assignment]


response_decoder = msgspec.json.Decoder(GenerateContentResponse)
_typed_decoder = msgspec.json.Decoder(_TypedResponse)


_PAYLOAD_KEY = b'"data":"'
_SPLICE_MIN = 16 * 1024
"""A JSON string this long under a "data" key is cut out before parsing (see `_splice`)."""


def decode_response(
    data: bytes | str, payloads: dict[bytes, bytes] | None = None
) -> GenerateContentResponse:
    """Decode a response or stream chunk; parts come out as `StrictPart` or raw JSON.

    Server-shaped parts (camelCase, standard base64, modelled fields) are decoded in the same
    pass as the envelope. Image payloads are not scanned by the JSON parser at all: long
    ``"data"`` strings are cut out first and put back as `msgspec.Raw` views of the input, which
    the SIMD base64 decoder reads (scanning 12 MB of base64 cost msgspec 3.1 ms, more than
    decoding it). Anything else (snake_case, unknown fields) fails the strict shape and is
    decoded with raw parts, which `sessions.part_from_wire` turns into Parts either way.

    ``payloads`` are the strings a `PayloadCutter` took out of the stream ``data`` came from:
    each placeholder found in an image part's data becomes that part's decoded bytes, and is
    removed from ``payloads``.
    """
    if payloads and type(data) is bytes and _CUT_MARK in data:
        response = _restore_cut(data, payloads)
        if response is not None:
            return response
        data = _put_back(data, payloads)
    if type(data) is bytes:
        spliced = splice_payloads(data)
        if spliced is not None:
            response = _restore(*spliced)
            if response is not None:
                return response
    try:
        return _typed_decoder.decode(data)
    except msgspec.ValidationError:
        return response_decoder.decode(data)


T = TypeVar("T")


def cut_strings(
    data: bytes, opener: bytes, quote: int, take: Callable[[bytes, int, int], T | None]
) -> tuple[bytes, list[T]] | None:
    """``data`` with some JSON strings replaced by short placeholders (``"\\u0000<i>"``), so
    a parser never scans them; None when nothing was cut.

    Each candidate string starts at a match of ``opener``, its opening quote ``quote`` bytes
    into the match, and ends at its first following quote (base64 has none; data with an
    escaped quote is not base64 and, cut there, fails as malformed either way).
    ``take(data, start, end)`` sees the text between the quotes and returns what to keep for
    it, or None to leave the string in place. Returns the shortened document and the kept
    values, placeholder ``i`` standing for ``kept[i]``.
    """
    view = memoryview(data)
    pieces: list[bytes | memoryview] = []
    kept: list[T] = []
    copied = searched = 0
    find = data.find
    while (match := find(opener, searched)) >= 0:
        opening = match + quote
        end = find(b'"', opening + 1)
        if end < 0:
            break
        searched = end + 1
        value = take(data, opening + 1, end)
        if value is None:
            continue
        # A NUL escape then the index: never base64 nor a string the splice made.
        pieces += (view[copied:opening], b'"\\u0000%d"' % len(kept))
        kept.append(value)
        copied = end + 1
    if not kept:
        return None
    pieces.append(view[copied:])
    return b"".join(pieces), kept


def _payload(data: bytes, start: int, end: int) -> memoryview | None:
    # The whole JSON string, quotes included, for msgspec.Raw (a view: no copy).
    return memoryview(data)[start - 1 : end + 1] if end - start >= _SPLICE_MIN else None


def splice_payloads(data: bytes) -> tuple[bytes, dict[bytes, memoryview]] | None:
    """``data`` with each long plain ``"data":"..."`` string replaced by a short placeholder,
    and the cut strings (quotes included) by placeholder; None when there is nothing to cut.
    For a reader that puts them back itself (`sessions.decode_part`'s ``payloads``)."""
    return _splice(data) if len(data) > _SPLICE_MIN else None


def _splice(data: bytes) -> tuple[bytes, dict[bytes, memoryview]] | None:
    """``data`` with each long plain ``"data":"..."`` string replaced by a short placeholder.

    Returns the shortened document and the cut strings (quotes included) by placeholder, or
    None when there is nothing to cut (see `cut_strings`); escapes such as ``\\/`` are left in
    the cut string for `sessions` to decode. Where the key pattern sits in an unusual place (a
    key ending in an escaped quote, say), `_restore` notices and the whole document is parsed.
    """
    spliced = cut_strings(data, _PAYLOAD_KEY, len(_PAYLOAD_KEY) - 1, _payload)
    if spliced is None:
        return None
    doc, kept = spliced
    return doc, {b'"\\u0000%d"' % i: payload for i, payload in enumerate(kept)}


def _restore(doc: bytes, cut: dict[bytes, memoryview]) -> GenerateContentResponse | None:
    """Parse a spliced document and put each cut string back where its placeholder is.

    None (parse the original instead) unless every placeholder sits in an image part's data
    exactly once: anything else means the pattern matched something other than a payload.
    """

    def put(part: StrictPart, payload: memoryview) -> None:
        assert part.inline_data is not None
        part.inline_data.data = msgspec.Raw(payload)

    return _fill_image_parts(doc, cut, len(cut), put)


def _fill_image_parts(
    doc: bytes, values: dict[bytes, T], count: int, put: Callable[[StrictPart, T], None]
) -> GenerateContentResponse | None:
    """Parse ``doc`` and hand each image part whose data is a placeholder (a key of
    ``values``) its value, removed from ``values``; None, with ``values`` untouched, unless
    exactly ``count`` placeholders were found, each once, all in image parts' data."""
    try:
        response = _typed_decoder.decode(doc)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    found: list[tuple[StrictPart, bytes]] = []
    for candidate in response.candidates:
        for part in candidate.content.parts if candidate.content is not None else ():
            blob = part.inline_data
            # Placeholders are short: a long string is never one (nor copied to look it up).
            if (
                blob is not None
                and len(blob.data) <= _PLACEHOLDER_MAX
                and (key := bytes(blob.data)) in values
            ):
                found.append((part, key))
    if len(found) != count or len({key for _, key in found}) != count:
        return None
    for part, key in found:
        put(part, values.pop(key))
    return response


request_decoder = msgspec.json.Decoder(IncomingRequest)


# --- image payloads cut out of a stream as it arrives ----------------------------------------

_CUT_MARK = b"\\u0000p"
"""How a `PayloadCutter` placeholder starts (a NUL escape: never base64, never `_splice`'s)."""


class PayloadCutter:
    """Takes long base64 strings under ``"data"`` keys out of a byte stream as it arrives.

    `feed` returns the stream with each such string's text replaced by a short placeholder, so
    the SSE decoder and the JSON parser see small events; the string is decoded piece by piece
    as the socket hands it over (the validating SIMD decoder is also what finds its end, so a
    12 MB string is read once, in cache, with no line or quote searches and no join of its
    text), and `decode_response` puts the bytes in the image part the placeholder sits in.

    What is not a plain standard base64 string of at least ``min_len`` characters (an escape, a
    line end or padding inside, non-canonical padding) is given back unchanged: the output is
    always the input, placeholders aside, so nothing here can change what a response means. A
    placeholder that lands anywhere but an image part's data (the key pattern inside another
    string) is put back by `decode_response`. Placeholders carry a random token, so no server
    can send one.
    """

    __slots__ = (
        "_carry",
        "_count",
        "_decoded",
        "_inside",
        "_mark",
        "_size",
        "_tail",
        "limit",
        "min_len",
        "payloads",
    )

    def __init__(self, limit: int, min_len: int = _SPLICE_MIN) -> None:
        self.limit = limit
        self.min_len = min_len
        self.payloads: dict[bytes, bytes] = {}  # quoted placeholder -> decoded bytes
        self._mark = _CUT_MARK + os.urandom(6).hex().encode() + b"-"
        self._count = 0
        self._inside = False
        self._tail = b""  # the last bytes given out, for a key split between two chunks
        self._decoded: list[bytes] = []
        self._size = 0  # characters of the current string decoded so far
        self._carry = b""  # its characters not yet decoded (the end of a chunk)

    def feed(self, chunk: bytes) -> list[bytes]:
        """The stream's next bytes as they should be parsed (placeholders in, payloads out)."""
        out: list[bytes] = []
        while chunk:
            chunk = self._in_string(chunk, out) if self._inside else self._outside(chunk, out)
        return out

    def _outside(self, data: bytes, out: list[bytes]) -> bytes:
        key = _PAYLOAD_KEY
        start = -1
        if self._tail:
            # A key begun in the previous chunk: look across the boundary first.
            across = (self._tail + data[: len(key) - 1]).find(key)
            if across >= 0:
                start = across + len(key) - len(self._tail)
        if start < 0:
            at = data.find(key)
            start = at + len(key) if at >= 0 else -1
        if start < 0:
            out.append(data)
            keep = len(key) - 1
            self._tail = data[-keep:] if len(data) >= keep else (self._tail + data)[-keep:]
            return b""
        if start:
            out.append(data[:start])
        self._tail = b""
        self._inside = True
        return data[start:]

    def _in_string(self, data: bytes, out: list[bytes]) -> bytes:
        skip = self._after_carry(data) if self._carry else 0
        if skip < 0:
            data, skip = self._carry + data, 0
            self._carry = b""
        # The string's next characters are data[skip:], read through a view: slicing would
        # copy every 64 KiB chunk of a string that does not start on a group boundary.
        whole = (len(data) - skip) & ~3
        if whole and data[skip + whole - 1] == 0x3D:
            whole -= 4  # a padded group can only end the string: wait for what follows it
        if whole > 0 and data[skip + whole - 1] != 0x3D:
            try:
                piece = b64decode_strict(memoryview(data)[skip : skip + whole])
            except ValueError:
                pass  # the string ends in this chunk, or is not plain base64
            else:
                self._take(piece, whole)
                self._carry = data[skip + whole :]
                return b""
        buf = data[skip:] if skip else data
        end = buf.find(b'"')
        if end < 0:
            if len(buf) >= 8:
                return self._give_back(buf, out)  # not plain base64
            self._carry = buf
            return b""
        try:
            piece = b64decode_strict(memoryview(buf)[:end])
        except ValueError:
            return self._give_back(buf, out)
        last = buf[max(0, end - 4) : end]
        if last.endswith(b"=") and b64encode(b64decode_strict(last)) != last:
            return self._give_back(buf, out)  # non-canonical padding: decoding would lose it
        self._take(piece, end)
        if self._size < self.min_len:
            return self._give_back(buf[end:], out)
        self._count += 1
        placeholder = self._mark + b"%d" % self._count
        self.payloads[b'"' + placeholder + b'"'] = b"".join(self._decoded)
        out.append(placeholder)
        self._reset()
        return buf[end:]

    def _after_carry(self, data: bytes) -> int:
        """Complete the carried characters into whole groups with the first few of ``data``
        and decode them; how many of ``data`` that took, or -1 (the carry stays) when they
        do not make plain groups (the string may end there)."""
        fill = -len(self._carry) % 4
        head = self._carry + data[:fill]
        if len(head) % 4 or 0x3D in head:
            return -1
        try:
            piece = b64decode_strict(head)
        except ValueError:
            return -1
        self._carry = b""
        self._take(piece, len(head))
        return fill

    def _take(self, piece: bytes, chars: int) -> None:
        self._decoded.append(piece)
        self._size += chars
        if self._size > self.limit:
            size = self._size
            self._reset()
            raise EventTooLarge(self.limit, size)

    def _give_back(self, rest: bytes, out: list[bytes]) -> bytes:
        """Stop cutting this string: emit what was decoded as the text it came from (whole
        groups, and a canonical last one: encoding them again gives that exact text), then
        return ``rest`` to be read as ordinary stream bytes."""
        if self._decoded:
            out.append(b64encode(b"".join(self._decoded)))
        self._reset()
        return rest

    def _reset(self) -> None:
        self._inside = False
        self._decoded = []
        self._size = 0
        self._carry = b""
        self._tail = b""


def _restore_cut(data: bytes, payloads: dict[bytes, bytes]) -> GenerateContentResponse | None:
    """Parse a document holding `PayloadCutter` placeholders, each image part getting its
    decoded bytes; None (put them back and parse again) unless every placeholder in it sits in
    an image part's data."""

    def put(part: StrictPart, decoded: bytes) -> None:
        blob = part.inline_data
        assert blob is not None
        part.inline_data = DecodedBlob(
            mime_type=blob.mime_type,
            data=blob.data,
            display_name=blob.display_name,
            decoded=decoded,
        )

    return _fill_image_parts(data, payloads, data.count(_CUT_MARK), put)


def _put_back(data: bytes, payloads: dict[bytes, bytes]) -> bytes:
    """``data`` with every `PayloadCutter` placeholder replaced by the text it stood for."""
    for key in [key for key in payloads if key in data]:
        data = data.replace(key, b'"' + b64encode(payloads.pop(key)) + b'"')
    return data
