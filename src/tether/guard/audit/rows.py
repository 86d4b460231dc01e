"""Between the guard's records and their table rows: text limits, times, and rows read back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import Insert, RowMapping, Table
from sqlalchemy.dialects import postgresql, sqlite

from tether.guard.audit.entry import AuditEntry
from tether.guard.audit.incident import Incident
from tether.guard.audit.quarantine import Quarantine

_ARGUMENTS_CHARS: Final = 4_096
_REASON_CHARS: Final = 2_000
_SUMMARY_CHARS: Final = 1_000
_EVIDENCE_CHARS: Final = 2_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_RELEASE_DECISION: Final = "released"  # the audit row of a release: not a tool call, so not a Verdict


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
