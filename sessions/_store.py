"""The store contract (`SessionStore`, `BlobStore`) and the in-memory implementations; the
contract's other homes are SQLite (`_sqlite`, one file) and PostgreSQL (`_postgres`, every node
of a cluster), and `tests/sessions/test_store_contract.py` holds all three to it.

Every write is all-or-nothing and guarded by the session's `version`: a writer that read version
N may only write if the stored version is still N, otherwise it gets `SessionBusy` and nothing
changes. This is what keeps two processes from both appending to one head.

A turn costs a paid request before its commit, so the version check alone would only tell the
loser after it paid. The **lease** tells it before: a writer takes `acquire_lease(session_id,
owner, ttl)` before sending anything and releases it after the commit. A lease is advisory (the
version check stays the last line of defence) and expires after `ttl` seconds, so a process
killed while holding one blocks the session for at most that long.
"""

from __future__ import annotations

import abc
import hashlib
import time
from collections.abc import Iterable, Sequence

import msgspec

from sessions._errors import SessionBusy, SessionNotFound, StoreError, TurnNotFound
from sessions._files import BatchRecord, FileRef
from sessions._records import (
    SessionRecord,
    SessionState,
    SessionSummary,
    TenantUsage,
    TurnRecord,
)
from sessions._wire import Blob, Content, Part

__all__ = [
    "BlobStore",
    "Digests",
    "LeaseHolder",
    "MemoryBlobStore",
    "MemoryStore",
    "SessionStore",
    "blob_refs",
    "intern_content",
    "intern_turn",
]


class BlobStore(abc.ABC):
    """Content-addressed bytes (sha256 hex). Equal bytes are stored once and held once."""

    @abc.abstractmethod
    def intern(self, data: bytes, digest: str | None = None) -> tuple[str, bytes]:
        """Register `data`; return its sha256 and the one canonical bytes object for it.

        `digest`, when the caller already hashed `data`, saves hashing it again.
        """

    def digest(self, data: bytes) -> str | None:
        """The sha256 of a canonical bytes object without hashing it; None if not held."""
        return None

    @abc.abstractmethod
    def get(self, sha256: str) -> bytes | None:
        """The bytes for a digest held in memory, or None."""


class MemoryBlobStore(BlobStore):
    """Blobs in a dict; the canonical object is the first one seen."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        # id() of each canonical object -> its digest: re-interning the canonical object (every
        # commit and every load does) must not hash megabytes again. The `is` check in
        # `digest` makes a stale id harmless.
        self._digests: dict[int, str] = {}

    def digest(self, data: bytes) -> str | None:
        """The sha256 of a canonical bytes object without hashing it; None if not held."""
        known = self._digests.get(id(data))
        if known is not None and self._blobs.get(known) is data:
            return known
        return None

    def intern(self, data: bytes, digest: str | None = None) -> tuple[str, bytes]:
        """Register `data`; return its sha256 and the one canonical bytes object for it."""
        known = self.digest(data)
        if known is not None:
            return known, data
        digest = digest or hashlib.sha256(data).hexdigest()
        canonical = self._blobs.setdefault(digest, bytes(data))
        self._digests[id(canonical)] = digest
        return digest, canonical

    def get(self, sha256: str) -> bytes | None:
        """The bytes for a digest, or None."""
        return self._blobs.get(sha256)

    def discard(self, digests: Iterable[str]) -> None:
        """Let go of these blobs (nothing refers to them any more)."""
        for digest in digests:
            data = self._blobs.pop(digest, None)
            if data is not None:
                self._digests.pop(id(data), None)

    def __len__(self) -> int:
        return len(self._blobs)

    @property
    def total_bytes(self) -> int:
        """Bytes held, each distinct blob once."""
        return sum(len(b) for b in self._blobs.values())


Digests = Sequence[tuple[bytes, str]]
"""Payloads the caller already hashed, (the payload, its sha256), in the order of the Content's
inline parts. A digest is used only for the very bytes object it was made for (checked by
identity, never looked up by id()), so it can never be attached to other bytes."""


def intern_content(content: Content, blobs: BlobStore, digests: Digests = ()) -> Content:
    """The same Content with every inline payload replaced by the blob store's canonical bytes.

    `digests` holds the payloads the caller already hashed (see `Digests`).
    """
    parts: list[Part] = []
    changed = False
    known = iter(digests)
    for p in content.parts:
        if p.inline_data is not None:
            raw = p.inline_data.data
            entry = next(known, None)
            digest = entry[1] if entry is not None and entry[0] is raw else None
            _, data = blobs.intern(raw, digest)
            if data is not raw:
                changed = True
                blob = msgspec.structs.replace(p.inline_data, data=data)
                p = msgspec.structs.replace(p, inline_data=blob)
        parts.append(p)
    # Already canonical: hand back the same object, so the store and every session handle
    # share one Content rather than equal copies (fewer objects for the GC to walk).
    return Content(role=content.role, parts=parts) if changed else content


def intern_turn(turn: TurnRecord, blobs: BlobStore, model_digests: Digests = ()) -> TurnRecord:
    """The turn with its user and model Contents interned (the same object if they were);
    `model_digests` are the model Content's payloads already hashed, in part order."""
    user = intern_content(turn.user, blobs)
    model = intern_content(turn.model, blobs, model_digests)
    if user is turn.user and model is turn.model:
        return turn
    return msgspec.structs.replace(turn, user=user, model=model)


class LeaseHolder(msgspec.Struct, frozen=True):
    """The owner of a session's lease and the wall-clock time (Unix seconds) it runs out."""

    owner: str
    until: float


class SessionStore(abc.ABC):
    """Where sessions live. Implementations: MemoryStore, SqliteStore."""

    blobs: BlobStore

    @abc.abstractmethod
    async def create(self, record: SessionRecord, turns: Sequence[TurnRecord] = ()) -> None:
        """Store a new session (with turns, for fork and import); its version becomes 1."""

    @abc.abstractmethod
    async def load(self, session_id: str) -> SessionState:
        """The session's record and whole turn tree, blobs interned."""

    @abc.abstractmethod
    async def commit_turn(
        self,
        session_id: str,
        turn: TurnRecord,
        *,
        expected_version: int,
        lease_owner: str | None = None,
    ) -> SessionRecord:
        """Add `turn` and move head and tip to it, atomically; SessionBusy on a version clash.

        With `lease_owner`, only while that owner holds the session's unexpired lease, checked
        in the same transaction (fencing): a writer that lost its lease (paused past its TTL,
        taken over) can never commit, whatever the version says."""

    @abc.abstractmethod
    async def move_head(
        self, session_id: str, head: str | None, tip: str | None, *, expected_version: int
    ) -> SessionRecord:
        """Move the head and tip (undo, redo, checkout); SessionBusy on a version clash."""

    @abc.abstractmethod
    async def rename(self, session_id: str, title: str, *, expected_version: int) -> SessionRecord:
        """Set the session's title; SessionBusy on a version clash."""

    async def load_record(self, session_id: str) -> SessionRecord:
        """The session's record alone (head, tip, version), without its turns."""
        return (await self.load(session_id)).record

    @abc.abstractmethod
    async def acquire_lease(
        self, session_id: str, owner: str, ttl: float, *, take_from: str | None = None
    ) -> bool:
        """Hold the session's lease for `ttl` seconds from now; False if another owner does.

        The holder calling it again extends its lease (renewal). A lease whose time has run
        out is free for anyone to take; so is one held by `take_from` (a holder the caller knows
        to be dead). SessionNotFound if there is no such session.
        """

    @abc.abstractmethod
    async def lease_holder(self, session_id: str) -> LeaseHolder | None:
        """Who holds the session's lease and until when; None if nobody does (or it ran out)."""

    @abc.abstractmethod
    async def release_lease(self, session_id: str, owner: str) -> None:
        """Give up the lease if `owner` holds it; otherwise (or without a session) do nothing."""

    @abc.abstractmethod
    async def list(self, *, owner: str | None = None) -> list[SessionSummary]:
        """Every stored session (of `owner`, if given), most recently updated first."""

    @abc.abstractmethod
    async def tenant_usage(self, owner: str) -> TenantUsage:
        """What `owner`'s stored sessions hold: how many, their turns and the money they spent
        (read with the owner index, not by loading sessions)."""

    @abc.abstractmethod
    async def holds_image(self, owner: str, sha256: str) -> bool:
        """Whether a turn of one of `owner`'s sessions holds the blob `sha256` (one indexed
        look-up, whatever the number of sessions)."""

    @abc.abstractmethod
    async def delete(self, session_id: str) -> None:
        """Remove a session and its turns (blobs other sessions use stay)."""

    @abc.abstractmethod
    async def next_event_epoch(self) -> int:
        """Count one more epoch of the shared event numbering (1, 2, ...) and return it.

        A cluster starts an epoch whenever Redis has lost its state: seqs of epoch `e` lie above
        every seq of the epochs before it, so numbering never goes back however the Redis
        state went. The count lives here because the store is what survives."""

    async def check_blobs(self) -> Sequence[str]:
        """Problems of the stored blobs: bytes that do not hash to their sha256 (none: [])."""
        return []

    async def load_blob(self, sha256: str) -> bytes:
        """The bytes stored for a digest; StoreError if there are none."""
        data = self.blobs.get(sha256)
        if data is None:
            raise StoreError(f"no blob {sha256}")
        return data

    # --- work held by the provider (Files API uploads, Batch API jobs) ---------------------

    @abc.abstractmethod
    async def file_refs(self, scope: str, digests: Iterable[str]) -> dict[str, FileRef]:
        """The recorded uploads of these images (by sha256) at one provider scope."""

    @abc.abstractmethod
    async def save_file_ref(self, ref: FileRef) -> None:
        """Record an upload (replacing an earlier one of the same image and scope)."""

    @abc.abstractmethod
    async def drop_file_refs(self, scope: str, digests: Iterable[str]) -> None:
        """Forget uploads that are gone (expired, deleted)."""

    @abc.abstractmethod
    async def save_batch(self, job: BatchRecord) -> None:
        """Record a batch job, or its new state."""

    @abc.abstractmethod
    async def load_batch(self, name: str) -> BatchRecord:
        """A recorded batch job; StoreError if there is none by that name."""

    @abc.abstractmethod
    async def list_batches(self) -> Sequence[BatchRecord]:
        """Every recorded batch job, newest first."""

    async def aclose(self) -> None:
        """Release files and threads."""
        return None

    async def __aenter__(self) -> SessionStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def lease_lost(session_id: str) -> SessionBusy:
    """The error of a commit whose writer no longer holds the session's lease."""
    return SessionBusy(
        f"session {session_id}: this writer's lease ran out or was taken over; the turn was "
        "not committed"
    )


def _require_turns(state: SessionState, *turn_ids: str | None) -> None:
    # A dangling head or parent would make the session unloadable: refused, as every store does.
    for turn_id in turn_ids:
        if turn_id is not None and turn_id not in state.turns:
            raise TurnNotFound(f"no turn {turn_id!r} in session {state.id}")


def blob_refs(content: Content) -> list[Blob]:
    """Inline blobs of a Content, in part order."""
    return [p.inline_data for p in content.parts if p.inline_data is not None]


class MemoryStore(SessionStore):
    """Sessions in process memory: fast, shared by every handle of one engine, gone at exit."""

    def __init__(self) -> None:
        self.blobs: MemoryBlobStore = MemoryBlobStore()
        self._states: dict[str, SessionState] = {}
        self._leases: dict[str, LeaseHolder] = {}
        self._files: dict[tuple[str, str], FileRef] = {}
        self._batches: dict[str, BatchRecord] = {}
        self._epoch = 0

    def _get(self, session_id: str) -> SessionState:
        try:
            return self._states[session_id]
        except KeyError:
            raise SessionNotFound(f"no session {session_id!r}") from None

    def _check(self, state: SessionState, expected_version: int) -> None:
        if state.record.version != expected_version:
            raise SessionBusy(
                f"session {state.id} changed (version {state.record.version}, "
                f"expected {expected_version})"
            )

    async def create(self, record: SessionRecord, turns: Sequence[TurnRecord] = ()) -> None:
        """Store a new session (with turns, for fork and import); its version becomes 1."""
        if record.id in self._states:
            raise SessionBusy(f"session {record.id} already exists")
        rec = msgspec.structs.replace(record, version=1)
        self._states[rec.id] = SessionState(rec, {t.id: intern_turn(t, self.blobs) for t in turns})

    async def load(self, session_id: str) -> SessionState:
        """A snapshot of the session (the caller may not mutate the store through it)."""
        state = self._get(session_id)
        return SessionState(state.record, state.turns)

    async def commit_turn(
        self,
        session_id: str,
        turn: TurnRecord,
        *,
        expected_version: int,
        lease_owner: str | None = None,
    ) -> SessionRecord:
        """Add `turn` and move head and tip to it, atomically; SessionBusy on a version clash
        (or, with `lease_owner`, when that owner does not hold the lease)."""
        state = self._get(session_id)
        self._check(state, expected_version)
        if lease_owner is not None:
            held = self._leases.get(session_id)
            if held is None or held.owner != lease_owner or held.until <= time.time():
                raise lease_lost(session_id)
        _require_turns(state, turn.parent)
        turns = dict(state.turns)
        turns[turn.id] = intern_turn(turn, self.blobs)
        rec = msgspec.structs.replace(
            state.record,
            head=turn.id,
            tip=turn.id,
            version=expected_version + 1,
            updated_at=time.time(),
        )
        self._states[session_id] = SessionState.adopt(rec, turns)
        return rec

    async def rename(self, session_id: str, title: str, *, expected_version: int) -> SessionRecord:
        """Set the session's title; SessionBusy on a version clash."""
        state = self._get(session_id)
        self._check(state, expected_version)
        rec = msgspec.structs.replace(
            state.record, title=title, version=expected_version + 1, updated_at=time.time()
        )
        self._states[session_id] = SessionState(rec, state.turns)
        return rec

    async def move_head(
        self, session_id: str, head: str | None, tip: str | None, *, expected_version: int
    ) -> SessionRecord:
        """Move the head and tip (undo, redo, checkout); SessionBusy on a version clash."""
        state = self._get(session_id)
        self._check(state, expected_version)
        _require_turns(state, head, tip)
        rec = msgspec.structs.replace(
            state.record, head=head, tip=tip, version=expected_version + 1, updated_at=time.time()
        )
        self._states[session_id] = SessionState(rec, state.turns)
        return rec

    async def load_record(self, session_id: str) -> SessionRecord:
        """The session's record alone."""
        return self._get(session_id).record

    async def acquire_lease(
        self, session_id: str, owner: str, ttl: float, *, take_from: str | None = None
    ) -> bool:
        """Hold the lease for `ttl` seconds; False while another owner's lease runs."""
        self._get(session_id)
        now = time.time()
        held = self._leases.get(session_id)
        if held is not None and held.owner not in (owner, take_from) and held.until > now:
            return False
        self._leases[session_id] = LeaseHolder(owner, now + ttl)
        return True

    async def lease_holder(self, session_id: str) -> LeaseHolder | None:
        """The running lease, if any."""
        self._get(session_id)
        held = self._leases.get(session_id)
        return held if held is not None and held.until > time.time() else None

    async def release_lease(self, session_id: str, owner: str) -> None:
        """Give up the lease if `owner` holds it."""
        held = self._leases.get(session_id)
        if held is not None and held.owner == owner:
            del self._leases[session_id]

    async def list(self, *, owner: str | None = None) -> list[SessionSummary]:
        """Every session (of `owner`, if given), most recently updated first."""
        found = (s.summary() for s in self._states.values())
        mine = [s for s in found if owner is None or s.owner == owner]
        return sorted(mine, key=lambda s: s.updated, reverse=True)

    async def tenant_usage(self, owner: str) -> TenantUsage:
        """The owner's sessions, turns and spend (a scan: the memory store is one process's)."""
        usage = TenantUsage()
        for state in self._states.values():
            if state.record.settings.owner == owner:
                usage.sessions += 1
                usage.turns += len(state.turns)
                usage.spent_usd += sum(t.cost_usd for t in state.turns.values())
        return usage

    async def holds_image(self, owner: str, sha256: str) -> bool:
        """Whether a turn of one of the owner's sessions holds the blob."""
        data = self.blobs.get(sha256)
        if data is None:
            return False
        for state in self._states.values():
            if state.record.settings.owner != owner:
                continue
            for turn in state.turns.values():
                for content in (turn.user, turn.model):
                    if any(b.data is data for b in blob_refs(content)):
                        return True
        return False

    async def check_blobs(self) -> Sequence[str]:
        """Blobs whose bytes do not hash to their digest."""
        return [
            f"blob {digest[:12]}: bytes hash to {actual[:12]}"
            for digest, data in self.blobs._blobs.items()
            if (actual := hashlib.sha256(data).hexdigest()) != digest
        ]

    async def delete(self, session_id: str) -> None:
        """Remove a session and its turns, and the blobs no other session uses."""
        state = self._get(session_id)
        del self._states[session_id]
        self._leases.pop(session_id, None)
        # A long-running server deletes sessions all day: their images must go with them.
        gone = self._digests_of(state)
        for other in self._states.values():
            if not gone:
                break
            gone -= self._digests_of(other)
        self.blobs.discard(gone)

    async def next_event_epoch(self) -> int:
        """One more epoch of event numbering (counted in memory: gone at exit, as the rest)."""
        self._epoch += 1
        return self._epoch

    def _digests_of(self, state: SessionState) -> set[str]:
        found = set()
        for turn in state.turns.values():
            for content in (turn.user, turn.model):
                for blob in blob_refs(content):
                    digest = self.blobs.digest(blob.data)
                    if digest is not None:
                        found.add(digest)
        return found

    async def file_refs(self, scope: str, digests: Iterable[str]) -> dict[str, FileRef]:
        """The recorded uploads of these images at `scope`."""
        found = (self._files.get((scope, d)) for d in digests)
        return {ref.sha256: ref for ref in found if ref is not None}

    async def save_file_ref(self, ref: FileRef) -> None:
        """Record an upload."""
        self._files[ref.scope, ref.sha256] = ref

    async def drop_file_refs(self, scope: str, digests: Iterable[str]) -> None:
        """Forget uploads."""
        for digest in digests:
            self._files.pop((scope, digest), None)

    async def save_batch(self, job: BatchRecord) -> None:
        """Record a batch job."""
        self._batches[job.name] = msgspec.structs.replace(job)

    async def load_batch(self, name: str) -> BatchRecord:
        """A recorded batch job."""
        try:
            return msgspec.structs.replace(self._batches[name])
        except KeyError:
            raise StoreError(f"no batch job {name!r} in this store") from None

    async def list_batches(self) -> Sequence[BatchRecord]:
        """Every batch job, newest first."""
        return sorted(self._batches.values(), key=lambda j: j.created_at, reverse=True)
