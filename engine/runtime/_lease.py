"""The store lease of one session: who may change it, across processes sharing a store.

A turn (and undo, redo, checkout, fork's source read, rm) takes the lease before anything is sent
or written; it is renewed every third of its TTL while held and released afterwards, even on
cancellation. Owners are named `host:pid:token`, so a lease whose process is gone on this host is
taken over at once instead of blocking the session until it runs out.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from types import TracebackType
from typing import Any, Literal

from engine._exceptions import NanoeditError, SessionBusy
from engine._logs import Logger
from engine.runtime._shield import finish
from sessions import LeaseHolder, SessionStore

__all__ = ["Lease", "describe_holder", "holder_is_dead", "new_owner"]

_log = Logger("nanoedit.lease")

# Polling for a lease another engine holds (on_busy="wait"): jittered, doubling between these.
_POLL_MIN = 0.02
_POLL_MAX = 1.0
_HOST = socket.gethostname().replace(":", "_")


def new_owner() -> str:
    """A lease owner name unique to this engine: `host:pid:random`."""
    return f"{_HOST}:{os.getpid()}:{secrets.token_hex(6)}"


def _host_pid(owner: str) -> tuple[str, int] | None:
    host, _, rest = owner.partition(":")
    pid, _, _ = rest.partition(":")
    return (host, int(pid)) if pid.isdigit() else None


def holder_is_dead(owner: str) -> bool:
    """True when `owner` names a process on this host that no longer exists."""
    found = _host_pid(owner)
    if found is None or found[0] != _HOST:
        return False
    pid = found[1]
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, under another user
    return False


def describe_holder(holder: LeaseHolder | None) -> str:
    """`process 123 on host, until 12:00:03` for messages."""
    if holder is None:
        return "another process"
    until = datetime.fromtimestamp(holder.until).strftime("%H:%M:%S")
    found = _host_pid(holder.owner)
    who = f"process {found[1]} on {found[0]}" if found else f"owner {holder.owner!r}"
    return f"{who}, until {until}"


class Lease:
    """The lease of one session for one owner; `async with lease.held():` around a change."""

    def __init__(
        self,
        store: SessionStore,
        session_id: str,
        owner: str,
        *,
        ttl: float,
        on_busy: Literal["raise", "wait"] = "raise",
        wait: float = 300.0,
        gone: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.store = store
        # Tells whether a holder's node is gone (a cluster's heartbeats); processes on this
        # host are checked by their pid either way.
        self.gone = gone
        self.session_id = session_id
        self.owner = owner
        self.ttl = ttl
        self.on_busy = on_busy
        self.wait = wait

    @property
    def _log(self) -> Any:
        # Bound only when something is logged: a Lease is made per turn, and these are rare.
        return _log.bind(session_id=self.session_id)

    def held(self) -> _Held:
        """`async with lease.held():` holds the lease for the block: acquired first, renewed
        meanwhile, released after."""
        return _Held(self)

    async def _stop(self, renewal: asyncio.Task[None] | None) -> None:
        if renewal is not None:
            renewal.cancel()
            await asyncio.gather(renewal, return_exceptions=True)
        await self.release()

    async def acquire(self) -> None:
        """Take the lease, waiting or raising `SessionBusy` as `on_busy` says."""
        deadline = time.monotonic() + self.wait
        delay = _POLL_MIN
        while True:
            holder = await self._try()
            if holder is None:
                return
            left = deadline - time.monotonic()
            if self.on_busy == "raise" or left <= 0:
                waited = "" if self.on_busy == "raise" else f" after waiting {self.wait:g}s"
                hint = (
                    "; pass --on-busy wait (EngineConfig.on_busy='wait') to wait for it"
                    if self.on_busy == "raise"
                    else ""
                )
                raise SessionBusy(
                    f"session {self.session_id} is busy{waited}: its lease is held by "
                    f"{describe_holder(holder)}{hint}"
                )
            self._log.debug("lease.waiting", delay_s=delay)
            await asyncio.sleep(min(random.uniform(delay / 2, delay), left))
            delay = min(delay * 2, _POLL_MAX)

    async def _try(self) -> LeaseHolder | None:
        """One attempt; None when held now, else who holds it."""
        store, sid = self.store, self.session_id
        try:
            if await store.acquire_lease(sid, self.owner, self.ttl):
                return None
            holder = await store.lease_holder(sid)
            dead = holder.owner if holder is not None and await self._dead(holder.owner) else None
            if holder is None or dead:
                # It ran out just now, or its process is gone: try once more.
                if await store.acquire_lease(sid, self.owner, self.ttl, take_from=dead):
                    if dead:
                        self._log.info("lease.taken_over", dead_owner=dead)
                    return None
                holder = await store.lease_holder(sid)
        except asyncio.CancelledError:
            # The store may have granted the lease just before the cancellation arrived.
            await finish(self.release())
            raise
        return holder or LeaseHolder(owner="?", until=time.time())

    async def _dead(self, owner: str) -> bool:
        if holder_is_dead(owner):
            return True
        return self.gone is not None and await self.gone(owner)

    async def _renew(self) -> None:
        # Started a third of the TTL after the lease was taken: renew at once, then every third.
        while True:
            try:
                held = await self.store.acquire_lease(self.session_id, self.owner, self.ttl)
            except NanoeditError as exc:
                self._log.warning("lease.renew_failed", error=str(exc))
                held = True
            if not held:
                # It ran out (a stalled loop) and another engine took it: the version check at
                # commit decides which turn lands.
                self._log.warning("lease.lost")
                return
            await asyncio.sleep(self.ttl / 3)

    async def release(self) -> None:
        """Give the lease up (harmless if not held)."""
        try:
            await self.store.release_lease(self.session_id, self.owner)
        except NanoeditError as exc:
            # Harmless: the lease runs out after its TTL anyway.
            self._log.warning("lease.release_failed", error=str(exc))


class _Held:
    """The context of `Lease.held` (a class: a generator-based context manager cost a generator
    and two more frames per turn, 1% of a small turn's CPU, py-spy)."""

    __slots__ = ("_lease", "_renewal", "_timer")

    def __init__(self, lease: Lease) -> None:
        self._lease = lease
        self._timer: asyncio.TimerHandle | None = None
        self._renewal: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        lease = self._lease
        await lease.acquire()
        # Most turns end long before the first renewal is due: a timer starts the renewing task
        # only then (a task per turn was 3% of a small turn's CPU).
        self._timer = asyncio.get_running_loop().call_later(lease.ttl / 3, self._start_renewing)

    def _start_renewing(self) -> None:
        self._renewal = asyncio.ensure_future(self._lease._renew())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
        await finish(self._lease._stop(self._renewal))
