"""Worker fixtures: each test on the in-process pair (MemoryBus + SQLite) and the real one (Redis Streams +
PostgreSQL), with a tether of its own (a fresh database, a stream prefix nobody else uses)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REDIS_URL, postgres_schema
from tether.app import Tether
from tether.config import Settings
from tether.messages import ModelRequest, ModelResponse, ToolResultBlock
from tether.runtime import tool
from tether.testing import FunctionModel, text_response, tool_response
from tether.workers import Worker


@dataclass
class Infra:
    """Where a test's runs live: the store URL and the Redis (None: the in-memory bus)."""

    name: str
    database_url: str
    redis_url: str | None
    prefix: str = field(default_factory=lambda: f"tether-test-{uuid.uuid4().hex[:10]}")
    opened: list[Tether] = field(default_factory=list)

    def tether(self, *, approvals_timeout_s: float = 900.0, **workers: Any) -> Tether:
        """A tether on this infrastructure; ``workers`` are ``[workers]`` keys (the bus is never embedded here)."""
        table: dict[str, Any] = {"prefix": self.prefix, "embedded": False, **workers}
        if self.redis_url is not None:
            table["redis_url"] = self.redis_url
        tt = Tether(
            Settings.model_validate({"workers": table}),
            database_url=self.database_url,
            approvals_timeout_s=approvals_timeout_s,
        )
        self.opened.append(tt)
        return tt


@pytest.fixture(params=["memory-sqlite", pytest.param("redis-postgresql", marks=pytest.mark.postgres)])
async def infra(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str) -> AsyncIterator[Infra]:
    """The test's infrastructure; its tethers are closed on the test's loop (where their Redis connections live)."""
    if request.param == "memory-sqlite":
        found = Infra("memory-sqlite", f"sqlite:///{tmp_path / 'data' / 'tether.db'}", None)
        yield found
        await _close(found)
        return
    with postgres_schema(postgres_url, "tether_workers") as url:
        found = Infra("redis-postgresql", url, REDIS_URL)
        yield found
        await _close(found)
        _drop_streams(found.prefix)


async def _close(found: Infra) -> None:
    for tt in found.opened:
        await tt.aclose()


def _drop_streams(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@dataclass
class Running:
    """A worker working in the test's event loop."""

    worker: Worker
    task: asyncio.Task[None]
    stop: asyncio.Event

    async def stopped(self, timeout_s: float = 20) -> None:
        self.stop.set()
        async with asyncio.timeout(timeout_s):
            await self.task


@contextlib.asynccontextmanager
async def working(tt: Tether, registry: Any = None, **options: Any) -> AsyncIterator[Running]:
    """Run a ``Worker`` of ``tt`` in the background for the block; stopped (drained) after it."""
    options.setdefault("block_s", 0.1)
    options.setdefault("heartbeat_s", 0.2)
    worker = Worker(tt, registry, **options)
    stop = asyncio.Event()
    running = Running(worker, asyncio.create_task(worker.run(stop=stop)), stop)
    try:
        yield running
    finally:
        if not running.task.done():
            await running.stopped()
        else:
            running.task.result()


async def until(predicate: Callable[[], Any], timeout_s: float = 15.0, what: str = "a condition") -> Any:
    """Await until ``predicate()`` (sync, run in a thread) is truthy; its value. AssertionError on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


def told(request: ModelRequest) -> list[str]:
    last = request.messages[-1]
    return [b.content for b in last.content if isinstance(b, ToolResultBlock)] if last.role == "user" else []


def refunding(tt: Tether, effects: list[str], name: str = "payments") -> None:
    @tool(risk="irreversible")
    def refund(order: str) -> str:
        """Refund an order.

        Args:
            order: the order id.
        """
        effects.append(order)
        return f"refunded {order}"

    def answer(request: ModelRequest) -> ModelResponse:
        got = told(request)
        return text_response(f"done: {got[0]}") if got else tool_response(("refund", {"order": "A-1"}, "call-1"))

    tt.agent(name, FunctionModel(answer), tools=[refund])
