"""What only the Redis bus does: its keys and fields, a Redis that restarted empty, a Redis that is down."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio

from tests.bus.conftest import eventually
from tests.conftest import REDIS_URL
from tests.faults._support import FaultProxy, RedisServer, free_port
from tether.bus import TRACEPARENT, BusUnavailable, Message, RedisStreamsBus, open_bus
from tether.errors import ConfigError, UserError

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
async def client() -> AsyncIterator[redis.asyncio.Redis]:
    made = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
    yield made
    await made.aclose()


@pytest.fixture
async def bus(redis_prefix: str) -> AsyncIterator[RedisStreamsBus]:
    made = RedisStreamsBus(REDIS_URL, prefix=redis_prefix, group="g")
    yield made
    await made.close()


async def _entries(client: redis.asyncio.Redis, key: str) -> list[tuple[str, dict[str, str]]]:
    """A stream's entries as (id, fields), read with a client that decodes responses."""
    return [
        (str(entry_id), {str(k): str(v) for k, v in (fields or {}).items()})
        for entry_id, fields in await client.xrange(key) or []
    ]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, without persistence, to restart empty or stop."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


async def test_entries_carry_the_run_id_and_headers_as_json(
    bus: RedisStreamsBus, client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    entry_id = await bus.publish(Message("run-1", {TRACEPARENT: TRACE}))
    assert bus.stream == f"{redis_prefix}:runs"
    [(found_id, fields)] = await _entries(client, bus.stream)
    assert found_id == entry_id
    assert fields["run_id"] == "run-1"
    assert orjson.loads(fields["headers"]) == {TRACEPARENT: TRACE}
    [group] = await client.xinfo_groups(bus.stream)
    assert group["name"] == "g"


async def test_a_dead_letter_is_an_entry_of_the_dead_stream(
    bus: RedisStreamsBus, client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    entry_id = await bus.publish(Message("run-1", {TRACEPARENT: TRACE}))
    [delivery] = await bus.receive("w1", count=1, block_s=0)
    dead_id = await bus.dead_letter(delivery, "poison")
    assert bus.dead_stream == f"{redis_prefix}:runs:dead"
    [(found_id, fields)] = await _entries(client, bus.dead_stream)
    assert found_id == dead_id
    assert {k: v for k, v in fields.items() if k != "dead_at_ms"} == {
        "original_id": entry_id,
        "run_id": "run-1",
        "headers": orjson.dumps({TRACEPARENT: TRACE}).decode(),
        "reason": "poison",
        "deliveries": "1",
    }
    assert (await client.xpending(bus.stream, "g"))["pending"] == 0


async def test_an_entry_deleted_while_pending_is_dropped_by_claim_stale(
    bus: RedisStreamsBus, client: redis.asyncio.Redis
) -> None:
    gone = await bus.publish(Message("run-1"))
    kept = await bus.publish(Message("run-2"))
    await bus.receive("w1", count=2, block_s=0)
    await client.xdel(bus.stream, gone)
    await asyncio.sleep(0.06)
    claimed = await bus.claim_stale("w2", min_idle_s=0.05, count=10)
    assert [d.entry_id for d in claimed] == [kept]
    assert (await bus.stats()).pending == 1
    assert await bus.contains([gone, kept]) == {kept}


async def test_depth_is_counted_when_redis_cannot_tell_the_lag(
    bus: RedisStreamsBus, client: redis.asyncio.Redis
) -> None:
    ids = [await bus.publish(Message(f"run-{i}")) for i in range(4)]
    await bus.receive("w1", count=1, block_s=0)
    await client.xdel(bus.stream, ids[2])  # a hole after the last delivered id: XINFO's lag becomes nil
    [group] = await client.xinfo_groups(bus.stream)
    assert group["lag"] is None
    stats = await bus.stats()
    assert (stats.depth, stats.pending) == (2, 1)


async def test_a_group_destroyed_under_a_running_bus_is_recreated_once(
    bus: RedisStreamsBus, client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await bus.publish(Message("run-1"))
    await client.xgroup_destroy(bus.stream, "g")
    with caplog.at_level(logging.WARNING, logger="tether.bus.redis_streams"):
        got = await bus.receive("w1", count=10, block_s=0)
    assert [d.message.run_id for d in got] == ["run-1"]  # recreated from id 0: what the stream still has
    assert bus.resets == 1
    [record] = caplog.records
    assert "recreated" in record.getMessage() and "\n" not in record.getMessage()


async def test_a_redis_restarted_empty_is_a_reset_not_a_crash(private_redis: RedisServer) -> None:
    bus = RedisStreamsBus(private_redis.url, prefix="t", timeout_s=2.0)
    try:
        lost = await bus.publish(Message("run-lost"))
        [held] = await bus.receive("w1", count=1, block_s=0)
        private_redis.restart(empty=True)

        assert await bus.contains([lost]) == set()  # the re-feed's question: which entries did Redis lose?
        assert await bus.receive("w1", count=10, block_s=0) == []
        assert bus.resets == 1
        assert await bus.claim_stale("w2", min_idle_s=0, count=10) == []
        await bus.touch("w1", [held.entry_id])
        await bus.ack([held.entry_id])
        assert bus.resets == 1  # the group was found missing once

        fresh = await bus.publish(Message("run-new"))
        [delivery] = await bus.receive("w1", count=10, block_s=1)
        assert (delivery.entry_id, delivery.message.run_id, delivery.deliveries) == (fresh, "run-new", 1)
        stats = await bus.stats()
        assert (stats.depth, stats.pending, stats.consumers) == (0, 1, 1)
    finally:
        await bus.close()


async def test_a_restart_before_the_first_receive_is_a_reset_too(private_redis: RedisServer) -> None:
    bus = RedisStreamsBus(private_redis.url, prefix="t")
    try:
        await bus.publish(Message("run-lost"))  # creates the group
        private_redis.restart(empty=True)
        await bus.publish(Message("run-new"))  # XADD makes a stream again, without the group
        [delivery] = await bus.receive("w1", count=10, block_s=0)
        assert delivery.message.run_id == "run-new"
        assert bus.resets == 1
    finally:
        await bus.close()


@pytest.mark.parametrize("first", ["stats", "claim_stale", "touch", "forget_consumer"])
async def test_any_group_command_first_after_a_restart_recreates_the_group(
    private_redis: RedisServer, first: str
) -> None:
    bus = RedisStreamsBus(private_redis.url, prefix="t")
    try:
        await bus.publish(Message("run-lost"))
        [held] = await bus.receive("w1", count=1, block_s=0)
        private_redis.restart(empty=True)
        if first == "stats":
            stats = await bus.stats()
            assert (stats.depth, stats.pending, stats.oldest_age_s, stats.dead) == (0, 0, None, 0)
        elif first == "claim_stale":
            assert await bus.claim_stale("w2", min_idle_s=0, count=10) == []
        elif first == "touch":
            await bus.touch("w1", [held.entry_id])
        else:
            assert await bus.forget_consumer("w1") is True
        assert bus.resets == 1
        await bus.publish(Message("run-new"))
        assert [d.message.run_id for d in await bus.receive("w1", count=10, block_s=0)] == ["run-new"]
        assert bus.resets == 1
    finally:
        await bus.close()


async def test_redis_down_is_bus_unavailable_with_one_clean_line() -> None:
    url = f"redis://:s3cret-password@127.0.0.1:{free_port()}/0"
    bus = RedisStreamsBus(url, prefix="t", timeout_s=0.5)
    try:
        for call in (
            bus.publish(Message("run-1")),
            bus.receive("w1", count=1, block_s=1),
            bus.stats(),
        ):
            with pytest.raises(BusUnavailable) as raised:
                await call
            message = str(raised.value)
            assert "\n" not in message
            assert "s3cret" not in message
            assert f"redis://127.0.0.1:{url.rsplit(':', 1)[1]}" in message
            assert "is Redis running? check [gateway] redis_url / TETHER_REDIS_URL" in message
    finally:
        await bus.close()


async def test_a_redis_that_stops_answering_is_bus_unavailable_in_bounded_time(redis_prefix: str) -> None:
    with FaultProxy(6379) as proxy:
        bus = RedisStreamsBus(f"redis://127.0.0.1:{proxy.port}/0", prefix=redis_prefix, timeout_s=0.3)
        try:
            await bus.publish(Message("run-1"))
            proxy.set_mode("hang")
            for call in (bus.publish(Message("run-2")), bus.receive("w1", count=1, block_s=5), bus.stats()):
                started = time.monotonic()
                with pytest.raises(BusUnavailable, match="did not answer"):
                    await call
                assert time.monotonic() - started < 3
            proxy.set_mode("pass")
            got = await eventually(lambda: bus.receive("w1", count=10, block_s=0.2), what="Redis to answer again")
            assert got[0].message.run_id == "run-1"
        finally:
            await bus.close()


async def test_a_closed_bus_says_so(bus: RedisStreamsBus) -> None:
    await bus.close()
    with pytest.raises(BusUnavailable, match="is closed: open a new one"):
        await bus.publish(Message("run-1"))


async def test_redis_dying_under_a_blocked_receive_is_bus_unavailable(private_redis: RedisServer) -> None:
    bus = RedisStreamsBus(private_redis.url, prefix="t", timeout_s=0.5)
    try:
        await bus.stats()  # connected, group made
        waiting = asyncio.create_task(bus.receive("w1", count=1, block_s=30))
        await asyncio.sleep(0.1)
        private_redis.kill()
        with pytest.raises(BusUnavailable, match="is Redis running"):
            await asyncio.wait_for(waiting, 10)
    finally:
        await bus.close()


async def test_a_long_block_outlasts_the_socket_timeout(bus: RedisStreamsBus, redis_prefix: str) -> None:
    short = RedisStreamsBus(REDIS_URL, prefix=redis_prefix, group="g", timeout_s=0.2)
    try:
        waiting = asyncio.create_task(short.receive("w1", count=1, block_s=1.0))
        await asyncio.sleep(0.5)  # past the 0.2 s socket timeout: it must still be waiting, not failed
        assert not waiting.done()
        await bus.publish(Message("run-1"))
        [delivery] = await asyncio.wait_for(waiting, 5)
        assert delivery.message.run_id == "run-1"
    finally:
        await short.close()


@pytest.mark.parametrize(("protocol", "decode"), [(2, False), (2, True), (3, False), (3, True)])
async def test_a_given_client_of_any_protocol_is_used_and_left_open(
    redis_prefix: str, protocol: int, decode: bool
) -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL, socket_timeout=2, protocol=protocol, decode_responses=decode)
    try:
        bus = RedisStreamsBus(client, prefix=redis_prefix)
        assert bus.url == "redis://127.0.0.1:6379/0"
        first = await bus.publish(Message("run-1", {TRACEPARENT: TRACE}))
        await bus.publish(Message("run-2"))
        assert [(d.entry_id, d.message, d.deliveries) for d in await bus.receive("w1", count=1, block_s=0)] == [
            (first, Message("run-1", {TRACEPARENT: TRACE}), 1)
        ]
        [claimed] = await bus.claim_stale("w2", min_idle_s=0, count=5)
        assert (claimed.entry_id, claimed.deliveries) == (first, 2)
        await bus.touch("w2", [first])
        stats = await bus.stats()
        assert (stats.depth, stats.pending, stats.consumers) == (1, 1, 2)
        await bus.dead_letter(claimed, "poison")
        [dead] = await bus.dead()
        assert (dead.original_id, dead.message.run_id, dead.reason, dead.deliveries) == (first, "run-1", "poison", 2)
        assert await bus.forget_consumer("w1") is True
        assert await bus.contains([first]) == {first}
        await bus.close()
        assert await client.ping()
    finally:
        await client.aclose()


def test_a_bus_used_on_a_second_event_loop_says_to_open_one_per_loop(redis_prefix: str) -> None:
    bus = RedisStreamsBus(REDIS_URL, prefix=redis_prefix)
    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(bus.publish(Message("run-1")))
        with pytest.raises(UserError, match="open one bus per event loop"):
            asyncio.run(bus.publish(Message("run-2")))
        first.run_until_complete(bus.close())
    finally:
        first.close()

    per_run = RedisStreamsBus(REDIS_URL, prefix=redis_prefix)

    async def receive_and_close() -> list[str]:
        try:
            return [d.message.run_id for d in await per_run.receive("w1", count=10, block_s=0)]
        finally:
            await per_run.close()

    assert asyncio.run(receive_and_close()) == ["run-1"]


def test_open_bus_picks_the_implementation(redis_prefix: str) -> None:
    assert open_bus(None).kind == "memory"
    bus = open_bus(REDIS_URL, prefix=redis_prefix, group="g")
    assert isinstance(bus, RedisStreamsBus)
    assert (bus.kind, bus.stream, bus.group) == ("redis", f"{redis_prefix}:runs", "g")


def test_open_bus_refuses_a_malformed_url() -> None:
    with pytest.raises(ConfigError, match="invalid Redis URL"):
        open_bus("redis://127.0.0.1:notaport/0")
