"""Thought signatures the emulator issues and verifies without keeping any state.

An image signature is an HMAC of the image bytes' sha256, so an image sent back with another
image's signature, or re-encoded, fails like a missing one. A text signature is a nonce plus its
HMAC: it proves the emulator issued it but is not bound to the text, because clients may merge
streamed text pieces into one part (the real signatures are opaque; binding text would punish a
legitimate merge).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Sequence

from sessions import Blob, Content

__all__ = ["DUMMY_SIGNATURES", "Signer", "check_history"]

_DUMMIES = ("context_engineering_is_the_way_to_go", "skip_thought_signature_validator")


def _dummy_forms(text: str) -> set[bytes]:
    # A client may send the literal string (which the server then base64-decodes, URL-safe since
    # it has underscores) or base64 of the string (which decodes back to the literal ASCII).
    return {text.encode(), base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))}


DUMMY_SIGNATURES: frozenset[bytes] = frozenset(b for d in _DUMMIES for b in _dummy_forms(d))
"""Signature bytes Google documents as always accepted."""

_IMAGE_TAG = b"NBEi"
_TEXT_TAG = b"NBEt"
_DOCS = "https://ai.google.dev/gemini-api/docs/thought-signatures#model-behavior"


class Signer:
    """Issues and checks signatures with a secret derived from the server seed."""

    def __init__(self, seed: int) -> None:
        self._secret = hashlib.sha256(
            b"nanoedit-emulator-signatures\0" + seed.to_bytes(16, "big", signed=True)
        ).digest()

    def _mac(self, tag: bytes, payload: bytes) -> bytes:
        return hmac.new(self._secret, tag + payload, hashlib.sha256).digest()

    def image(self, image_sha256: bytes) -> bytes:
        """The signature for an output image with this sha256."""
        return _IMAGE_TAG + self._mac(_IMAGE_TAG, image_sha256)

    def text(self, seed_material: bytes) -> bytes:
        """A text signature; `seed_material` makes it deterministic per response."""
        nonce = hashlib.sha256(b"text-nonce\0" + seed_material).digest()[:16]
        return _TEXT_TAG + nonce + self._mac(_TEXT_TAG, nonce)[:16]

    def valid_image(self, signature: bytes | None, image_sha256: bytes) -> bool:
        """True for this image's own signature or a documented dummy."""
        if signature is None:
            return False
        return signature in DUMMY_SIGNATURES or hmac.compare_digest(
            signature, self.image(image_sha256)
        )

    def valid_text(self, signature: bytes | None) -> bool:
        """True for a text signature this emulator issued or a documented dummy."""
        if signature is None:
            return False
        if signature in DUMMY_SIGNATURES:
            return True
        if len(signature) != 36 or not signature.startswith(_TEXT_TAG):
            return False
        nonce = signature[4:20]
        return hmac.compare_digest(signature[20:], self._mac(_TEXT_TAG, nonce)[:16])


def _missing(kind: str, content_pos: int, part_pos: int) -> str:
    return (
        f"{kind} part is missing a thought_signature in content position {content_pos}, "
        f"part position {part_pos}. Please refer to {_DOCS} for more details."
    )


def check_history(
    contents: Sequence[Content], signer: Signer, image_sha: Callable[[Blob], bytes]
) -> str | None:
    """Google's 400 message for the first model part without its signature, else None.

    A model turn is a run of consecutive model Contents (the official SDK stores each stream
    chunk as its own Content). Every non-thought image part needs its own signature. The turn's
    text needs one valid signature on any non-thought text part (Google puts it on the first
    text part, or in a stream on a trailing empty text part); a text signature that does not
    verify fails too. Positions are 1-based, as Google reports them.
    """
    first_text: tuple[int, int] | None = None
    text_signed = False
    for c_index, content in enumerate(contents, start=1):
        if content.role != "model":
            if first_text is not None and not text_signed:
                return _missing("Text", *first_text)
            first_text, text_signed = None, False
            continue
        for p_index, part in enumerate(content.parts, start=1):
            if part.thought:
                continue
            if part.inline_data is not None:
                if not signer.valid_image(part.thought_signature, image_sha(part.inline_data)):
                    return _missing("Image", c_index, p_index)
            elif part.text is not None:
                if first_text is None and part.text:
                    first_text = (c_index, p_index)
                if part.thought_signature is not None:
                    if not signer.valid_text(part.thought_signature):
                        return _missing("Text", c_index, p_index)
                    text_signed = True
    if first_text is not None and not text_signed:
        return _missing("Text", *first_text)
    return None
