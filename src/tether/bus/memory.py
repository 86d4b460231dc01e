"""``MemoryBus``: the embedded bus, with Redis Streams' consumer-group semantics inside one process.

It is what runs when no Redis is configured (``make demo``, tests, a single
machine): one stream, one consumer group, a pending-entries list per entry
(the consumer holding it, when it was last delivered, how many times), a
dead-letter list, and trimming at ``maxlen`` like ``XADD ... MAXLEN``. Ids look
like Redis's (``"<ms>-<seq>"``), so code and logs read the same on both.

Thread-safe: every operation holds one lock for a few microseconds and never
awaits under it. A ``receive`` blocked on one event loop (a worker in a
background thread) is woken by ``call_soon_threadsafe`` the moment a
``publish`` on any loop or thread appends an entry — no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from tether.bus.base import BusStats, BusUnavailable, DeadLetter, Delivery, Message, entry_ms

__all__ = ["MemoryBus"]


@dataclass(slots=True)
class _Pending:
    consumer: str
    delivered_at: float  # time.monotonic() of the last delivery (or touch)
    deliveries: int


class MemoryBus:
    """The in-memory bus (see the module docstring); what ``open_bus(None)`` returns.

    Args:
        maxlen: entries kept in the stream; the oldest are trimmed beyond it (delivered or not, like Redis).
        dead_maxlen: entries kept in the dead-letter list.
    """

    kind = "memory"

    def __init__(self, *, maxlen: int = 1_000_000, dead_maxlen: int = 100_000) -> None:
        if maxlen < 1 or dead_maxlen < 1:
            raise ValueError(f"maxlen and dead_maxlen must be at least 1, got {maxlen} and {dead_maxlen}")
        self.resets = 0  # nothing outside this object can lose its state
        self._maxlen = maxlen
        self._lock = threading.Lock()
        self._entries: dict[str, Message] = {}  # every entry kept, oldest first (ids only grow)
        self._undelivered: deque[str] = deque()  # the tail of _entries after the group's last-delivered id
        self._pending: dict[str, _Pending] = {}  # first delivered first, so in id order
        self._consumers: set[str] = set()
        self._dead: deque[DeadLetter] = deque(maxlen=dead_maxlen)
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._last_ms = 0
        self._seq = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryBus(entries={len(self._entries)}, pending={len(self._pending)})"

    async def publish(self, message: Message) -> str:
        """See ``Bus.publish``."""
        with self._lock:
            self._check_open()
            entry_id = self._new_id()
            self._entries[entry_id] = Message(message.run_id, dict(message.headers))
            self._undelivered.append(entry_id)
            while len(self._entries) > self._maxlen:
                oldest = next(iter(self._entries))
                del self._entries[oldest]
                if self._undelivered and self._undelivered[0] == oldest:
                    self._undelivered.popleft()
            waiters, self._waiters = self._waiters, set()
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits there any more
                loop.call_soon_threadsafe(event.set)
        return entry_id

    async def receive(self, consumer: str, *, count: int, block_s: float) -> list[Delivery]:
        """See ``Bus.receive``."""
        _check_count(count)
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + max(0.0, block_s)
        while True:
            with self._lock:
                self._check_open()
                taken = self._take(consumer, count)
                remaining = deadline - time.monotonic()
                if taken or remaining <= 0:
                    return taken
                waiter = (loop, asyncio.Event())
                self._waiters.add(waiter)
            try:
                async with asyncio.timeout(remaining):
                    await waiter[1].wait()
            except TimeoutError:
                pass
            finally:
                with self._lock:
                    self._waiters.discard(waiter)
            if self._closed:
                return []

    async def claim_stale(self, consumer: str, *, min_idle_s: float, count: int) -> list[Delivery]:
        """See ``Bus.claim_stale``; an entry trimmed from the stream meanwhile is dropped from pending."""
        _check_count(count)
        with self._lock:
            self._check_open()
            now = time.monotonic()
            claimed: list[Delivery] = []
            for entry_id, held in list(self._pending.items()):
                if len(claimed) >= count:
                    break
                if now - held.delivered_at < min_idle_s:
                    continue
                message = self._entries.get(entry_id)
                if message is None:  # trimmed while pending: nothing left to deliver (XAUTOCLAIM's deleted ids)
                    del self._pending[entry_id]
                    continue
                held.consumer, held.delivered_at, held.deliveries = consumer, now, held.deliveries + 1
                claimed.append(Delivery(entry_id, message, held.deliveries))
            if claimed:  # like Redis 7: a consumer exists once it has been given an entry
                self._consumers.add(consumer)
            return claimed

    async def touch(self, consumer: str, entry_ids: Sequence[str]) -> None:
        """See ``Bus.touch``: entries held by another consumer are left alone."""
        with self._lock:
            self._check_open()
            now = time.monotonic()
            for entry_id in entry_ids:
                held = self._pending.get(entry_id)
                if held is not None and held.consumer == consumer:
                    held.delivered_at = now

    async def ack(self, entry_ids: Sequence[str]) -> None:
        """See ``Bus.ack``."""
        with self._lock:
            self._check_open()
            for entry_id in entry_ids:
                self._pending.pop(entry_id, None)

    async def dead_letter(self, delivery: Delivery, reason: str) -> str:
        """See ``Bus.dead_letter``."""
        with self._lock:
            self._check_open()
            dead_id = self._new_id()
            self._dead.append(
                DeadLetter(
                    entry_id=dead_id,
                    original_id=delivery.entry_id,
                    message=Message(delivery.message.run_id, dict(delivery.message.headers)),
                    reason=reason,
                    deliveries=delivery.deliveries,
                    dead_at_ms=entry_ms(dead_id),
                )
            )
            self._pending.pop(delivery.entry_id, None)
            return dead_id

    async def dead(self, *, limit: int = 100) -> list[DeadLetter]:
        """See ``Bus.dead``."""
        with self._lock:
            self._check_open()
            newest = list(self._dead)[::-1]
        return newest[: max(0, limit)]

    async def contains(self, entry_ids: Sequence[str]) -> set[str]:
        """See ``Bus.contains``: only ids this bus issued and has not trimmed."""
        with self._lock:
            self._check_open()
            return {entry_id for entry_id in entry_ids if entry_id in self._entries}

    async def stats(self) -> BusStats:
        """See ``Bus.stats``."""
        with self._lock:
            self._check_open()
            oldest: str | None = next(iter(self._pending), None)
            if oldest is None and self._undelivered:
                oldest = self._undelivered[0]
            return BusStats(
                depth=len(self._undelivered),
                pending=len(self._pending),
                oldest_age_s=None if oldest is None else max(0.0, time.time() - entry_ms(oldest) / 1000),
                dead=len(self._dead),
                consumers=len(self._consumers),
            )

    async def forget_consumer(self, name: str) -> bool:
        """Forget consumer ``name`` if it holds nothing (``XGROUP DELCONSUMER``); False when it still holds entries."""
        with self._lock:
            if any(held.consumer == name for held in self._pending.values()):
                return False
            self._consumers.discard(name)
            return True

    async def close(self) -> None:
        """See ``Bus.close``: a blocked ``receive`` returns at once with nothing; later calls raise."""
        with self._lock:
            self._closed = True
            waiters, self._waiters = self._waiters, set()
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    # -- under the lock ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BusUnavailable("the in-memory bus is closed: open a new one (open_bus(None)) to go on")

    def _new_id(self) -> str:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > self._last_ms:
            self._last_ms, self._seq = now_ms, 0
        else:  # same millisecond, or the wall clock stepped back: ids still grow, as in Redis
            self._seq += 1
        return f"{self._last_ms}-{self._seq}"

    def _take(self, consumer: str, count: int) -> list[Delivery]:
        taken: list[Delivery] = []
        now = time.monotonic()
        while self._undelivered and len(taken) < count:
            entry_id = self._undelivered.popleft()
            self._pending[entry_id] = _Pending(consumer, now, 1)
            taken.append(Delivery(entry_id, self._entries[entry_id], 1))
        if taken:
            self._consumers.add(consumer)
        return taken


def _check_count(count: int) -> None:
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
