"""Export and import sessions as Gemini REST request JSON, with nanoedit's metadata alongside.

An export is a `generateContent` request body: `contents` (the current branch, what the next
request would carry), `systemInstruction`, `generationConfig`, `tools`, `toolConfig`,
`safetySettings`, plus a `nanoedit` block with the session and per-turn metadata. A real server
rejects unknown top-level fields, so `request_only=True` leaves the block out; then

    curl -H "x-goog-api-key: $KEY" -H "content-type: application/json" \\
        --data-binary @export.json .../v1beta/models/M:generateContent

replays it. Bytes go out as standard base64. Nothing in an export is a key: sessions hold none.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from sessions._budget import Budget
from sessions._catalog import BUILTIN, Catalog
from sessions._check import check_session
from sessions._errors import ConfigError
from sessions._files import FileRef
from sessions._records import SessionRecord, SessionSettings, SessionState, TurnRecord, Usage
from sessions._records import new_id as _new_id
from sessions._store import SessionStore
from sessions._wire import (
    Content,
    FileData,
    WireError,
    decode_content,
    decode_contents,
    wire_contents,
)

__all__ = ["EXPORT_VERSION", "export_session", "import_session"]

EXPORT_VERSION = 1
_NONE = msgspec.Raw(b"")  # an absent Raw field (msgspec cannot decode `Raw | None`)


class _SessionMeta(msgspec.Struct, kw_only=True):
    id: str
    model: str
    # system_instruction is left out here: it travels as the top-level `systemInstruction`.
    settings: SessionSettings = msgspec.field(default_factory=SessionSettings)
    created_at: float = 0.0
    updated_at: float = 0.0
    title: str = ""
    parent_id: str | None = None
    forked_at: int | None = None
    head: str | None = None
    tip: str | None = None


class _TurnMeta(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    parent: str | None = None
    index: int = 0
    model_id: str = ""
    created_at: float = 0.0
    image_config: dict[str, str] | None = None
    usage: Usage = msgspec.field(default_factory=Usage)
    cost_usd: float = 0.0
    finish_reason: str | None = None
    attempts: int = 1
    latency_s: float = 0.0
    timings: dict[str, float] = msgspec.field(default_factory=dict)
    request_bytes: int = 0
    response_bytes: int = 0
    carried: list[int] | None = None
    rebased: bool = False
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    # Only with all branches: the turn's own Contents, as wire JSON.
    user: msgspec.Raw = _NONE
    model: msgspec.Raw = _NONE


class _Nanoedit(msgspec.Struct, kw_only=True):
    version: int
    session: _SessionMeta
    turns: list[_TurnMeta] = msgspec.field(default_factory=list)
    all_branches: bool = False


class _Export(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel"):
    contents: list[Any]
    system_instruction: Any = None
    generation_config: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_config: dict[str, Any] | None = None
    safety_settings: list[dict[str, Any]] | None = None
    nanoedit: _Nanoedit | None = None


_encoder = msgspec.json.Encoder()
_top_dec = msgspec.json.Decoder(dict[str, msgspec.Raw])
_nanoedit_dec = msgspec.json.Decoder(_Nanoedit)
_dict_dec = msgspec.json.Decoder(dict[str, Any])
_list_dec = msgspec.json.Decoder(list[dict[str, Any]])


def _raw_content(content: Content) -> msgspec.Raw:
    return msgspec.Raw(_encoder.encode(wire_contents([content])[0]))


def _generation_config(settings: SessionSettings) -> dict[str, Any] | None:
    config = dict(settings.generation_config or {})
    if settings.response_modalities is not None:
        config["responseModalities"] = settings.response_modalities
    if settings.image_config is not None:
        config["imageConfig"] = settings.image_config
    return config or None


def _turn_meta(turn: TurnRecord, *, with_contents: bool) -> _TurnMeta:
    # Every TurnRecord field but the Contents, which go in `contents` (or here, as wire JSON).
    fields = msgspec.structs.asdict(turn)
    del fields["user"], fields["model"]
    return _TurnMeta(
        **fields,
        user=_raw_content(turn.user) if with_contents else _NONE,
        model=_raw_content(turn.model) if with_contents else _NONE,
    )


def export_session(
    state: SessionState,
    *,
    include_all_branches: bool = False,
    request_only: bool = False,
    file_refs: Mapping[str, FileRef] | None = None,
) -> bytes:
    """The session as a Gemini REST request body (JSON) with a `nanoedit` metadata block.

    `contents` is always the current branch. `include_all_branches` puts every turn of the
    tree, with its Contents, in the metadata; `request_only` leaves the metadata out so the
    file is a request a real server accepts. Images go inline (the file is self-contained)
    unless `file_refs` (sha256 -> a live upload) has them: those become `fileData` references,
    signatures kept.
    """
    if request_only and include_all_branches:
        raise ValueError("request_only exports hold the current branch only")
    rec, settings = state.record, state.record.settings
    block: _Nanoedit | None = None
    if not request_only:
        turns = list(state.turns.values()) if include_all_branches else state.path()
        block = _Nanoedit(
            version=EXPORT_VERSION,
            session=_SessionMeta(
                id=rec.id,
                model=rec.model,
                settings=msgspec.structs.replace(settings, system_instruction=None),
                created_at=rec.created_at,
                updated_at=rec.updated_at,
                title=rec.title,
                parent_id=rec.parent_id,
                forked_at=rec.forked_at,
                head=rec.head,
                tip=rec.tip,
            ),
            turns=[_turn_meta(t, with_contents=include_all_branches) for t in turns],
            all_branches=include_all_branches,
        )
    contents = state.contents()
    if file_refs:
        contents = [_referenced(c, file_refs) for c in contents]
    body = _Export(
        contents=list(wire_contents(contents)),
        system_instruction=(
            _raw_content(settings.system_instruction) if settings.system_instruction else None
        ),
        generation_config=_generation_config(settings),
        tools=settings.tools,
        tool_config=settings.tool_config,
        safety_settings=settings.safety_settings,
        nanoedit=block,
    )
    return _encoder.encode(body)


def _referenced(content: Content, refs: Mapping[str, FileRef]) -> Content:
    parts = []
    for part in content.parts:
        blob = part.inline_data
        ref = refs.get(hashlib.sha256(blob.data).hexdigest()) if blob is not None else None
        if ref is not None and ref.live():
            data = FileData(file_uri=ref.uri, mime_type=ref.mime_type)
            part = msgspec.structs.replace(part, inline_data=None, file_data=data)
        parts.append(part)
    return Content(role=content.role, parts=parts)


def _field(top: dict[str, msgspec.Raw], *names: str) -> msgspec.Raw | None:
    # The API accepts camelCase and snake_case request fields; so do we.
    for name in names:
        if name in top:
            return top[name]
    return None


def _settings_from_request(top: dict[str, msgspec.Raw]) -> SessionSettings:
    raw = _field(top, "generationConfig", "generation_config")
    config = _dict_dec.decode(raw) if raw is not None else {}
    modalities = config.pop("responseModalities", config.pop("response_modalities", None))
    image_config = config.pop("imageConfig", config.pop("image_config", None))
    tools = _field(top, "tools")
    tool_config = _field(top, "toolConfig", "tool_config")
    safety = _field(top, "safetySettings", "safety_settings")
    return SessionSettings(
        image_config=image_config,
        response_modalities=modalities,
        tools=_list_dec.decode(tools) if tools is not None else None,
        tool_config=_dict_dec.decode(tool_config) if tool_config is not None else None,
        safety_settings=_list_dec.decode(safety) if safety is not None else None,
        generation_config=config or None,
    )


def _role(content: Content, role: str, where: str) -> Content:
    """The Content with its role made explicit (a file may leave it out); WireError if wrong
    or empty (no server accepts a Content without parts)."""
    if not content.parts:
        raise WireError(f"{where}: the {role} Content has no parts")
    if content.role == role:
        return content
    if content.role is None:
        return Content(role=role, parts=content.parts)
    raise WireError(f"{where}: expected a {role} Content, got role {content.role!r}")


def _turn(
    meta: _TurnMeta, user: Content, model: Content, *, parent: str | None, index: int
) -> TurnRecord:
    where = f"turn {meta.id}"
    user, model = _role(user, "user", where), _role(model, "model", where)
    fields = msgspec.structs.asdict(meta)
    for name in ("user", "model", "parent", "index"):
        del fields[name]
    return TurnRecord(**fields, parent=parent, index=index, user=user, model=model)


def _pairs(contents: list[Content]) -> list[tuple[Content, Content]]:
    if len(contents) % 2:
        raise WireError(f"contents must alternate user and model; got {len(contents)} entries")
    pairs = list(zip(contents[0::2], contents[1::2], strict=True))
    for n, (user, model) in enumerate(pairs, 1):
        if user.role not in (None, "user") or model.role not in (None, "model"):
            raise WireError(f"turn {n}: expected a user then a model Content")
    return pairs


def _decode(data: bytes, *, session_id: str, model: str) -> SessionState:
    """The SessionState an export describes, under `session_id` (no I/O)."""
    try:
        top = _top_dec.decode(data)
        raw_contents = top.get("contents")
        contents = decode_contents(raw_contents) if raw_contents is not None else []
        raw_si = _field(top, "systemInstruction", "system_instruction")
        system = decode_content(raw_si) if raw_si is not None else None
        raw_block = top.get("nanoedit")
        block = _nanoedit_dec.decode(raw_block) if raw_block is not None else None
        settings = block.session.settings if block else _settings_from_request(top)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise WireError(f"not a session export: {exc}") from exc
    settings = msgspec.structs.replace(settings, system_instruction=system)
    now = time.time()
    turns: list[TurnRecord] = []
    if block is not None and block.all_branches:
        for meta in block.turns:
            if not meta.user or not meta.model:
                raise WireError(f"turn {meta.id} has no contents in an all-branches export")
            user, out = decode_content(meta.user), decode_content(meta.model)
            turns.append(_turn(meta, user, out, parent=meta.parent, index=meta.index))
        head, tip = block.session.head, block.session.tip
    else:
        pairs = _pairs(contents)
        if block is None:
            metas = [_TurnMeta(id=_new_id(), model_id=model, created_at=now) for _ in pairs]
        elif len(block.turns) != len(pairs):
            raise WireError(f"{len(block.turns)} turns of metadata for {len(pairs)} turns")
        else:
            metas = block.turns
        parent: str | None = None
        for n, (meta, (user, out)) in enumerate(zip(metas, pairs, strict=True), 1):
            # The current branch is a chain whatever the metadata says.
            turns.append(_turn(meta, user, out, parent=parent, index=n))
            parent = meta.id
        head = tip = parent
    session = block.session if block else None
    record = SessionRecord(
        id=session_id,
        model=(session.model if session else "") or model,
        settings=settings,
        head=head,
        tip=tip,
        created_at=session.created_at if session and session.created_at else now,
        updated_at=now,
        parent_id=session.parent_id if session else None,
        forked_at=session.forked_at if session else None,
        title=session.title if session else "",
    )
    if not record.model:
        raise WireError("the export names no model; pass one to import_session")
    state = SessionState(record, {t.id: t for t in turns})
    if len(state.turns) != len(turns):
        raise WireError("duplicate turn ids in the export")
    _check_tree(state)
    _check_values(state)
    problems = check_session(state)
    if problems:
        raise WireError(f"inconsistent session export: {problems[0]}")
    return state


_INT64 = range(-(2**63), 2**63)
_settings_dec = msgspec.json.Decoder(SessionSettings)


def _check_values(state: SessionState) -> None:
    """Everything a store will have to read back has the types it reads back, and fits in the
    64-bit integers and finite floats every store holds: a file that would make the session
    unloadable is refused instead."""
    try:
        _settings_dec.decode(_encoder.encode(state.record.settings))
    except msgspec.ValidationError as exc:
        raise WireError(f"invalid session settings: {exc}") from None
    try:
        Budget.from_builtins(state.record.settings.budget)
    except ConfigError as exc:
        raise WireError(str(exc)) from None
    if state.record.forked_at is not None and state.record.forked_at not in _INT64:
        raise WireError(f"forked_at {state.record.forked_at} is out of range")
    modalities = state.record.settings.response_modalities
    if modalities is not None and not set(modalities) <= {"TEXT", "IMAGE"}:
        raise WireError(f"responseModalities must be TEXT and/or IMAGE, not {modalities}")
    for turn in state.turns.values():
        numbers = [turn.index, turn.attempts, turn.request_bytes, turn.response_bytes]
        numbers += list(msgspec.structs.astuple(turn.usage))
        if any(n not in _INT64 for n in numbers) or turn.index < 1:
            raise WireError(f"turn {turn.id}: a count is out of range")
        if not all(math.isfinite(x) for x in (turn.created_at, turn.cost_usd, turn.latency_s)):
            raise WireError(f"turn {turn.id}: a number is not finite")


def _check_tree(state: SessionState) -> None:
    """Every parent, the head and the tip are turns of the file, and parents form no cycle."""
    known: set[str | None] = {None}  # turns whose path to the root is known to be good
    for start in [*state.turns, state.record.head, state.record.tip]:
        seen: list[str] = []
        current = start
        while current not in known:
            if current in seen or current not in state.turns:
                raise WireError(f"inconsistent session export at turn {current!r}")
            seen.append(current)
            current = state.turns[current].parent
        known.update(seen)


async def import_session(
    store: SessionStore,
    data: bytes,
    *,
    new_id: str | None = None,
    model: str = "",
    catalog: Catalog = BUILTIN,
) -> SessionRecord:
    """Store the session an export describes, under a fresh id (or `new_id`); lossless.

    A plain `{"contents": [...]}` request imports too (pairs of user and model Contents);
    `model` names the model for files that do not. A file that could not be opened afterwards
    (a model `catalog` does not know, a budget that cannot work, counts past 64 bits) is a
    WireError and stores nothing.
    """
    state = _decode(data, session_id=new_id if new_id is not None else _new_id(), model=model)
    try:
        catalog.resolve(state.record.model)
    except ConfigError:
        raise WireError(
            f"unknown model {state.record.model!r}: the catalog has no such model or alias"
        ) from None
    await store.create(state.record, list(state.turns.values()))
    return msgspec.structs.replace(state.record, version=1)
