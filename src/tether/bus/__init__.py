"""The bus: how work reaches workers — a run id and its trace context, delivered at least once.

The runs table (``tether.store.runs``) is the record of every run; the bus
only carries work. A submitter writes the run's row, then publishes a
``Message`` naming it; a worker ``receive``-s it, claims the run's lease in the
table, works, commits, and only then ``ack``-s the entry. An entry a worker
received and never acked (it died, or was paused) is taken over by another
worker with ``claim_stale`` once it has been idle for ``min_idle_s``; a live
worker ``touch``-es the entries of its long runs so nobody takes them. An entry
delivered too often is moved to the dead-letter stream (``dead_letter``), with
the reason, for ``tether runs --dead``.

Two implementations of one ``Bus`` protocol::

    bus = open_bus(None)                          # MemoryBus: in-process, the embedded default
    bus = open_bus("redis://host:6379/0")         # RedisStreamsBus: a stream + consumer group, any machine

    entry_id = await bus.publish(Message(run_id, {TRACEPARENT: traceparent}))
    for delivery in await bus.receive("worker-1", count=10, block_s=5):
        ...                                       # claim the run, work, commit
        await bus.ack([delivery.entry_id])

A Redis that restarted empty is not a crash: the bus recreates its group
(``resets`` counts it) and the runs table's re-feed publishes the lost runs
again (``contains`` tells which entries are gone).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tether.bus.base import (
    KIND,
    TRACEPARENT,
    TRACESTATE,
    Bus,
    BusStats,
    BusUnavailable,
    DeadLetter,
    Delivery,
    Message,
    entry_ms,
)
from tether.bus.memory import MemoryBus

if TYPE_CHECKING:
    from tether.bus.redis_streams import RedisStreamsBus

__all__ = [
    "KIND",
    "TRACEPARENT",
    "TRACESTATE",
    "Bus",
    "BusStats",
    "BusUnavailable",
    "DeadLetter",
    "Delivery",
    "MemoryBus",
    "Message",
    "RedisStreamsBus",
    "entry_ms",
    "open_bus",
]


def open_bus(redis_url: str | None, *, prefix: str = "tether", **options: Any) -> Bus:
    """The bus for a configuration: ``MemoryBus`` without a Redis URL, ``RedisStreamsBus`` on it with one.

    Nothing is connected yet: a Redis that is down shows at the first call, as ``BusUnavailable``.

    Args:
        redis_url: ``redis://[user:password@]host:6379/0``, or None for the in-process bus.
        prefix: the Redis keys' prefix (``{prefix}:runs``); ignored by the in-process bus.
        options: passed on to the implementation (``RedisStreamsBus``: group, maxlen, timeout_s,
            max_connections; ``MemoryBus``: maxlen, dead_maxlen).

    Raises:
        ConfigError: a Redis URL redis-py cannot parse.
    """
    if redis_url is None:
        return MemoryBus(**options)
    from tether.bus.redis_streams import RedisStreamsBus

    return RedisStreamsBus(redis_url, prefix=prefix, **options)


def __getattr__(name: str) -> object:
    # RedisStreamsBus imports redis (~0.5 s), which `import tether.bus` must not pay.
    if name == "RedisStreamsBus":
        from tether.bus.redis_streams import RedisStreamsBus

        return RedisStreamsBus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
