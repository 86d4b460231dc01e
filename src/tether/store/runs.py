"""The runs table: the record of every submitted run, with the lease that says who may write for it.

A run is submitted (a ``pending`` row, committed before its id is handed out),
enqueued on the bus (``enqueued``), claimed by a worker (``claim``: ``running``
with a lease), and ends ``finished`` (any stop reason, ``killed`` included),
``parked`` while it waits for a person's approval (no worker, no lease), or
``dead`` when the bus gave up on it::

    pending ──claim──▶ running ──finish──▶ finished
       ▲  ▲              │  │
       │  └──release─────┘  └──park──▶ parked ──unpark (decide/expire)──▶ pending
       └── lease expired: claim again (takeover)

**One writer per run.** A claim moves the row's ``lease_token`` on by one and
returns it as a ``Fence``; every write made for the run — a checkpoint, a
tool-ledger row, ``renew``, ``release``, ``park``, ``finish`` — is conditional
on that token in the database, so a worker that was paused past its lease (GC,
SIGSTOP, a partition) and then taken over has its writes refused with
``LeaseLost`` and writes nothing. ``check_fence`` makes the check inside the
caller's own write transaction: on PostgreSQL it reads the run's row ``FOR
SHARE``, so a takeover's ``UPDATE`` waits until that write commits (a write
either lands before the takeover or is refused); SQLite's ``BEGIN IMMEDIATE``
serialises writers anyway.

Every time here (``*_ms``) is milliseconds **by the database's clock**
(``db_now_ms``): leases and their expiry never depend on a worker's clock.
"""

from __future__ import annotations

import builtins
import contextlib
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, get_args

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    RowMapping,
    and_,
    bindparam,
    cast,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from tether.errors import StoreError, UserError
from tether.store.access import StoreAccess
from tether.store.schema import approvals, runs, workers

__all__ = [
    "RUN_STATUSES",
    "Claim",
    "Fence",
    "LeaseLost",
    "RunNotSubmitted",
    "RunRecord",
    "RunRecords",
    "RunStatus",
    "Submission",
    "WorkerInfo",
    "check_fence",
    "current_fence",
    "db_now_ms",
    "fenced",
    "kill_waiting_in",
    "unpark_waiting_on",
]

RunStatus = Literal["pending", "running", "parked", "finished", "dead"]
RUN_STATUSES: tuple[RunStatus, ...] = get_args(RunStatus)

_NANO = Decimal(1_000_000_000)


@dataclass(frozen=True, slots=True)
class Fence:
    """Who may write for a run: the run and the fencing token of the lease its worker holds."""

    run_id: str
    token: int


class LeaseLost(StoreError):
    """A write for a run made with a stale fencing token: another worker took the run over (or it ended).

    Nothing was written. The worker must stop working on the run.
    """

    def __init__(self, fence: Fence, *, action: str = "writing") -> None:
        self.fence = fence
        super().__init__(
            f"{action} for run {fence.run_id!r} refused: its lease (token {fence.token}) was lost to another "
            "worker or the run ended; stop working on it, nothing was written"
        )


class RunNotSubmitted(UserError):
    """No run with this id was submitted through the runs table."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(
            f"no run {run_id!r} was submitted: `tether runs --queued` lists queued runs, `tether runs` finished ones"
        )


#: The fence of the run the current task works for; set by the worker around a run (``fenced``), read by
#: ``DurableRuns`` so its checkpoint and ledger writes are refused once the lease is lost.
current_fence: ContextVar[Fence | None] = ContextVar("tether_current_fence", default=None)


@contextlib.contextmanager
def fenced(fence: Fence | None) -> Iterator[None]:
    """Make ``fence`` the current one (``current_fence``) inside the block, and put the previous one back."""
    token = current_fence.set(fence)
    try:
        yield
    finally:
        current_fence.reset(token)


def db_now_ms(connection: Connection) -> ColumnElement[int]:
    """Now in milliseconds since the epoch, by the database's clock, as a SQL expression of ``connection``'s dialect.

    PostgreSQL: ``clock_timestamp()`` (the real time, moving on inside a transaction); SQLite:
    ``julianday('now')``.
    """
    if connection.dialect.name == "postgresql":
        return cast(func.floor(func.extract("epoch", func.clock_timestamp()) * 1000), BigInteger)
    return cast(literal_column("(julianday('now') - 2440587.5) * 86400000.0"), BigInteger)


#: ``check_fence``'s read, built once: it runs before every checkpoint and ledger write of a run.
_FENCE_READ = (
    select(runs.c.lease_token, runs.c.status).where(runs.c.run_id == bindparam("run_id")).with_for_update(read=True)
)


def check_fence(connection: Connection, fence: Fence) -> None:
    """Refuse the caller's write transaction unless ``fence`` still holds the run's lease.

    Call it inside the write transaction, before writing. On PostgreSQL the run's row is read ``FOR
    SHARE``: a takeover (``claim``'s ``UPDATE``) waits until this transaction ends, so the write either
    commits before the takeover or is refused.

    Raises:
        LeaseLost: the run's token moved on (another worker claimed it), or the run is no longer running.
    """
    row = connection.execute(_FENCE_READ, {"run_id": fence.run_id}).first()
    if row is None or row.lease_token != fence.token or row.status != "running":
        raise LeaseLost(fence)


@dataclass(frozen=True, slots=True)
class Submission:
    """A run to submit: which agent, what task, and where it sits in a tree of runs.

    Attributes:
        agent: the registered agent (or topology) name the worker looks up.
        task: the task given to it.
        run_id: None for a new random 16-hex id; a given id makes ``submit`` idempotent.
        parent_run_id: the run whose tool call started this one.
        root_run_id: the tree's root; None: the run is its own root.
        depth: 0 for a root, the parent's depth + 1 below it.
        call_id: the parent's tool call that started it.
        headers: trace context (``traceparent``, ``tracestate``) to put on the bus message.
        options: JSON the runtime passes along (limits, budget chain, handoff hops…).
    """

    agent: str
    task: str
    run_id: str | None = None
    parent_run_id: str | None = None
    root_run_id: str | None = None
    depth: int = 0
    call_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run's row in the runs table; times in ms by the database's clock."""

    run_id: str
    agent: str
    task: str
    status: RunStatus
    submitted_ms: int
    started_ms: int | None
    finished_ms: int | None
    lease_owner: str | None
    lease_token: int
    lease_expires_ms: int | None
    deliveries: int
    failures: int
    stream_id: str | None
    parent_run_id: str | None
    root_run_id: str
    depth: int
    call_id: str | None
    headers: dict[str, str]
    options: dict[str, Any]
    stop_reason: str | None
    output: str | None
    error: str | None
    cost_usd: Decimal | None
    tokens: int | None
    #: The last worker that claimed it.
    worker: str | None
    #: The approval it is parked on, while parked.
    parked_on: str | None
    dead_reason: str | None
    #: When it was last published on the bus (or marked for a re-feed); None: never.
    enqueued_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """A won claim: the run as it is after it, and the fence its writes must carry."""

    record: RunRecord
    fence: Fence


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker process as its heartbeat reports it (``heartbeat_ms``/``started_ms``: by the database's clock)."""

    worker_id: str
    host: str
    pid: int
    started_ms: int
    heartbeat_ms: int
    concurrency: int
    running: tuple[str, ...]
    agents: tuple[str, ...]
    #: ``running``, ``draining`` or ``stopped``.
    status: str


def _to_nano(cost: Decimal | None) -> int | None:
    return None if cost is None else int((Decimal(cost) * _NANO).to_integral_value())


def _json(value: Mapping[str, Any], what: str) -> str:
    try:
        return orjson.dumps(dict(value), option=orjson.OPT_SORT_KEYS).decode()
    except TypeError as exc:
        raise ValueError(f"a run's {what} must be JSON values (str, numbers, lists, dicts): {exc}") from None


def _record(row: RowMapping) -> RunRecord:
    nano = row["cost_nanousd"]
    return RunRecord(
        run_id=row["run_id"],
        agent=row["agent"],
        task=row["task"],
        status=row["status"],
        submitted_ms=row["submitted_ms"],
        started_ms=row["started_ms"],
        finished_ms=row["finished_ms"],
        lease_owner=row["lease_owner"],
        lease_token=row["lease_token"],
        lease_expires_ms=row["lease_expires_ms"],
        deliveries=row["deliveries"],
        failures=row["failures"],
        stream_id=row["stream_id"],
        parent_run_id=row["parent_run_id"],
        root_run_id=row["root_run_id"],
        depth=row["depth"],
        call_id=row["call_id"],
        headers=orjson.loads(row["headers"]),
        options=orjson.loads(row["options"]),
        stop_reason=row["stop_reason"],
        output=row["output"],
        error=row["error"],
        cost_usd=None if nano is None else Decimal(nano) / _NANO,
        tokens=row["tokens"],
        worker=row["worker"],
        parked_on=row["parked_on"],
        dead_reason=row["dead_reason"],
        enqueued_ms=row["enqueued_ms"],
    )


def _worker(row: RowMapping) -> WorkerInfo:
    return WorkerInfo(
        worker_id=row["worker_id"],
        host=row["host"],
        pid=row["pid"],
        started_ms=row["started_ms"],
        heartbeat_ms=row["heartbeat_ms"],
        concurrency=row["concurrency"],
        running=tuple(orjson.loads(row["running"])),
        agents=tuple(orjson.loads(row["agents"])),
        status=row["status"],
    )


def _lease_ms(lease_s: float) -> int:
    if lease_s <= 0:
        raise ValueError(f"a lease must be > 0 s, got {lease_s}")
    return max(1, round(lease_s * 1000))


def _fenced_where(fence: Fence) -> list[ColumnElement[bool]]:
    return [runs.c.run_id == fence.run_id, runs.c.lease_token == fence.token, runs.c.status == "running"]


#: Back to pending, no worker: what unparking and releasing do to a row (stream_id NULL: not on the bus).
_BACK_TO_PENDING: dict[str, Any] = {
    "status": "pending",
    "lease_owner": None,
    "lease_expires_ms": None,
    "parked_on": None,
}


def unpark_waiting_on(connection: Connection, approval_ids: Sequence[str] | None = None) -> list[str]:
    """Move runs parked on a decided approval back to ``pending`` (``stream_id`` NULL), in the caller's transaction.

    Args:
        connection: the caller's write transaction (the one that decided or expired the approvals).
        approval_ids: those approvals; None: every approval that is no longer pending.

    Returns:
        The run ids moved.
    """
    if approval_ids is None:
        decided = select(approvals.c.id).where(approvals.c.status != "pending").scalar_subquery()
        on = runs.c.parked_on.in_(decided)
    else:
        if not approval_ids:
            return []
        on = runs.c.parked_on.in_(list(approval_ids))
    statement = (
        update(runs)
        .where(runs.c.status == "parked", on)
        # Counted as enqueued now: the caller publishes it; the re-feed steps in only if it does not.
        .values(**_BACK_TO_PENDING, stream_id=None, enqueued_ms=db_now_ms(connection))
        .returning(runs.c.run_id)
    )
    return list(connection.scalars(statement))


def kill_waiting_in(
    connection: Connection,
    *,
    run_id: str | None = None,
    agent: str | None = None,
    everything: bool = False,
    reason: str,
) -> list[str]:
    """``RunRecords.kill_waiting`` inside the caller's write transaction (a kill's own, so that recording a
    kill and ending the queued and parked runs it names are one commit); returns the run ids killed."""
    if not everything and run_id is None and agent is None:
        raise ValueError("kill_waiting needs run_id, agent or everything=True")
    where: list[ColumnElement[bool]] = [runs.c.status.in_(("pending", "parked"))]
    if run_id is not None:
        where.append(runs.c.run_id == run_id)
    if agent is not None:
        where.append(runs.c.agent == agent)
    statement = (
        update(runs)
        .where(*where)
        .values(
            status="finished",
            stop_reason="killed",
            error=reason,
            lease_owner=None,
            lease_expires_ms=None,
            finished_ms=db_now_ms(connection),
        )
        .returning(runs.c.run_id)
    )
    return sorted(connection.scalars(statement))


class RunRecords(StoreAccess):
    """The runs and workers tables, shared by every process that submits or works runs.

    Args:
        store: a ``TraceStore`` or an ``Engine`` on a migrated database.
    """

    # -- submitting ------------------------------------------------------------------------------

    def submit(self, submission: Submission) -> tuple[RunRecord, bool]:
        """Record a ``pending`` run, committed before this returns; a run id already there returns its row.

        Returns:
            The run's row and whether this call created it (False: the id was submitted already).
        """
        run_id = submission.run_id or secrets.token_hex(8)
        headers = _json(submission.headers, "headers")
        options = _json(submission.options, "options")
        with self._write("submitting a run") as connection:
            dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
            statement = (
                dialect.insert(runs)
                .values(
                    run_id=run_id,
                    agent=submission.agent,
                    task=submission.task,
                    status="pending",
                    submitted_ms=db_now_ms(connection),
                    lease_token=0,
                    deliveries=0,
                    failures=0,
                    parent_run_id=submission.parent_run_id,
                    root_run_id=submission.root_run_id or run_id,
                    depth=submission.depth,
                    call_id=submission.call_id,
                    headers=headers,
                    options=options,
                )
                .on_conflict_do_nothing(index_elements=["run_id"])
                .returning(*runs.c)
            )
            row = connection.execute(statement).mappings().first()
            if row is not None:
                return _record(row), True
            existing = connection.execute(select(runs).where(runs.c.run_id == run_id)).mappings().one()
            return _record(existing), False

    def enqueued(self, run_id: str, stream_id: str) -> None:
        """Record the bus entry the run was published as (and when, by the database's clock)."""
        with self._write("recording a run's bus entry") as connection:
            connection.execute(
                update(runs)
                .where(runs.c.run_id == run_id)
                .values(stream_id=stream_id, enqueued_ms=db_now_ms(connection))
            )

    # -- reading ---------------------------------------------------------------------------------

    def find(self, run_id: str) -> RunRecord | None:
        """The run's row, or None when no run with this id was submitted."""
        with self._connect("reading a run") as connection:
            row = connection.execute(select(runs).where(runs.c.run_id == run_id)).mappings().one_or_none()
        return _record(row) if row is not None else None

    def get(self, run_id: str) -> RunRecord:
        """The run's row.

        Raises:
            RunNotSubmitted: no run with this id was submitted.
        """
        record = self.find(run_id)
        if record is None:
            raise RunNotSubmitted(run_id)
        return record

    def list(
        self, *, statuses: Sequence[RunStatus] | None = None, agent: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
        """Runs, newest submitted first, optionally only those with these statuses or of this agent."""
        query = select(runs).order_by(runs.c.submitted_ms.desc(), runs.c.run_id.desc()).limit(limit)
        if statuses is not None:
            query = query.where(runs.c.status.in_(list(statuses)))
        if agent is not None:
            query = query.where(runs.c.agent == agent)
        with self._connect("listing runs") as connection:
            return [_record(row) for row in connection.execute(query).mappings()]

    def tree(self, root_run_id: str) -> builtins.list[RunRecord]:
        """A root run and all its descendants, in the order they were submitted (the root first)."""
        query = (
            select(runs)
            .where(or_(runs.c.root_run_id == root_run_id, runs.c.run_id == root_run_id))
            .order_by(runs.c.depth, runs.c.submitted_ms, runs.c.run_id)
        )
        with self._connect("reading a run tree") as connection:
            return [_record(row) for row in connection.execute(query).mappings()]

    def counts(self) -> dict[RunStatus, int]:
        """How many runs have each status (every status present, 0 when none)."""
        with self._connect("counting runs") as connection:
            rows = connection.execute(select(runs.c.status, func.count()).group_by(runs.c.status)).all()
        found = {str(status): int(count) for status, count in rows}
        return {status: int(found.get(status, 0)) for status in RUN_STATUSES}

    def oldest_pending_age_s(self) -> float | None:
        """How long the oldest pending run has waited (by the database's clock); None when none is pending."""
        with self._connect("reading the oldest pending run") as connection:
            age = connection.execute(
                select(db_now_ms(connection) - func.min(runs.c.submitted_ms)).where(runs.c.status == "pending")
            ).scalar()
        return None if age is None else max(0.0, int(age) / 1000)

    # -- leases ----------------------------------------------------------------------------------

    def claim(self, run_id: str, worker: str, *, lease_s: float) -> Claim | None:
        """Take the run's lease for ``lease_s`` seconds, in one conditional ``UPDATE``.

        Wins when the run is pending, or running with no owner or a lease expired by the database's clock
        (a takeover). The token goes up by one and ``deliveries`` too. Two workers claiming at once: exactly
        one wins.

        Returns:
            The claim, or None: the run is finished, parked, dead, held by a live lease, or was never submitted.
        """
        lease = _lease_ms(lease_s)
        with self._write("claiming a run") as connection:
            now = db_now_ms(connection)
            statement = (
                update(runs)
                .where(
                    runs.c.run_id == run_id,
                    runs.c.status.in_(("pending", "running")),
                    or_(
                        runs.c.lease_owner.is_(None), runs.c.lease_expires_ms.is_(None), runs.c.lease_expires_ms <= now
                    ),
                )
                .values(
                    status="running",
                    lease_token=runs.c.lease_token + 1,
                    lease_owner=worker,
                    lease_expires_ms=now + lease,
                    deliveries=runs.c.deliveries + 1,
                    worker=worker,
                    started_ms=func.coalesce(runs.c.started_ms, now),
                )
                .returning(*runs.c)
            )
            row = connection.execute(statement).mappings().first()
        if row is None:
            return None
        record = _record(row)
        return Claim(record, Fence(record.run_id, record.lease_token))

    def renew(self, fence: Fence, worker: str, *, lease_s: float) -> bool:
        """Extend the lease to ``lease_s`` seconds from now; False: the lease is lost (taken over or ended)."""
        lease = _lease_ms(lease_s)
        with self._write("renewing a run's lease") as connection:
            row = connection.execute(
                update(runs)
                .where(*_fenced_where(fence), runs.c.lease_owner == worker)
                .values(lease_expires_ms=db_now_ms(connection) + lease)
                .returning(runs.c.run_id)
            ).first()
        return row is not None

    def release(self, fence: Fence) -> None:
        """Give the run back unfinished (a graceful stop): ``pending``, no owner; its bus entry stays.

        Raises:
            LeaseLost: the lease was lost already; nothing changed.
        """
        with self._write("releasing a run") as connection:
            row = connection.execute(
                update(runs).where(*_fenced_where(fence)).values(**_BACK_TO_PENDING).returning(runs.c.run_id)
            ).first()
        if row is None:
            raise LeaseLost(fence, action="releasing the lease")

    def park(self, fence: Fence, *, approval_id: str) -> bool:
        """Park the run on an approval: ``parked``, no lease, off the bus (``stream_id`` NULL).

        When the approval was decided (or expired) already — a person was quicker than the worker — the run
        goes straight back to ``pending`` instead, so it resumes and finds the decision. On PostgreSQL the
        approval's row is read ``FOR SHARE``: a decision made at the same time waits for this park and then
        unparks the run.

        Returns:
            True: parked. False: the approval was decided already and the run is ``pending`` off the bus —
            publish it again (or leave it to the re-feed).

        Raises:
            LeaseLost: the lease was lost; nothing changed.
        """
        with self._write("parking a run") as connection:
            approval = connection.execute(
                select(approvals.c.status).where(approvals.c.id == approval_id).with_for_update(read=True)
            ).scalar()
            decided = approval is not None and approval != "pending"
            values: dict[str, Any] = (
                {**_BACK_TO_PENDING, "stream_id": None}
                if decided
                else {
                    "status": "parked",
                    "parked_on": approval_id,
                    "lease_owner": None,
                    "lease_expires_ms": None,
                    "stream_id": None,
                }
            )
            row = connection.execute(
                update(runs).where(*_fenced_where(fence)).values(**values).returning(runs.c.run_id)
            ).first()
        if row is None:
            raise LeaseLost(fence, action="parking")
        return not decided

    def unpark(self, run_id: str) -> bool:
        """Move a parked run back to ``pending`` (``stream_id`` NULL, so the re-feed publishes it if nobody does).

        It counts as enqueued now: the caller publishes it and calls ``enqueued``; a re-feed looking for runs
        older than its threshold leaves it to the caller until then.

        Returns:
            False: the run was not parked.
        """
        with self._write("unparking a run") as connection:
            row = connection.execute(
                update(runs)
                .where(runs.c.run_id == run_id, runs.c.status == "parked")
                .values(**_BACK_TO_PENDING, stream_id=None, enqueued_ms=db_now_ms(connection))
                .returning(runs.c.run_id)
            ).first()
        return row is not None

    def finish(
        self,
        fence: Fence | None,
        *,
        stop_reason: str,
        output: str,
        error: str | None,
        cost_usd: Decimal | None,
        tokens: int,
        run_id: str | None = None,
    ) -> None:
        """Record how the run ended: ``finished``, no lease.

        Args:
            fence: the lease's fence; the write is refused unless it still holds the run. None (no worker:
                a run made in-process): give ``run_id``; a run not finished or dead yet is finished, one that
                is stays as it is.
            run_id: the run, when there is no fence (with a fence, it must be the fence's run or None).

        Raises:
            LeaseLost: ``fence`` is stale; nothing was written.
            RunNotSubmitted: without a fence, no run with this id was submitted.
        """
        if fence is None and run_id is None:
            raise ValueError("finish without a fence needs the run_id")
        if fence is not None and run_id not in (None, fence.run_id):
            raise ValueError(f"finish got the fence of run {fence.run_id!r} for run {run_id!r}")
        values: dict[str, Any] = {
            "status": "finished",
            "stop_reason": stop_reason,
            "output": output,
            "error": error,
            "cost_nanousd": _to_nano(cost_usd),
            "tokens": tokens,
            "lease_owner": None,
            "lease_expires_ms": None,
            "parked_on": None,
        }
        with self._write("finishing a run") as connection:
            values["finished_ms"] = db_now_ms(connection)
            if fence is not None:
                where = _fenced_where(fence)
            else:
                where = [runs.c.run_id == run_id, runs.c.status.in_(("pending", "running", "parked"))]
            row = connection.execute(update(runs).where(*where).values(**values).returning(runs.c.run_id)).first()
            if row is None and fence is None:
                exists = connection.execute(select(runs.c.run_id).where(runs.c.run_id == run_id)).first()
        if row is not None:
            return
        if fence is not None:
            raise LeaseLost(fence, action="finishing")
        if exists is None:
            raise RunNotSubmitted(str(run_id))

    def record_failure(self, run_id: str, reason: str) -> int:
        """Count a failed attempt at the run (not fenced: the worker may have lost it); returns the count."""
        with self._write("recording a run's failure") as connection:
            count = connection.execute(
                update(runs)
                .where(runs.c.run_id == run_id)
                .values(failures=runs.c.failures + 1, error=reason)
                .returning(runs.c.failures)
            ).scalar()
        return int(count or 0)

    def dead(self, run_id: str, reason: str) -> None:
        """The bus dead-lettered the run: ``dead`` with the reason, no lease (a finished run stays finished)."""
        with self._write("marking a run dead") as connection:
            connection.execute(
                update(runs)
                .where(runs.c.run_id == run_id, runs.c.status != "finished")
                .values(
                    status="dead",
                    dead_reason=reason,
                    lease_owner=None,
                    lease_expires_ms=None,
                    finished_ms=db_now_ms(connection),
                )
            )

    def kill_waiting(
        self, *, run_id: str | None = None, agent: str | None = None, everything: bool = False, reason: str
    ) -> builtins.list[str]:
        """Kill runs no worker holds — pending and parked ones matching — ``finished`` with stop reason ``killed``.

        Running runs are stopped by their worker (the kill switch's pub/sub); this is for those waiting.

        Returns:
            The run ids killed.
        """
        with self._write("killing waiting runs") as connection:
            return kill_waiting_in(connection, run_id=run_id, agent=agent, everything=everything, reason=reason)

    # -- the re-feed -----------------------------------------------------------------------------

    def refeed_candidates(self, *, older_than_s: float, limit: int = 500) -> builtins.list[RunRecord]:
        """Runs that may have lost their bus entry, oldest first.

        Pending runs enqueued (or, never enqueued, submitted) more than ``older_than_s`` ago, and running ones
        whose lease expired more than ``older_than_s`` ago (their worker died and nobody claimed them since).
        The caller checks which entries the bus still holds and re-publishes the others (``mark_refeeding``).
        """
        age = round(older_than_s * 1000)
        with self._connect("listing runs to re-feed") as connection:
            now = db_now_ms(connection)
            waited = func.coalesce(runs.c.enqueued_ms, runs.c.submitted_ms)
            query = (
                select(runs)
                .where(
                    or_(
                        and_(runs.c.status == "pending", waited <= now - age),
                        and_(runs.c.status == "running", runs.c.lease_expires_ms <= now - age),
                    )
                )
                .order_by(waited, runs.c.run_id)
                .limit(limit)
            )
            return [_record(row) for row in connection.execute(query).mappings()]

    def mark_refeeding(self, run_id: str, old_stream_id: str | None, *, older_than_s: float = 0.0) -> bool:
        """Take the right to re-publish a run whose bus entry ``old_stream_id`` is lost: one re-feeder wins.

        Conditional on the row still naming ``old_stream_id`` (and still being a candidate); it then names no
        entry (``stream_id`` NULL) and counts as enqueued now, until the winner calls ``enqueued``. For a run
        that names no entry (``old_stream_id`` None) pass the ``older_than_s`` given to ``refeed_candidates``:
        the refreshed enqueue time is what makes a second re-feeder lose.

        Returns:
            True: this caller publishes the run. False: another re-feeder (or a worker) got there first.
        """
        age = round(older_than_s * 1000)
        with self._write("marking a run for re-feed") as connection:
            now = db_now_ms(connection)
            same_entry = runs.c.stream_id.is_(None) if old_stream_id is None else runs.c.stream_id == old_stream_id
            row = connection.execute(
                update(runs)
                .where(
                    runs.c.run_id == run_id,
                    same_entry,
                    or_(
                        and_(
                            runs.c.status == "pending",
                            func.coalesce(runs.c.enqueued_ms, runs.c.submitted_ms) <= now - age,
                        ),
                        and_(runs.c.status == "running", runs.c.lease_expires_ms <= now - age),
                    ),
                    # A re-feed already marked this run within the age: it is not a candidate again yet.
                    or_(runs.c.enqueued_ms.is_(None), runs.c.enqueued_ms <= now - age),
                )
                .values(stream_id=None, enqueued_ms=now)
                .returning(runs.c.run_id)
            ).first()
        return row is not None

    # -- workers ---------------------------------------------------------------------------------

    def heartbeat(self, info: WorkerInfo) -> None:
        """Upsert the worker's row; ``heartbeat_ms`` (and ``started_ms`` on the first beat) by the database's clock."""
        with self._write("recording a worker heartbeat") as connection:
            now = db_now_ms(connection)
            dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
            statement = dialect.insert(workers).values(
                worker_id=info.worker_id,
                host=info.host,
                pid=info.pid,
                started_ms=now,
                heartbeat_ms=now,
                concurrency=info.concurrency,
                running=orjson.dumps(list(info.running)).decode(),
                agents=orjson.dumps(list(info.agents)).decode(),
                status=info.status,
            )
            connection.execute(
                statement.on_conflict_do_update(
                    index_elements=["worker_id"],
                    set_={
                        k: statement.excluded[k]
                        for k in ("host", "pid", "heartbeat_ms", "concurrency", "running", "agents", "status")
                    },
                )
            )

    def workers(self, *, live_within_s: float | None = 30.0) -> builtins.list[WorkerInfo]:
        """Workers by id; with ``live_within_s``, only those not stopped that beat within that many seconds."""
        query = select(workers).order_by(workers.c.worker_id)
        with self._connect("listing workers") as connection:
            if live_within_s is not None:
                query = query.where(
                    workers.c.status != "stopped",
                    workers.c.heartbeat_ms >= db_now_ms(connection) - round(live_within_s * 1000),
                )
            return [_worker(row) for row in connection.execute(query).mappings()]

    def worker_stopped(self, worker_id: str) -> None:
        """Mark the worker stopped (it holds no runs any more)."""
        with self._write("recording a worker's stop") as connection:
            connection.execute(
                update(workers)
                .where(workers.c.worker_id == worker_id)
                .values(status="stopped", running="[]", heartbeat_ms=db_now_ms(connection))
            )
