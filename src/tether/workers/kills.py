"""Kills made while a run waited: in the queue, or parked on an approval.

``KillSwitch.watch`` stops a run for kills made *after the watch began* (``tether kill --agent X``
stops X's runs, it does not ban X). A submitted run, though, exists from the moment it is submitted:
a kill of it, its agent or all runs made while it sat in the queue or was parked must stop it too, or
``tether kill`` could not reach a run that no worker holds. So the worker asks ``find`` before it starts
a run, and ``kill_parked`` applies new kills to parked runs (finished ``killed``: no decision will
wake them any more).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from tether.guard.kill.store import KillStore

if TYPE_CHECKING:
    from tether.guard.kill.record import Kill
    from tether.store import TraceStore
    from tether.store.runs import RunRecords

__all__ = ["QueuedKills"]


class QueuedKills:
    """Reads the store's kills made since a run was submitted.

    Args:
        store: the store the kills are recorded in (shared with the kill switch).
    """

    def __init__(self, store: TraceStore) -> None:
        self._kills = KillStore(store)

    def find(self, *, run_id: str, agent: str, since_ms: int) -> Kill | None:
        """The first kill that names this run, its agent or all runs, made at or after ``since_ms``; None if none.

        Raises:
            StoreError: the store could not be read (the caller leaves the run for later).
        """
        # Kill times are the killer's clock, submission times the database's: keep clocks in sync (NTP), as
        # the kill switch already asks of replicas.
        since = datetime.fromtimestamp(since_ms / 1000, UTC)
        for kill in self._kills.made_since(since):
            if kill.matches(run_id, agent):
                return kill
        return None

    def kill_parked(self, records: RunRecords, *, since_ms: int) -> tuple[list[str], int]:
        """End the parked runs that kills made at or after ``since_ms`` name (each only if parked before that kill).

        Returns:
            The run ids killed, and the time (ms) to read from next.

        Raises:
            StoreError: the store could not be read or written.
        """
        kills = self._kills.made_since(datetime.fromtimestamp(since_ms / 1000, UTC))
        if not kills:
            return [], since_ms
        killed: list[str] = []
        for kill in kills:
            made_ms = int(kill.created_at.timestamp() * 1000)
            agent = kill.target if kill.target_kind == "agent" else None
            for record in records.list(statuses=["parked"], agent=agent, limit=10_000):
                if record.submitted_ms > made_ms or not kill.matches(record.run_id, record.agent):
                    continue
                killed.extend(records.kill_waiting(run_id=record.run_id, reason=kill.message))
        newest = max(int(k.created_at.timestamp() * 1000) for k in kills)
        return killed, newest + 1
