"""``StoreGuardRecorder``: the guard's ``GuardRecorder`` on the store (audit, incidents, quarantine)."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from sqlalchemy import Engine

from tether.guard.audit.entry import AuditEntry
from tether.guard.audit.incident import OPEN, Incident
from tether.guard.audit.quarantine import Quarantine, Release, quarantine_reason
from tether.guard.audit.rows import _datetime_to_ns, _ns_to_datetime
from tether.guard.audit.sinks import _AuditSink, _Decided, _Found, _IncidentSink, _json_arguments, _span_ids
from tether.guard.audit.store import GuardStore
from tether.guard.guard import RunGuard
from tether.guard.policy import Policy
from tether.guard.types import Decision, Finding
from tether.redaction import Scrubber
from tether.trace.processor import RowWriter

if TYPE_CHECKING:
    from tether.store import TraceStore

logger = logging.getLogger(__name__)


#: How often a recorder re-reads the quarantines, and so how late it may learn of one decided elsewhere.
DEFAULT_REFRESH_S: Final = 2.0


class StoreGuardRecorder:
    """The guard's recorder on the store: audit rows, incidents, and quarantine shared by every process.

    ``decision`` and ``finding`` only queue (they never block and never raise); ``quarantined`` answers
    from memory. See the docstring of tether.guard.audit for how rows are written and how fresh the answers are.

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
