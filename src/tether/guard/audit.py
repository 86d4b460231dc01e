"""The guard's records: every decision in the audit table, findings as incidents, quarantine across processes.

``StoreGuardRecorder`` is the guard's ``GuardRecorder`` backed by the store::

    recorder = StoreGuardRecorder(store, policy)
    agent = Agent("oncall", model, tools=tools, guard=Guard(policy, recorder=recorder))
    ...
    recorder.close()                     # writes what is still queued

What it keeps:

- **Audit** — one ``guard_audit`` row per decision (allowed, denied, needs
  approval, approved, rejected) with the reason, the rule, the arguments as
  sorted-keys JSON (capped at 4 KB) and the tool span's trace and span ids.
- **Incidents** — one ``incidents`` row per finding (a hallucinated tool, a
  policy violation, an injection in tool output…), status ``open``.
- **Quarantine** — an agent with ``policy.quarantine_after`` or more medium or
  high incidents within ``policy.quarantine_window_s`` gets a ``quarantines``
  row; every guard on the store then denies its write and irreversible tools
  until a person runs ``tether incidents release AGENT``, which also marks its
  open incidents ``released`` so they never count again.

Every text stored (reasons, arguments, summaries, evidence) first passes the
process-wide ``Scrubber``: a secret handed to a tool becomes ``[secret:NAME]``.

How it is written, off the run's path (``decision`` and ``finding`` only queue):

- Audit rows go through a ``RowWriter`` (the span writer's batching thread):
  one multi-row insert per batch; while the database is down rows stay queued
  (bounded, one warning per outage) and nothing is raised into the run.
- Incidents go through a second ``RowWriter`` that wakes for every incident.
  For each one it commits the row, *then* in a new transaction counts the
  agent's counted incidents in the store — those of every process — and
  inserts the quarantine when they reach the threshold. Counting after the
  commit is what makes the count correct across processes: of two processes
  recording an agent's incidents at once, the one that commits last counts
  after the other's commit and sees both (an upsert keyed by agent makes a
  double decision harmless). Rows carry ids made when queued and are inserted
  with insert-or-ignore, so a retry after a lost commit stores nothing twice.
- This process also counts its own incidents in memory, so its own run is
  quarantined at once, on the finding that crosses the threshold, without
  waiting for the writer.

How ``quarantined`` answers: from memory, never a database round trip on the
call path — with one exception: the first call, if the background refresher
has not finished its first read yet, reads the ``quarantines`` table
synchronously, once. A thread re-reads that table every ``refresh_s``.

Consistency bounds: a quarantine decided in another process is seen here within
``refresh_s`` (plus that process's write latency, milliseconds while the
database is up); a release, likewise. A quarantine this process decides is
immediate here. Incidents that another process still has queued when an agent
is released are stored later as ``open`` but never count again (only incidents
created after the latest release count). While the database is unreachable the
last known quarantines keep applying and this process's own count still
quarantines; runs are not refused for the outage itself.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import orjson
from sqlalchemy import Connection, Engine, Insert, RowMapping, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite

from tether.errors import UserError
from tether.guard.guard import RunGuard
from tether.guard.policy import Policy
from tether.guard.types import Decision, Finding
from tether.redaction import Scrubber, default_scrubber
from tether.store.access import StoreAccess
from tether.store.bulk import insert_rows
from tether.store.engine import SQLITE_BEGIN
from tether.store.schema import guard_audit, incidents, quarantines
from tether.trace.processor import RowWriter

if TYPE_CHECKING:
    from tether.store import TraceStore

__all__ = [
    "DEFAULT_REFRESH_S",
    "AuditEntry",
    "GuardStore",
    "Incident",
    "NotQuarantined",
    "Quarantine",
    "Release",
    "StoreGuardRecorder",
    "quarantine_reason",
]

logger = logging.getLogger(__name__)

#: How often a recorder re-reads the quarantines, and so how late it may learn of one decided elsewhere.
DEFAULT_REFRESH_S: Final = 2.0
#: Severities that count towards a quarantine.
COUNTED_SEVERITIES: Final = ("medium", "high")
OPEN: Final = "open"
RELEASED: Final = "released"

_ARGUMENTS_CHARS: Final = 4_096
_REASON_CHARS: Final = 2_000
_SUMMARY_CHARS: Final = 1_000
_EVIDENCE_CHARS: Final = 2_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_RELEASE_DECISION: Final = "released"  # the audit row of a release: not a tool call, so not a Verdict


class NotQuarantined(UserError):
    """The agent is not quarantined: there is nothing to release."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of the audit trail: a guard decision on a tool call (or a quarantine's release).

    Attributes:
        id: unique id.
        time: when it was decided (UTC).
        run_id: the run.
        agent: the agent.
        tool: the tool called.
        call_id: the model's id for the call.
        decision: the verdict (``allowed``, ``denied``, ``needs_approval``, ``approved``, ``rejected``), or
            ``released`` for a person releasing a quarantine.
        reason: why, scrubbed of secrets.
        rule: the policy rule that decided, if one did.
        arguments: the call's arguments as sorted-keys JSON, scrubbed and capped.
        trace_id: the tool span's trace id (hex), when the span was recorded.
        span_id: the tool span's id (hex).
    """

    id: str
    time: datetime
    run_id: str
    agent: str
    tool: str
    call_id: str
    decision: str
    reason: str
    rule: str | None
    arguments: str | None
    trace_id: str | None
    span_id: str | None

    def to_dict(self) -> dict[str, object]:
        """Plain JSON values."""
        return {
            "id": self.id,
            "time": self.time.isoformat(),
            "run_id": self.run_id,
            "agent": self.agent,
            "tool": self.tool,
            "call_id": self.call_id,
            "decision": self.decision,
            "reason": self.reason,
            "rule": self.rule,
            "arguments": self.arguments,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
        }


@dataclass(frozen=True, slots=True)
class Incident:
    """A finding as stored: what was seen, in which run of which agent, and whether it still counts.

    Attributes:
        status: ``open`` (counts towards a quarantine) or ``released`` (its agent was released since).
    """

    id: str
    created_at: datetime
    severity: str
    kind: str
    run_id: str
    agent: str
    tool: str | None
    summary: str
    evidence: str | None
    trace_id: str | None
    span_id: str | None
    status: str

    def to_dict(self) -> dict[str, object]:
        """Plain JSON values."""
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "severity": self.severity,
            "kind": self.kind,
            "run_id": self.run_id,
            "agent": self.agent,
            "tool": self.tool,
            "summary": self.summary,
            "evidence": self.evidence,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "status": self.status,
        }


@dataclass(frozen=True, slots=True)
class Quarantine:
    """An agent's quarantine: while active, its write and irreversible tools are denied."""

    agent: str
    reason: str
    since: datetime
    released_at: datetime | None
    released_by: str | None

    @property
    def active(self) -> bool:
        return self.released_at is None

    def to_dict(self) -> dict[str, object]:
        """Plain JSON values."""
        return {
            "agent": self.agent,
            "reason": self.reason,
            "since": self.since.isoformat(),
            "active": self.active,
            "released_at": self.released_at.isoformat() if self.released_at else None,
            "released_by": self.released_by,
        }


@dataclass(frozen=True, slots=True)
class Release:
    """What ``release`` did: the quarantine as it is now, and how many open incidents stopped counting."""

    quarantine: Quarantine
    incidents_released: int
    reason: str

    def to_dict(self) -> dict[str, object]:
        """Plain JSON values."""
        return {**self.quarantine.to_dict(), "incidents_released": self.incidents_released, "reason": self.reason}


# --- helpers ------------------------------------------------------------------------------------------------


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _ns_to_datetime(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1_000)


def _datetime_to_ns(moment: datetime) -> int:
    return (_utc(moment) - _EPOCH) // timedelta(microseconds=1) * 1_000


def _text(value: str, limit: int | None = None) -> str:
    # PostgreSQL text cannot hold NUL: one such character must not poison a whole batch.
    if "\x00" in value:
        value = value.replace("\x00", "")
    if limit is not None and len(value) > limit:
        value = value[: limit - 1] + "…"
    return value


def _window_text(seconds: float) -> str:
    """``the last hour``, ``the last 10 minutes``, ``the last 90 s``."""
    whole = round(seconds)
    if whole == 3_600:
        return "the last hour"
    if whole == 86_400:
        return "the last day"
    if whole and whole % 3_600 == 0:
        return f"the last {whole // 3_600} hours"
    if whole == 60:
        return "the last minute"
    if whole and whole % 60 == 0:
        return f"the last {whole // 60} minutes"
    return f"the last {seconds:g} s"


def quarantine_reason(kinds: Sequence[str], window_s: float) -> str:
    """``3 incidents in the last hour: prompt_injection, hallucinated_tool (2)`` (kinds in order of first sight)."""
    counts: dict[str, int] = {}
    for kind in kinds:
        counts[kind] = counts.get(kind, 0) + 1
    listed = ", ".join(kind if n == 1 else f"{kind} ({n})" for kind, n in counts.items())
    return f"{len(kinds)} incidents in {_window_text(window_s)}: {listed}"


def _span_ids(span: Any) -> tuple[str | None, str | None]:
    """The span's trace and span ids in hex, or None for a span that is not recorded (or not a span)."""
    try:
        if span is None or not span.is_recording():
            return None, None
        context = span.get_span_context()
        if not context.is_valid:
            return None, None
        return format(context.trace_id, "032x"), format(context.span_id, "016x")
    except Exception:  # anything that is not an OpenTelemetry span: no ids, never an error in the run
        return None, None


def _json_arguments(arguments: Mapping[str, Any]) -> str:
    try:
        return orjson.dumps(
            dict(arguments), option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str
        ).decode()
    except (TypeError, orjson.JSONEncodeError):
        return orjson.dumps({"_unserializable": repr(arguments)}).decode()


def _cap_json(text: str) -> str:
    # Cut after scrubbing (a cut secret would no longer be recognised), and keep the column valid JSON.
    if len(text) <= _ARGUMENTS_CHARS:
        return text
    return orjson.dumps({"_truncated": text[: _ARGUMENTS_CHARS - 32]}).decode()


def _insert_or_ignore(table: Table, dialect_name: str) -> Insert:
    if dialect_name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=["id"])
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=["id"])


def _audit_from_row(row: RowMapping) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        time=_ns_to_datetime(int(row["time_ns"])),
        run_id=row["run_id"],
        agent=row["agent"],
        tool=row["tool"],
        call_id=row["call_id"],
        decision=row["decision"],
        reason=row["reason"],
        rule=row["rule"],
        arguments=row["arguments"],
        trace_id=row["trace_id"],
        span_id=row["span_id"],
    )


def _incident_from_row(row: RowMapping) -> Incident:
    return Incident(
        id=row["id"],
        created_at=_utc(row["created_at"]),
        severity=row["severity"],
        kind=row["kind"],
        run_id=row["run_id"],
        agent=row["agent"],
        tool=row["tool"],
        summary=row["summary"],
        evidence=row["evidence"],
        trace_id=row["trace_id"],
        span_id=row["span_id"],
        status=row["status"],
    )


def _quarantine_from_row(row: RowMapping) -> Quarantine:
    return Quarantine(
        agent=row["agent"],
        reason=row["reason"],
        since=_utc(row["since"]),
        released_at=_utc(row["released_at"]) if row["released_at"] is not None else None,
        released_by=row["released_by"],
    )


# --- the tables ---------------------------------------------------------------------------------------------


class GuardStore(StoreAccess):
    """The guard's tables (``guard_audit``, ``incidents``, ``quarantines``) in the store's database.

    The recorder writes through it from its threads; the CLI reads and releases through it.

    Args:
        store: a ``TraceStore`` or an ``Engine`` on a migrated database. The caller keeps ownership.
        clock: the current time (tests pass a fake one).
        scrubber: removes secrets from what is stored (the process-wide one by default).
    """

    def __init__(
        self,
        store: TraceStore | Engine,
        *,
        clock: Callable[[], datetime] | None = None,
        scrubber: Scrubber | None = None,
    ) -> None:
        super().__init__(store)
        self._clock = clock or (lambda: datetime.now(UTC))
        self.scrubber = scrubber or default_scrubber()

    def now(self) -> datetime:
        """The clock's time, in UTC."""
        return _utc(self._clock())

    @contextlib.contextmanager
    def _connect(self, action: str, *, write: bool = False) -> Iterator[Connection]:
        with super()._connect(action) as connection:
            if write:
                # IMMEDIATE: take SQLite's write lock up front, so a read-then-write is not overtaken.
                connection.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
            yield connection

    def _insert(self, table: Table, rows: Sequence[Mapping[str, object]], action: str, *, bulk: bool) -> None:
        """Insert-or-ignore ``rows``; ``bulk``: SQLite's multi-row path, for tables of plain strings and numbers.

        The multi-row path hands values to the driver as they are, without SQLAlchemy's type processing: a
        datetime would be stored in the driver's format, not the one queries compare against.
        """
        if not rows:
            return
        with self._connect(action, write=True) as connection, connection.begin():
            statement = _insert_or_ignore(table, connection.dialect.name)
            if bulk and connection.dialect.name == "sqlite":
                compiled = statement.compile(dialect=connection.dialect, column_keys=[c.name for c in table.columns])
                names = tuple(compiled.positiontup or ())
                insert_rows(connection, compiled.string, len(names), [tuple(r[n] for n in names) for r in rows])
            else:
                connection.execute(statement, [dict(r) for r in rows])

    # -- writing -------------------------------------------------------------------------------------------

    def write_audit(self, rows: Sequence[Mapping[str, object]]) -> None:
        """Insert audit rows (every column of ``guard_audit``); rows already stored (same id) are skipped.

        Raises:
            StoreError: the database failed.
        """
        self._insert(guard_audit, rows, "writing the guard's audit", bulk=True)

    def write_incidents(self, rows: Sequence[Mapping[str, object]]) -> None:
        """Insert incident rows (every column of ``incidents``); rows already stored are skipped.

        Raises:
            StoreError: the database failed.
        """
        self._insert(incidents, rows, "writing incidents", bulk=False)

    def quarantine_if_due(self, agent: str, *, after: int, window_s: float) -> Quarantine | None:
        """Quarantine ``agent`` if its counted incidents in the store have reached ``after`` within the window.

        Counted: open incidents of severity medium or high created within ``window_s`` and after the agent's
        latest release. Call it after the incidents are committed (see the module's docstring).

        Returns:
            The agent's active quarantine (made now or earlier), or None.

        Raises:
            StoreError: the database failed.
        """
        now = self.now()
        with self._connect("checking quarantine", write=True) as connection, connection.begin():
            current = self._quarantine(connection, agent)
            if current is not None and current.active:
                return current
            if after < 1:
                return None
            counted = [
                incidents.c.agent == agent,
                incidents.c.status == OPEN,
                incidents.c.severity.in_(COUNTED_SEVERITIES),
                incidents.c.created_at >= now - timedelta(seconds=window_s),
            ]
            if current is not None and current.released_at is not None:
                counted.append(incidents.c.created_at > current.released_at)
            kinds = list(
                connection.execute(
                    select(incidents.c.kind).where(*counted).order_by(incidents.c.created_at, incidents.c.id)
                ).scalars()
            )
            if len(kinds) < after:
                return None
            values = {
                "reason": _text(quarantine_reason(kinds, window_s), _REASON_CHARS),
                "since": now,
                "released_at": None,
                "released_by": None,
            }
            dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
            statement = (
                dialect.insert(quarantines)
                .values(agent=agent, **values)
                # Only a released row is re-opened: a quarantine decided meanwhile elsewhere stays as it is.
                .on_conflict_do_update(
                    index_elements=["agent"], set_=values, where=quarantines.c.released_at.is_not(None)
                )
            )
            connection.execute(statement)
            return self._quarantine(connection, agent)

    def release(self, agent: str, *, by: str, reason: str = "") -> Release:
        """Release a quarantined agent: its write and irreversible tools are allowed again.

        Its open incidents are marked ``released`` so they never count again, and the release (who, why) is
        kept in the audit table as a ``released`` entry.

        Raises:
            NotQuarantined: the agent is not quarantined (never was, or was released already).
            StoreError: the database failed.
        """
        now = self.now()
        why = _text(self.scrubber.scrub(" ".join(reason.split())), _REASON_CHARS)
        with self._connect("releasing a quarantine", write=True) as connection, connection.begin():
            current = self._quarantine(connection, agent)
            changed = connection.execute(
                update(quarantines)
                .where(quarantines.c.agent == agent, quarantines.c.released_at.is_(None))
                .values(released_at=now, released_by=by)
            ).rowcount
            if changed != 1:
                # Never quarantined, released already, or released by someone else a moment ago.
                raise NotQuarantined(self._not_quarantined(agent, self._quarantine(connection, agent)))
            assert current is not None
            released = connection.execute(
                update(incidents).where(incidents.c.agent == agent, incidents.c.status == OPEN).values(status=RELEASED)
            ).rowcount
            connection.execute(
                guard_audit.insert().values(
                    id=uuid.uuid4().hex,
                    time_ns=_datetime_to_ns(now),
                    run_id="-",
                    agent=agent,
                    tool="*",
                    call_id="-",
                    decision=_RELEASE_DECISION,
                    reason=_text(
                        f"quarantine released by {by}{f': {why}' if why else ''} (was: {current.reason})",
                        _REASON_CHARS,
                    ),
                    rule="quarantine",
                    arguments=None,
                    trace_id=None,
                    span_id=None,
                )
            )
            after = self._quarantine(connection, agent)
        assert after is not None
        return Release(after, int(released), why)

    @staticmethod
    def _not_quarantined(agent: str, current: Quarantine | None) -> str:
        if current is None or current.released_at is None:
            return (
                f"agent {agent!r} is not quarantined, so there is nothing to release: "
                "`tether incidents list` shows the quarantined agents"
            )
        return (
            f"agent {agent!r} is not quarantined: it was released by {current.released_by or 'someone'} at "
            f"{current.released_at:%Y-%m-%d %H:%M:%S} UTC — nothing to release"
        )

    # -- reading -------------------------------------------------------------------------------------------

    @staticmethod
    def _quarantine(connection: Connection, agent: str) -> Quarantine | None:
        row = connection.execute(select(quarantines).where(quarantines.c.agent == agent)).mappings().one_or_none()
        return _quarantine_from_row(row) if row is not None else None

    def quarantine(self, agent: str) -> Quarantine | None:
        """The agent's quarantine row (active or released), or None if it was never quarantined."""
        with self._connect("reading a quarantine") as connection:
            return self._quarantine(connection, agent)

    def quarantines(self, *, active_only: bool = True) -> list[Quarantine]:
        """Quarantines, newest first; only the active ones by default."""
        query = select(quarantines).order_by(quarantines.c.since.desc(), quarantines.c.agent)
        if active_only:
            query = query.where(quarantines.c.released_at.is_(None))
        with self._connect("reading quarantines") as connection:
            return [_quarantine_from_row(row) for row in connection.execute(query).mappings()]

    def incidents(self, *, agent: str | None = None, status: str | None = OPEN, limit: int = 100) -> list[Incident]:
        """Incidents, newest first; open ones by default (``status=None``: all)."""
        query = select(incidents).order_by(incidents.c.created_at.desc(), incidents.c.id.desc()).limit(limit)
        if agent is not None:
            query = query.where(incidents.c.agent == agent)
        if status is not None:
            query = query.where(incidents.c.status == status)
        with self._connect("reading incidents") as connection:
            return [_incident_from_row(row) for row in connection.execute(query).mappings()]

    def audit(self, *, run_id: str | None = None, agent: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The latest audit entries, newest first, of one run and/or agent (or all)."""
        query = select(guard_audit).order_by(guard_audit.c.time_ns.desc(), guard_audit.c.id.desc()).limit(limit)
        if run_id is not None:
            query = query.where(guard_audit.c.run_id == run_id)
        if agent is not None:
            query = query.where(guard_audit.c.agent == agent)
        with self._connect("reading the guard's audit") as connection:
            return [_audit_from_row(row) for row in connection.execute(query).mappings()]


# --- the recorder -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Decided:
    """A decision as queued on the run's path; it becomes a row in the writer's thread."""

    id: str
    time_ns: int
    run_id: str
    agent: str
    tool: str
    call_id: str
    decision: str
    reason: str
    rule: str | None
    arguments: str  # serialised on the run's path: the audit keeps the arguments as they were when decided
    trace_id: str | None
    span_id: str | None


@dataclass(frozen=True, slots=True)
class _Found:
    """A finding as queued on the run's path."""

    id: str
    created_at: datetime
    run_id: str
    agent: str
    tool: str | None
    finding: Finding
    trace_id: str | None
    span_id: str | None

    @property
    def counted(self) -> bool:
        return self.finding.severity in COUNTED_SEVERITIES


class _AuditSink:
    """Scrubs decisions into ``guard_audit`` rows in the writer's thread."""

    def __init__(self, store: GuardStore, scrubber: Scrubber) -> None:
        self.store = store
        self.scrubber = scrubber

    @property
    def url(self) -> str:
        return self.store.url

    def write_rows(self, entries: Sequence[_Decided], /) -> None:
        scrub = self.scrubber.scrub
        self.store.write_audit(
            [
                {
                    "id": e.id,
                    "time_ns": e.time_ns,
                    "run_id": _text(e.run_id),
                    "agent": _text(e.agent),
                    "tool": _text(e.tool),
                    "call_id": _text(e.call_id),
                    "decision": e.decision[:24],
                    "reason": _text(scrub(e.reason), _REASON_CHARS),
                    "rule": _text(e.rule) if e.rule is not None else None,
                    "arguments": _text(_cap_json(scrub(e.arguments))),
                    "trace_id": e.trace_id,
                    "span_id": e.span_id,
                }
                for e in entries
            ]
        )


class _IncidentSink:
    """Stores incidents, then decides quarantines from the store's count (in the writer's thread)."""

    def __init__(self, recorder: StoreGuardRecorder) -> None:
        self.recorder = recorder

    @property
    def url(self) -> str:
        return self.recorder.store.url

    def write_rows(self, entries: Sequence[_Found], /) -> None:
        recorder = self.recorder
        scrub = recorder.scrubber.scrub
        rows = [
            {
                "id": e.id,
                "created_at": e.created_at,
                # Bounded columns: a value too long for PostgreSQL's VARCHAR would fail the batch forever.
                "severity": e.finding.severity[:8],
                "kind": _text(e.finding.kind)[:32],
                "run_id": _text(e.run_id),
                "agent": _text(e.agent),
                "tool": _text(e.tool) if e.tool is not None else None,
                "summary": _text(scrub(e.finding.message), _SUMMARY_CHARS),
                "evidence": _text(scrub(e.finding.evidence), _EVIDENCE_CHARS) or None,
                "trace_id": e.trace_id,
                "span_id": e.span_id,
                "status": OPEN,
            }
            for e in entries
        ]
        # First commit the incidents, then count in a new transaction: see the module's docstring. A failure
        # of either step raises, the whole batch is retried, and the insert-or-ignore makes the retry harmless.
        recorder.store.write_incidents(rows)
        policy = recorder.policy
        for agent in dict.fromkeys(e.agent for e in entries if e.counted):
            found = recorder.store.quarantine_if_due(
                agent, after=policy.quarantine_after, window_s=policy.quarantine_window_s
            )
            recorder._settled(agent, found, {e.id for e in entries if e.agent == agent})


class StoreGuardRecorder:
    """The guard's recorder on the store: audit rows, incidents, and quarantine shared by every process.

    ``decision`` and ``finding`` only queue (they never block and never raise); ``quarantined`` answers
    from memory. See the module's docstring for how rows are written and how fresh the answers are.

    Args:
        store: a ``TraceStore``, an ``Engine`` on a migrated database, or a ``GuardStore``.
        policy: the guard's policy (``quarantine_after``, ``quarantine_window_s``).
        clock: the current time (tests pass a fake one).
        refresh_s: how often the quarantines are re-read from the store.
        scrubber: removes secrets from what is stored (the process-wide one by default).

    With a ``GuardStore``, its clock is the recorder's and ``clock`` is not used.
    """

    def __init__(
        self,
        store: TraceStore | Engine | GuardStore,
        policy: Policy,
        *,
        clock: Callable[[], datetime] | None = None,
        refresh_s: float = DEFAULT_REFRESH_S,
        scrubber: Scrubber | None = None,
    ) -> None:
        if not refresh_s > 0:
            raise ValueError(f"refresh_s must be > 0, got {refresh_s}")
        self.store = store if isinstance(store, GuardStore) else GuardStore(store, clock=clock, scrubber=scrubber)
        self.policy = policy
        self.scrubber = scrubber or self.store.scrubber
        self.refresh_s = refresh_s
        self._window = timedelta(seconds=policy.quarantine_window_s)
        self._lock = threading.Lock()
        self._last_ns = 0
        # What the store says (agent -> reason), replaced whole by each refresh; read without a lock.
        self._quarantined: dict[str, str] = {}
        # Quarantines this process decided from its own count, until the writer has settled them in the store:
        # agent -> (reason, id of the incident that crossed the threshold).
        self._pending: dict[str, tuple[str, str]] = {}
        # This process's counted incidents per agent (time, kind), newest last.
        self._recent: dict[str, deque[tuple[datetime, str]]] = {}
        self._released: dict[str, datetime] = {}
        self._changes = 0  # bumped whenever the writer or a release changes _quarantined
        self._loaded = threading.Event()
        self._refresh_lock = threading.Lock()
        self._refresh_failing = False
        self._stopped = threading.Event()
        self._audit: RowWriter[_Decided] = RowWriter(
            _AuditSink(self.store, self.scrubber), what="guard audit rows", batch_size=500, max_buffer=100_000
        )
        # batch_size=1: every incident wakes the writer at once, so other processes learn of a quarantine soon.
        self._incidents: RowWriter[_Found] = RowWriter(
            _IncidentSink(self), what="incidents", batch_size=1, max_buffer=100_000
        )
        self._refresher = threading.Thread(target=self._refresh_loop, name="tether-quarantine-refresh", daemon=True)
        self._refresher.start()

    def __repr__(self) -> str:
        return f"StoreGuardRecorder({self.store.url!r})"

    # -- the GuardRecorder protocol (the run's path) ---------------------------------------------------------

    def _stamp(self) -> int:
        """Now in nanoseconds, strictly increasing by at least 1 µs per call (so rows keep their order)."""
        with self._lock:
            now = _datetime_to_ns(self.store.now())
            self._last_ns = max(now, self._last_ns + 1_000)
            return self._last_ns

    def decision(
        self, run: RunGuard, tool: str, call_id: str, arguments: Mapping[str, Any], decision: Decision, span: Any
    ) -> None:
        """Queue the decision's audit row; returns at once and never raises."""
        try:
            trace_id, span_id = _span_ids(span)
            self._audit.add(
                _Decided(
                    id=uuid.uuid4().hex,
                    time_ns=self._stamp(),
                    run_id=run.run_id,
                    agent=run.agent,
                    tool=tool,
                    call_id=call_id,
                    decision=str(decision.verdict.value),
                    reason=decision.reason,
                    rule=decision.rule,
                    arguments=_json_arguments(arguments),
                    trace_id=trace_id,
                    span_id=span_id,
                )
            )
        except Exception:  # the audit must never break the run it audits
            logger.warning("tether: a guard decision could not be queued for the audit", exc_info=True)

    def finding(self, run: RunGuard, tool: str | None, finding: Finding, span: Any) -> None:
        """Queue an incident; on the finding that crosses the threshold, quarantine the agent here at once."""
        try:
            trace_id, span_id = _span_ids(span)
            entry = _Found(
                id=uuid.uuid4().hex,
                created_at=_ns_to_datetime(self._stamp()),
                run_id=run.run_id,
                agent=run.agent,
                tool=tool,
                finding=finding,
                trace_id=trace_id,
                span_id=span_id,
            )
            if entry.counted:
                self._count(entry)
            self._incidents.add(entry)
        except Exception:
            logger.warning("tether: a guard finding could not be queued as an incident", exc_info=True)

    def quarantined(self, agent: str) -> str | None:
        """Why the agent is quarantined, or None — from memory (the first call may read the store once)."""
        if not self._loaded.is_set():
            self._refresh(first=True)
        pending = self._pending.get(agent)
        return pending[0] if pending is not None else self._quarantined.get(agent)

    # -- counting and settling -------------------------------------------------------------------------------

    def _count(self, entry: _Found) -> None:
        after = self.policy.quarantine_after
        agent = entry.agent
        with self._lock:
            recent = self._recent.setdefault(agent, deque())
            recent.append((entry.created_at, entry.finding.kind))
            self._prune(agent, recent, entry.created_at)
            if after < 1 or len(recent) < after or agent in self._pending or agent in self._quarantined:
                return
            reason = quarantine_reason([kind for _, kind in recent], self.policy.quarantine_window_s)
            self._pending[agent] = (reason, entry.id)

    def _prune(self, agent: str, recent: deque[tuple[datetime, str]], now: datetime) -> None:
        """Drop incidents out of the window or from before the agent's latest release (call with the lock)."""
        oldest = now - self._window
        released = self._released.get(agent)
        while recent and (recent[0][0] < oldest or (released is not None and recent[0][0] <= released)):
            recent.popleft()

    def _settled(self, agent: str, found: Quarantine | None, ids: set[str]) -> None:
        """The writer's answer for ``agent`` after storing incidents ``ids``: the store's view wins."""
        with self._lock:
            quarantined = dict(self._quarantined)
            if found is not None and found.active:
                quarantined[agent] = found.reason
            else:
                quarantined.pop(agent, None)
            self._quarantined = quarantined
            self._changes += 1
            pending = self._pending.get(agent)
            if pending is not None and pending[1] in ids:
                del self._pending[agent]

    # -- refreshing ------------------------------------------------------------------------------------------

    def _refresh_loop(self) -> None:
        while not self._stopped.is_set():
            self._refresh()
            self._stopped.wait(self.refresh_s)

    def _refresh(self, *, first: bool = False) -> None:
        """Re-read the quarantines; on failure keep what is known (one warning per outage).

        ``first``: only if no read has finished yet (the first ``quarantined`` call, racing the thread's read).
        """
        with self._refresh_lock:
            if first and self._loaded.is_set():
                return
            with self._lock:
                changes = self._changes
            try:
                rows = self.store.quarantines(active_only=False)
            except Exception as exc:
                if not self._refresh_failing:
                    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
                    logger.warning("tether: quarantines not refreshed, the last known ones apply: %s", reason)
                self._refresh_failing = True
                return
            finally:
                self._loaded.set()
            if self._refresh_failing:
                self._refresh_failing = False
                logger.info("tether: quarantines at %s are being read again", self.store.url)
            with self._lock:
                for q in rows:
                    if q.released_at is not None:
                        self._released[q.agent] = q.released_at
                for agent, recent in self._recent.items():
                    self._prune(agent, recent, self.store.now())
                # A quarantine the writer or a release settled during the read wins over this older read.
                if changes == self._changes:
                    self._quarantined = {q.agent: q.reason for q in rows if q.active}

    # -- for people and tests ----------------------------------------------------------------------------------

    def release(self, agent: str, *, by: str, reason: str = "") -> Release:
        """Release a quarantined agent (see ``GuardStore.release``); effective here at once.

        Incidents this process still has queued are stored first, so a quarantine they cause is released too.

        Raises:
            NotQuarantined: the agent is not quarantined.
            StoreError: the database failed.
        """
        self._incidents.flush()
        done = self.store.release(agent, by=by, reason=reason)
        with self._lock:
            self._quarantined = {a: r for a, r in self._quarantined.items() if a != agent}
            self._changes += 1
            self._pending.pop(agent, None)
            self._recent.pop(agent, None)
            if done.quarantine.released_at is not None:
                self._released[agent] = done.quarantine.released_at
        return done

    def audit(self, *, run_id: str | None = None, agent: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The latest audit entries, newest first (rows this process still has queued are written first)."""
        self._audit.flush()
        return self.store.audit(run_id=run_id, agent=agent, limit=limit)

    def incidents(self, *, agent: str | None = None, status: str | None = OPEN, limit: int = 100) -> list[Incident]:
        """Incidents, newest first (this process's queued ones are written first)."""
        self._incidents.flush()
        return self.store.incidents(agent=agent, status=status, limit=limit)

    def refresh(self) -> None:
        """Re-read the quarantines now, instead of waiting for the background refresh."""
        self._refresh()

    @property
    def pending(self) -> int:
        """Audit rows and incidents queued and not stored yet."""
        return self._audit.pending + self._incidents.pending

    def flush(self) -> bool:
        """Store everything queued now; False if the database could not take it (it stays queued)."""
        incidents_ok = self._incidents.flush()
        return self._audit.flush() and incidents_ok

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the threads after storing what is queued; later decisions and findings are dropped."""
        self._stopped.set()
        self._incidents.shutdown(timeout_s)
        self._audit.shutdown(timeout_s)
        self._refresher.join(timeout=timeout_s)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
