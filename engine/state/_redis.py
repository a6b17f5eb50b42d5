"""What the nodes of a cluster share through Redis: each session's events, and the in-flight cap.

Redis carries what is shared and short-lived; PostgreSQL (`PostgresStore`) stays the system of
record. With `EngineConfig.redis_url` set:

- **Events.** Every session event is appended to the session's Redis Stream by one Lua script
  that also allocates its `seq` (`INCR` then `XADD` with the stream id `<seq>-1`): one seq per
  session across all nodes, strictly increasing, no gaps, trimmed like the local window
  (`MAXLEN ~ retain`). Local subscribers still get events straight from the node's bus; a node
  serving `/events` reads each session's stream once (`XREAD`) and fans it out locally.
- **In-flight cap.** `max_in_flight` holds across nodes: a slot is a member of a sorted set
  scored by its expiry, taken by a Lua script only while fewer than the cap are unexpired, and
  kept alive by a heartbeat. A node that dies holds its slots for at most `slot_ttl` seconds.

Leases stay in the store (PostgreSQL or SQLite): a lease must be checked in the same
transaction as the commit it guards, and the store is where that transaction happens.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from engine._exceptions import ConfigError, NanoeditError
from engine._logs import Logger
from engine.events import ENGINE_WIDE, Event, decode_event, encode_event
from engine.state._bus import EventBus

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["Cluster", "ClusterBus", "ClusterError"]

log = Logger("nanoedit.cluster")

# KEYS: seq counter, stream, epoch. ARGV: event JSON, window, floor. Returns the seq, or -1 when
# the epoch key is gone (Redis lost its state: the node asks the store for a new epoch and
# retries). Seqs of epoch e start above (e - 1) * 2^32, so numbering never goes back however
# Redis's state went; a counter below the floor (the highest seq this node has seen: a key lost
# on its own) goes on above it too. "%.0f" prints seqs exactly (Lua numbers are doubles).
_APPEND = """
local epoch = redis.call('GET', KEYS[3])
if not epoch then return -1 end
local seq = redis.call('INCR', KEYS[1])
local floor = math.max(tonumber(ARGV[3]), (tonumber(epoch) - 1) * 4294967296)
if seq <= floor then
  seq = floor + 1
  redis.call('SET', KEYS[1], string.format('%.0f', seq))
end
local id = string.format('%.0f', seq) .. '-1'
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], id, 'd', ARGV[1])
return seq
"""
EPOCH_SPAN = 2**32  # seqs one epoch of a session may use before it runs into the next
_HIGH_WATER_SESSIONS = 100_000  # sessions whose highest seq a node remembers (most recent)
# KEYS: slots zset. ARGV: now, expiry, member, cap. Returns 1 when the slot was taken.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  return 1
end
return 0
"""


# KEYS: the zsets of expiries and hashes of amounts, in pairs. ARGV: id, amount, expiry.
_RESERVE = """
for i = 1, #KEYS, 2 do
  redis.call('ZADD', KEYS[i], ARGV[3], ARGV[1])
  redis.call('HSET', KEYS[i + 1], ARGV[1], ARGV[2])
end
return 1
"""
# KEYS: expiries zset, amounts hash. ARGV: now. Drops expired reservations; the sum of the rest.
_RESERVED = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, id in ipairs(gone) do redis.call('HDEL', KEYS[2], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do total = total + tonumber(v) end
return tostring(total)
"""
# KEYS: bucket hash. ARGV: now, rate per second, capacity. 0: taken; else seconds to wait.
_TOKEN = """
local b = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(b[1]) or tonumber(ARGV[3])
local stamp = tonumber(b[2]) or tonumber(ARGV[1])
local now = tonumber(ARGV[1])
if now > stamp then
  tokens = math.min(tonumber(ARGV[3]), tokens + (now - stamp) * tonumber(ARGV[2]))
  stamp = now
end
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / tonumber(ARGV[2]) end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'stamp', stamp)
redis.call('PEXPIRE', KEYS[1], 3600000)
return tostring(wait)
"""
# KEYS: allowance. ARGV: cap, ttl ms. Halves the shared allowance (at least 1), for ttl.
_HALVE = """
local a = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
a = math.max(1, math.floor(a / 2))
redis.call('SET', KEYS[1], a, 'PX', ARGV[2])
return a
"""


class ClusterError(NanoeditError):
    """Redis is unreachable or answered an error."""


class Cluster:
    """The Redis side of a node: `async with Cluster(url) as cluster: ...`."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "nanoedit",
        retain: int = 1024,
        slot_ttl: float = 10.0,
        max_connections: int = 64,
        epochs: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        """`epochs` counts the epochs of event numbering durably (`SessionStore.next_event_epoch`);
        without it this process counts them, which holds only while it runs."""
        self.url = url
        self.prefix = prefix
        self.retain = retain
        self.slot_ttl = slot_ttl
        self.node = secrets.token_hex(6)
        self.max_connections = max_connections
        self._redis: Redis | None = None
        self._readers: Redis | None = None
        self._beats: list[asyncio.Task[None]] = []
        self._stopping = False
        self._append: Any = None
        self._take: Any = None
        self._reserve: Any = None
        self._reserved: Any = None
        self._token: Any = None
        self._halve: Any = None
        # The highest seq this node has published or read, per session: the floor numbering
        # continues from if Redis restarts without its state.
        self._high: OrderedDict[str, int] = OrderedDict()
        self._epochs = epochs or self._count_epochs
        self._epochs_counted = 0
        self._epoch_lock = asyncio.Lock()

    async def __aenter__(self) -> Cluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Connect (and check the connection)."""
        try:
            from redis.asyncio import BlockingConnectionPool, Redis
        except ImportError:  # pragma: no cover - the extra is not installed
            raise ConfigError("a cluster needs redis: pip install 'nanoedit[redis]'") from None

        def connect(size: int, reply_s: float) -> Redis:
            # Blocking pools: past `size` connections a command waits for one (500 turns
            # waiting for a slot at once ran a plain pool out: "Too many connections").
            # Connecting and each reply are bounded, so a Redis that went away (or hangs)
            # fails a request within seconds instead of holding it for the whole outage.
            pool = BlockingConnectionPool.from_url(
                self.url,
                max_connections=size,
                timeout=60,
                socket_connect_timeout=5.0,
                socket_timeout=reply_s,
            )
            return Redis.from_pool(pool)  # closing the client closes its pool

        redis = connect(self.max_connections, 10.0)
        try:
            await redis.ping()
        except Exception as exc:
            await redis.aclose()
            raise ClusterError(f"redis at {_redact(self.url)}: {exc}") from None
        self._redis = redis
        # Blocking stream reads (one per session with SSE clients) hold their connection for
        # seconds: they get a pool of their own.
        # Their replies wait for up to a read's block time (2-5 s): a longer bound.
        self._readers = connect(4 * self.max_connections, 30.0)
        self._append = redis.register_script(_APPEND)
        self._take = redis.register_script(_TAKE)
        self._reserve = redis.register_script(_RESERVE)
        self._reserved = redis.register_script(_RESERVED)
        self._token = redis.register_script(_TOKEN)
        self._halve = redis.register_script(_HALVE)

    async def aclose(self) -> None:
        """Stop heartbeats, disconnect."""
        self._stopping = True
        beats, self._beats = self._beats, []
        for beat in beats:
            beat.cancel()
        if beats:
            _, stuck = await asyncio.wait(beats, timeout=5)
            for beat in stuck:  # a second cancellation lands where the first was absorbed
                beat.cancel()
            await asyncio.gather(*beats, return_exceptions=True)
        for redis in (self._redis, self._readers):
            if redis is not None:
                await redis.aclose()
        self._redis = self._readers = None

    async def ping(self) -> bool:
        """Whether Redis answers within two seconds."""
        try:
            async with asyncio.timeout(2.0):
                await self.redis.ping()
        except Exception:  # any failure means "down" here; the caller reports it
            return False
        return True

    @property
    def redis(self) -> Redis:
        """The connection (after `start`)."""
        if self._redis is None:
            raise ClusterError("the cluster is not started")
        return self._redis

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # --- events ---------------------------------------------------------------------------------

    async def append(self, session_id: str, data: bytes) -> int:
        """Append an event (its JSON, seq not yet set) to the session's stream; its seq."""
        keys = [self._key("seq", session_id), self._key("events", session_id), self._key("epoch")]
        try:
            seq = int(
                await self._append(keys=keys, args=[data, self.retain, self._high_of(session_id)])
            )
            if seq == -1:
                await self._begin_epoch()
                seq = int(
                    await self._append(
                        keys=keys, args=[data, self.retain, self._high_of(session_id)]
                    )
                )
        except ClusterError:
            raise
        except Exception as exc:
            raise ClusterError(f"redis: cannot append an event: {exc}") from None
        if seq == -1:  # the new epoch's key was lost again at once
            raise ClusterError("redis: cannot append an event: its state keeps being lost")
        self._saw(session_id, seq)
        return seq

    async def _begin_epoch(self) -> None:
        """Redis lost its state: number events in a new epoch, above everything before."""
        key = self._key("epoch")
        async with self._epoch_lock:  # one new epoch per loss, however many appends noticed it
            if await self.redis.exists(key):
                return
            try:
                epoch = await self._epochs()
            except NanoeditError as exc:
                raise ClusterError(f"cannot start a new event epoch: {exc}") from None
            # Another node may have begun one first: its epoch stands (both lie above the past).
            await self.redis.set(key, epoch, nx=True)
            if epoch > 1:  # epoch 1 is a first start; later ones follow a loss
                log.warning("cluster.epoch", epoch=epoch, reason="redis lost its state")

    async def _count_epochs(self) -> int:
        self._epochs_counted += 1
        return self._epochs_counted

    def _high_of(self, session_id: str) -> int:
        return self._high.get(session_id, 0)

    def _saw(self, session_id: str, seq: int) -> None:
        high = self._high
        if seq > high.get(session_id, 0):
            high[session_id] = seq
        high.move_to_end(session_id)
        if len(high) > _HIGH_WATER_SESSIONS:
            high.popitem(last=False)

    def stream(self, session_id: str) -> str:
        """The Redis key of a session's event stream."""
        return self._key("events", session_id)

    async def last_seq(self, session_id: str) -> int:
        """The session's last seq across the cluster (0: none yet)."""
        value = await self.redis.get(self._key("seq", session_id))
        # After Redis lost its state, this node's high-water mark is the truth.
        return max(int(value) if value else 0, self._high.get(session_id, 0))

    async def events_after(self, session_id: str, since: int, upto: int) -> tuple[int, list[Event]]:
        """The retained events with since < seq <= upto, and how many of those the window lost."""
        if upto <= since:
            return 0, []
        entries: Any = await self.redis.xrange(
            self.stream(session_id), min=f"{since + 1}-0", max=f"{upto}-1"
        )
        events = [_event(entry_id, fields) for entry_id, fields in entries]
        first = events[0].seq if events else upto + 1
        if (first - 1) // EPOCH_SPAN > max(0, since - 1) // EPOCH_SPAN:
            # Redis lost its state in between: what the old epoch held after `since` is gone
            # and cannot be counted; at least one event is reported missed.
            return max(1, (first - 1) % EPOCH_SPAN), events
        return max(0, first - 1 - since), events

    async def read(self, session_id: str, after: int, block_ms: int = 5000) -> list[Event]:
        """Events with seq > `after`, waiting up to `block_ms` for the first."""
        readers = self._readers or self.redis
        try:
            found: Any = await readers.xread(
                {self.stream(session_id): f"{after}-1"}, block=block_ms, count=512
            )
        except Exception as exc:
            # Typed, so a fan-out reading it ends its streams and clients reconnect.
            raise ClusterError(f"redis: cannot read events: {exc}") from None
        out: list[Event] = []
        for _, entries in found or []:
            out.extend(_event(entry_id, fields) for entry_id, fields in entries)
        if out:
            self._saw(session_id, out[-1].seq)
        return out

    # --- spend ------------------------------------------------------------------------------------

    async def reserve(self, scopes: list[str], amount: float, ttl: float) -> str:
        """Set `amount` aside under each scope ("session:ID", "tenant:NAME") until released or
        `ttl` seconds pass (a dead node's reservations lapse); the reservation's id."""
        rid = f"{self.node}:{secrets.token_hex(6)}"
        keys = [k for scope in scopes for k in (self._key("rsv", scope), self._key("amt", scope))]
        await self._reserve(keys=keys, args=[rid, repr(amount), time.time() + ttl])
        return rid

    async def release(self, rid: str, scopes: list[str]) -> None:
        """Drop a reservation (its call settled or failed)."""
        pipe = self.redis.pipeline(transaction=True)
        for scope in scopes:
            pipe.zrem(self._key("rsv", scope), rid)
            pipe.hdel(self._key("amt", scope), rid)
        await pipe.execute()

    async def reserved(self, scope: str) -> float:
        """USD reserved under `scope` by calls in flight on any node."""
        total = await self._reserved(
            keys=[self._key("rsv", scope), self._key("amt", scope)], args=[time.time()]
        )
        return float(total)

    async def add_spent(self, scope: str, amount: float) -> float:
        """Count settled money under `scope`; the new total."""
        return float(await self.redis.incrbyfloat(self._key("spent", scope), amount))

    async def spent(self, scope: str, *, start: float = 0.0) -> float:
        """USD settled under `scope` across the cluster (set to `start` if never counted)."""
        key = self._key("spent", scope)
        await self.redis.set(key, repr(start), nx=True)
        return float(await self.redis.get(key) or 0)

    # --- rates and the shared allowance -----------------------------------------------------------

    async def take_token(self, model: str, per_minute: float) -> float:
        """Take one request of `model`'s cluster-wide rate; 0, or the seconds to wait."""
        wait = await self._token(
            keys=[self._key("rate", model)],
            args=[time.time(), per_minute / 60.0, max(1.0, per_minute / 60.0)],
        )
        return float(wait)

    async def allowance(self, model: str, cap: int) -> int:
        """How many calls of `model` the cluster may have in flight now (halved on 429/503)."""
        value = await self.redis.get(self._key("allow", model))
        return min(cap, int(value)) if value else cap

    async def halve(self, model: str, cap: int, *, hold: float = 30.0) -> int:
        """The upstream said 429/503: halve the shared allowance for `hold` seconds."""
        return int(
            await self._halve(keys=[self._key("allow", model)], args=[cap, int(hold * 1000)])
        )

    # --- node liveness ----------------------------------------------------------------------------

    async def register(self, owner: str, *, every: float = 1.0) -> None:
        """Announce `owner` (an engine's lease owner) alive, every `every` seconds; its key
        lapses after three missed beats, so a dead node's leases are taken over in seconds,
        not after the lease's TTL."""
        key = self._key("node", owner)
        await self.redis.set(key, b"1", px=int(every * 3000))
        self._beats.append(asyncio.ensure_future(self._beat(key, every)))

    async def _beat(self, key: str, every: float) -> None:
        # The flag as well as the cancellation: a cancellation that arrives inside a Redis
        # command can be absorbed by the client, and a beat must never outlive its cluster.
        while not self._stopping:
            await asyncio.sleep(every)
            try:
                await self.redis.set(key, b"1", px=int(every * 3000))
            except Exception as exc:  # a missed beat; the next one may get through
                log.warning("cluster.heartbeat_failed", error=str(exc))

    async def node_gone(self, owner: str) -> bool:
        """True when `owner` registered no heartbeat or its heartbeat lapsed."""
        return not await self.redis.exists(self._key("node", owner))

    # --- the in-flight cap ------------------------------------------------------------------------

    @asynccontextmanager
    async def slot(
        self, cap: int, *, model: str = "", per_minute: float = 0.0, poll: float = 0.02
    ) -> AsyncIterator[None]:
        """Hold one of `cap` cluster-wide slots (fewer while `model`'s shared allowance is
        halved) while the block runs, after a token of `model`'s cluster-wide rate."""
        while per_minute > 0:
            wait = await self.take_token(model, per_minute)
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        key = self._key("slots")
        member = f"{self.node}:{secrets.token_hex(6)}"
        delay = poll
        while True:
            now = time.time()
            allowed = await self.allowance(model, cap) if model else cap
            taken = await self._take(keys=[key], args=[now, now + self.slot_ttl, member, allowed])
            if int(taken):
                break
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)
        beat = asyncio.ensure_future(self._heartbeat(key, member))
        try:
            yield
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
            await asyncio.shield(self.redis.zrem(key, member))

    async def _heartbeat(self, key: str, member: str) -> None:
        while True:
            await asyncio.sleep(self.slot_ttl / 3)
            await self.redis.zadd(key, {member: time.time() + self.slot_ttl}, xx=True)


def _event(entry_id: bytes, fields: dict[bytes, bytes]) -> Event:
    event: Event = decode_event(fields[b"d"])
    event.seq = int(entry_id.split(b"-", 1)[0])
    return event


class ClusterBus(EventBus):
    """The node's bus, numbering session events through the cluster (one seq per session
    across every node) and appending them to the session's stream before local delivery."""

    def __init__(self, cluster: Cluster, retain: int = 1024) -> None:
        super().__init__(retain=retain)
        self.cluster = cluster
        self._order: dict[str, asyncio.Lock] = {}

    async def publish(self, event: Event) -> Event:
        """Sequence the event in Redis, then deliver it here (session events in seq order)."""
        sid = event.session_id
        if sid == ENGINE_WIDE:
            return await super().publish(event)
        lock = self._order.setdefault(sid, asyncio.Lock())
        async with lock:
            event.ts = time.time()
            event.seq = 0
            seq = await self.cluster.append(sid, encode_event(event))
            event.seq = seq
            log = self._logs.get(sid)
            if log is None:
                log = self._open_log(sid)
            log.seq = seq
            log.window.append(event)
            waits = self._emit(event, True, False)
        if waits is not None:
            for fut in waits:
                await fut
        return event

    def forget(self, session_id: str) -> None:
        """Drop the session's local window (its stream and seq stay in Redis)."""
        super().forget(session_id)
        self._order.pop(session_id, None)


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
