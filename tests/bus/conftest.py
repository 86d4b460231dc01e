"""Bus fixtures: every contract test on the in-memory bus and on Redis Streams on the machine's Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
import redis

from tests.conftest import REDIS_URL
from tether.bus import Bus, MemoryBus, RedisStreamsBus

T = TypeVar("T")


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix no other test uses; every key under it is deleted afterwards."""
    prefix = f"tether-test:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5, socket_timeout=5)
    try:
        try:
            client.ping()
        except redis.ConnectionError as exc:
            pytest.fail(f"the test Redis at {REDIS_URL} is not running ({exc}): start it, e.g. with .ci/run")
        yield prefix
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(params=["memory", "redis"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    """A fresh bus of each kind: a ``MemoryBus``, then a ``RedisStreamsBus`` under a prefix of its own."""
    made: Bus
    if request.param == "memory":
        made = MemoryBus()
    else:
        made = RedisStreamsBus(REDIS_URL, prefix=request.getfixturevalue("redis_prefix"), timeout_s=2.0)
    yield made
    await made.close()


async def eventually(probe: Callable[[], Awaitable[T]], *, timeout_s: float = 5.0, what: str = "a condition") -> T:
    """Await ``probe`` until it returns something truthy (returned); AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)
