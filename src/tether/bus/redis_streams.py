"""``RedisStreamsBus``: the bus on a Redis stream with one consumer group, shared by every worker.

Keys (``prefix`` "tether" by default; choose another per deployment when
several share one Redis)::

    tether:runs        the work stream: one entry per run to work on, fields run_id and headers (JSON)
    tether:runs:dead   the dead-letter stream: original_id, run_id, headers, reason, deliveries, dead_at_ms

The group (``tether-workers``) is created with ``MKSTREAM`` from id 0, so
entries published before any worker started are delivered too. Redis keeps the
scheduling state: ``XREADGROUP >`` hands each new entry to one consumer and
adds it to the group's pending-entries list (PEL) with a delivery counter;
``XACK`` removes it; ``XAUTOCLAIM`` hands entries idle for longer than
``min_idle_s`` to another consumer, counting one more delivery — so a dead
worker's runs move on without a scheduler of ours. A worker that is alive but
slow keeps its entries with ``touch``: a script that ``XCLAIM``-s back to the
same consumer (min-idle 0, ``JUSTID``, which does not count a delivery) only
the entries that consumer still holds, so a touch never steals an entry
another worker has taken over meanwhile.

A Redis that restarted empty (no persistence) has neither stream nor group:
the first group command then fails with ``NOGROUP``; the bus recreates the
group, counts it in ``resets``, logs one warning and retries once. The entries
are gone — the runs table is the record, and its re-feed publishes the
pending runs again. A Redis that cannot be reached or does not answer in
``timeout_s`` raises ``BusUnavailable``.

``redis`` is imported with this module, which ``tether.bus`` imports only
when a Redis bus is asked for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, Final, TypeVar

import orjson
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tether.bus.base import BusStats, BusUnavailable, DeadLetter, Delivery, Message, entry_ms
from tether.errors import UserError
from tether.redis_client import client_display, connect

__all__ = ["DEFAULT_GROUP", "DEFAULT_TIMEOUT_S", "RedisStreamsBus"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The consumer group every worker joins.
DEFAULT_GROUP: Final = "tether-workers"
#: How long one Redis command may take (connect, or an answer) before ``BusUnavailable``.
DEFAULT_TIMEOUT_S: Final = 2.0
#: A stat's count of undelivered entries is exact up to this many when Redis cannot say (its lag is unknown).
_LAG_SCAN_LIMIT: Final = 10_000

# KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids. Resets the idle time of each
# id the consumer holds (XCLAIM JUSTID does not count a delivery); ids held by others are left alone.
_TOUCH: Final = """
local touched = 0
for i = 3, #ARGV do
    local held = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
    if #held > 0 then
        redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
        touched = touched + 1
    end
end
return touched
"""

# KEYS[1] stream; ARGV[1] group, ARGV[2] consumer. Deletes the consumer only if it holds no entry
# (DELCONSUMER would drop its pending entries unclaimed), in one step so none is delivered meanwhile.
_FORGET: Final = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then
    return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


class RedisStreamsBus:
    """The bus on Redis Streams (see the module docstring).

    It serves the event loop it first ran on (redis.asyncio's connections belong to one loop; another
    loop gets a ``UserError``): open one per loop — e.g. per ``asyncio.run`` — and close it there.
    Unlike ``MemoryBus``, two processes or machines share it through Redis, not through the object.

    Args:
        redis: a URL (``redis://[user:password@]host:6379/0``) or a ready ``redis.asyncio.Redis`` client
            (its timeouts apply; it is not closed by ``close`` unless ``close_client``).
        prefix: the keys' prefix: the streams are ``{prefix}:runs`` and ``{prefix}:runs:dead``.
        group: the consumer group.
        maxlen: entries kept in each stream, about (``MAXLEN ~``); the oldest are trimmed beyond it.
        timeout_s: how long a command may wait for a connection or an answer (with a URL).
        max_connections: connections kept to Redis at most (with a URL); each blocked ``receive`` holds one.
        close_client: close a given client in ``close``.

    Raises:
        ConfigError: a URL redis-py cannot parse.
        ValueError: a non-positive ``maxlen``, timeout or connection count.
    """

    kind = "redis"

    def __init__(
        self,
        redis: str | Redis,
        *,
        prefix: str = "tether",
        group: str = DEFAULT_GROUP,
        maxlen: int = 1_000_000,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_connections: int = 32,
        close_client: bool = False,
    ) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be at least 1, got {maxlen}")
        if isinstance(redis, str):
            self._client, self.url = connect(redis, timeout_s=timeout_s, max_connections=max_connections)
            self._owns_client = True
            # A blocked XREADGROUP must answer within the socket timeout: block in slices of half of it.
            self._block_slice_s = timeout_s / 2
        else:
            self._client, self.url = redis, client_display(redis)
            self._owns_client = close_client
            read_timeout = redis.connection_pool.connection_kwargs.get("socket_timeout")
            self._block_slice_s = read_timeout / 2 if isinstance(read_timeout, (int, float)) else 1.0
        self.stream = f"{prefix}:runs"
        self.dead_stream = f"{prefix}:runs:dead"
        self.group = group
        self.resets = 0
        self._maxlen = maxlen
        self._group_ready = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None  # redis.asyncio's connections belong to one loop
        self._touch = self._client.register_script(_TOUCH)
        self._forget = self._client.register_script(_FORGET)

    def __repr__(self) -> str:
        return f"RedisStreamsBus({self.url!r}, stream={self.stream!r}, group={self.group!r})"

    async def publish(self, message: Message) -> str:
        """See ``Bus.publish``."""
        fields = {"run_id": message.run_id, "headers": _encode_headers(message.headers)}
        entry_id = await self._call(
            "publishing a run",
            lambda: self._client.xadd(self.stream, fields, maxlen=self._maxlen, approximate=True),  # type: ignore[arg-type]
            group_command=False,
        )
        return _text(entry_id)

    async def receive(self, consumer: str, *, count: int, block_s: float) -> list[Delivery]:
        """See ``Bus.receive`` (``XREADGROUP ... >``, blocking in slices shorter than the socket timeout)."""
        _check_count(count)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, block_s)
        while True:
            remaining = deadline - loop.time()
            block_ms = int(min(remaining, self._block_slice_s) * 1000) if remaining > 0 else None
            block = None if block_ms is None else max(1, block_ms)  # BLOCK 0 would wait for ever
            reply = await self._call("receiving runs", partial(self._read, consumer, count, block))
            deliveries = [Delivery(entry_id, message, 1) for entry_id, message in _stream_entries(reply)]
            if deliveries or remaining <= 0 or loop.time() >= deadline:
                return deliveries

    async def claim_stale(self, consumer: str, *, min_idle_s: float, count: int) -> list[Delivery]:
        """See ``Bus.claim_stale`` (``XAUTOCLAIM``, following its cursor, then ``XPENDING`` for the counts)."""
        _check_count(count)
        min_idle_ms = max(0, int(min_idle_s * 1000))
        claimed: dict[str, Message] = {}
        cursor = "0-0"
        while len(claimed) < count:
            reply = await self._call(
                "claiming stale runs",
                partial(
                    self._client.xautoclaim,
                    self.stream,
                    self.group,
                    consumer,
                    min_idle_ms,
                    start_id=cursor,
                    count=count - len(claimed),
                ),
            )
            cursor = _text(reply[0])
            lost: list[str] = [_text(i) for i in reply[2]] if len(reply) > 2 and reply[2] else []
            for raw_id, fields in reply[1] or []:
                if raw_id is None:
                    continue
                if not fields:  # Redis 6.2 shows an entry deleted from the stream as one without fields
                    lost.append(_text(raw_id))
                    continue
                claimed[_text(raw_id)] = _decode_message(fields)
            if lost:
                # Redis 7 drops deleted entries from the PEL itself; acking them again is harmless (and needed on 6.2).
                await self.ack(lost)
            if cursor == "0-0":
                break
        if not claimed:
            return []
        counts = await self._delivery_counts(consumer, list(claimed))
        return [Delivery(i, m, counts[i]) for i, m in claimed.items() if i in counts]

    async def touch(self, consumer: str, entry_ids: Sequence[str]) -> None:
        """See ``Bus.touch`` (one script: ``XPENDING`` of that consumer, then ``XCLAIM`` ``JUSTID``)."""
        if not entry_ids:
            return
        await self._call(
            "touching held runs", lambda: self._touch(keys=[self.stream], args=[self.group, consumer, *entry_ids])
        )

    async def ack(self, entry_ids: Sequence[str]) -> None:
        """See ``Bus.ack`` (``XACK``)."""
        if not entry_ids:
            return
        await self._call(
            "acking runs", lambda: self._client.xack(self.stream, self.group, *entry_ids), group_command=False
        )

    async def dead_letter(self, delivery: Delivery, reason: str) -> str:
        """See ``Bus.dead_letter`` (``MULTI``: ``XADD`` to the dead stream, ``XACK``, ``EXEC``)."""
        fields = {
            "original_id": delivery.entry_id,
            "run_id": delivery.message.run_id,
            "headers": _encode_headers(delivery.message.headers),
            "reason": reason,
            "deliveries": str(delivery.deliveries),
            "dead_at_ms": str(time.time_ns() // 1_000_000),
        }

        async def move() -> Any:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xadd(self.dead_stream, fields, maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
                pipe.xack(self.stream, self.group, delivery.entry_id)
                # A group lost meanwhile (NOGROUP on the XACK) leaves nothing to ack: the XADD stands.
                return await pipe.execute(raise_on_error=False)

        replies = await self._call("dead-lettering a run", move, group_command=False)
        if isinstance(replies[0], Exception):
            raise self._answered("dead-lettering a run", replies[0])
        return _text(replies[0])

    async def dead(self, *, limit: int = 100) -> list[DeadLetter]:
        """See ``Bus.dead`` (``XREVRANGE`` of the dead stream)."""
        if limit < 1:
            return []
        reply = await self._call(
            "reading dead-lettered runs",
            lambda: self._client.xrevrange(self.dead_stream, count=limit),
            group_command=False,
        )
        return [_decode_dead(_text(raw_id), fields or {}) for raw_id, fields in reply or []]

    async def contains(self, entry_ids: Sequence[str]) -> set[str]:
        """See ``Bus.contains`` (one ``XRANGE id id`` each, pipelined)."""
        if not entry_ids:
            return set()

        async def look() -> Any:
            async with self._client.pipeline(transaction=False) as pipe:
                for entry_id in entry_ids:
                    pipe.xrange(self.stream, min=entry_id, max=entry_id, count=1)
                return await pipe.execute()

        replies = await self._call("looking up bus entries", look, group_command=False)
        return {entry_id for entry_id, found in zip(entry_ids, replies, strict=True) if found}

    async def stats(self) -> BusStats:
        """See ``Bus.stats`` (``XINFO GROUPS``, the ``XPENDING`` summary, ``XLEN`` of the dead stream, ``TIME``)."""

        async def read() -> Any:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.xinfo_groups(self.stream)
                pipe.xpending(self.stream, self.group)
                pipe.xlen(self.dead_stream)
                pipe.time()
                return await pipe.execute()

        groups, summary, dead, (seconds, micros) = await self._call("reading bus stats", read)
        info = next((g for g in groups if _text(g.get("name", "")) == self.group), None)
        if info is None:  # the stream exists (XPENDING answered) but the group went between the two
            return BusStats(depth=0, pending=0, oldest_age_s=None, dead=int(dead), consumers=0)
        pending = int(summary["pending"])
        last_delivered = _text(info.get("last-delivered-id", "0-0"))
        lag = info.get("lag")
        depth = int(lag) if lag is not None else None
        oldest = _text(summary["min"]) if pending and summary.get("min") is not None else None
        if oldest is None or depth is None:
            after = await self._call(
                "reading bus stats",
                lambda: self._client.xrange(
                    self.stream, min=f"({last_delivered}", count=1 if depth is not None else _LAG_SCAN_LIMIT
                ),
                group_command=False,
            )
            after = after or []
            if depth is None:
                depth = len(after)
            if oldest is None and after:
                oldest = _text(after[0][0])
        now_ms = int(seconds) * 1000 + int(micros) // 1000  # Redis's clock, which made the ids
        return BusStats(
            depth=depth,
            pending=pending,
            oldest_age_s=None if oldest is None else max(0.0, (now_ms - entry_ms(oldest)) / 1000),
            dead=int(dead),
            consumers=int(info.get("consumers", 0)),
        )

    async def forget_consumer(self, name: str) -> bool:
        """Delete consumer ``name`` from the group (``XGROUP DELCONSUMER``) if it holds nothing; False otherwise.

        Deleting a consumer drops its pending entries without a claim, so one that still holds any is kept.
        """
        forgotten = await self._call(
            "forgetting a consumer", lambda: self._forget(keys=[self.stream], args=[self.group, name])
        )
        return bool(forgotten)

    async def close(self) -> None:
        """See ``Bus.close``: closes the client if this bus made it (or was asked to); later calls raise."""
        self._closed = True
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            return  # its connections belong to a loop that is gone or elsewhere: they go with it
        if self._owns_client:
            await self._client.aclose()

    # -- Redis -----------------------------------------------------------------------------------------

    async def _call(self, action: str, command: Callable[[], Awaitable[T]], *, group_command: bool = True) -> T:
        """Run ``command``; after a ``NOGROUP`` (Redis lost the stream), recreate the group and run it once more."""
        if self._closed:
            raise BusUnavailable(f"{action} failed: the bus on Redis at {self.url} is closed: open a new one to go on")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise UserError(
                f"{action} failed: this RedisStreamsBus first ran on another event loop, and its Redis connections "
                "belong to that one: open one bus per event loop (open_bus in it) and close it there"
            )
        try:
            if not self._group_ready:
                await self._create_group()
                self._group_ready = True
            try:
                return await command()
            except ResponseError as exc:
                if not group_command or not _group_missing(exc):
                    raise
                await self._create_group()
                self.resets += 1
                logger.warning(
                    "bus stream %s or its group %s was missing on Redis at %s (restarted empty, or flushed): "
                    "recreated them; the runs it held are published again from the runs table",
                    self.stream,
                    self.group,
                    self.url,
                )
                return await command()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise BusUnavailable(
                f"{action} failed: Redis at {self.url} is unreachable or did not answer ({self._scrub(exc)}) — "
                "is Redis running? check [gateway] redis_url / TETHER_REDIS_URL"
            ) from None
        except RedisError as exc:
            raise self._answered(action, exc) from None

    async def _read(self, consumer: str, count: int, block: int | None) -> Any:
        read = partial(self._client.xreadgroup, self.group, consumer, {self.stream: ">"}, count=count, block=block)
        if block is None:
            return await read()
        try:
            return await read()
        except RedisTimeoutError:
            # A blocked read answers within half the socket timeout; past it, the machine or the network
            # stalled. Once more before calling Redis unavailable (an entry the lost read took stays
            # pending for this consumer, and claim_stale hands it on).
            return await read()

    async def _create_group(self) -> None:
        try:
            await self._client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # it exists already: another worker made it first
                raise

    async def _delivery_counts(self, consumer: str, entry_ids: list[str]) -> dict[str, int]:
        """Redis's times-delivered of each entry ``consumer`` holds (entries it no longer holds are left out)."""

        async def read() -> Any:
            async with self._client.pipeline(transaction=False) as pipe:
                for entry_id in entry_ids:
                    pipe.xpending_range(self.stream, self.group, entry_id, entry_id, 1, consumername=consumer)
                return await pipe.execute()

        replies = await self._call("reading delivery counts", read)
        return {
            entry_id: int(rows[0]["times_delivered"]) for entry_id, rows in zip(entry_ids, replies, strict=True) if rows
        }

    def _answered(self, action: str, exc: BaseException) -> BusUnavailable:
        return BusUnavailable(f"{action} failed: Redis at {self.url} answered: {self._scrub(exc)}")

    def _scrub(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        password = self._client.connection_pool.connection_kwargs.get("password")
        return text.replace(password, "[REDACTED]") if isinstance(password, str) and password else text


def _group_missing(exc: ResponseError) -> bool:
    """Redis says the stream or its group does not exist (``XINFO GROUPS`` of a missing key: "no such key")."""
    text = str(exc)
    return "NOGROUP" in text or "no such key" in text


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _encode_headers(headers: Mapping[str, str]) -> str:
    return orjson.dumps(dict(headers)).decode()


def _field(fields: Mapping[Any, Any], name: str) -> str | None:
    value = fields.get(name, fields.get(name.encode()))
    return None if value is None else _text(value)


def _decode_headers(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in parsed.items()} if isinstance(parsed, dict) else {}


def _decode_message(fields: Mapping[Any, Any]) -> Message:
    return Message(_field(fields, "run_id") or "", _decode_headers(_field(fields, "headers")))


def _decode_dead(entry_id: str, fields: Mapping[Any, Any]) -> DeadLetter:
    deliveries = _field(fields, "deliveries") or "0"
    dead_at = _field(fields, "dead_at_ms")
    return DeadLetter(
        entry_id=entry_id,
        original_id=_field(fields, "original_id") or "",
        message=_decode_message(fields),
        reason=_field(fields, "reason") or "",
        deliveries=int(deliveries) if deliveries.isdigit() else 0,
        dead_at_ms=int(dead_at) if dead_at and dead_at.isdigit() else entry_ms(entry_id),
    )


def _stream_entries(reply: Any) -> list[tuple[str, Message]]:
    """The entries of an ``XREADGROUP`` reply, in whichever shape redis-py parsed it.

    RESP2: ``[[stream, [(id, fields), ...]]]``; RESP3: ``{stream: [[(id, fields), ...]]}`` (one level more).
    """
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (entries for _name, entries in reply)
    found: list[tuple[str, Message]] = []

    def collect(entries: Any) -> None:
        for entry in entries or []:
            if isinstance(entry, (tuple, list)) and entry and isinstance(entry[0], (bytes, str)):
                found.append((_text(entry[0]), _decode_message(entry[1] if len(entry) > 1 and entry[1] else {})))
            elif isinstance(entry, list):
                collect(entry)

    for entries in streams:
        collect(entries)
    return found


def _check_count(count: int) -> None:
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
