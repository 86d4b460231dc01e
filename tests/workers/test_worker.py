"""The worker, in process: submitted runs are worked, parked, killed, limited, dead-lettered and re-fed.

Each test runs twice: on the MemoryBus with SQLite and on Redis Streams with PostgreSQL (the
``infra`` fixture); the worker runs in the test's event loop, so its runs' state can be watched.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.workers.conftest import Infra, refunding, until, working
from tether.app import Tether
from tether.bus import Message
from tether.guard.approvals import ApprovalStatus
from tether.messages import ModelRequest, ModelResponse, ToolResultBlock
from tether.runtime import tool
from tether.store.runs import Submission
from tether.testing import FunctionModel, text_response, tool_response
from tether.workers import await_run, submit_run


def told(request: ModelRequest) -> list[str]:
    last = request.messages[-1]
    return [b.content for b in last.content if isinstance(b, ToolResultBlock)] if last.role == "user" else []


def one_call(tool_name: str, arguments: dict[str, Any] | None = None) -> FunctionModel:
    """A model that calls ``tool_name`` once, then answers with what the tool said."""

    def answer(request: ModelRequest) -> ModelResponse:
        got = told(request)
        if got:
            return text_response(f"done: {got[0]}")
        return tool_response((tool_name, arguments or {}, "call-1"))

    return FunctionModel(answer)


def echo_agent(tt: Tether, name: str = "echo") -> Any:
    return tt.agent(name, FunctionModel(lambda request: text_response(f"echo {request.messages[0].text}")))


async def submit(tt: Tether, agent: str, task: str, **kwargs: Any) -> str:
    record, _ = await submit_run(tt.runs, tt.bus, tt.tracer, agent, task, **kwargs)
    return record.run_id


async def test_a_submitted_run_is_worked_to_its_end(infra: Infra) -> None:
    tt = infra.tether()
    echo_agent(tt)
    async with working(tt) as running:
        run_id = await submit(tt, "echo", "hello")
        record = await await_run(tt.runs, run_id, timeout_s=15)
    assert record.status == "finished"
    assert record.stop_reason == "completed"
    assert record.output == "echo hello"
    assert record.worker == running.worker.worker_id
    assert record.tokens == 15
    assert running.worker.counts["completed"] == 1
    assert (await tt.bus.stats()).pending == 0  # acked


async def test_the_pending_row_is_committed_before_anything_is_published(
    infra: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    tt = infra.tether()
    bus = tt.bus
    publish = bus.publish
    seen: list[Any] = []

    async def spy(message: Message) -> str:
        seen.append(await asyncio.to_thread(tt.runs.find, message.run_id))
        return await publish(message)

    monkeypatch.setattr(bus, "publish", spy)
    run_id = await submit(tt, "echo", "hi")
    assert seen and seen[0] is not None and seen[0].status == "pending" and seen[0].stream_id is None
    assert tt.runs.get(run_id).stream_id is not None  # enqueued after the publish


async def test_a_run_submitted_twice_with_its_id_is_one_run(infra: Infra) -> None:
    tt = infra.tether()
    echo_agent(tt)
    first = await submit(tt, "echo", "once", run_id="0123456789abcdef")
    second = await submit(tt, "echo", "once", run_id="0123456789abcdef")
    assert first == second == "0123456789abcdef"
    async with working(tt):
        record = await await_run(tt.runs, first, timeout_s=15)
    assert record.stop_reason == "completed"
    assert (await tt.bus.stats()).pending == 0


async def test_a_parked_run_holds_no_worker_slot_and_resumes_after_the_decision(infra: Infra) -> None:
    tt = infra.tether(refeed_s=0.2)
    effects: list[str] = []
    refunding(tt, effects)
    echo_agent(tt)
    async with working(tt, concurrency=1):
        parked_id = await submit(tt, "payments", "refund A-1")
        parked = await await_run(tt.runs, parked_id, timeout_s=15)
        assert parked.status == "parked" and parked.parked_on
        # The only slot is free: another run completes while the first waits for a person.
        other = await await_run(tt.runs, await submit(tt, "echo", "meanwhile"), timeout_s=15)
        assert other.stop_reason == "completed"
        assert effects == []
        pending = tt.approvals.list(status=ApprovalStatus.PENDING)
        assert [a.id for a in pending] == [parked.parked_on]
        await asyncio.to_thread(tt.approvals.decide, parked.parked_on, approve=True, by="alice")
        done = await until(
            lambda: (r := tt.runs.get(parked_id)).status == "finished" and r, what="the approved run to finish"
        )
    assert done.stop_reason == "completed"
    assert done.output == "done: refunded A-1"
    assert effects == ["A-1"]  # exactly once


async def test_a_kill_reaches_a_queued_run(infra: Infra) -> None:
    tt = infra.tether()
    model = FunctionModel(lambda request: text_response("ran"))
    tt.agent("victim", model)
    run_id = await submit(tt, "victim", "wait in the queue")
    await asyncio.to_thread(tt.kills.kill, run_id=run_id, reason="not this one")
    async with working(tt):
        record = await await_run(tt.runs, run_id, timeout_s=15)
    assert record.stop_reason == "killed"
    assert "not this one" in (record.error or "")
    assert model.requests == []  # never ran


async def test_a_kill_reaches_a_parked_run(infra: Infra) -> None:
    tt = infra.tether(refeed_s=0.2)

    @tool(risk="irreversible")
    def wire(amount: int) -> str:
        """Wire money.

        Args:
            amount: how much.
        """
        raise AssertionError("a killed run must not act")

    tt.agent("payments", one_call("wire", {"amount": 5}), tools=[wire])
    async with working(tt):
        run_id = await submit(tt, "payments", "wire 5")
        parked = await await_run(tt.runs, run_id, timeout_s=15)
        assert parked.status == "parked"
        await asyncio.to_thread(tt.kills.kill, agent="payments", reason="incident 7")
        record = await until(
            lambda: (r := tt.runs.get(run_id)).status == "finished" and r, what="the parked run to be killed"
        )
    assert record.stop_reason == "killed"
    assert "incident 7" in (record.error or "")


async def test_a_kill_reaches_a_running_run(infra: Infra) -> None:
    tt = infra.tether()
    started = asyncio.Event()

    @tool
    async def wait_forever() -> str:
        """Wait."""
        started.set()
        await asyncio.sleep(60)
        return "woke"

    tt.agent("sleeper", one_call("wait_forever"), tools=[wait_forever])
    async with working(tt):
        run_id = await submit(tt, "sleeper", "sleep")
        async with asyncio.timeout(15):
            await started.wait()
        await asyncio.to_thread(tt.kills.kill, run_id=run_id, reason="enough")
        record = await await_run(tt.runs, run_id, timeout_s=15)
    assert record.stop_reason == "killed"


async def test_an_agent_limit_caps_its_runs_and_lets_other_agents_through(infra: Infra) -> None:
    tt = infra.tether(claim_idle_s=0.3)  # the delivery beyond those held here is claimed again soon
    gate = asyncio.Event()
    now = {"running": 0, "most": 0}

    @tool
    async def slow() -> str:
        """Take a while."""
        now["running"] += 1
        now["most"] = max(now["most"], now["running"])
        try:
            await gate.wait()
        finally:
            now["running"] -= 1
        return "slow done"

    tt.agent("slow", one_call("slow"), tools=[slow])
    echo_agent(tt)
    async with working(tt, concurrency=8, agent_limits={"slow": 1}) as running:
        slow_ids = [await submit(tt, "slow", f"slow {i}") for i in range(3)]
        await until(lambda: now["running"] == 1, what="one slow run to start")
        fast = await await_run(tt.runs, await submit(tt, "echo", "fast"), timeout_s=15)
        assert fast.stop_reason == "completed"
        assert running.worker.stats().agents == {"slow": 1}
        assert running.worker.stats().waiting >= 1
        gate.set()
        records = [await await_run(tt.runs, run_id, timeout_s=20) for run_id in slow_ids]
    assert [r.stop_reason for r in records] == ["completed"] * 3
    assert now["most"] == 1


async def test_a_poison_run_is_dead_lettered_with_its_reason_and_the_queue_keeps_moving(infra: Infra) -> None:
    tt = infra.tether(max_failures=2, claim_idle_s=0.2)
    echo_agent(tt)
    async with working(tt) as running:
        poison = await submit(tt, "no-such-agent", "poison")
        good = [await submit(tt, "echo", f"good {i}") for i in range(3)]
        for run_id in good:
            assert (await await_run(tt.runs, run_id, timeout_s=15)).stop_reason == "completed"
        dead = await await_run(tt.runs, poison, timeout_s=15)
    assert dead.status == "dead"
    assert "no-such-agent" in (dead.dead_reason or "")
    assert dead.failures >= 2
    letters = await tt.bus.dead()
    assert [d.message.run_id for d in letters] == [poison]
    assert "no-such-agent" in letters[0].reason
    assert running.worker.counts["dead_lettered"] == 1


async def test_a_run_whose_submitter_died_before_publishing_is_fed_by_a_worker(infra: Infra) -> None:
    tt = infra.tether(refeed_s=0.2)
    echo_agent(tt)
    # The submitter committed the rows and died before publishing: nothing on the bus names them.
    ids = [tt.runs.submit(Submission(agent="echo", task=f"orphan {i}"))[0].run_id for i in range(5)]
    assert (await tt.bus.stats()).depth == 0
    async with working(tt) as running:
        records = [await await_run(tt.runs, run_id, timeout_s=15) for run_id in ids]
    assert [r.stop_reason for r in records] == ["completed"] * 5
    assert running.worker.refeeds >= 5


@pytest.mark.postgres
async def test_runs_whose_stream_was_lost_are_fed_again(tmp_path: Any, postgres_url: str) -> None:
    import redis.asyncio as aioredis

    from tests.conftest import REDIS_URL, postgres_schema
    from tests.workers.conftest import _drop_streams

    with postgres_schema(postgres_url, "tether_workers") as url:
        found = Infra("redis-postgresql", url, REDIS_URL)
        tt = found.tether(refeed_s=0.2)
        try:
            echo_agent(tt)
            ids = [await submit(tt, "echo", f"lost {i}") for i in range(5)]
            client = aioredis.Redis.from_url(REDIS_URL)
            try:
                await client.delete(*[key async for key in client.scan_iter(match=f"{found.prefix}*")])
            finally:
                await client.aclose()
            async with working(tt) as running:
                records = [await await_run(tt.runs, run_id, timeout_s=15) for run_id in ids]
            assert [r.stop_reason for r in records] == ["completed"] * 5
            assert running.worker.refeeds >= 5
            assert tt.bus.resets >= 1
        finally:
            await tt.aclose()
            _drop_streams(found.prefix)
