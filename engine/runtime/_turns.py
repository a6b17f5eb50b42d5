"""The values a caller holds: `Image`, `Turn`, and the draft user Content built from input.

Input is checked here, before anything is created or sent: text must be valid Unicode, images
must be images (bytes, paths, Blobs or Images of earlier turns).
"""

from __future__ import annotations

import hashlib
import io
import mimetypes
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine._exceptions import ConfigError
from engine.events import ImageRef
from sessions import Blob, BlobStore, Content, Part, TurnRecord, Usage, image_dimensions

__all__ = [
    "ROLES",
    "Image",
    "ImageInput",
    "Reference",
    "Turn",
    "build_user_content",
    "sniff_mime",
]

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"RIFF", "image/webp"),
)


def sniff_mime(data: bytes, fallback: str = "application/octet-stream") -> str:
    """The image MIME type from magic bytes."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            # RIFF is also WAV and AVI; WebP says so at offset 8.
            if mime == "image/webp" and data[8:12] != b"WEBP":
                break
            return mime
    return fallback


@dataclass(frozen=True, slots=True)
class Image:
    """One image of a turn: bytes, type, size, digest."""

    mime_type: str
    data: bytes = field(repr=False)
    width: int
    height: int
    sha256: str

    @classmethod
    def from_blob(cls, blob: Blob, digest: str | None = None) -> Image:
        """Describe an inline blob (dimensions from the header; `digest` if already known)."""
        w, h = image_dimensions(blob.data) or (0, 0)
        digest = digest or hashlib.sha256(blob.data).hexdigest()
        return cls(blob.mime_type, blob.data, w, h, digest)

    @property
    def extension(self) -> str:
        """File extension for the MIME type, with the dot."""
        return {"image/jpeg": ".jpg"}.get(self.mime_type) or (
            mimetypes.guess_extension(self.mime_type) or ".bin"
        )

    def ref(self) -> ImageRef:
        """The event-safe reference (no bytes)."""
        return ImageRef(
            sha256=self.sha256,
            mime_type=self.mime_type,
            size=len(self.data),
            width=self.width,
            height=self.height,
        )

    def save(self, path: str | Path) -> Path:
        """Write the bytes to `path`; returns the path."""
        p = Path(path)
        p.write_bytes(self.data)
        return p


@dataclass(frozen=True, slots=True)
class Turn:
    """A committed turn, as the caller sees it."""

    record: TurnRecord = field(repr=False)
    images: list[Image]
    text: str

    @classmethod
    def from_record(
        cls,
        record: TurnRecord,
        blobs: BlobStore | None = None,
        known: Sequence[Image] = (),
    ) -> Turn:
        """Wrap a stored turn; `blobs` knows the digests of interned images, `known` holds
        Images already made for the model Content's inline parts, in part order (see TurnRun):
        one is taken only for the very bytes object it was made from."""
        images = []
        described = iter(known)
        for part in record.model.parts:
            b = part.inline_data
            if b is None:
                continue
            image = next(described, None)
            if part.thought:
                continue
            if image is None or image.data is not b.data:
                image = Image.from_blob(b, blobs.digest(b.data) if blobs else None)
            images.append(image)
        return cls(record, images, record.model.text())

    @property
    def id(self) -> str:
        """The turn id."""
        return self.record.id

    @property
    def index(self) -> int:
        """Position on its branch, from 1."""
        return self.record.index

    @property
    def usage(self) -> Usage:
        """Token counts as the server reported them."""
        return self.record.usage

    @property
    def finish_reason(self) -> str | None:
        """The model's finish reason."""
        return self.record.finish_reason

    @property
    def attempts(self) -> int:
        """Attempts it took (1 = no retry)."""
        return self.record.attempts

    @property
    def latency_s(self) -> float:
        """Seconds from the start of the turn to its commit."""
        return self.record.latency_s

    @property
    def cost_usd(self) -> float:
        """Settled cost in USD."""
        return self.record.cost_usd

    @property
    def model_content(self) -> Content:
        """The model Content verbatim (signatures included)."""
        return self.record.model


ROLES = ("subject", "style", "object", "character", "background")
"""The roles a reference image can have."""
_ROLE_WORDS = {
    "subject": "the subject: keep what it shows and edit it as asked",
    "style": "a style reference: take its look (palette, medium, lighting), not its content",
    "object": "an object to put into the picture",
    "character": "a character: keep this person's or figure's identity and features",
    "background": "the background or setting to use",
}


@dataclass(frozen=True, slots=True)
class Reference:
    """An input image with a role: what the model should take from it. Sent as a labelled text
    part just before the image, as Google's prompting guide advises for several images."""

    image: bytes | bytearray | memoryview | str | Path | Blob | Image
    role: str
    note: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"reference role {self.role!r}: one of {', '.join(ROLES)}")
        if not isinstance(self.note, str) or len(self.note) > 500:
            raise ConfigError("a reference note is text of at most 500 characters")

    def label(self, n: int) -> str:
        """The text part sent before the image."""
        note = f" ({self.note.strip()})" if self.note.strip() else ""
        return f"Image {n} is {_ROLE_WORDS[self.role]}{note}:"


ImageInput = bytes | bytearray | memoryview | str | Path | Blob | Image | Reference
"""An image for a turn: its bytes, a file path, a `Blob` or an `Image` of an earlier turn, or any
of these as a `Reference` with a role."""


def _check_image(data: bytes, what: str) -> str:
    """The image's MIME type; ConfigError for bytes that are no image, a damaged or truncated
    one, or one whose header claims more pixels than Pillow's bomb limit (the upstream API would
    refuse each after the upload; this costs a header read and a chunk walk, not a decode)."""
    mime = sniff_mime(data, "")
    if not mime:
        raise ConfigError(f"{what} is not an image (PNG, JPEG, GIF or WebP expected)")
    # Imported here: Pillow is megabytes of RSS that an engine sending no input images never
    # needs (benchmarks/compare_clients.py measures peak RSS).
    from PIL import Image as PILImage

    with warnings.catch_warnings():
        warnings.simplefilter("error", PILImage.DecompressionBombWarning)
        try:
            with PILImage.open(io.BytesIO(data)) as opened:
                opened.verify()
        except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
            raise ConfigError(f"{what} claims too many pixels to be an image to edit") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ConfigError(f"{what} is a damaged or truncated {mime}: {exc}") from None
    return mime


def _image_part(image: object, n: int) -> Part:
    if isinstance(image, Blob):
        if not image.mime_type.startswith("image/"):
            raise ConfigError(f"images[{n}]: a Blob of type {image.mime_type!r}, not an image")
        _check_image(image.data, f"images[{n}]")
        return Part(inline_data=image)
    if isinstance(image, Image):
        return Part(inline_data=Blob(mime_type=image.mime_type, data=image.data))
    if isinstance(image, (str, Path)):
        path = Path(image)
        try:
            data = path.read_bytes()
        except IsADirectoryError:
            raise ConfigError(f"images[{n}]: {str(path)!r} is a directory, not an image") from None
        except FileNotFoundError:
            raise ConfigError(f"images[{n}]: no such file {str(path)!r}") from None
        except OSError as exc:
            raise ConfigError(f"images[{n}]: cannot read {str(path)!r}: {exc.strerror}") from None
        return Part(inline_data=Blob(mime_type=_check_image(data, str(path)), data=data))
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        return Part(inline_data=Blob(mime_type=_check_image(data, f"images[{n}]"), data=data))
    raise ConfigError(
        f"images[{n}] is a {type(image).__name__}: give bytes, a path, a Blob or an Image"
    )


def build_user_content(text: str, images: Iterable[ImageInput] = ()) -> Content:
    """The draft user Content: the text first, then the images; checked before anything is sent."""
    if not isinstance(text, str):
        raise ConfigError(f"text must be a str, not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(
            f"text is not valid Unicode: {exc.reason} at position {exc.start}"
        ) from None
    if isinstance(images, (str, bytes, bytearray, memoryview, Path, Blob, Image, Reference)):
        raise ConfigError("images must be a list of images, e.g. images=[path], not one image")
    try:
        items = list(images)
    except TypeError:
        raise ConfigError(f"images must be a list, not {type(images).__name__}") from None
    if text and text.isspace():
        raise ConfigError("the prompt is only white space: say what to draw or change")
    parts = [Part(text=text)] if text else []
    for n, image in enumerate(items):
        if isinstance(image, Reference):
            parts.append(Part(text=image.label(n + 1)))
            parts.append(_image_part(image.image, n))
        else:
            parts.append(_image_part(image, n))
    if not parts:
        raise ConfigError("a turn needs text or at least one image")
    return Content(role="user", parts=parts)
