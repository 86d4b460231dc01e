"""``GuardStore``: the guard's tables (``guard_audit``, ``incidents``, ``quarantines``) in the store."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite

from tether.guard.audit.entry import AuditEntry
from tether.guard.audit.incident import COUNTED_SEVERITIES, OPEN, RELEASED, Incident
from tether.guard.audit.quarantine import NotQuarantined, Quarantine, Release, quarantine_reason
from tether.guard.audit.rows import (
    _REASON_CHARS,
    _RELEASE_DECISION,
    _audit_from_row,
    _datetime_to_ns,
    _incident_from_row,
    _insert_or_ignore,
    _quarantine_from_row,
    _text,
    _utc,
)
from tether.redaction import Scrubber, default_scrubber
from tether.store.access import StoreAccess
from tether.store.bulk import insert_rows
from tether.store.engine import SQLITE_BEGIN
from tether.store.schema import guard_audit, incidents, quarantines

if TYPE_CHECKING:
    from tether.store import TraceStore


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
        latest release. Call it after the incidents are committed (see the docstring of tether.guard.audit).

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
