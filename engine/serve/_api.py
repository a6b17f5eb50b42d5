"""The JSON shapes of `nanoedit serve`: what the handlers decode and encode, and what
`/openapi.json` describes (generated from these very types)."""

from __future__ import annotations

from typing import Literal

import msgspec

from sessions import Usage

__all__ = [
    "BudgetIn",
    "CheckoutIn",
    "ErrorBody",
    "ErrorOut",
    "ForkIn",
    "Health",
    "ImageConfigIn",
    "ImageIn",
    "ImageOut",
    "SessionCreate",
    "SessionList",
    "SessionOut",
    "SessionSummaryOut",
    "TurnCreate",
    "TurnOut",
]


class _In(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Request bodies refuse fields they do not know: a typo is a 400, not ignored."""


class ImageConfigIn(_In):
    """`generationConfig.imageConfig`: aspect ratio ("16:9") and size ("1K", "2K", "4K")."""

    aspect_ratio: str | None = None
    image_size: str | None = None


class BudgetIn(_In):
    """A session's budget; 0 means the model's or the server's limit."""

    max_context_tokens: int = 0
    max_request_bytes: int = 0
    max_cost_usd: float = 0.0
    policy: Literal["reject", "drop_oldest", "rebase"] = "reject"


class SessionCreate(_In):
    """POST /v1/sessions."""

    model: str | None = None
    image_config: ImageConfigIn | None = None
    system_instruction: str | None = None
    title: str = ""
    budget: BudgetIn | None = None
    thinking_level: str | None = None  # minimal, medium, high: what the model takes


class ImageIn(_In):
    """An image for a turn: base64 `data` (with its `mime_type`, sniffed when absent), or the
    `sha256` of an image the tenant already has."""

    data: str | None = None
    mime_type: str | None = None
    sha256: str | None = None
    # A reference's role (subject, style, object, character, background) and a note.
    role: str | None = None
    note: str = ""


class MaskIn(_In):
    """A region mask: a base64 image (white: may change, black: keep; grey blends)."""

    data: str
    feather: int = 8


class TurnCreate(_In):
    """POST /v1/sessions/{id}/turns."""

    text: str = ""
    images: list[ImageIn] = msgspec.field(default_factory=list)
    stream: bool = False
    # A region edit: only this box [x0, y0, x1, y1] of the head image, or where the mask
    # image (base64 PNG, white: may change) is white, changes; every other pixel stays.
    region: list[int] | None = None
    mask: MaskIn | None = None
    # Takes of this prompt generated at once and committed as sibling turns (1..8); the answer
    # is the first to finish, the head; the others are in the session's tree.
    variants: int = 1


class CheckoutIn(_In):
    """POST /v1/sessions/{id}/checkout: a turn's index on the current branch (redo included)
    or its id; null goes back to before the first turn."""

    turn: int | str | None


class RenameIn(_In):
    """PATCH /v1/sessions/{id}: a new title."""

    title: str


class ForkIn(_In):
    """POST /v1/sessions/{id}/fork: the new session holds the turns up to `at` (default all)."""

    at: int | None = None


class ImageOut(msgspec.Struct, kw_only=True):
    """An image of a turn, by URL."""

    url: str
    sha256: str
    mime_type: str
    width: int
    height: int
    bytes: int


class TurnOut(msgspec.Struct, kw_only=True):
    """A committed turn."""

    id: str
    index: int
    parent: str | None
    prompt: str
    input_images: list[ImageOut]
    text: str
    images: list[ImageOut]
    usage: Usage
    cost_usd: float
    finish_reason: str | None
    latency_s: float
    attempts: int
    created_at: float
    # A region edit: the box that changed [x0, y0, x1, y1] in the image's pixels, and the
    # pixels outside it that differ from the previous image (0).
    region: list[int] | None = None
    region_drift_px: int | None = None
    variant: int | None = None  # which take of a variants turn


class SessionOut(msgspec.Struct, kw_only=True):
    """A session with its turns on the current branch (`branches`: every branch, with
    `?tree=1`)."""

    id: str
    model: str
    title: str
    head: str | None
    turns: list[TurnOut]
    cost_usd: float
    created_at: float
    updated_at: float
    parent_id: str | None = None
    branches: list[list[TurnOut]] | None = None


class SessionSummaryOut(msgspec.Struct, kw_only=True):
    """One session of the listing."""

    id: str
    model: str
    title: str
    turns: int
    total_turns: int
    created_at: float
    updated_at: float


class SessionList(msgspec.Struct, kw_only=True):
    """GET /v1/sessions."""

    sessions: list[SessionSummaryOut]


class ErrorBody(msgspec.Struct, kw_only=True):
    """What went wrong: the error's type, a message, the HTTP status."""

    type: str
    message: str
    status: int


class ErrorOut(msgspec.Struct, kw_only=True):
    """Every error answer."""

    error: ErrorBody


class Health(msgspec.Struct, kw_only=True):
    """GET /healthz: 200 when it can serve, 503 while draining or while the store or Redis is
    down."""

    status: Literal["ok", "draining", "unavailable"]
    turns_in_flight: int
    store: Literal["ok", "down"] = "ok"
    redis: Literal["ok", "down", "none"] = "none"
