"""Workers keep one budget tree across runs, and approval decisions resume parked runs at once.

Each test runs on the MemoryBus with SQLite and on Redis Streams with PostgreSQL (``infra``), except
the one that decides from another process's tether, which needs a bus both share (Redis).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import REDIS_URL, postgres_schema
from tests.workers.conftest import Infra, refunding, told, until, working
from tether.app import Tether
from tether.config import Settings
from tether.guard.approvals import ApprovalStatus
from tether.messages import ModelRequest, ModelResponse
from tether.runtime import Limits
from tether.testing import FunctionModel, text_response, tool_response
from tether.workers import await_run, submit_run

CHILDREN = 10


async def test_ten_parallel_children_on_workers_cannot_overshoot_the_parents_turns(infra: Infra) -> None:
    """The parent may make 6 model calls in all: its first, then only 5 of its 10 children's, exactly."""
    tt = infra.tether()
    calls: list[str] = []

    async def child(request: ModelRequest) -> ModelResponse:
        calls.append("child")
        await asyncio.sleep(0.05)  # all ten are in flight together
        return text_response("checked")

    def boss(request: ModelRequest) -> ModelResponse:
        calls.append("boss")
        if told(request):
            return text_response("all checked")
        return tool_response(*[("ask_checker", {"task": f"check shard {i}"}, f"c{i}") for i in range(CHILDREN)])

    checker = tt.agent("checker", FunctionModel(child))
    tt.agent("boss", FunctionModel(boss), tools=[checker.as_tool()], limits=Limits(max_turns=6))
    async with working(tt, concurrency=CHILDREN + 2) as one, working(tt, concurrency=CHILDREN + 2) as two:
        record, _ = await submit_run(tt.runs, tt.bus, tt.tracer, "boss", "check every shard")
        done = await await_run(tt.runs, record.run_id, timeout_s=30)
        workers = {one.worker.worker_id, two.worker.worker_id}
    children = [r for r in tt.runs.tree(record.run_id) if r.agent == "checker"]
    assert len(children) == CHILDREN
    completed = [r for r in children if r.stop_reason == "completed"]
    refused = [r for r in children if r.stop_reason == "budget_exceeded"]
    assert len(completed) == 5 and len(refused) == 5, [(r.stop_reason, r.error) for r in children]
    assert all(record.run_id in (r.error or "") and "parent run" in (r.error or "") for r in refused)
    # The parent's second call would be the 7th: refused too, so no call beyond the six was ever made.
    assert done.stop_reason == "budget_exceeded"
    assert calls.count("boss") == 1 and calls.count("child") == 5
    assert {r.worker for r in children} <= workers


async def test_a_decision_resumes_a_parked_run_at_once_not_at_the_next_refeed(infra: Infra) -> None:
    tt = infra.tether(refeed_s=60)  # the re-feed would take a minute: only the decision's publish is fast
    effects: list[str] = []
    refunding(tt, effects)
    async with working(tt) as running:
        run_id = (await submit_run(tt.runs, tt.bus, tt.tracer, "payments", "refund A-1"))[0].run_id
        parked = await await_run(tt.runs, run_id, timeout_s=15)
        assert parked.status == "parked" and parked.parked_on
        await asyncio.to_thread(tt.approvals.decide, parked.parked_on, approve=True, by="alice")
        done = await until(
            lambda: (r := tt.runs.get(run_id)).status == "finished" and r, timeout_s=10, what="the approved run"
        )
        assert running.worker.refeeds == 0
    assert done.stop_reason == "completed" and done.output == "done: refunded A-1"
    assert effects == ["A-1"]


async def test_an_approval_that_expires_resumes_its_run_with_the_denial(infra: Infra) -> None:
    tt = infra.tether(approvals_timeout_s=0.5, refeed_s=0.2)
    effects: list[str] = []
    refunding(tt, effects)
    async with working(tt):
        run_id = (await submit_run(tt.runs, tt.bus, tt.tracer, "payments", "refund A-1"))[0].run_id
        parked = await await_run(tt.runs, run_id, timeout_s=15)
        assert parked.status == "parked"
        # Nobody decides and nobody lists approvals: the worker's own sweep expires the request.
        done = await until(
            lambda: (r := tt.runs.get(run_id)).status == "finished" and r, timeout_s=15, what="the expired run"
        )
    assert parked.parked_on is not None
    assert tt.approvals.get(parked.parked_on).status is ApprovalStatus.EXPIRED
    assert effects == []  # the expiry is a denial: the refund never ran
    assert done.status == "finished"


@pytest.mark.postgres
async def test_a_decision_in_another_process_is_published_to_the_workers_over_redis(
    postgres_url: str,
) -> None:
    """The deciding tether (the CLI's, the server's) has no worker: it publishes the resumed run on Redis."""
    with postgres_schema(postgres_url, "tether_decide") as url:
        found = Infra("redis-postgresql", url, REDIS_URL)
        try:
            worker_side = found.tether(refeed_s=60)
            effects: list[str] = []
            refunding(worker_side, effects)
            async with working(worker_side):
                run_id = (
                    await submit_run(worker_side.runs, worker_side.bus, worker_side.tracer, "payments", "refund A-1")
                )[0].run_id
                parked = await await_run(worker_side.runs, run_id, timeout_s=15)
                assert parked.parked_on
                deciding = Tether(
                    Settings.model_validate({"workers": {"prefix": found.prefix, "redis_url": REDIS_URL}}),
                    database_url=url,
                )
                try:
                    await asyncio.to_thread(deciding.approvals.decide, parked.parked_on, approve=True, by="bob")
                finally:
                    await asyncio.to_thread(deciding.close)
                done = await until(
                    lambda: (r := worker_side.runs.get(run_id)).status == "finished" and r,
                    timeout_s=10,
                    what="the run approved elsewhere",
                )
            assert done.stop_reason == "completed"
            assert effects == ["A-1"]
        finally:
            for tt in found.opened:
                await tt.aclose()
            _drop(found.prefix)


def _drop(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys: list[Any] = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
