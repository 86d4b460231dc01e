"""The store's tables as they are after the latest migration (SQLAlchemy Core).

Queries are written against these objects. The database itself is created and
changed only by ``tether.store.migrations``; a test checks that a migrated
database matches these definitions, so when a migration changes a table,
change it here too.

``spans`` is append-only: its primary key is ``(trace_id, span_id)`` and spans
are inserted with insert-or-ignore, so an OTLP re-send changes nothing. The
primary key's index also serves lookups by ``trace_id`` (its leading column),
so there is no separate ``trace_id`` index to slow down every insert.

Attributes and events are kept as JSON *text* on both SQLite and PostgreSQL,
not JSONB: the text is written once and read back whole, never queried into
(the fields queries filter on are copied into their own columns at write time);
text keeps the exact bytes tether wrote, costs PostgreSQL no parsing on the
ingest path, and accepts ``\\u0000`` in tool output, which JSONB rejects.

Denormalised columns hold the *span's own* attribute values: on a root
``invoke_agent`` span the token counts and cost are the run's totals, on a
``chat`` span those of one model call, so never sum them across a run.
``cost_usd`` is NULL when the span's ``tether.cost_known`` is False.

``budget_usage`` and ``budget_reservations`` are the gateway's budget ledger
(``tether.gateway.budget``): money is in integer **nano-dollars** (1e-9 USD), so
sums are exact and a BIGINT holds up to $9.2 billion.

``virtual_keys`` holds the proxy's virtual keys (``tether.gateway.keys``): only
the SHA-256 hash of each secret, never the secret. Uniqueness is by unique
*indexes* rather than constraints so that both databases report them alike.
``scope`` is ``model`` (calls routes) or ``admin`` (approvals, kills, incident
releases); keys made before migration 7 are ``model``.

``costs`` is the cost ledger (``tether.gateway.ledger``): one append-only row
per settled model call, ``cost_nanousd`` in nano-dollars and NULL when the
price is unknown (never 0). ``day`` is the call's UTC date (``2026-11-21``),
which the reports filter and group on.

``runs`` is the record of every submitted run (``tether.store.runs``): its
status, its lease (owner, expiry and the fencing token ``lease_token``, which
goes up by one with every claim) and its outcome. Its ``*_ms`` times are
milliseconds **by the database's clock**, so leases never depend on a worker's
clock; ``cost_nanousd`` is in nano-dollars; ``headers`` and ``options`` are JSON
text. ``workers`` holds one row per worker process, upserted by its heartbeat.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Double, Index, Integer, MetaData, String, Table, Text

__all__ = [
    "RUN_ID_TYPE",
    "approvals",
    "budget_reservations",
    "budget_usage",
    "checkpoints",
    "costs",
    "guard_audit",
    "incidents",
    "kills",
    "metadata",
    "quarantines",
    "runs",
    "schema_migrations",
    "spans",
    "tool_ledger",
    "virtual_keys",
    "workers",
]

metadata = MetaData()

# Run ids are matched by prefix with a range scan on the run_id index; that is
# only correct in byte order, which SQLite's default BINARY collation already
# is and PostgreSQL's "C" collation gives whatever the database's locale.
RUN_ID_TYPE = Text().with_variant(Text(collation="C"), "postgresql")

spans = Table(
    "spans",
    metadata,
    Column("trace_id", String(32), primary_key=True),
    Column("span_id", String(16), primary_key=True),
    Column("parent_span_id", String(16)),
    Column("run_id", RUN_ID_TYPE),
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

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", Text, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

# One row per budget scope (e.g. "route:support") and period ("2026-11-21", "2026-11", "all").
budget_usage = Table(
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

# One row per open reservation and scope it charged; deleted when settled or released.
budget_reservations = Table(
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

# One row per virtual key; revoked keys stay (revoked_at set) so their name keeps its history.
virtual_keys = Table(
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
    Column("scope", Text, nullable=False, server_default="model"),
    Index("ux_virtual_keys_name", "name", unique=True),
    Index("ux_virtual_keys_secret_hash", "secret_hash", unique=True),
)

# One row per settled model call; the id is made by the writer, so a re-sent batch changes nothing.
costs = Table(
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

# Every guard decision on a tool call (allowed, denied, needs approval, approved, rejected), append-only.
guard_audit = Table(
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

# Tool calls waiting for (or given) a person's decision; undecided ones expire to a denial.
approvals = Table(
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
    # One request per decision, not per call (migration 6): the first approval of the call in its turn
    # (attempt 0, purpose "call") and, for each ledger attempt n whose outcome is unknown, a review of
    # it (attempt n, purpose "unknown_outcome"). Turn 0: a request from before the turn was recorded.
    Column("turn", Integer, nullable=False, server_default="0"),
    Column("purpose", String(16), nullable=False, server_default="call"),
    Column("attempt", Integer, nullable=False, server_default="0"),
    Index("ix_approvals_status", "status"),
    Index("ux_approvals_decision", "run_id", "turn", "call_id", "attempt", unique=True),
)

# The exactly-once ledger of tool calls with effects: intent -> started -> done | failed | unknown.
tool_ledger = Table(
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
    # Which attempt at the call the state is about: a person's approval after an unknown outcome moves it on.
    Column("attempt", Integer, nullable=False, server_default="1"),
    Index("ix_tool_ledger_run", "run_id"),
)

# A paused (or running) run's state, so it resumes in any process without repeating a done call.
checkpoints = Table(
    "checkpoints",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("agent", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("state", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_checkpoints_status", "status"),
)

# Kill requests: a run, an agent's runs, or all runs; a run stops for any made after it started.
kills = Table(
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

# Findings of the guard's detectors and policy, with the run, agent and evidence.
incidents = Table(
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

# Agents whose write and irreversible tools are denied until released.
quarantines = Table(
    "quarantines",
    metadata,
    Column("agent", Text, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
    Column("released_at", DateTime(timezone=True)),
    Column("released_by", Text),
)

# Eval runs (one per `tether eval run`) and their trials: scores, checks, trace links, cost.
eval_runs = Table(
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

# One row per (eval, case, trial); `status` is passed, failed or infra_error (excluded from pass rates).
eval_trials = Table(
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

# Every submitted run: the record the bus only carries work for; status, lease (with fencing token), outcome.
runs = Table(
    "runs",
    metadata,
    Column("run_id", RUN_ID_TYPE, primary_key=True),
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

# One row per worker process, upserted by its heartbeat (times by the database's clock).
workers = Table(
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
