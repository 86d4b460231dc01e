"""The runs table: submitting, claiming with a fenced lease, takeovers, parking, kills, the re-feed, workers."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import postgres_schema
from tether.errors import StoreError, UserError
from tether.guard.approvals import ApprovalRequest, ApprovalStore
from tether.store import TraceStore, open_store
from tether.store.engine import create_store_engine
from tether.store.migrations import MIGRATIONS, migrate
from tether.store.runs import (
    Claim,
    Fence,
    LeaseLost,
    RunNotSubmitted,
    RunRecords,
    Submission,
    WorkerInfo,
    check_fence,
    current_fence,
    db_now_ms,
    fenced,
)
from tether.store.url import parse_store_url


def wait_until(predicate: Callable[[], Any], timeout_s: float = 10.0, what: str = "a condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)
    return value


def at_once(threads: int, call: Callable[[int], Any]) -> list[Any]:
    """Run ``call(i)`` in ``threads`` threads released together; their results (an exception fails the test)."""
    barrier = threading.Barrier(threads)
    results: list[Any] = [None] * threads
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = call(i)
        except BaseException as exc:
            errors.append(exc)

    started = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    assert errors == []
    return results


@pytest.fixture
def records(store: TraceStore) -> RunRecords:
    return RunRecords(store)


def submit(records: RunRecords, agent: str = "triage", **fields: Any) -> str:
    record, created = records.submit(Submission(agent=agent, task=fields.pop("task", "look at it"), **fields))
    assert created
    return str(record.run_id)


def claimed(records: RunRecords, run_id: str, worker: str = "w1", lease_s: float = 30.0) -> Claim:
    claim = records.claim(run_id, worker, lease_s=lease_s)
    assert claim is not None
    return claim


def db_ms(engine: sa.Engine) -> int:
    """Now by the database's clock."""
    with engine.connect() as connection:
        return int(connection.execute(sa.select(db_now_ms(connection))).scalar_one())


def expire_lease(records: RunRecords, engine: sa.Engine, run_id: str) -> None:
    """Wait until the database's clock is past the run's lease (never the test's clock)."""
    expires = records.get(run_id).lease_expires_ms
    assert expires is not None
    wait_until(lambda: db_ms(engine) > expires, what="the database clock to pass the lease")


# -- submitting and reading -------------------------------------------------------------------------


def test_submit_records_a_pending_run_by_the_database_clock(records: RunRecords) -> None:
    before_ms = time.time() * 1000
    record, created = records.submit(
        Submission(
            agent="triage",
            task="why is checkout slow?",
            headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
            options={"limits": {"turns": 5}, "hops": ["a", "b"]},
        )
    )

    assert created and re.fullmatch(r"[0-9a-f]{16}", record.run_id)
    assert record.status == "pending" and record.root_run_id == record.run_id and record.depth == 0
    assert record.lease_token == 0 and record.deliveries == 0 and record.failures == 0
    assert record.lease_owner is None and record.stream_id is None and record.started_ms is None
    assert abs(record.submitted_ms - before_ms) < 5_000  # the DB's clock, on the same machine
    assert records.get(record.run_id) == record
    assert record.headers["traceparent"].startswith("00-") and record.options == {
        "limits": {"turns": 5},
        "hops": ["a", "b"],
    }


def test_submit_with_a_given_id_is_idempotent(records: RunRecords) -> None:
    first, created = records.submit(Submission(agent="triage", task="one", run_id="run-1"))
    again, created_again = records.submit(Submission(agent="triage", task="other text", run_id="run-1"))

    assert created and not created_again
    assert again == first and again.task == "one"
    assert records.counts()["pending"] == 1


def test_a_child_run_names_its_parent_and_root(records: RunRecords) -> None:
    root = submit(records, run_id="root")
    child = submit(records, run_id="child", parent_run_id=root, root_run_id=root, depth=1, call_id="call-1")
    grandchild = submit(records, run_id="grand", parent_run_id=child, root_run_id=root, depth=2)
    submit(records, run_id="other")

    tree = records.tree(root)
    assert [r.run_id for r in tree] == [root, child, grandchild]
    assert tree[1].parent_run_id == root and tree[1].call_id == "call-1" and tree[2].depth == 2


def test_get_of_an_unknown_run_says_how_to_list_runs(records: RunRecords) -> None:
    assert records.find("nope") is None
    with pytest.raises(RunNotSubmitted, match=r"no run 'nope' was submitted: `tether runs --queued`") as raised:
        records.get("nope")
    assert isinstance(raised.value, UserError) and "\n" not in str(raised.value)


def test_list_is_newest_first_and_filters(records: RunRecords) -> None:
    a = submit(records, "triage", run_id="a")
    b = submit(records, "billing", run_id="b")
    c = submit(records, "triage", run_id="c")
    claimed(records, c)

    assert {r.run_id for r in records.list()} == {a, b, c}
    assert [r.run_id for r in records.list(statuses=["pending"])][::-1] in ([a, b], [b, a])
    assert [r.run_id for r in records.list(agent="triage", statuses=["running"])] == [c]
    assert len(records.list(limit=2)) == 2
    assert records.counts() == {"pending": 2, "running": 1, "parked": 0, "finished": 0, "dead": 0}


def test_oldest_pending_age_is_by_the_database_clock(records: RunRecords) -> None:
    assert records.oldest_pending_age_s() is None
    run = submit(records)
    age = records.oldest_pending_age_s()
    assert age is not None and 0 <= age < 5
    claimed(records, run)
    assert records.oldest_pending_age_s() is None


def test_options_must_be_json(records: RunRecords) -> None:
    with pytest.raises(ValueError, match="must be JSON values"):
        records.submit(Submission(agent="a", task="t", options={"when": object()}))


# -- claims and leases ------------------------------------------------------------------------------


def test_a_claim_takes_the_lease_and_moves_the_token_on(records: RunRecords) -> None:
    run = submit(records)
    records.enqueued(run, "1712345678901-0")

    claim = claimed(records, run, "w1")

    assert claim.fence == Fence(run, 1)
    record = claim.record
    assert record.status == "running" and record.lease_owner == "w1" and record.worker == "w1"
    assert record.deliveries == 1 and record.stream_id == "1712345678901-0"
    assert record.lease_expires_ms is not None and record.started_ms is not None
    assert 29_000 <= record.lease_expires_ms - record.started_ms <= 31_000
    assert records.claim(run, "w2", lease_s=30) is None  # held by a live lease
    assert records.claim(run, "w1", lease_s=30) is None  # even for its own worker: one delivery runs it
    assert records.claim("never-submitted", "w1", lease_s=30) is None


def test_eight_threads_claiming_at_once_exactly_one_wins(records: RunRecords) -> None:
    for attempt in range(3):
        run = submit(records, run_id=f"race-{attempt}")

        def claim(i: int, run: str = run) -> Claim | None:
            return records.claim(run, f"w{i}", lease_s=30)

        won: list[Claim | None] = at_once(8, claim)
        winners = [c for c in won if c is not None]
        assert len(winners) == 1 and len(won) == 8
        record = records.get(run)
        assert record.lease_token == 1 and record.deliveries == 1 and record.lease_owner == winners[0].record.worker


def test_renew_extends_a_held_lease_and_refuses_a_stale_one(records: RunRecords) -> None:
    run = submit(records)
    claim = claimed(records, run, "w1", lease_s=5)
    before = records.get(run).lease_expires_ms
    assert before is not None

    assert records.renew(claim.fence, "w1", lease_s=60)
    after = records.get(run).lease_expires_ms
    assert after is not None and after > before + 50_000
    assert not records.renew(Fence(run, claim.fence.token + 1), "w1", lease_s=60)  # not its token
    assert not records.renew(claim.fence, "w2", lease_s=60)  # not its owner
    assert records.get(run).lease_expires_ms == after


def test_a_lease_expired_by_the_database_clock_is_taken_over(records: RunRecords, store: TraceStore) -> None:
    run = submit(records)
    first = claimed(records, run, "w1", lease_s=0.2)
    assert records.claim(run, "w2", lease_s=30) is None

    expire_lease(records, store.engine, run)
    second = claimed(records, run, "w2")

    assert second.fence.token == first.fence.token + 1 == 2
    assert second.record.deliveries == 2 and second.record.lease_owner == "w2"
    assert second.record.started_ms == first.record.started_ms  # started once, taken over since
    # The first worker's lease is gone: every fenced write is refused and writes nothing.
    assert not records.renew(first.fence, "w1", lease_s=30)
    with pytest.raises(LeaseLost, match=r"lease \(token 1\) was lost.*nothing was written"):
        records.finish(first.fence, stop_reason="completed", output="stale", error=None, cost_usd=None, tokens=1)
    with pytest.raises(LeaseLost):
        records.park(first.fence, approval_id="a" * 32)
    with pytest.raises(LeaseLost):
        records.release(first.fence)
    assert records.get(run) == second.record


def test_an_expired_lease_nobody_took_still_renews(records: RunRecords, store: TraceStore) -> None:
    run = submit(records)
    claim = claimed(records, run, "w1", lease_s=0.05)
    expire_lease(records, store.engine, run)

    assert records.renew(claim.fence, "w1", lease_s=30)  # the token is still current: nobody took over
    assert records.claim(run, "w2", lease_s=30) is None


def test_finish_records_the_outcome_and_ends_the_lease(records: RunRecords) -> None:
    run = submit(records)
    claim = claimed(records, run)

    records.finish(
        claim.fence, stop_reason="completed", output="done", error=None, cost_usd=Decimal("0.012345678"), tokens=321
    )

    record = records.get(run)
    assert record.status == "finished" and record.stop_reason == "completed" and record.output == "done"
    assert record.cost_usd == Decimal("0.012345678") and record.tokens == 321
    assert record.lease_owner is None and record.lease_expires_ms is None and record.finished_ms is not None
    assert records.claim(run, "w2", lease_s=30) is None
    with pytest.raises(LeaseLost):  # finished: the same fence writes nothing more
        records.finish(claim.fence, stop_reason="error", output="", error="x", cost_usd=None, tokens=0)
    assert records.get(run) == record


def test_finish_without_a_fence_names_the_run(records: RunRecords) -> None:
    run = submit(records)
    records.finish(None, run_id=run, stop_reason="completed", output="ok", error=None, cost_usd=None, tokens=3)
    record = records.get(run)
    assert record.status == "finished" and record.cost_usd is None

    records.finish(None, run_id=run, stop_reason="error", output="", error="late", cost_usd=None, tokens=0)
    assert records.get(run) == record  # a finished run stays as it ended
    with pytest.raises(RunNotSubmitted):
        records.finish(None, run_id="nope", stop_reason="completed", output="", error=None, cost_usd=None, tokens=0)
    with pytest.raises(ValueError, match="needs the run_id"):
        records.finish(None, stop_reason="completed", output="", error=None, cost_usd=None, tokens=0)


def test_release_gives_the_run_back_for_another_worker(records: RunRecords) -> None:
    run = submit(records)
    records.enqueued(run, "1-0")
    claim = claimed(records, run, "w1")

    records.release(claim.fence)

    record = records.get(run)
    assert record.status == "pending" and record.lease_owner is None and record.stream_id == "1-0"
    again = claimed(records, run, "w2")
    assert again.fence.token == 2


def test_failures_are_counted_and_dead_runs_keep_their_reason(records: RunRecords) -> None:
    run = submit(records)
    assert records.record_failure(run, "agent 'x' is not registered") == 1
    assert records.record_failure(run, "agent 'x' is not registered") == 2

    records.dead(run, "delivered 5 times: agent 'x' is not registered")

    record = records.get(run)
    assert record.status == "dead" and record.failures == 2 and record.dead_reason is not None
    assert records.claim(run, "w1", lease_s=30) is None
    done = submit(records)
    records.finish(None, run_id=done, stop_reason="completed", output="", error=None, cost_usd=None, tokens=0)
    records.dead(done, "late")
    assert records.get(done).status == "finished"


# -- fences -------------------------------------------------------------------------------------------


def test_check_fence_refuses_in_the_callers_transaction(records: RunRecords, store: TraceStore) -> None:
    run = submit(records)
    claim = claimed(records, run)

    with store.engine.begin() as connection:
        check_fence(connection, claim.fence)
    for stale in (Fence(run, 0), Fence(run, 2), Fence("nope", 1)):
        with pytest.raises(LeaseLost) as raised, store.engine.begin() as connection:
            check_fence(connection, stale)
        assert isinstance(raised.value, StoreError) and "\n" not in str(raised.value)


def test_fenced_sets_and_resets_the_current_fence() -> None:
    assert current_fence.get() is None
    with fenced(Fence("r", 1)):
        assert current_fence.get() == Fence("r", 1)
        with fenced(None):
            assert current_fence.get() is None
        assert current_fence.get() == Fence("r", 1)
    assert current_fence.get() is None


@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[TraceStore]:
    """A store on PostgreSQL only (for what is PostgreSQL's: row locks; SQLite serialises all writers)."""
    with postgres_schema(postgres_url) as url, open_store(url) as opened:
        yield opened


@pytest.mark.postgres
def test_on_postgresql_a_takeover_waits_for_a_fenced_write_in_flight(pg_store: TraceStore) -> None:
    store = pg_store
    records = RunRecords(store)
    run = submit(records)
    claim = claimed(records, run, "w1", lease_s=0.1)
    expire_lease(records, store.engine, run)
    result: list[Claim | None] = []

    with store.engine.connect() as writer:
        transaction = writer.begin()
        me = writer.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        check_fence(writer, claim.fence)  # the row is now read FOR SHARE until this commits
        writer.execute(sa.text("SELECT 1"))
        taker = threading.Thread(target=lambda: result.append(records.claim(run, "w2", lease_s=30)))
        taker.start()

        def claim_waits_on_a_lock() -> bool:
            with store.engine.connect() as look:
                return bool(
                    look.execute(
                        sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> :me"),
                        {"me": me},
                    ).scalar_one()
                )

        wait_until(claim_waits_on_a_lock, what="the takeover to wait on the fenced write's row lock")
        assert result == []
        transaction.commit()
    taker.join(timeout=10)
    assert result and result[0] is not None and result[0].fence.token == 2


# -- parking ---------------------------------------------------------------------------------------


def _approval(store: TraceStore, run_id: str) -> str:
    request = ApprovalRequest(
        run_id=run_id, agent="triage", tool="refund", call_id="c1", arguments={}, reason="r", context={}, turn=1
    )
    return ApprovalStore(store).request(request, timeout_s=600).id


def test_park_frees_the_run_and_unpark_makes_it_pending(records: RunRecords, store: TraceStore) -> None:
    run = submit(records)
    records.enqueued(run, "5-0")
    claim = claimed(records, run)
    approval = _approval(store, run)

    records.park(claim.fence, approval_id=approval)

    record = records.get(run)
    assert record.status == "parked" and record.parked_on == approval
    assert record.lease_owner is None and record.lease_expires_ms is None and record.stream_id is None
    assert records.claim(run, "w2", lease_s=30) is None  # nobody works a parked run
    assert records.unpark(run)
    assert not records.unpark(run)
    record = records.get(run)
    assert record.status == "pending" and record.parked_on is None and record.stream_id is None
    assert claimed(records, run, "w2").fence.token == 2


def test_park_on_an_approval_decided_meanwhile_makes_the_run_pending(records: RunRecords, store: TraceStore) -> None:
    run = submit(records)
    claim = claimed(records, run)
    approval = _approval(store, run)
    ApprovalStore(store).decide(approval, approve=True, by="alice")  # a person was quicker than the worker

    records.park(claim.fence, approval_id=approval)

    record = records.get(run)
    assert record.status == "pending" and record.parked_on is None and record.lease_owner is None


# -- kills -------------------------------------------------------------------------------------------


def test_kill_waiting_by_run_agent_and_everything(records: RunRecords, store: TraceStore) -> None:
    a1 = submit(records, "a", run_id="a1")
    a2 = submit(records, "a", run_id="a2")
    b1 = submit(records, "b", run_id="b1")
    b2 = submit(records, "b", run_id="b2")
    c1 = submit(records, "c", run_id="c1")
    running = submit(records, "a", run_id="a-running")
    claimed(records, running)
    parked = submit(records, "c", run_id="c-parked")
    records.park(claimed(records, parked).fence, approval_id=_approval(store, parked))

    assert records.kill_waiting(run_id=a1, reason="stop a1") == [a1]
    assert records.kill_waiting(run_id=a1, reason="again") == []
    assert records.kill_waiting(agent="a", reason="stop a") == [a2]  # the running one: its worker stops it
    assert records.kill_waiting(everything=True, reason="stop all") == sorted([b1, b2, c1, parked])

    killed = records.get(parked)
    assert killed.status == "finished" and killed.stop_reason == "killed" and killed.error == "stop all"
    assert records.get(running).status == "running"
    with pytest.raises(ValueError, match="needs run_id, agent or everything"):
        records.kill_waiting(reason="what?")


# -- the re-feed -----------------------------------------------------------------------------------


def test_refeed_candidates_are_old_pending_and_expired_running_runs(records: RunRecords, store: TraceStore) -> None:
    never = submit(records, run_id="never-enqueued")
    queued = submit(records, run_id="queued")
    records.enqueued(queued, "7-0")
    held = submit(records, run_id="held")
    claimed(records, held, lease_s=60)
    lapsed = submit(records, run_id="lapsed")
    claimed(records, lapsed, lease_s=0.05)
    expire_lease(records, store.engine, lapsed)
    done = submit(records, run_id="done")
    records.finish(None, run_id=done, stop_reason="completed", output="", error=None, cost_usd=None, tokens=0)

    assert {r.run_id for r in records.refeed_candidates(older_than_s=0)} == {never, queued, lapsed}
    assert records.refeed_candidates(older_than_s=600) == []
    assert len(records.refeed_candidates(older_than_s=0, limit=2)) == 2


def test_two_refeeders_one_wins(records: RunRecords, store: TraceStore) -> None:
    queued = submit(records, run_id="queued")
    records.enqueued(queued, "7-0")
    never = submit(records, run_id="never-enqueued")

    for run, old in ((queued, "7-0"), (never, None)):
        # A run that names no entry competes on its enqueue time: make it old enough for one refeeder.
        if old is None:
            with store.engine.begin() as connection:  # age the row as time would
                connection.execute(
                    sa.text("UPDATE runs SET submitted_ms = submitted_ms - 120000 WHERE run_id = :r"), {"r": run}
                )

        def refeed(_: int, run: str = run, old: str | None = old) -> bool:
            return records.mark_refeeding(run, old, older_than_s=60 if old is None else 0)

        wins = at_once(2, refeed)

        assert sorted(wins) == [False, True], run
        assert records.get(run).stream_id is None
        records.enqueued(run, "9-0")  # the winner published it again
        assert records.get(run).stream_id == "9-0"
        assert not records.mark_refeeding(run, old)  # the old entry is no longer the run's


# -- workers ---------------------------------------------------------------------------------------


def _info(worker_id: str, **fields: Any) -> WorkerInfo:
    values: dict[str, Any] = {
        "worker_id": worker_id,
        "host": "box-1",
        "pid": 4242,
        "started_ms": 0,
        "heartbeat_ms": 0,
        "concurrency": 8,
        "running": (),
        "agents": ("triage",),
        "status": "running",
    }
    values.update(fields)
    return WorkerInfo(**values)


def test_worker_heartbeats_are_listed_and_filtered_by_liveness(records: RunRecords) -> None:
    records.heartbeat(_info("w1"))
    records.heartbeat(_info("w2", running=("r1", "r2"), status="draining"))
    first = {w.worker_id: w for w in records.workers()}
    assert set(first) == {"w1", "w2"} and first["w2"].running == ("r1", "r2") and first["w2"].status == "draining"
    assert abs(first["w1"].heartbeat_ms - time.time() * 1000) < 5_000  # the DB's clock, not the 0 sent

    records.heartbeat(_info("w1", running=("r3",), concurrency=4))
    again = {w.worker_id: w for w in records.workers()}
    assert again["w1"].running == ("r3",) and again["w1"].concurrency == 4
    assert again["w1"].started_ms == first["w1"].started_ms and again["w1"].heartbeat_ms >= first["w1"].heartbeat_ms

    records.worker_stopped("w2")
    assert [w.worker_id for w in records.workers()] == ["w1"]  # a stopped worker is not live
    stopped = {w.worker_id: w for w in records.workers(live_within_s=None)}["w2"]
    assert stopped.status == "stopped" and stopped.running == ()
    wait_until(lambda: records.workers(live_within_s=0.05) == [], what="w1's heartbeat to age")
    assert len(records.workers(live_within_s=None)) == 2


def test_the_database_clock_is_milliseconds_since_the_epoch(store: TraceStore) -> None:
    with store.engine.connect() as connection:
        first = int(connection.execute(sa.select(db_now_ms(connection))).scalar_one())
        wait_until(lambda: int(connection.execute(sa.select(db_now_ms(connection))).scalar_one()) > first)
    assert abs(first - time.time() * 1000) < 5_000


@pytest.fixture(autouse=True)
def _no_fence_leaks() -> Iterator[None]:
    yield
    assert current_fence.get() is None


def test_migration_8_adds_runs_and_workers_to_a_version_7_database(store_url: str) -> None:
    engine = create_store_engine(parse_store_url(store_url))
    try:
        assert migrate(engine, MIGRATIONS[:7]) == [1, 2, 3, 4, 5, 6, 7]
        assert not sa.inspect(engine).has_table("runs")

        assert migrate(engine) == [8]

        inspector = sa.inspect(engine)
        assert inspector.has_table("runs") and inspector.has_table("workers")
        assert {ix["name"] for ix in inspector.get_indexes("runs")} == {
            "ix_runs_status_submitted",
            "ix_runs_root",
            "ix_runs_parent",
            "ix_runs_agent_status",
        }
        records = RunRecords(engine)
        record, _ = records.submit(Submission(agent="a", task="t"))
        assert records.claim(record.run_id, "w", lease_s=1) is not None
    finally:
        engine.dispose()
