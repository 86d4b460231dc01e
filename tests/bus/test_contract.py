"""The bus contract, proved the same way on ``MemoryBus`` and on ``RedisStreamsBus`` (the machine's Redis)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.bus.conftest import eventually
from tests.conftest import REDIS_URL
from tether.bus import KIND, TRACEPARENT, Bus, Delivery, MemoryBus, Message, RedisStreamsBus, entry_ms

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_published_messages_are_received_in_order_once_with_their_headers(bus: Bus) -> None:
    ids = [await bus.publish(Message(f"run-{i}", {TRACEPARENT: TRACE, KIND: "run"})) for i in range(3)]
    got = await bus.receive("w1", count=10, block_s=0)
    assert [d.entry_id for d in got] == ids
    assert [d.message for d in got] == [Message(f"run-{i}", {TRACEPARENT: TRACE, KIND: "run"}) for i in range(3)]
    assert [d.deliveries for d in got] == [1, 1, 1]
    assert await bus.receive("w2", count=10, block_s=0) == []


async def test_entry_ids_look_like_redis_and_grow(bus: Bus) -> None:
    ids = [await bus.publish(Message("r")) for _ in range(50)]
    assert all(entry_ms(i) > 1_700_000_000_000 for i in ids)
    keys = [tuple(int(p) for p in i.split("-")) for i in ids]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


async def test_receive_returns_at_most_count(bus: Bus) -> None:
    for i in range(5):
        await bus.publish(Message(f"run-{i}"))
    first = await bus.receive("w1", count=2, block_s=0)
    rest = await bus.receive("w1", count=10, block_s=0)
    assert [d.message.run_id for d in first] == ["run-0", "run-1"]
    assert [d.message.run_id for d in rest] == ["run-2", "run-3", "run-4"]


async def test_a_blocked_receive_wakes_when_a_message_is_published(bus: Bus) -> None:
    waiting = asyncio.create_task(bus.receive("w1", count=1, block_s=10))
    await asyncio.sleep(0.05)  # let it block (if it has not, the publish is simply read at once)
    started = time.monotonic()
    await bus.publish(Message("run-1"))
    got = await asyncio.wait_for(waiting, 5)
    assert [d.message.run_id for d in got] == ["run-1"]
    assert time.monotonic() - started < 1.0


async def test_receive_with_nothing_to_read_waits_block_s_then_returns_nothing(bus: Bus) -> None:
    started = time.monotonic()
    assert await bus.receive("w1", count=1, block_s=0.3) == []
    assert 0.25 <= time.monotonic() - started < 3


async def test_an_unacked_entry_is_claimed_by_another_consumer_once_idle(bus: Bus) -> None:
    await bus.publish(Message("run-1", {TRACEPARENT: TRACE}))
    [held] = await bus.receive("w1", count=1, block_s=0)
    assert await bus.claim_stale("w2", min_idle_s=30, count=10) == []
    claimed = await eventually(lambda: bus.claim_stale("w2", min_idle_s=0.1, count=10), what="the claim")
    assert claimed == [Delivery(held.entry_id, Message("run-1", {TRACEPARENT: TRACE}), 2)]
    assert (await bus.stats()).pending == 1


async def test_touch_keeps_a_live_consumers_entries_from_being_claimed(bus: Bus) -> None:
    await bus.publish(Message("run-1"))
    [held] = await bus.receive("w1", count=1, block_s=0)
    touching_until = time.monotonic() + 0.5
    while time.monotonic() < touching_until:
        await bus.touch("w1", [held.entry_id])
        assert await bus.claim_stale("w2", min_idle_s=0.2, count=10) == []
        await asyncio.sleep(0.02)
    # It stops touching (it died): the entry moves on, counted as a second delivery.
    claimed = await eventually(lambda: bus.claim_stale("w2", min_idle_s=0.2, count=10), what="the claim")
    assert [(d.entry_id, d.deliveries) for d in claimed] == [(held.entry_id, 2)]


async def test_a_consumer_that_lost_an_entry_cannot_touch_it_back(bus: Bus) -> None:
    await bus.publish(Message("run-1"))
    [held] = await bus.receive("w1", count=1, block_s=0)
    await eventually(lambda: bus.claim_stale("w2", min_idle_s=0.05, count=1), what="w2's claim")

    async def w1_touches_then_w3_claims() -> list[Delivery]:
        await bus.touch("w1", [held.entry_id])  # w1 was paused, wakes and touches what it no longer holds
        return await bus.claim_stale("w3", min_idle_s=0.05, count=1)

    # w2 never touches, so w3 takes the entry over from it despite w1's touches.
    claimed = await eventually(w1_touches_then_w3_claims, what="w3's claim")
    assert [(d.entry_id, d.deliveries) for d in claimed] == [(held.entry_id, 3)]


async def test_claim_stale_takes_at_most_count_and_the_oldest_first(bus: Bus) -> None:
    ids = [await bus.publish(Message(f"run-{i}")) for i in range(5)]
    await bus.receive("w1", count=5, block_s=0)
    first = await eventually(lambda: bus.claim_stale("w2", min_idle_s=0.05, count=2), what="the claim")
    rest = await bus.claim_stale("w3", min_idle_s=0.05, count=10)
    assert [d.entry_id for d in first] == ids[:2]
    assert [d.entry_id for d in rest] == ids[2:]
    assert {d.deliveries for d in first + rest} == {2}


async def test_ack_removes_an_entry_from_pending_for_good(bus: Bus) -> None:
    await bus.publish(Message("run-1"))
    await bus.publish(Message("run-2"))
    got = await bus.receive("w1", count=2, block_s=0)
    assert (await bus.stats()).pending == 2
    await bus.ack([got[0].entry_id])
    await bus.ack([])
    assert (await bus.stats()).pending == 1
    claimed = await eventually(lambda: bus.claim_stale("w2", min_idle_s=0.05, count=10), what="the claim")
    assert [d.entry_id for d in claimed] == [got[1].entry_id]
    await bus.ack([got[1].entry_id])
    assert (await bus.stats()).pending == 0


async def test_dead_letter_moves_the_entry_with_its_reason_and_acks_it(bus: Bus) -> None:
    await bus.publish(Message("run-1", {TRACEPARENT: TRACE}))
    await bus.publish(Message("run-2"))
    first, second = await bus.receive("w1", count=2, block_s=0)
    before_ms = time.time_ns() // 1_000_000 - 5_000
    dead_id = await bus.dead_letter(first, "agent 'broken' failed to load: ImportError")
    await bus.dead_letter(second, "delivered 5 times")
    dead = await bus.dead()
    assert [d.original_id for d in dead] == [second.entry_id, first.entry_id]  # newest first
    oldest = dead[1]
    assert oldest.entry_id == dead_id
    assert oldest.message == Message("run-1", {TRACEPARENT: TRACE})
    assert oldest.reason == "agent 'broken' failed to load: ImportError"
    assert oldest.deliveries == 1
    assert oldest.dead_at_ms >= before_ms
    assert [d.original_id for d in await bus.dead(limit=1)] == [second.entry_id]
    stats = await bus.stats()
    assert (stats.pending, stats.dead) == (0, 2)
    await asyncio.sleep(0.06)
    assert await bus.claim_stale("w2", min_idle_s=0.05, count=10) == []


async def test_dead_letter_keeps_the_delivery_count(bus: Bus) -> None:
    await bus.publish(Message("run-1"))
    await bus.receive("w1", count=1, block_s=0)
    [again] = await eventually(lambda: bus.claim_stale("w2", min_idle_s=0.05, count=1), what="the claim")
    await bus.dead_letter(again, "poison")
    [dead] = await bus.dead()
    assert dead.deliveries == 2


async def test_contains_says_which_ids_are_still_in_the_stream(bus: Bus) -> None:
    ids = [await bus.publish(Message(f"run-{i}")) for i in range(3)]
    assert await bus.contains(ids) == set(ids)
    assert await bus.contains(["1-0", ids[1]]) == {ids[1]}
    assert await bus.contains([]) == set()
    got = await bus.receive("w1", count=3, block_s=0)
    await bus.ack([d.entry_id for d in got])
    assert await bus.contains(ids) == set(ids)  # acked entries stay until trimmed, as in Redis


async def test_stats_count_depth_pending_dead_consumers_and_the_oldest_age(bus: Bus) -> None:
    empty = await bus.stats()
    assert (empty.depth, empty.pending, empty.oldest_age_s, empty.dead) == (0, 0, None, 0)
    for i in range(3):
        await bus.publish(Message(f"run-{i}"))
    queued = await bus.stats()
    assert (queued.depth, queued.pending) == (3, 0)
    assert queued.oldest_age_s is not None and 0 <= queued.oldest_age_s < 5
    [first] = await bus.receive("w1", count=1, block_s=0)
    await bus.receive("w2", count=1, block_s=0)
    busy = await bus.stats()
    assert (busy.depth, busy.pending, busy.consumers) == (1, 2, 2)
    aged = await eventually(lambda: _age_at_least(bus, 0.15), what="the oldest pending entry to be 0.15 s old")
    assert aged < 5
    await bus.ack([first.entry_id])
    rest = await bus.receive("w1", count=10, block_s=0)
    pending = await bus.claim_stale("w1", min_idle_s=0, count=10)
    await bus.ack([d.entry_id for d in rest + pending])
    done = await bus.stats()
    assert (done.depth, done.pending, done.oldest_age_s) == (0, 0, None)


async def _age_at_least(bus: Bus, seconds: float) -> float:
    age = (await bus.stats()).oldest_age_s
    return age if age is not None and age >= seconds else 0.0


async def test_many_producers_and_consumers_deliver_every_message_to_exactly_one_consumer(bus: Bus) -> None:
    producers, per_producer, consumers = 4, 50, 4
    total = producers * per_producer
    seen: dict[str, list[str]] = {}
    done = asyncio.Event()

    async def produce(p: int) -> None:
        for i in range(per_producer):
            await bus.publish(Message(f"run-{p}-{i}"))

    async def consume(name: str) -> None:
        while not done.is_set():
            for delivery in await bus.receive(name, count=7, block_s=0.1):
                seen.setdefault(delivery.message.run_id, []).append(name)
                assert delivery.deliveries == 1
                await asyncio.sleep(0)  # the work: others get their turn
                await bus.ack([delivery.entry_id])
                if len(seen) == total:
                    done.set()

    workers = [asyncio.create_task(consume(f"w{c}")) for c in range(consumers)]
    await asyncio.gather(*(produce(p) for p in range(producers)))
    await asyncio.wait_for(done.wait(), 20)
    await asyncio.gather(*workers)
    assert len(seen) == total
    assert all(len(by) == 1 for by in seen.values()), {r: by for r, by in seen.items() if len(by) > 1}
    assert len({by[0] for by in seen.values()}) > 1  # the work was shared
    stats = await bus.stats()
    assert (stats.depth, stats.pending) == (0, 0)


async def test_forget_consumer_only_when_it_holds_nothing(bus: Bus) -> None:
    await bus.publish(Message("run-1"))
    await bus.publish(Message("run-2"))
    [held] = await bus.receive("w1", count=1, block_s=0)
    [other] = await bus.receive("w2", count=1, block_s=0)
    assert await bus.receive("w3", count=1, block_s=0) == []
    assert await bus.claim_stale("w3", min_idle_s=30, count=1) == []
    assert (await bus.stats()).consumers == 2  # a consumer counts once it has been given an entry
    assert await bus.forget_consumer("w1") is False
    await bus.ack([held.entry_id])
    assert await bus.forget_consumer("w1") is True
    assert (await bus.stats()).consumers == 1
    assert (await bus.stats()).pending == 1  # w2's entry is untouched
    await bus.ack([other.entry_id])


@pytest.mark.parametrize("count", [0, -1])
async def test_a_count_below_one_is_refused(bus: Bus, count: int) -> None:
    with pytest.raises(ValueError, match="count must be at least 1"):
        await bus.receive("w1", count=count, block_s=0)
    with pytest.raises(ValueError, match="count must be at least 1"):
        await bus.claim_stale("w1", min_idle_s=0, count=count)


async def test_concurrent_claims_give_each_stale_entry_to_one_consumer(bus: Bus) -> None:
    ids = {await bus.publish(Message(f"run-{i}")) for i in range(20)}
    await bus.receive("dead-worker", count=20, block_s=0)
    await asyncio.sleep(0.3)  # not a proof: lets the entries become stale
    # Within the burst nobody's claim is 0.25 s old, so no entry can be claimed twice legitimately.
    claims = await asyncio.gather(*(bus.claim_stale(f"w{c}", min_idle_s=0.25, count=3) for c in range(10)))
    claimed = [d.entry_id for batch in claims for d in batch]
    assert len(claimed) == len(set(claimed)) == 20
    assert set(claimed) == ids
    assert {d.deliveries for batch in claims for d in batch} == {2}


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_the_stream_keeps_about_maxlen_entries(kind: str, request: pytest.FixtureRequest) -> None:
    trimmed: Bus = (
        MemoryBus(maxlen=10)
        if kind == "memory"
        else RedisStreamsBus(REDIS_URL, prefix=request.getfixturevalue("redis_prefix"), maxlen=10)
    )
    try:
        ids = [await trimmed.publish(Message(f"run-{i}")) for i in range(300)]
        kept = await trimmed.contains(ids)
        assert set(ids[-10:]) <= kept  # the newest are kept
        assert ids[0] not in kept and len(kept) < 300  # the oldest go (Redis trims whole nodes: about maxlen)
    finally:
        await trimmed.close()
