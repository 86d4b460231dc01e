"""Kills made while a run waited: in the queue, or parked on an approval.

``KillSwitch.watch`` stops a run for kills made *after the watch began* (``tether kill --agent X``
stops X's runs, it does not ban X). A submitted run, though, exists from the moment it is submitted:
a kill of it, its agent or all runs made while it sat in the queue or was parked must stop it too.
``KillStore.add`` ends the queued and parked runs a kill names in the kill's own commit; the worker
still asks ``find`` before it starts a run, for kills that reached no row that way (a run submitted in
the same instant, a kill recorded by an older tether).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from tether.guard.kill.store import KillStore

if TYPE_CHECKING:
    from tether.guard.kill.record import Kill
    from tether.store import TraceStore

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
