"""What only the in-memory bus does: serve event loops on several threads, trim, close."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest

from tests.bus.conftest import eventually
from tests.faults._support import wait_until
from tether.bus import BusUnavailable, Delivery, MemoryBus, Message


def test_a_receive_blocked_on_another_threads_loop_wakes_at_once_on_publish() -> None:
    bus = MemoryBus()
    got: list[Delivery] = []
    received_at: list[float] = []

    def worker() -> None:
        got.extend(asyncio.run(bus.receive("w1", count=1, block_s=10)))
        received_at.append(time.monotonic())

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    wait_until(lambda: bus._waiters, 5, "the worker to block in receive")  # white box: it is waiting now
    published_at = time.monotonic()
    entry_id = asyncio.run(bus.publish(Message("run-1")))
    thread.join(5)
    assert not thread.is_alive()
    assert [(d.entry_id, d.message.run_id) for d in got] == [(entry_id, "run-1")]
    assert received_at[0] - published_at < 0.1


def test_loops_on_many_threads_share_one_bus() -> None:
    bus = MemoryBus()
    seen: list[str] = []
    lock = threading.Lock()
    total = 200

    def consume(name: str) -> None:
        async def run() -> None:
            while True:
                with lock:
                    if len(seen) >= total:
                        return
                for delivery in await bus.receive(name, count=3, block_s=0.05):
                    with lock:
                        seen.append(delivery.message.run_id)
                    await bus.ack([delivery.entry_id])

        asyncio.run(run())

    def produce(p: int) -> None:
        async def run() -> None:
            for i in range(total // 4):
                await bus.publish(Message(f"run-{p}-{i}"))

        asyncio.run(run())

    threads = [threading.Thread(target=consume, args=(f"w{c}",)) for c in range(3)]
    threads += [threading.Thread(target=produce, args=(p,)) for p in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(seen) == sorted(f"run-{p}-{i}" for p in range(4) for i in range(total // 4))
    assert asyncio.run(bus.stats()).pending == 0


async def test_the_stream_is_trimmed_to_maxlen_oldest_first() -> None:
    bus = MemoryBus(maxlen=3)
    ids = [await bus.publish(Message(f"run-{i}")) for i in range(2)]
    [held] = await bus.receive("w1", count=1, block_s=0)  # run-0 is pending, run-1 undelivered
    ids += [await bus.publish(Message(f"run-{i}")) for i in range(2, 5)]
    assert await bus.contains(ids) == set(ids[2:])
    stats = await bus.stats()
    assert (stats.depth, stats.pending) == (3, 1)  # run-1 was trimmed before anyone read it
    got = await bus.receive("w1", count=10, block_s=0)
    assert [d.message.run_id for d in got] == ["run-2", "run-3", "run-4"]
    await bus.ack([d.entry_id for d in got])
    await asyncio.sleep(0.02)
    assert await bus.claim_stale("w2", min_idle_s=0.01, count=10) == []  # trimmed while pending: dropped
    assert held.entry_id not in await bus.contains([held.entry_id])
    assert (await bus.stats()).pending == 0


async def test_close_wakes_a_blocked_receive_and_later_calls_say_what_to_do() -> None:
    bus = MemoryBus()
    waiting = asyncio.create_task(bus.receive("w1", count=1, block_s=30))
    await eventually(lambda: _waiting(bus), what="the receive to block")
    await bus.close()
    assert await asyncio.wait_for(waiting, 2) == []
    with pytest.raises(BusUnavailable, match=r"in-memory bus is closed: open a new one"):
        await bus.publish(Message("run-1"))


async def _waiting(bus: MemoryBus) -> bool:
    return bool(bus._waiters)


async def test_a_message_is_copied_so_its_headers_cannot_change_after_publish() -> None:
    bus = MemoryBus()
    headers = {"kind": "run"}
    await bus.publish(Message("run-1", headers))
    headers["kind"] = "changed"
    [delivery] = await bus.receive("w1", count=1, block_s=0)
    assert delivery.message.headers == {"kind": "run"}


def test_importing_the_bus_does_not_import_redis() -> None:
    check = "import sys, tether.bus; print('redis' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
