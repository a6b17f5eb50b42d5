"""Merge the parts of a streamed answer into the one model Content a plain call would return.

Gemini streams text in pieces across chunks, each piece a part of its own; the history must
hold the answer as the model meant it: one text part per run of text, with its thought flag and
its thought signature, and every other part verbatim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sessions import Blob, Content, Part

__all__ = ["ContentMerger", "Delta", "ImageDelta", "PartialImageDelta", "TextDelta"]


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of streamed text, thought or answer, as it arrived."""

    text: str
    thought: bool


@dataclass(frozen=True, slots=True)
class ImageDelta:
    """A whole image part (with its signature and thought flag) as it arrived."""

    part: Part


@dataclass(frozen=True, slots=True)
class PartialImageDelta:
    """A preview of the image being generated (the images API's partial_images)."""

    blob: Blob
    index: int


Delta = TextDelta | ImageDelta


def _is_text_piece(part: Part) -> bool:
    # Only plain text may be concatenated; anything carrying more is kept as it came.
    return (
        part.text is not None
        and part.inline_data is None
        and part.file_data is None
        and part.function_call is None
        and part.function_response is None
        and part.executable_code is None
        and part.code_execution_result is None
        and part.video_metadata is None
        and not part.extra
    )


class _OpenText:
    __slots__ = ("pieces", "signature", "thought")

    def __init__(self, part: Part) -> None:
        self.pieces: list[str] = [part.text or ""]
        self.thought = part.thought  # the first piece's spelling: None and False both mean "no"
        self.signature = part.thought_signature

    def build(self) -> Part:
        return Part(
            text="".join(self.pieces), thought=self.thought, thought_signature=self.signature
        )


class ContentMerger:
    """Accumulates streamed parts into one model Content and reports what each chunk added.

    Rules: consecutive text pieces with the same thought flag become one part; a signature on
    any piece (also an empty trailing one) stays on that part; a piece with a signature
    different from the part's own starts a new part, so no signature is ever lost; images and
    every other kind of part are parts of their own, kept verbatim.
    """

    __slots__ = ("_open", "_parts")

    def __init__(self) -> None:
        self._parts: list[Part | _OpenText] = []
        self._open: _OpenText | None = None

    def add(self, parts: Sequence[Part]) -> list[Delta]:
        """Merge one chunk's parts; return the deltas they carry (text pieces, whole images)."""
        deltas: list[Delta] = []
        for part in parts:
            if _is_text_piece(part):
                thought = bool(part.thought)
                if not part.text and part.thought_signature is None:
                    # An empty, unsigned piece (Gemini's closing chunk carries one next to the
                    # finish reason) adds nothing; as a part of its own it would make the
                    # history differ from what the plain call returns.
                    continue
                if self._extends_open(part, thought):
                    current = self._open
                    assert current is not None
                    current.pieces.append(part.text or "")
                    if part.thought_signature is not None:
                        current.signature = part.thought_signature
                else:
                    self._open = _OpenText(part)
                    self._parts.append(self._open)
                if part.text:
                    deltas.append(TextDelta(part.text, thought))
            else:
                self._open = None
                self._parts.append(part)
                if part.is_image:
                    deltas.append(ImageDelta(part))
        return deltas

    def _extends_open(self, part: Part, thought: bool) -> bool:
        current = self._open
        if current is None or bool(current.thought) != thought:
            return False
        signature = part.thought_signature
        return signature is None or current.signature in (None, signature)

    def content(self) -> Content:
        """The merged model Content so far (a new object on every call)."""
        return Content(
            role="model",
            parts=[p.build() if isinstance(p, _OpenText) else p for p in self._parts],
        )

    @property
    def empty(self) -> bool:
        """True until a part has been added."""
        return not self._parts
