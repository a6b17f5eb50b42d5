"""Gemini REST `Content` / `Part` structs: the accumulated history a session *is*.

Output is always camelCase with standard base64. The structs are `gc=False`: they never form
reference cycles, and a long-running engine holds millions of them that the cyclic GC would
otherwise walk on every full collection. Input accepts camelCase and snake_case names and
both base64 alphabets, as the real API does. Part fields the engine does not model are kept as raw
JSON and sent back unchanged, so a server feature we have never heard of survives every turn.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from sessions._b64 import b64decode_strict
from sessions._errors import NanoeditError

__all__ = [
    "Blob",
    "Content",
    "DecodedBlob",
    "FileData",
    "Part",
    "StrictPart",
    "WireError",
    "decode_content",
    "decode_contents",
    "decode_part",
    "encode_contents",
    "part_from_wire",
    "wire_contents",
]


class WireError(NanoeditError, ValueError):
    """A Content or Part that cannot be decoded from JSON."""


class Blob(msgspec.Struct, omit_defaults=True, rename="camel", kw_only=True, gc=False):
    """Inline bytes (`inlineData`): an image or other media carried in the request body."""

    mime_type: str
    data: bytes
    display_name: str | None = None


class FileData(msgspec.Struct, omit_defaults=True, rename="camel", kw_only=True, gc=False):
    """A reference to an uploaded file (`fileData`)."""

    file_uri: str
    mime_type: str | None = None
    display_name: str | None = None


class Part(msgspec.Struct, omit_defaults=True, rename="camel", kw_only=True, gc=False):
    """One part of a Content, kept verbatim: text, thought flag, signature, inline data, extras.

    `extra` holds JSON fields the engine does not model, as raw JSON; it never goes on the wire
    under its own name (see `wire_contents`).
    """

    text: str | None = None
    thought: bool | None = None
    thought_signature: bytes | None = None
    inline_data: Blob | None = None
    file_data: FileData | None = None
    function_call: dict[str, Any] | None = None
    function_response: dict[str, Any] | None = None
    executable_code: dict[str, Any] | None = None
    code_execution_result: dict[str, Any] | None = None
    video_metadata: dict[str, Any] | None = None
    extra: dict[str, msgspec.Raw] | None = None

    @property
    def is_image(self) -> bool:
        """True for an inline image part."""
        return self.inline_data is not None and self.inline_data.mime_type.startswith("image/")


class Content(msgspec.Struct, omit_defaults=True, kw_only=True, weakref=True):
    """One turn's message: `role` ("user" or "model") and its ordered parts."""

    role: str | None = None
    parts: list[Part] = msgspec.field(default_factory=list)

    def images(self) -> list[Blob]:
        """Inline images in part order, thought images excluded."""
        return [p.inline_data for p in self.parts if p.inline_data is not None and not p.thought]

    def text(self) -> str:
        """Concatenated non-thought text."""
        return "".join(p.text for p in self.parts if p.text and not p.thought)


# --- decoding --------------------------------------------------------------------------------

_raw_fields = msgspec.json.Decoder(dict[str, msgspec.Raw])
_str_dec = msgspec.json.Decoder(str)
_bool_dec = msgspec.json.Decoder(bool)
_bytes_dec = msgspec.json.Decoder(bytes)
_dict_dec = msgspec.json.Decoder(dict[str, Any])


def _b64(raw: msgspec.Raw) -> bytes:
    # Fast path: standard base64 decoded in C. The SDK sends URL-safe base64; fall back for it.
    try:
        return _bytes_dec.decode(raw)
    except msgspec.ValidationError:
        try:
            text = _str_dec.decode(raw)
        except msgspec.ValidationError as exc:  # null, a number, an object...
            raise WireError(f"a bytes field must be a base64 string: {exc}") from None
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise WireError("invalid base64 in bytes field") from exc


_BLOB_NAMES = {
    "mimeType": "mime_type",
    "mime_type": "mime_type",
    "data": "data",
    "displayName": "display_name",
    "display_name": "display_name",
}
_FILE_NAMES = {
    "fileUri": "file_uri",
    "file_uri": "file_uri",
    "mimeType": "mime_type",
    "mime_type": "mime_type",
    "displayName": "display_name",
    "display_name": "display_name",
}


def _blob(raw: msgspec.Raw) -> Blob:
    fields = _raw_fields.decode(raw)
    kw: dict[str, Any] = {}
    for key, value in fields.items():
        name = _BLOB_NAMES.get(key)
        if name == "data":
            kw["data"] = _b64(value)
        elif name is not None:
            kw[name] = _str_dec.decode(value)
    if "data" not in kw or "mime_type" not in kw:
        raise WireError("inlineData needs mimeType and data")
    return Blob(**kw)


def _file_data(raw: msgspec.Raw) -> FileData:
    fields = _raw_fields.decode(raw)
    kw = {_FILE_NAMES[k]: _str_dec.decode(v) for k, v in fields.items() if k in _FILE_NAMES}
    if "file_uri" not in kw:
        raise WireError("fileData needs fileUri")
    return FileData(**kw)


_PART_FIELDS: dict[str, tuple[str, Callable[[msgspec.Raw], Any]]] = {}
for _camel, _snake, _decode in (
    ("text", "text", _str_dec.decode),
    ("thought", "thought", _bool_dec.decode),
    ("thoughtSignature", "thought_signature", _b64),
    ("inlineData", "inline_data", _blob),
    ("fileData", "file_data", _file_data),
    ("functionCall", "function_call", _dict_dec.decode),
    ("functionResponse", "function_response", _dict_dec.decode),
    ("executableCode", "executable_code", _dict_dec.decode),
    ("codeExecutionResult", "code_execution_result", _dict_dec.decode),
    ("videoMetadata", "video_metadata", _dict_dec.decode),
):
    _PART_FIELDS[_camel] = _PART_FIELDS[_snake] = (_snake, _decode)


class _StrictBlob(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    mime_type: str
    # Raw: the JSON string as received, decoded by the SIMD codec in `_from_strict` (14x
    # msgspec's scalar base64 decoder on an image).
    data: msgspec.Raw
    display_name: str | None = None


class DecodedBlob(_StrictBlob, kw_only=True):
    """A strict blob whose payload the stream reader decoded as it arrived (`decoded`); its
    `data` is only the placeholder that stood in the JSON. Never produced by decoding JSON."""

    decoded: bytes


class _StrictFile(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    file_uri: str
    mime_type: str | None = None
    display_name: str | None = None


class StrictPart(msgspec.Struct, rename="camel", forbid_unknown_fields=True, gc=False):
    """A Part exactly as servers send it: camelCase, standard base64, modelled fields only."""

    text: str | None = None
    thought: bool | None = None
    thought_signature: bytes | None = None
    inline_data: _StrictBlob | None = None
    file_data: _StrictFile | None = None
    function_call: dict[str, Any] | None = None
    function_response: dict[str, Any] | None = None
    executable_code: dict[str, Any] | None = None
    code_execution_result: dict[str, Any] | None = None
    video_metadata: dict[str, Any] | None = None


_strict_part = msgspec.json.Decoder(StrictPart)

_PLACEHOLDER_MAX = 64
"""The longest placeholder a reader that cuts strings out of JSON may use (quotes included)."""


def decode_part(raw: msgspec.Raw | bytes, payloads: dict[bytes, memoryview] | None = None) -> Part:
    """Decode one Part from JSON, accepting both naming styles and both base64 alphabets.

    ``payloads`` maps placeholders (JSON strings, quotes included) that stand for cut-out
    base64 strings to those strings: a placeholder that is this part's inline data is
    replaced by its string, decoded, and removed from ``payloads``; one anywhere else stays
    where it is (and in ``payloads``, for the caller to notice).
    """
    # Fast path, one pass over the (possibly megabytes of) base64: what servers send, camelCase
    # with standard base64 and only modelled fields. Anything else takes the general path.
    try:
        sp = _strict_part.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return _decode_part_general(raw)
    blob = sp.inline_data
    # Placeholders are short: a long string is never one (and is not copied to look it up).
    if payloads and blob is not None and len(blob.data) <= _PLACEHOLDER_MAX:
        payload = payloads.pop(bytes(blob.data), None)
        if payload is not None:
            blob.data = msgspec.Raw(payload)
    return _from_strict(sp)


def part_from_wire(item: msgspec.Raw | StrictPart) -> Part:
    """A Part from a response struct's part: already decoded strictly, or still raw JSON."""
    if isinstance(item, StrictPart):
        return _from_strict(item)
    return decode_part(item)


def _payload(raw: msgspec.Raw) -> bytes:
    """The bytes of a JSON base64 string: one SIMD pass for a plain standard-alphabet string;
    escapes, the URL-safe alphabet and bad input take `_b64`'s general path."""
    view = memoryview(raw)
    if len(view) >= 2 and view[0] == 0x22 and view[-1] == 0x22:
        try:
            return b64decode_strict(view[1:-1])
        except ValueError:
            pass
    return _b64(raw)


def _from_strict(sp: StrictPart) -> Part:
    blob, file = sp.inline_data, sp.file_data
    return Part(
        text=sp.text,
        thought=sp.thought,
        thought_signature=sp.thought_signature,
        inline_data=None
        if blob is None
        else Blob(
            mime_type=blob.mime_type,
            data=blob.decoded if type(blob) is DecodedBlob else _payload(blob.data),
            display_name=blob.display_name,
        ),
        file_data=None
        if file is None
        else FileData(
            file_uri=file.file_uri, mime_type=file.mime_type, display_name=file.display_name
        ),
        function_call=sp.function_call,
        function_response=sp.function_response,
        executable_code=sp.executable_code,
        code_execution_result=sp.code_execution_result,
        video_metadata=sp.video_metadata,
    )


def _decode_part_general(raw: msgspec.Raw | bytes) -> Part:
    try:
        fields = _raw_fields.decode(raw)
        kw: dict[str, Any] = {}
        extra: dict[str, msgspec.Raw] | None = None
        for key, value in fields.items():
            spec = _PART_FIELDS.get(key)
            if spec is None:
                if extra is None:
                    extra = {}
                # copy(): a Raw is a view into the whole response buffer; keep only its bytes.
                extra[key] = value.copy()
            else:
                kw[spec[0]] = spec[1](value)
                if spec[0] == "thought_signature" and _respelled(kw[spec[0]], value):
                    # Sent back as it came (the URL-safe alphabet, no padding...): the string
                    # is kept with the unmodelled fields, and written in place of the bytes.
                    if extra is None:
                        extra = {}
                    extra[_SIGNATURE] = value.copy()
    except (msgspec.DecodeError, RecursionError) as exc:
        raise WireError(f"malformed part: {exc}") from exc
    return Part(**kw, extra=extra)


_SIGNATURE = "thoughtSignature"


def _respelled(data: bytes, raw: msgspec.Raw) -> bool:
    """Whether the standard base64 of `data` is another string than the one received."""
    return bytes(raw) != b'"' + base64.b64encode(data) + b'"'


class _RawContent(msgspec.Struct):
    role: str | None = None
    parts: list[msgspec.Raw] = msgspec.field(default_factory=list)


_raw_content = msgspec.json.Decoder(_RawContent)
_raw_contents = msgspec.json.Decoder(list[_RawContent])


def content_from_raw_parts(role: str | None, parts: Iterable[msgspec.Raw]) -> Content:
    """Build a Content from undecoded parts (as they come out of a response struct)."""
    return Content(role=role, parts=[decode_part(p) for p in parts])


def decode_content(data: bytes | msgspec.Raw) -> Content:
    """Decode one Content JSON object."""
    try:
        rc = _raw_content.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise WireError(f"malformed content: {exc}") from exc
    return content_from_raw_parts(rc.role, rc.parts)


def decode_contents(data: bytes | msgspec.Raw) -> list[Content]:
    """Decode a JSON array of Contents."""
    try:
        rcs = _raw_contents.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise WireError(f"malformed contents: {exc}") from exc
    return [content_from_raw_parts(rc.role, rc.parts) for rc in rcs]


# --- encoding --------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()


class _WireContent(msgspec.Struct, omit_defaults=True, kw_only=True):
    role: str | None = None
    parts: list[Any] = msgspec.field(default_factory=list)


def _part_to_raw(part: Part) -> msgspec.Raw:
    # Splice the unmodelled fields into the modelled object's JSON, so they go out under
    # their own names exactly as they came in.
    modelled = msgspec.structs.replace(part, extra=None)
    if part.extra is not None and _SIGNATURE in part.extra:
        modelled = msgspec.structs.replace(modelled, thought_signature=None)  # written as received
    body = _encoder.encode(modelled)
    extra = _encoder.encode(part.extra)
    joiner = b"," if len(body) > 2 else b""
    return msgspec.Raw(body[:-1] + joiner + extra[1:])


def wire_contents(contents: Sequence[Content]) -> list[Content | _WireContent]:
    """Contents ready for msgspec encoding; parts with unmodelled fields are spliced back."""
    out: list[Content | _WireContent] = []
    for c in contents:
        if any(p.extra for p in c.parts):
            parts = [_part_to_raw(p) if p.extra else p for p in c.parts]
            out.append(_WireContent(role=c.role, parts=parts))
        else:
            out.append(c)
    return out


def encode_contents(contents: Sequence[Content]) -> bytes:
    """The JSON array of Contents, as the Gemini REST API expects it."""
    return _encoder.encode(wire_contents(contents))
