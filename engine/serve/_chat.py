"""Stateless clients, stateful sessions: a chat product's resent conversation matched to a session.

A chat product (Open WebUI, LibreChat, LobeChat, ...) sends the whole conversation on every
request. `read_conversation` turns its messages into (user, assistant) pairs and the new user
turn, with every image as a reference: an image of this server (`/v1/images/{sha256}`, absolute
or not) by its digest, a data URL (in an `image_url` part, in the OpenRouter-style `images`
list, or as markdown `![..](data:...)` in the text) by its bytes. `Conversations.match` finds
the tenant's turn whose branch is exactly those pairs -- same user texts and images, same
assistant images -- through an index of the tenant's answer images; no match means the
conversation is new to the server (it is then imported as the first turns of a new session).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.runtime import Engine, sniff_mime
from engine.serve._http import HttpError
from sessions import Blob, Content, Part, SessionNotFound, SessionState, TurnRecord

__all__ = ["Conversation", "Conversations", "ImageRef", "Message", "read_conversation"]

_MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?\s*\)")
_OUR_IMAGE = re.compile(r"(?:^|/)v1/images/([0-9a-f]{64})(?:[?#].*)?$")
_DATA_URL = re.compile(r"data:(image/[a-z0-9.+-]+);base64,(.*)", re.DOTALL | re.IGNORECASE)
_INDEX_PER_TENANT = 50_000  # answer images remembered per tenant (least recent forgotten)


@dataclass(frozen=True, slots=True)
class ImageRef:
    """An image of a message: this server's (by digest) or inline bytes."""

    sha256: str
    data: bytes | None = None  # None: one of this server's images, loaded from the store
    mime_type: str = ""


@dataclass(slots=True)
class Message:
    """One side of a turn: its text (images taken out) and its images in order."""

    text: str = ""
    images: list[ImageRef] = field(default_factory=list)


@dataclass(slots=True)
class Conversation:
    """A chat request's messages: the system text, the earlier turns, the new user turn."""

    system: str
    pairs: list[tuple[Message, Message]]
    latest: Message


def _image(url: Any, where: str) -> ImageRef:
    if isinstance(url, dict):
        url = url.get("url")
    if not isinstance(url, str) or not url:
        raise HttpError(400, "InvalidRequest", f"{where}: an image needs a url")
    ours = _OUR_IMAGE.search(url)
    if ours is not None:
        return ImageRef(sha256=ours.group(1))
    found = _DATA_URL.fullmatch(url.strip())
    if found is None:
        raise HttpError(
            400,
            "InvalidRequest",
            f"{where}: images must be data URLs or this server's /v1/images/ URLs "
            "(remote URLs are not fetched)",
        )
    try:
        data = base64.b64decode(found.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(400, "InvalidRequest", f"{where}: the data URL is not base64") from None
    mime = sniff_mime(data, "")
    if not mime:
        raise HttpError(400, "InvalidRequest", f"{where}: not a PNG, JPEG, GIF or WebP image")
    return ImageRef(sha256=hashlib.sha256(data).hexdigest(), data=data, mime_type=mime)


def _text_images(text: str, where: str, images: list[ImageRef]) -> str:
    """The text without markdown images of ours or data URLs (collected into `images`)."""

    def take(match: re.Match[str]) -> str:
        url = match.group(1)
        if _OUR_IMAGE.search(url) or url.startswith("data:"):
            images.append(_image(url, where))
            return ""
        return match.group(0)

    return _MARKDOWN_IMAGE.sub(take, text).strip()


def _message(raw: dict[str, Any], where: str) -> Message:
    message = Message()
    content = raw.get("content")
    texts: list[str] = []
    if isinstance(content, str):
        texts.append(_text_images(content, where, message.images))
    elif isinstance(content, list):
        for n, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
                texts.append(_text_images(part["text"], where, message.images))
            elif kind in ("image_url", "input_image", "output_image"):
                message.images.append(_image(part.get("image_url"), f"{where}.content[{n}]"))
            else:
                raise HttpError(400, "InvalidRequest", f"{where}.content[{n}]: unknown part")
    elif content is not None:
        raise HttpError(400, "InvalidRequest", f"{where}.content must be a string or a list")
    for n, item in enumerate(raw.get("images") or []):
        url = item.get("image_url") if isinstance(item, dict) else item
        message.images.append(_image(url, f"{where}.images[{n}]"))
    message.text = "\n".join(t for t in texts if t)
    return message


def read_conversation(messages: Any) -> Conversation:
    """The messages as turns; 400 for a list that does not end with a user message."""
    if not isinstance(messages, list) or not messages:
        raise HttpError(400, "InvalidRequest", "messages must be a non-empty list")
    system: list[str] = []
    pairs: list[tuple[Message, Message]] = []
    user: Message | None = None
    for n, raw in enumerate(messages):
        where = f"messages[{n}]"
        if not isinstance(raw, dict):
            raise HttpError(400, "InvalidRequest", f"{where} must be an object")
        role = raw.get("role")
        if role in ("system", "developer"):
            system.append(_message(raw, where).text)
        elif role == "user":
            message = _message(raw, where)
            if user is None:
                user = message
            else:  # consecutive user messages are one turn
                user.text = "\n".join(t for t in (user.text, message.text) if t)
                user.images.extend(message.images)
        elif role == "assistant":
            answer = _message(raw, where)
            pairs.append((user or Message(), answer))
            user = None
        else:
            raise HttpError(400, "InvalidRequest", f"{where}: role {role!r} is not accepted")
    if user is None:
        raise HttpError(400, "InvalidRequest", "the last message must be the user's")
    return Conversation(system="\n".join(t for t in system if t), pairs=pairs, latest=user)


def _digests(content: Content, engine: Engine) -> list[str]:
    blobs = engine.store.blobs
    return [blobs.digest(b.data) or hashlib.sha256(b.data).hexdigest() for b in content.images()]


def _same_turn(record: TurnRecord, user: Message, answer: Message, engine: Engine) -> bool:
    if record.user.text().strip() != user.text.strip():
        return False
    if _digests(record.user, engine) != [i.sha256 for i in user.images]:
        return False
    return _digests(record.model, engine) == [i.sha256 for i in answer.images]


class Conversations:
    """Per tenant, which session and turn each answer image came from (bounded), and the
    matching of a resent conversation against it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._index: dict[str, OrderedDict[str, tuple[str, str]]] = {}
        self.scans = 0  # full scans of a tenant's sessions (a miss), for tests

    def learn(self, tenant: str, session_id: str, record: TurnRecord) -> None:
        """Remember the answer images of a committed turn."""
        index = self._index.setdefault(tenant, OrderedDict())
        for digest in _digests(record.model, self.engine):
            index[digest] = (session_id, record.id)
            index.move_to_end(digest)
        while len(index) > _INDEX_PER_TENANT:
            index.popitem(last=False)

    async def _scan(self, tenant: str) -> None:
        self.scans += 1
        store = self.engine.store
        for summary in await store.list(owner=tenant):
            try:
                state = await store.load(summary.id)
            except SessionNotFound:
                continue
            for record in state.turns.values():
                self.learn(tenant, state.id, record)

    async def _find(self, tenant: str, digest: str) -> tuple[SessionState, str] | None:
        """The tenant's session and turn whose answer holds the image `digest`."""
        empty: OrderedDict[str, tuple[str, str]] = OrderedDict()
        found = self._index.get(tenant, empty).get(digest)
        if found is None:
            await self._scan(tenant)
            found = self._index.get(tenant, empty).get(digest)
        if found is None:
            return None
        session_id, turn_id = found
        try:
            state = await self.engine.store.load(session_id)
        except SessionNotFound:
            return None
        if state.record.settings.owner != tenant or turn_id not in state.turns:
            return None
        return state, turn_id

    async def match_image(self, tenant: str, digest: str) -> str | None:
        """The tenant's session whose head turn's latest answer image is `digest`."""
        found = await self._find(tenant, digest)
        if found is None:
            return None
        state, turn_id = found
        head = state.record.head
        if head != turn_id or _digests(state.turns[head].model, self.engine)[-1:] != [digest]:
            return None
        return state.id

    async def match(
        self, tenant: str, pairs: Sequence[tuple[Message, Message]]
    ) -> tuple[SessionState, str] | None:
        """The tenant's session and turn whose branch is exactly `pairs`, or None."""
        if not pairs or not pairs[-1][1].images:
            return None
        found = await self._find(tenant, pairs[-1][1].images[-1].sha256)
        if found is None:
            return None
        state, turn_id = found
        path = state.path_to(turn_id)
        if len(path) != len(pairs):
            return None
        for record, (user, answer) in zip(path, pairs, strict=True):
            if not _same_turn(record, user, answer, self.engine):
                return None
        return state, turn_id


TenantImage = Callable[[str], Awaitable[bytes | None]]
"""The bytes of an image of the tenant's by digest, None for any other (`Gateway.tenant_image`)."""


async def blobs_of(tenant_image: TenantImage, message: Message) -> list[Blob]:
    """A message's images as Blobs: inline bytes as sent, this server's from the store (400
    unless the tenant holds them)."""
    out: list[Blob] = []
    for ref in message.images:
        if ref.data is not None:
            out.append(Blob(mime_type=ref.mime_type, data=ref.data))
            continue
        data = await tenant_image(ref.sha256)
        if data is None:
            raise HttpError(400, "InvalidRequest", f"no image {ref.sha256[:16]} of this key")
        out.append(Blob(mime_type=sniff_mime(data), data=data))
    return out


async def contents_of(
    tenant_image: TenantImage, pairs: Sequence[tuple[Message, Message]]
) -> list[tuple[Content, Content]]:
    """Earlier turns as (user, model) Contents, to import into a new session."""
    out = []
    for user, answer in pairs:
        user_parts = [Part(text=user.text)] if user.text else []
        user_parts += [Part(inline_data=b) for b in await blobs_of(tenant_image, user)]
        model_parts = [Part(text=answer.text)] if answer.text else []
        model_parts += [Part(inline_data=b) for b in await blobs_of(tenant_image, answer)]
        out.append(
            (Content(role="user", parts=user_parts), Content(role="model", parts=model_parts))
        )
    return out
