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

Modules: ``entry.py`` (``AuditEntry``), ``incident.py``, ``quarantine.py``, ``store.py``
(``GuardStore``, the tables), ``sinks.py`` (the writer-thread sinks), ``recorder.py``
(``StoreGuardRecorder``), ``rows.py`` (row conversions and text limits).
"""

from tether.guard.audit.entry import AuditEntry
from tether.guard.audit.incident import COUNTED_SEVERITIES, OPEN, RELEASED, Incident
from tether.guard.audit.quarantine import NotQuarantined, Quarantine, Release, quarantine_reason
from tether.guard.audit.recorder import DEFAULT_REFRESH_S, StoreGuardRecorder
from tether.guard.audit.store import GuardStore

__all__ = [
    "COUNTED_SEVERITIES",
    "DEFAULT_REFRESH_S",
    "OPEN",
    "RELEASED",
    "AuditEntry",
    "GuardStore",
    "Incident",
    "NotQuarantined",
    "Quarantine",
    "Release",
    "StoreGuardRecorder",
    "quarantine_reason",
]
