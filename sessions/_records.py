"""Session state: the turn tree, the head, and what the next request carries.

A session is a tree of turns. `head` names the current turn (None: before the first turn); `tip`
is the far end of the branch the head is on, so `redo()` knows where forward is. Records are plain
msgspec structs so that stores can persist them as they are.
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec

from sessions._errors import SessionError, TurnNotFound
from sessions._wire import Content

__all__ = [
    "SessionRecord",
    "SessionSettings",
    "SessionState",
    "SessionSummary",
    "TenantUsage",
    "TurnRecord",
    "Usage",
    "new_id",
]


def new_id() -> str:
    """A fresh random id (32 hex digits, 128 random bits; 0.5 us where uuid4().hex took 2.4)."""
    return os.urandom(16).hex()


class Usage(msgspec.Struct, kw_only=True, gc=False):
    """Token counts of one request as the server reported them (zeros when it did not)."""

    prompt_tokens: int = 0
    output_tokens: int = 0
    thoughts_tokens: int = 0
    total_tokens: int = 0
    prompt_image_tokens: int = 0
    prompt_text_tokens: int = 0
    output_image_tokens: int = 0
    output_text_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, served from the implicit cache (cheaper)
    tool_use_tokens: int = 0  # prompt tokens of tool use (google_search grounding)


class SessionSettings(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What every request of the session carries besides `contents`, sent unchanged each turn."""

    image_config: dict[str, str] | None = None  # {"aspectRatio": ..., "imageSize": ...}
    response_modalities: list[str] | None = None
    system_instruction: Content | None = None
    tools: list[dict[str, Any]] | None = None
    tool_config: dict[str, Any] | None = None
    safety_settings: list[dict[str, Any]] | None = None
    generation_config: dict[str, Any] | None = None  # extra generationConfig fields (sampling...)
    budget: dict[str, Any] | None = None  # the engine's Budget, as builtins
    history_images: str | None = None  # "inline", "files", "auto"; None: the engine's setting
    owner: str = ""  # the tenant the session belongs to (`nanoedit serve`); "" for none


class TurnRecord(msgspec.Struct, kw_only=True, gc=False):
    """One committed turn: the user Content, the model Content, and what it took."""

    id: str
    parent: str | None
    index: int  # depth from 1 along its branch
    user: Content
    model: Content
    model_id: str
    created_at: float = msgspec.field(default_factory=time.time)
    image_config: dict[str, str] | None = None
    usage: Usage = msgspec.field(default_factory=Usage)
    cost_usd: float = 0.0
    finish_reason: str | None = None
    attempts: int = 1
    latency_s: float = 0.0
    timings: dict[str, float] = msgspec.field(default_factory=dict)
    request_bytes: int = 0  # the encoded request body of the attempt that succeeded
    response_bytes: int = 0  # its response body as received
    carried: list[int] | None = None  # indices of turns the request carried; None: all of them
    rebased: bool = False  # the request restarted from the latest image instead of the history
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)  # grounding, finishMessage...


class SessionRecord(msgspec.Struct, kw_only=True):
    """A session's identity and pointers; `version` grows with every change (optimistic lock)."""

    id: str
    model: str
    settings: SessionSettings = msgspec.field(default_factory=SessionSettings)
    head: str | None = None
    tip: str | None = None
    version: int = 0
    created_at: float = msgspec.field(default_factory=time.time)
    updated_at: float = msgspec.field(default_factory=time.time)
    parent_id: str | None = None  # forked from
    forked_at: int | None = None
    title: str = ""


class TenantUsage(msgspec.Struct, kw_only=True):
    """What one owner's stored sessions hold: sessions, turns (all branches), money spent."""

    sessions: int = 0
    turns: int = 0
    spent_usd: float = 0.0


class SessionSummary(msgspec.Struct, kw_only=True):
    """One line of `sessions ls`."""

    id: str
    model: str
    turns: int  # turns on the current branch (the head's index)
    total_turns: int
    updated: float
    created: float
    title: str = ""
    owner: str = ""


class SessionState:
    """A session's record and turn tree in memory, with the tree operations (no I/O)."""

    def __init__(self, record: SessionRecord, turns: dict[str, TurnRecord] | None = None) -> None:
        self.record = record
        self.turns: dict[str, TurnRecord] = dict(turns or {})

    @classmethod
    def adopt(cls, record: SessionRecord, turns: dict[str, TurnRecord]) -> SessionState:
        """A state that takes `turns` over without copying it (the caller made it for this
        state and drops it); a commit copied a session's whole turn dict twice this way."""
        state = cls.__new__(cls)
        state.record = record
        state.turns = turns
        return state

    @property
    def id(self) -> str:
        """The session id."""
        return self.record.id

    def turn(self, turn_id: str) -> TurnRecord:
        """The turn with this id."""
        try:
            return self.turns[turn_id]
        except KeyError:
            raise TurnNotFound(f"no turn {turn_id!r} in session {self.id}") from None

    def path(self) -> list[TurnRecord]:
        """Turns from the root to the head, oldest first."""
        return self.path_to(self.record.head)

    def path_to(self, turn_id: str | None) -> list[TurnRecord]:
        """Turns from the root to `turn_id`, oldest first."""
        current = turn_id
        out: list[TurnRecord] = []
        while current is not None:
            t = self.turn(current)
            out.append(t)
            current = t.parent
        out.reverse()
        return out

    def contents(self) -> list[Content]:
        """What the next request carries: each turn on the path, its user then model Content."""
        out: list[Content] = []
        for t in self.path():
            out.append(t.user)
            out.append(t.model)
        return out

    def at_index(self, index: int) -> TurnRecord:
        """The turn numbered `index` (from 1) on the current branch (head's path, then redo)."""
        branch = self.path_to(self.record.tip if self._tip_extends_head() else self.record.head)
        if not 1 <= index <= len(branch):
            raise TurnNotFound(f"session {self.id} has no turn {index} on its current branch")
        return branch[index - 1]

    def children(self, turn_id: str | None) -> list[TurnRecord]:
        """Turns whose parent is `turn_id`, oldest first."""
        return sorted(
            (t for t in self.turns.values() if t.parent == turn_id), key=lambda t: t.created_at
        )

    def branches(self) -> list[list[TurnRecord]]:
        """Every branch as a root-to-leaf path, oldest leaf first."""
        parents = {t.parent for t in self.turns.values()}
        leaves = sorted(
            (t for t in self.turns.values() if t.id not in parents), key=lambda t: t.created_at
        )
        return [self.path_to(leaf.id) for leaf in leaves]

    def _tip_extends_head(self) -> bool:
        tip, head = self.record.tip, self.record.head
        if tip is None:
            return False
        return head is None or any(t.id == head for t in self.path_to(tip))

    # Pointer moves return the new (head, tip); the store commits them with a version check.

    def after_undo(self) -> tuple[str | None, str | None]:
        """Head one turn back; the tip stays so `redo` can come forward again."""
        head = self.record.head
        if head is None:
            raise SessionError(f"session {self.id} has nothing to undo")
        return self.turn(head).parent, self.record.tip or head

    def after_redo(self) -> tuple[str | None, str | None]:
        """Head one turn forward along the branch towards the tip."""
        if not self._tip_extends_head() or self.record.tip == self.record.head:
            raise SessionError(f"session {self.id} has nothing to redo")
        branch = self.path_to(self.record.tip)
        head = self.record.head
        pos = 0 if head is None else next(i for i, t in enumerate(branch) if t.id == head) + 1
        return branch[pos].id, self.record.tip

    def after_checkout(self, turn_id: str | None) -> tuple[str | None, str | None]:
        """Head at any turn; the tip stays if the turn lies on the current branch."""
        if turn_id is not None:
            self.turn(turn_id)
        tip = self.record.tip
        if tip is not None and (turn_id is None or any(t.id == turn_id for t in self.path_to(tip))):
            return turn_id, tip
        return turn_id, turn_id

    def summary(self) -> SessionSummary:
        """The listing line for this session."""
        head = self.record.head
        return SessionSummary(
            id=self.id,
            model=self.record.model,
            turns=self.turn(head).index if head else 0,
            total_turns=len(self.turns),
            updated=self.record.updated_at,
            created=self.record.created_at,
            title=self.record.title,
            owner=self.record.settings.owner,
        )
