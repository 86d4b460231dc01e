"""Human approval of tool calls: requests persisted in the store, decided by a person, expiring to a denial.

A call that needs approval is written to the ``approvals`` table as
``pending`` with everything a person needs to decide — agent, tool, arguments,
the guard's reason and the run's context — and the run waits. ``tether
approvals list / approve ID / deny ID --reason`` (or the HTTP API) decides it;
each request can be decided once: approving an unknown or already decided
request is an error, never a second execution. An undecided request expires at
its deadline and counts as a denial.

A request is one *decision*, keyed by (run, turn, call id, attempt): attempt 0
is the first approval of a call; attempt n (purpose ``unknown_outcome``) is the
review of a call whose ledger attempt n stopped with its outcome unknown (the
process died while it ran), so it is always a new question to a person, never
answered by an earlier approval. Asking the same decision again (a resumed run
waiting on it) returns the same request::

    approvals = ApprovalStore(store)
    guard = Guard(policy, approver=approvals.approver(timeout_s=900))

``ApprovalStore.approver()`` is the guard's approver: it records the request
and polls for the decision (every ``poll_s``), so a decision made in any
process — the CLI, another replica — reaches the waiting run.

A run on a worker should not hold the worker while a person thinks:
``ApprovalStore.parking_approver()`` records the request the same way, returns
the decision when there is one already, and otherwise raises ``RunParked`` —
the run parks (``tether.store.runs``: no worker, no lease) instead of waiting.
``decide`` — and ``expire``, since an expiry is a denial the run must see — moves
a run parked on that approval back to ``pending`` in the same transaction; the
caller (CLI, HTTP API, worker) publishes it, or the worker's re-feed does. For a
run never submitted through the runs table that is a no-op.

Arguments are stored as the model sent them, except that every known secret
(``tether.redaction``, in any encoding) is scrubbed from them, the reason and
the context before the row is written; the decision, who made it and why are
kept for the audit.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

import orjson
from sqlalchemy import Connection, Engine, RowMapping, select, update
from sqlalchemy.dialects import postgresql, sqlite

from tether.errors import StoreError, UserError
from tether.redaction import default_scrubber, scrubbed_json
from tether.store.access import StoreAccess
from tether.store.runs import unpark_waiting_on
from tether.store.schema import approvals

if TYPE_CHECKING:
    from tether.store import TraceStore

__all__ = [
    "ApprovalAlreadyDecided",
    "ApprovalPurpose",
    "ApprovalRequest",
    "ApprovalStatus",
    "ApprovalStore",
    "ParkingApprover",
    "RunParked",
    "StoreApprover",
    "StoredApproval",
    "UnknownApproval",
]

logger = logging.getLogger(__name__)

_ARGUMENTS_CHARS = 16_000

#: ``call``: the first approval of a call; ``unknown_outcome``: the review of an attempt that may have run.
ApprovalPurpose = Literal["call", "unknown_outcome"]


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


class UnknownApproval(UserError):
    """No approval request has this id."""


class ApprovalAlreadyDecided(UserError):
    """The request was decided (or expired) already: a decision is made once."""


class RunParked(Exception):
    """The run waits for a person's decision and parks instead of holding its worker.

    Raised by ``ParkingApprover`` when the request is still pending; the agent loop catches it,
    checkpoints the run as ``parked`` and stops; the decision (or the request's expiry) re-enqueues it.

    Attributes:
        approval_id: the pending request.
        run_id: the run that waits on it.
    """

    def __init__(self, approval_id: str, run_id: str) -> None:
        self.approval_id = approval_id
        self.run_id = run_id
        super().__init__(
            f"run {run_id!r} is parked until approval {approval_id} is decided: "
            f"`tether approvals approve {approval_id}` or `tether approvals deny {approval_id}`"
        )


@dataclass(frozen=True)
class ApprovalRequest:
    """What the guard asks a person to decide.

    Attributes:
        run_id: the run waiting on it.
        agent: the agent that wants to make the call.
        tool: the tool.
        call_id: the model's id for the call.
        arguments: the call's arguments, as the model sent them.
        reason: why approval is needed (the guard's reason).
        context: what else helps a person decide: the run's task, the turn, what tainted it.
        turn: the model call that asked for it (from 1; 0 when the caller does not say).
        attempt: 0 for the call's first approval; n to review ledger attempt n, whose outcome is unknown.
    """

    run_id: str
    agent: str
    tool: str
    call_id: str
    arguments: Mapping[str, Any]
    reason: str
    context: Mapping[str, Any]
    turn: int = 0
    attempt: int = 0

    @property
    def purpose(self) -> ApprovalPurpose:
        return "unknown_outcome" if self.attempt > 0 else "call"


@dataclass(frozen=True)
class StoredApproval:
    """A request as stored, with its decision once there is one."""

    id: str
    run_id: str
    agent: str
    tool: str
    call_id: str
    arguments: dict[str, Any]
    reason: str
    context: dict[str, Any]
    status: ApprovalStatus
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    decision_reason: str | None
    turn: int = 0
    purpose: ApprovalPurpose = "call"
    attempt: int = 0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values, for ``--json`` and the HTTP API."""
        return {
            "id": self.id,
            "status": self.status.value,
            "run_id": self.run_id,
            "agent": self.agent,
            "tool": self.tool,
            "call_id": self.call_id,
            "turn": self.turn,
            "purpose": self.purpose,
            "attempt": self.attempt,
            "arguments": self.arguments,
            "reason": self.reason,
            "context": self.context,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "decided_by": self.decided_by,
            "decision_reason": self.decision_reason,
        }


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _from_row(row: RowMapping) -> StoredApproval:
    return StoredApproval(
        id=row["id"],
        run_id=row["run_id"],
        agent=row["agent"],
        tool=row["tool"],
        call_id=row["call_id"],
        arguments=orjson.loads(row["arguments"]),
        reason=row["reason"],
        context=orjson.loads(row["context"]),
        status=ApprovalStatus(row["status"]),
        created_at=_utc(row["created_at"]),
        expires_at=_utc(row["expires_at"]),
        decided_at=_utc(row["decided_at"]) if row["decided_at"] is not None else None,
        decided_by=row["decided_by"],
        decision_reason=row["decision_reason"],
        turn=row["turn"],
        purpose="unknown_outcome" if row["purpose"] == "unknown_outcome" else "call",
        attempt=row["attempt"],
    )


class ApprovalStore(StoreAccess):
    """Approval requests in the store's database (table ``approvals``), shared by every process.

    Args:
        store: a ``TraceStore`` or an ``Engine`` on a migrated database.
        clock: the current time (tests pass a fake one).
        on_unparked: called, after the commit, with the ids of the runs a decision or an expiry moved
            from ``parked`` back to ``pending`` (``tt.approvals`` publishes them to the workers at once).
            It must not raise; if it does, the error is logged and the workers' re-feed publishes them
            within ``[workers] refeed_s``.
    """

    def __init__(
        self,
        store: TraceStore | Engine,
        *,
        clock: Any = None,
        on_unparked: Callable[[list[str]], None] | None = None,
    ) -> None:
        super().__init__(store)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._on_unparked = on_unparked

    def _unparked(self, run_ids: list[str]) -> None:
        if not run_ids or self._on_unparked is None:
            return
        try:
            self._on_unparked(run_ids)
        except Exception as exc:  # the decision is committed; the re-feed publishes the runs instead
            logger.warning("approvals: could not publish the unparked run(s) %s at once: %s", ", ".join(run_ids), exc)

    def _now(self) -> datetime:
        return _utc(self._clock())

    def request(self, request: ApprovalRequest, *, timeout_s: float) -> StoredApproval:
        """Record a pending request; the same decision (run, turn, call, attempt) asked again returns it.

        A review of an unknown outcome (``attempt`` n > 0) is a request of its own: it never returns the
        call's first approval, nor the review of another attempt.

        Raises:
            StoreError: the database failed (the call must not run).
        """
        now = self._now()
        # Scrubbed at write time: the row never holds a secret the model echoed, whoever reads it later
        # (the CLI, the HTTP API, a replica that never registered that secret).
        arguments = scrubbed_json(dict(request.arguments), sort_keys=True)
        if len(arguments) > _ARGUMENTS_CHARS:
            arguments = orjson.dumps({"_truncated": arguments[:_ARGUMENTS_CHARS]}).decode()
        row = {
            "id": uuid.uuid4().hex,
            "run_id": request.run_id,
            "agent": request.agent,
            "tool": request.tool,
            "call_id": request.call_id,
            "arguments": arguments,
            "reason": default_scrubber().scrub(request.reason),
            "context": scrubbed_json(dict(request.context)),
            "status": ApprovalStatus.PENDING.value,
            "created_at": now,
            "expires_at": now + timedelta(seconds=timeout_s),
            "turn": request.turn,
            "purpose": request.purpose,
            "attempt": request.attempt,
        }
        with self._write("recording an approval request") as connection:
            dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
            # On the unique decision key: two processes asking at once get the one request.
            connection.execute(dialect.insert(approvals).values(**row).on_conflict_do_nothing())
            found = self._find_decision(connection, request)
        assert found is not None
        return found

    @staticmethod
    def _find_decision(connection: Connection, request: ApprovalRequest) -> StoredApproval | None:
        row = (
            connection.execute(
                select(approvals).where(
                    approvals.c.run_id == request.run_id,
                    approvals.c.turn == request.turn,
                    approvals.c.call_id == request.call_id,
                    approvals.c.attempt == request.attempt,
                )
            )
            .mappings()
            .one_or_none()
        )
        return _from_row(row) if row is not None else None

    def get(self, approval_id: str) -> StoredApproval:
        """The request with this id (expired first if its deadline has passed).

        Raises:
            UnknownApproval: no request has this id.
        """
        self.expire()
        with self._connect("reading an approval request") as connection:
            row = connection.execute(select(approvals).where(approvals.c.id == approval_id)).mappings().one_or_none()
        if row is None:
            raise UnknownApproval(
                f"no approval request has id {approval_id!r}: `tether approvals list` shows the pending ones"
            )
        return _from_row(row)

    def list(self, *, status: ApprovalStatus | None = ApprovalStatus.PENDING, limit: int = 100) -> list[StoredApproval]:
        """Requests, oldest first; pending ones by default (expired ones are marked first)."""
        self.expire()
        query = select(approvals).order_by(approvals.c.created_at, approvals.c.id).limit(limit)
        if status is not None:
            query = query.where(approvals.c.status == status.value)
        with self._connect("listing approval requests") as connection:
            rows = connection.execute(query).mappings().all()
        return [_from_row(row) for row in rows]

    def decide(self, approval_id: str, *, approve: bool, by: str, reason: str = "") -> StoredApproval:
        """Approve or deny a pending request, once.

        Raises:
            UnknownApproval: no request has this id.
            ApprovalAlreadyDecided: it was decided or expired already; nothing changes.
        """
        self.expire()
        status = ApprovalStatus.APPROVED if approve else ApprovalStatus.DENIED
        now = self._now()
        unparked: list[str] = []
        with self._write("deciding an approval request") as connection:
            # Only a pending row changes: two people deciding at once cannot both win.
            changed = connection.execute(
                update(approvals)
                .where(approvals.c.id == approval_id, approvals.c.status == ApprovalStatus.PENDING.value)
                .values(
                    status=status.value,
                    decided_at=now,
                    decided_by=by,
                    decision_reason=default_scrubber().scrub(reason) or None,
                )
            ).rowcount
            if changed == 1:
                # The run parked on it goes back to pending in the same transaction: never decided but parked.
                unparked = unpark_waiting_on(connection, [approval_id])
        self._unparked(unparked)
        stored = self.get(approval_id)
        if changed != 1:
            when = f" at {stored.decided_at:%Y-%m-%d %H:%M:%S} UTC" if stored.decided_at else ""
            who = f" by {stored.decided_by}" if stored.decided_by else ""
            raise ApprovalAlreadyDecided(
                f"approval {approval_id} is already {stored.status.value}{who}{when}: a request is decided once"
            )
        return stored

    def expire(self) -> int:
        """Mark pending requests past their deadline as expired (a denial); returns how many.

        Runs parked on them go back to ``pending`` in the same transaction, so they resume and see the denial.
        """
        now = self._now()
        with self._write("expiring approval requests") as connection:
            expired = list(
                connection.scalars(
                    update(approvals)
                    .where(approvals.c.status == ApprovalStatus.PENDING.value, approvals.c.expires_at < now)
                    .values(status=ApprovalStatus.EXPIRED.value, decided_at=now, decided_by="timeout")
                    .returning(approvals.c.id)
                )
            )
            unparked = unpark_waiting_on(connection, expired)
        self._unparked(unparked)
        return len(expired)

    async def wait(self, approval_id: str, *, poll_s: float = 0.25) -> StoredApproval:
        """Wait until the request is decided or expires; returns it decided."""
        while True:
            stored = await asyncio.to_thread(self.get, approval_id)
            if stored.status is not ApprovalStatus.PENDING:
                return stored
            await asyncio.sleep(poll_s)

    def approver(self, *, timeout_s: float = 900.0, poll_s: float = 0.25) -> StoreApprover:
        """The guard's approver backed by this store."""
        return StoreApprover(self, timeout_s=timeout_s, poll_s=poll_s)

    def parking_approver(self, *, timeout_s: float = 900.0) -> ParkingApprover:
        """The guard's approver for runs on workers: the decision if there is one, else ``RunParked``."""
        return ParkingApprover(self, timeout_s=timeout_s)


class StoreApprover:
    """Records each request and waits for a person's decision; expiry is a denial."""

    def __init__(self, store: ApprovalStore, *, timeout_s: float, poll_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"an approval timeout must be > 0 s, got {timeout_s}")
        self.store = store
        self.timeout_s = timeout_s
        self.poll_s = poll_s

    async def __call__(self, request: ApprovalRequest) -> StoredApproval:
        try:
            stored = await asyncio.to_thread(self.store.request, request, timeout_s=self.timeout_s)
        except StoreError:
            raise
        return await self.store.wait(stored.id, poll_s=self.poll_s)


class ParkingApprover:
    """Records each request like ``StoreApprover``, but never waits: an undecided request parks the run.

    Asked again when the run resumes (the same decision key), it finds the request and returns its decision
    (approved, denied, or expired — a denial).
    """

    def __init__(self, store: ApprovalStore, *, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"an approval timeout must be > 0 s, got {timeout_s}")
        self.store = store
        self.timeout_s = timeout_s

    async def __call__(self, request: ApprovalRequest) -> StoredApproval:
        """The request's decision.

        Raises:
            RunParked: it is still pending (``approval_id`` names it).
            StoreError: the database failed (the call must not run).
        """
        stored = await asyncio.to_thread(self.store.request, request, timeout_s=self.timeout_s)
        if stored.status is ApprovalStatus.PENDING:
            stored = await asyncio.to_thread(self.store.get, stored.id)  # expired first if past its deadline
        if stored.status is ApprovalStatus.PENDING:
            raise RunParked(stored.id, request.run_id)
        return stored
