"""Kills in the store: the ``kills`` table, read and written by every process that shares it."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine, RowMapping, insert, select

from tether.guard.kill.record import _TARGET_KINDS, KILL_CHANNEL, Kill, TargetKind, _utc, new_kill
from tether.store.access import StoreAccess
from tether.store.runs import kill_waiting_in
from tether.store.schema import kills

if TYPE_CHECKING:
    from tether.guard.kill.redis import KillPublisher
    from tether.store import TraceStore


def _kill_from_row(row: RowMapping) -> Kill:
    kind = row["target_kind"]
    return Kill(
        id=row["id"],
        target_kind=kind if kind in _TARGET_KINDS else "all",  # an unknown kind from a newer tether: stop everything
        target=row["target"],
        reason=row["reason"],
        requested_by=row["requested_by"],
        created_at=_utc(row["created_at"]),
    )


class KillStore(StoreAccess):
    """Kill requests in the store's database (table ``kills``), on SQLite or PostgreSQL.

    With ``redis_url``, each kill is also published on Redis once its row is
    committed, so that switches listening there act on it at once rather than
    at their next poll. A publish that fails is logged, not raised: the row is
    written, and every switch still finds it by polling.

    Args:
        store: the ``TraceStore`` whose database (and connection pool) to use,
            or an ``Engine`` on a migrated database. The caller keeps ownership.
        redis_url: the Redis to publish kills on (``[gateway] redis_url`` in
            tether.toml); None (or empty) publishes nothing. ``close()`` closes
            its connections.
        channel: the pub/sub channel (default ``tether:kills``).

    Raises:
        ConfigError: a Redis URL that cannot be parsed.
    """

    def __init__(
        self, store: TraceStore | Engine, *, redis_url: str | None = None, channel: str = KILL_CHANNEL
    ) -> None:
        super().__init__(store)
        self._publisher: KillPublisher | None = None
        if redis_url:
            from tether.guard.kill.redis import KillPublisher

            self._publisher = KillPublisher(redis_url, channel=channel)

    @property
    def publisher(self) -> KillPublisher | None:
        """What publishes kills on Redis after they are recorded, if anything."""
        return self._publisher

    def close(self) -> None:
        """Close the connections to Redis, if any (the store is the caller's)."""
        if self._publisher is not None:
            self._publisher.close()

    def kill(
        self, target_kind: TargetKind, target: str | None, reason: str | None = None, requested_by: str | None = None
    ) -> str:
        """Record a kill and return its id; switches on this database act on it within a poll (over Redis: at once).

        Args:
            target_kind: ``run``, ``agent`` or ``all``.
            target: the run id or agent name (ignored for ``all``).
            reason: why, for the trace and the audit (default: "no reason given").
            requested_by: who asked.

        Raises:
            UserError: the target is malformed.
            StoreError: the database failed.
        """
        kill = new_kill(target_kind, target, reason, requested_by)
        self.add(kill)
        return kill.id

    def add(self, kill: Kill) -> builtins.list[str]:
        """Record a prepared kill (``KillSwitch.kill`` records the one it applied locally), then publish it.

        Submitted runs it names that no worker holds (queued, or parked on an approval) are ended in the
        same commit (stop reason ``killed``); returns their ids.

        Raises:
            StoreError: the database failed (nothing is published).
        """
        row = {
            "id": kill.id,
            "target_kind": kill.target_kind,
            "target": kill.target,
            "reason": kill.reason,
            "requested_by": kill.requested_by,
            "created_at": kill.created_at,
        }
        with self._write("recording a kill") as connection:
            connection.execute(insert(kills), [row])
            # Runs no worker holds (queued, parked on an approval) end here, in the kill's own commit: no
            # watch will ever see them. A running run is stopped by the switch of the worker running it.
            ended = kill_waiting_in(
                connection,
                run_id=kill.target if kill.target_kind == "run" else None,
                agent=kill.target if kill.target_kind == "agent" else None,
                everything=kill.target_kind not in ("run", "agent"),
                reason=kill.message,
            )
        if self._publisher is not None:
            self._publisher.publish(kill)  # after the commit: no kill acts anywhere that the store lacks
        return ended

    def list(self, *, limit: int = 50, since: datetime | None = None) -> builtins.list[Kill]:
        """Kills, newest first: at most ``limit``, made at or after ``since`` (naive means UTC)."""
        query = select(kills).order_by(kills.c.created_at.desc(), kills.c.id).limit(limit)
        if since is not None:
            query = query.where(kills.c.created_at >= _utc(since))
        with self._connect("listing kills") as connection:
            rows = connection.execute(query).mappings().all()
        return [_kill_from_row(row) for row in rows]

    def made_since(self, moment: datetime) -> builtins.list[Kill]:
        """Kills made at or after ``moment``, oldest first (the poller's read)."""
        query = select(kills).where(kills.c.created_at >= _utc(moment)).order_by(kills.c.created_at, kills.c.id)
        with self._connect("reading kills") as connection:
            rows = connection.execute(query).mappings().all()
        return [_kill_from_row(row) for row in rows]


# --- the kill file ------------------------------------------------------------------------------
