"""The bus's one small interface: what a message is, what a delivery is, and what every bus does.

The bus carries work only: a message names a run (``run_id``) and carries its
trace context in ``headers``; the run itself (task, options, status, lease) is
a row of the runs table, which is the record. Delivery is at least once: an
entry stays *pending* for the consumer it was delivered to until that consumer
acks it, and a consumer that stops acking (a dead or paused worker) has its
entries taken by another once they have been idle long enough
(``claim_stale``). So a consumer must tolerate a run it has already seen —
the runs table's lease says who may work on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from tether.errors import TetherError

__all__ = [
    "KIND",
    "TRACEPARENT",
    "TRACESTATE",
    "Bus",
    "BusStats",
    "BusUnavailable",
    "DeadLetter",
    "Delivery",
    "Message",
    "entry_ms",
]

#: Header of the W3C trace context the run continues (``00-<trace id>-<span id>-<flags>``).
TRACEPARENT: Final = "traceparent"
#: Header of the W3C vendor trace state that goes with ``traceparent``.
TRACESTATE: Final = "tracestate"
#: Header saying what kind of work a message is (the worker's vocabulary, e.g. "run", "resume").
KIND: Final = "kind"


class BusUnavailable(TetherError):
    """The bus's Redis cannot be reached or did not answer in time; the message says where and what to check."""


@dataclass(frozen=True, slots=True)
class Message:
    """What one bus entry carries: the run to work on, and headers such as its trace context.

    Attributes:
        run_id: the run's id in the runs table.
        headers: small string pairs that travel with it (``TRACEPARENT``, ``TRACESTATE``, ``KIND``, ...).
    """

    run_id: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as handed to a consumer, which now holds it until it acks it.

    Attributes:
        entry_id: the stream entry id (``"1712345678901-0"``), what ``ack``, ``touch`` and ``contains`` take.
        message: the message.
        deliveries: how many times the entry was delivered to a consumer, this time included.
    """

    entry_id: str
    message: Message
    deliveries: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry given up on: moved to the dead-letter stream with the reason why.

    Attributes:
        entry_id: its id in the dead-letter stream.
        original_id: the id it had in the work stream.
        message: the message it carried.
        reason: why it was given up on (one line, from the worker).
        deliveries: how many times it had been delivered.
        dead_at_ms: when it was dead-lettered (Unix milliseconds).
    """

    entry_id: str
    original_id: str
    message: Message
    reason: str
    deliveries: int
    dead_at_ms: int


@dataclass(frozen=True, slots=True)
class BusStats:
    """How the queue is doing, for metrics and ``tether workers``.

    Attributes:
        depth: entries never delivered yet (the consumer group's lag).
        pending: entries delivered and not acked yet.
        oldest_age_s: age of the oldest entry that is undelivered or unacked; None when there is none.
        dead: entries in the dead-letter stream.
        consumers: consumers the group knows: each that was ever given an entry, until ``forget_consumer``.
    """

    depth: int
    pending: int
    oldest_age_s: float | None
    dead: int
    consumers: int


class Bus(Protocol):
    """A work queue with consumer-group semantics (Redis Streams' ``XREADGROUP`` family).

    Attributes:
        kind: ``"memory"`` or ``"redis"``.
        resets: how many times the stream or its group was found missing (a Redis restarted empty) and recreated.
    """

    kind: str
    resets: int

    async def publish(self, message: Message) -> str:
        """Append ``message`` to the stream; its entry id.

        A publish that raised ``BusUnavailable`` after sending may still have been added (the answer was
        lost); publishing again is safe, since the runs table lets one worker claim a run however often
        it is delivered.
        """
        ...

    async def receive(self, consumer: str, *, count: int, block_s: float) -> list[Delivery]:
        """Up to ``count`` entries never delivered before, waiting up to ``block_s`` for the first one."""
        ...

    async def claim_stale(self, consumer: str, *, min_idle_s: float, count: int) -> list[Delivery]:
        """Take over up to ``count`` entries other consumers (or this one) have held unacked for ``min_idle_s``."""
        ...

    async def touch(self, consumer: str, entry_ids: Sequence[str]) -> None:
        """Reset the idle time of the entries among ``entry_ids`` that ``consumer`` holds, so none is claimed."""
        ...

    async def ack(self, entry_ids: Sequence[str]) -> None:
        """Done with these entries: no longer pending, never delivered again."""
        ...

    async def dead_letter(self, delivery: Delivery, reason: str) -> str:
        """Move ``delivery`` to the dead-letter stream and ack it, atomically; the dead entry's id."""
        ...

    async def dead(self, *, limit: int = 100) -> list[DeadLetter]:
        """The dead-letter stream, newest first, at most ``limit`` entries."""
        ...

    async def contains(self, entry_ids: Sequence[str]) -> set[str]:
        """Those of ``entry_ids`` still in the stream (not trimmed, not lost with a restarted Redis)."""
        ...

    async def stats(self) -> BusStats:
        """Depth, pending count, oldest age, dead-letter count and consumers, now."""
        ...

    async def forget_consumer(self, name: str) -> bool:
        """Forget consumer ``name`` (a worker gone for good) if it holds no entry; False when it still holds some."""
        ...

    async def close(self) -> None:
        """Release connections; a blocked ``receive`` on another task may end early."""
        ...


def entry_ms(entry_id: str) -> int:
    """The millisecond time an entry id (``"<ms>-<seq>"``) was made at.

    Raises:
        ValueError: ``entry_id`` is not such an id.
    """
    ms, sep, seq = entry_id.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        raise ValueError(f"not a stream entry id: {entry_id[:40]!r}")
    return int(ms)
