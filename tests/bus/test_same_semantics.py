"""MemoryBus behaves as RedisStreamsBus does: random sequences of operations, run on both, give the same answers.

Entry ids differ between the two (each is made by its own clock), so answers are compared with every id
replaced by the number of the publish that made it. Claims use ``min_idle_s=0`` so that no answer depends
on timing: every pending entry is stale.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import REDIS_URL
from tether.bus import Bus, Delivery, MemoryBus, Message, RedisStreamsBus

CONSUMERS = st.sampled_from(["a", "b", "c"])
PICK = st.integers(min_value=0, max_value=20)  # which of the entries delivered so far (modulo their number)

OPERATIONS = st.one_of(
    st.tuples(st.just("publish"), st.sampled_from(["", "run"])),
    st.tuples(st.just("receive"), CONSUMERS, st.integers(1, 3)),
    st.tuples(st.just("claim"), CONSUMERS, st.integers(1, 3)),
    st.tuples(st.just("touch"), CONSUMERS, PICK),
    st.tuples(st.just("ack"), PICK),
    st.tuples(st.just("dead_letter"), PICK),
    st.tuples(st.just("forget"), CONSUMERS),
    st.tuples(st.just("look")),
)


@dataclass
class Replay:
    """One bus driven by a list of operations, writing down what it answered, ids as publish numbers."""

    bus: Bus
    numbers: dict[str, int]
    delivered: list[Delivery]

    def named(self, deliveries: list[Delivery]) -> list[tuple[int, str, dict[str, str], int]]:
        self.delivered.extend(deliveries)
        return [(self.numbers[d.entry_id], d.message.run_id, dict(d.message.headers), d.deliveries) for d in deliveries]

    def picked(self, index: int) -> Delivery | None:
        return self.delivered[index % len(self.delivered)] if self.delivered else None

    async def run(self, operations: list[tuple[Any, ...]]) -> list[object]:
        answers: list[object] = []
        for op, *args in operations:
            if op == "publish":
                number = len(self.numbers)
                entry_id = await self.bus.publish(Message(f"run-{number}", {"kind": args[0]} if args[0] else {}))
                self.numbers[entry_id] = number
                answers.append(number)
            elif op == "receive":
                answers.append(self.named(await self.bus.receive(args[0], count=args[1], block_s=0)))
            elif op == "claim":
                answers.append(self.named(await self.bus.claim_stale(args[0], min_idle_s=0, count=args[1])))
            elif op == "touch" and (picked := self.picked(args[1])):
                await self.bus.touch(args[0], [picked.entry_id])
            elif op == "ack" and (picked := self.picked(args[0])):
                await self.bus.ack([picked.entry_id])
            elif op == "dead_letter" and (picked := self.picked(args[0])):
                await self.bus.dead_letter(picked, f"reason {self.numbers[picked.entry_id]}")
            elif op == "forget":
                answers.append(await self.bus.forget_consumer(args[0]))
            elif op == "look":
                stats = await self.bus.stats()
                answers.append((stats.depth, stats.pending, stats.dead, stats.consumers, stats.oldest_age_s is None))
                answers.append(sorted(self.numbers[i] for i in await self.bus.contains(list(self.numbers))))
                answers.append(
                    [(self.numbers[d.original_id], d.reason, d.deliveries) for d in await self.bus.dead(limit=5)]
                )
        return answers


async def _both(operations: list[tuple[Any, ...]], prefix: str) -> tuple[list[object], list[object]]:
    memory = MemoryBus()
    on_redis = RedisStreamsBus(REDIS_URL, prefix=prefix)
    try:
        expected = await Replay(memory, {}, []).run([*operations, ("look",)])
        actual = await Replay(on_redis, {}, []).run([*operations, ("look",)])
    finally:
        await on_redis.close()
    return expected, actual


@settings(max_examples=40, deadline=None)
@given(st.lists(OPERATIONS, max_size=30))
def test_memory_and_redis_answer_every_sequence_of_operations_alike(operations: list[tuple[Any, ...]]) -> None:
    prefix = f"tether-test:{uuid.uuid4().hex}"
    try:
        memory, on_redis = asyncio.run(_both(operations, prefix))
        assert memory == on_redis
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()
