"""Schema migrations: an ordered, append-only list, applied once each and recorded.

Rules:

* **Never edit or remove a migration once it has been released.** Databases
  out there have already applied it; to change the schema, append a new
  migration with the next version number.
* A migration's function defines, inline, the tables as they were *at that
  version* and never imports ``tether.store.schema``: the schema module shows
  the latest shape, and building an old migration from it would create
  columns a later migration then fails to add.
* ``tether.store.schema`` must describe the database after the last migration;
  a test compares the two.

``migrate`` applies each pending migration in its own transaction, together
with its row in ``schema_migrations``, so a failed migration leaves nothing
behind (both SQLite and PostgreSQL have transactional DDL). Two processes that
open the same new database at once must not both apply a migration: each
transaction first takes a database-wide lock (SQLite: ``BEGIN IMMEDIATE``;
PostgreSQL: a transaction-scoped advisory lock), then re-reads what is applied.
The loser of the race waits, then finds nothing left to do.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    inspect,
    select,
    text,
)

from tether.errors import StoreError
from tether.store.engine import SQLITE_BEGIN
from tether.store.schema import schema_migrations

__all__ = ["MIGRATIONS", "Migration", "applied_versions", "migrate"]

# PostgreSQL advisory locks are keyed by a bigint, shared by the whole database.
_PG_LOCK_KEY: Final = zlib.crc32(b"tether.store.migrations")


@dataclass(frozen=True)
class Migration:
    """One schema change.

    Attributes:
        version: its position in the list, from 1, without gaps.
        name: a short description, recorded in ``schema_migrations``.
        apply: runs the change on a connection inside an open transaction.
    """

    version: int
    name: str
    apply: Callable[[Connection], None]


def _m0001_create_spans(connection: Connection) -> None:
    metadata = MetaData()
    run_id = Text().with_variant(Text(collation="C"), "postgresql")
    Table(
        "spans",
        metadata,
        Column("trace_id", String(32), primary_key=True),
        Column("span_id", String(16), primary_key=True),
        Column("parent_span_id", String(16)),
        Column("run_id", run_id),
        Column("name", Text, nullable=False),
        Column("operation", Text),
        Column("start_ns", BigInteger, nullable=False),
        Column("end_ns", BigInteger, nullable=False),
        Column("duration_ns", BigInteger, nullable=False),
        Column("status", String(8), nullable=False),
        Column("status_message", Text),
        Column("attributes", Text, nullable=False),
        Column("events", Text, nullable=False),
        Column("agent_name", Text),
        Column("request_model", Text),
        Column("tool_name", Text),
        Column("input_tokens", BigInteger),
        Column("output_tokens", BigInteger),
        Column("cache_read_tokens", BigInteger),
        Column("cache_write_tokens", BigInteger),
        Column("cost_usd", Double),
        Column("stop_reason", Text),
        Column("simulated", Boolean),
        Index("ix_spans_run_id", "run_id"),
        Index("ix_spans_operation_start_ns", "operation", "start_ns"),
    )
    metadata.create_all(connection)


def _m0002_create_budgets(connection: Connection) -> None:
    metadata = MetaData()
    Table(
        "budget_usage",
        metadata,
        Column("scope", Text, primary_key=True),
        Column("period", String(16), primary_key=True),
        Column("spent_nanousd", BigInteger, nullable=False),
        Column("reserved_nanousd", BigInteger, nullable=False),
        Column("spent_tokens", BigInteger, nullable=False),
        Column("reserved_tokens", BigInteger, nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    )
    Table(
        "budget_reservations",
        metadata,
        Column("id", String(32), primary_key=True),
        Column("scope", Text, primary_key=True),
        Column("period", String(16), nullable=False),
        Column("reserved_nanousd", BigInteger, nullable=False),
        Column("reserved_tokens", BigInteger, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Index("ix_budget_reservations_created_at", "created_at"),
    )
    metadata.create_all(connection)


def _m0003_create_keys_and_costs(connection: Connection) -> None:
    metadata = MetaData()
    Table(
        "virtual_keys",
        metadata,
        Column("id", String(32), primary_key=True),
        Column("name", Text, nullable=False),
        Column("prefix", String(16), nullable=False),
        Column("secret_hash", String(64), nullable=False),
        Column("routes", Text, nullable=False),
        Column("budget", Text),
        Column("rate_limit", Text),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("revoked_at", DateTime(timezone=True)),
        Index("ux_virtual_keys_name", "name", unique=True),
        Index("ux_virtual_keys_secret_hash", "secret_hash", unique=True),
    )
    Table(
        "costs",
        metadata,
        Column("id", String(32), primary_key=True),
        Column("time_ns", BigInteger, nullable=False),
        Column("day", String(10), nullable=False),
        Column("route", Text, nullable=False),
        Column("deployment", Text, nullable=False),
        Column("provider", Text, nullable=False),
        Column("model", Text, nullable=False),
        Column("agent", Text),
        Column("key", Text),
        Column("run_id", Text),
        Column("input_tokens", BigInteger, nullable=False),
        Column("output_tokens", BigInteger, nullable=False),
        Column("cache_read_tokens", BigInteger, nullable=False),
        Column("cache_write_tokens", BigInteger, nullable=False),
        Column("cost_nanousd", BigInteger),
        Column("price_version", Text, nullable=False),
        Index("ix_costs_day", "day"),
        Index("ix_costs_route_day", "route", "day"),
        Index("ix_costs_key_day", "key", "day"),
    )
    metadata.create_all(connection)


def _m0004_create_guard(connection: Connection) -> None:
    metadata = MetaData()
    Table(
        "guard_audit",
        metadata,
        Column("id", String(32), primary_key=True),
        Column("time_ns", BigInteger, nullable=False),
        Column("run_id", Text, nullable=False),
        Column("agent", Text, nullable=False),
        Column("tool", Text, nullable=False),
        Column("call_id", Text, nullable=False),
        Column("decision", String(24), nullable=False),
        Column("reason", Text, nullable=False),
        Column("rule", Text),
        Column("arguments", Text),
        Column("trace_id", String(32)),
        Column("span_id", String(16)),
        Index("ix_guard_audit_run", "run_id"),
        Index("ix_guard_audit_agent_time", "agent", "time_ns"),
    )
    Table(
        "approvals",
        metadata,
        Column("id", String(32), primary_key=True),
        Column("run_id", Text, nullable=False),
        Column("agent", Text, nullable=False),
        Column("tool", Text, nullable=False),
        Column("call_id", Text, nullable=False),
        Column("arguments", Text, nullable=False),
        Column("reason", Text, nullable=False),
        Column("context", Text, nullable=False),
        Column("status", String(16), nullable=False),
        Column("decided_by", Text),
        Column("decision_reason", Text),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        Column("decided_at", DateTime(timezone=True)),
        Index("ix_approvals_status", "status"),
        Index("ux_approvals_call", "run_id", "call_id", unique=True),
    )
    Table(
        "tool_ledger",
        metadata,
        Column("idempotency_key", Text, primary_key=True),
        Column("run_id", Text, nullable=False),
        Column("agent", Text, nullable=False),
        Column("tool", Text, nullable=False),
        Column("arguments_hash", String(64), nullable=False),
        Column("state", String(16), nullable=False),
        Column("output", Text),
        Column("is_error", Boolean),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        Index("ix_tool_ledger_run", "run_id"),
    )
    Table(
        "checkpoints",
        metadata,
        Column("run_id", Text, primary_key=True),
        Column("agent", Text, nullable=False),
        Column("status", String(16), nullable=False),
        Column("state", Text, nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        Index("ix_checkpoints_status", "status"),
    )
    Table(
        "kills",
        metadata,
        Column("id", String(32), primary_key=True),
        Column("target_kind", String(8), nullable=False),
        Column("target", Text, nullable=False),
        Column("reason", Text, nullable=False),
        Column("requested_by", Text),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Index("ix_kills_created_at", "created_at"),
    )
    Table(
        "incidents",
        metadata,
        Column("id", String(32), primary_key=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("severity", String(8), nullable=False),
        Column("kind", String(32), nullable=False),
        Column("run_id", Text, nullable=False),
        Column("agent", Text, nullable=False),
        Column("tool", Text),
        Column("summary", Text, nullable=False),
        Column("evidence", Text),
        Column("trace_id", String(32)),
        Column("span_id", String(16)),
        Column("status", String(16), nullable=False),
        Index("ix_incidents_agent", "agent", "created_at"),
        Index("ix_incidents_status", "status"),
    )
    Table(
        "quarantines",
        metadata,
        Column("agent", Text, primary_key=True),
        Column("reason", Text, nullable=False),
        Column("since", DateTime(timezone=True), nullable=False),
        Column("released_at", DateTime(timezone=True)),
        Column("released_by", Text),
    )
    metadata.create_all(connection)


def _m0005_create_evals(connection: Connection) -> None:
    metadata = MetaData()
    Table(
        "eval_runs",
        metadata,
        Column("eval_id", String(32), primary_key=True),
        Column("suite", Text, nullable=False),
        Column("suite_fingerprint", String(64), nullable=False),
        Column("agent_version", Text, nullable=False),
        Column("trials", Integer, nullable=False),
        Column("seed", BigInteger, nullable=False),
        Column("status", String(16), nullable=False),
        Column("budget_nanousd", BigInteger),
        Column("config", Text, nullable=False),
        Column("started_at", DateTime(timezone=True), nullable=False),
        Column("finished_at", DateTime(timezone=True)),
        Index("ix_eval_runs_suite", "suite", "agent_version", "started_at"),
    )
    Table(
        "eval_trials",
        metadata,
        Column("eval_id", String(32), primary_key=True),
        Column("case_id", Text, primary_key=True),
        Column("trial", Integer, primary_key=True),
        Column("status", String(16), nullable=False),
        Column("score", Double),
        Column("checks", Text, nullable=False),
        Column("tags", Text, nullable=False),
        Column("run_id", Text),
        Column("trace_id", String(32)),
        Column("stop_reason", String(32)),
        Column("model", Text),
        Column("cost_nanousd", BigInteger),
        Column("judge_cost_nanousd", BigInteger),
        Column("duration_s", Double, nullable=False),
        Column("tokens", BigInteger, nullable=False),
        Column("facts", Text, nullable=False),
        Column("error", Text),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    metadata.create_all(connection)


def _m0006_key_approvals_by_decision(connection: Connection) -> None:
    # An approval was keyed by (run, call id), so the review of a call whose outcome is unknown found
    # the call's first approval, already approved, and the call ran again. Now each decision is a row:
    # (run, turn, call id, attempt), attempt 0 the call's first approval, n the review of ledger attempt n.
    # Rows from before have turn 0, which no request of the agent (turns count from 1) matches: a call
    # approved before the upgrade but not yet run is asked about again, never run on an ambiguous match.
    for statement in (
        "ALTER TABLE approvals ADD COLUMN turn INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE approvals ADD COLUMN purpose VARCHAR(16) NOT NULL DEFAULT 'call'",
        "ALTER TABLE approvals ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0",
        "DROP INDEX ux_approvals_call",
        "CREATE UNIQUE INDEX ux_approvals_decision ON approvals (run_id, turn, call_id, attempt)",
        # Existing ledger rows are their call's first attempt.
        "ALTER TABLE tool_ledger ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1",
    ):
        connection.execute(text(statement))


def _m0007_add_key_scopes(connection: Connection) -> None:
    # Every key made before scopes existed called models: it stays a model key, and admin keys are
    # only ever created explicitly (tether keys create NAME --admin).
    connection.execute(text("ALTER TABLE virtual_keys ADD COLUMN scope TEXT NOT NULL DEFAULT 'model'"))


def _m0008_create_runs_and_workers(connection: Connection) -> None:
    # The runs table is the record of every submitted run (the bus only carries work); times are
    # milliseconds by the database's clock, lease_token is the fencing token a claim moves on by one.
    metadata = MetaData()
    Table(
        "runs",
        metadata,
        Column("run_id", Text().with_variant(Text(collation="C"), "postgresql"), primary_key=True),
        Column("agent", Text, nullable=False),
        Column("task", Text, nullable=False),
        Column("status", String(16), nullable=False),
        Column("submitted_ms", BigInteger, nullable=False),
        Column("enqueued_ms", BigInteger),
        Column("started_ms", BigInteger),
        Column("finished_ms", BigInteger),
        Column("lease_owner", Text),
        Column("lease_token", BigInteger, nullable=False),
        Column("lease_expires_ms", BigInteger),
        Column("deliveries", Integer, nullable=False),
        Column("failures", Integer, nullable=False),
        Column("stream_id", Text),
        Column("parent_run_id", Text),
        Column("root_run_id", Text, nullable=False),
        Column("depth", Integer, nullable=False),
        Column("call_id", Text),
        Column("headers", Text, nullable=False),
        Column("options", Text, nullable=False),
        Column("stop_reason", String(32)),
        Column("output", Text),
        Column("error", Text),
        Column("cost_nanousd", BigInteger),
        Column("tokens", BigInteger),
        Column("worker", Text),
        Column("parked_on", String(32)),
        Column("dead_reason", Text),
        Index("ix_runs_status_submitted", "status", "submitted_ms"),
        Index("ix_runs_root", "root_run_id"),
        Index("ix_runs_parent", "parent_run_id"),
        Index("ix_runs_agent_status", "agent", "status"),
    )
    Table(
        "workers",
        metadata,
        Column("worker_id", Text, primary_key=True),
        Column("host", Text, nullable=False),
        Column("pid", Integer, nullable=False),
        Column("started_ms", BigInteger, nullable=False),
        Column("heartbeat_ms", BigInteger, nullable=False),
        Column("concurrency", Integer, nullable=False),
        Column("running", Text, nullable=False),
        Column("agents", Text, nullable=False),
        Column("status", String(16), nullable=False),
    )
    metadata.create_all(connection)


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "create spans", _m0001_create_spans),
    Migration(2, "create budgets", _m0002_create_budgets),
    Migration(3, "create virtual keys and costs", _m0003_create_keys_and_costs),
    Migration(4, "create guard audit, approvals, tool ledger, checkpoints, kills, incidents", _m0004_create_guard),
    Migration(5, "create eval runs and trials", _m0005_create_evals),
    Migration(6, "key approvals by decision (turn, attempt); ledger attempts", _m0006_key_approvals_by_decision),
    Migration(7, "add virtual key scopes", _m0007_add_key_scopes),
    Migration(8, "create runs and workers", _m0008_create_runs_and_workers),
)


def _check_order(migrations: Sequence[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migration versions must be 1, 2, 3… in order, got {versions}")


def applied_versions(connection: Connection) -> set[int]:
    """The versions recorded in ``schema_migrations`` (empty for a new database)."""
    if not inspect(connection).has_table(schema_migrations.name):
        return set()
    return set(connection.scalars(select(schema_migrations.c.version)))


def _refuse_newer(done: set[int], migrations: Sequence[Migration]) -> None:
    known = len(migrations)
    if done and max(done) > known:
        raise StoreError(
            f"the database is at schema version {max(done)} but this tether knows only up to {known}: "
            "upgrade tether, or point TETHER_DATABASE_URL at another database"
        )


@contextmanager
def _locked_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that no other process's ``migrate`` can run alongside."""
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            connection.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
        with connection.begin():
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            yield connection


def migrate(engine: Engine, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply the pending migrations, each in its own locked transaction.

    Args:
        engine: the database to migrate.
        migrations: the list to apply; tests pass their own.

    Returns:
        The versions applied by this call (empty when the database was up to date).

    Raises:
        StoreError: the database was migrated by a newer tether.
        sqlalchemy.exc.SQLAlchemyError: the database failed; callers translate it.
    """
    _check_order(migrations)
    # Fast path, no write lock: an up-to-date database is the common case.
    with engine.connect() as connection:
        done = applied_versions(connection)
    _refuse_newer(done, migrations)
    applied: list[int] = []
    for migration in migrations:
        if migration.version in done:
            continue
        with _locked_transaction(engine) as connection:
            schema_migrations.create(connection, checkfirst=True)
            done = applied_versions(connection)
            _refuse_newer(done, migrations)
            if migration.version in done:
                continue  # another process applied it while we waited for the lock
            migration.apply(connection)
            connection.execute(
                insert(schema_migrations).values(
                    version=migration.version, name=migration.name, applied_at=datetime.now(UTC)
                )
            )
        applied.append(migration.version)
    return applied
