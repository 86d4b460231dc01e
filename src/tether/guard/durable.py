"""Durable runs: checkpoints to resume from, and an exactly-once ledger for tool calls with effects.

With ``Agent(durable=DurableRuns(store))`` a run is checkpointed in the store
after each model answer and after each batch of tool results, and every
``write`` or ``irreversible`` tool call goes through the ledger, keyed by its
idempotency key (run, turn, call id)::

    intent  → started → done (output kept) | failed
                       ↘ (the process died here) = unknown

``Agent.resume(run_id)`` — in this process or another one after a restart —
continues from the checkpoint. A call the ledger has as ``done`` is not run
again: its recorded output is replayed to the model. A call left ``intent`` or
``started`` has an unknown outcome: it is never retried blindly; the guard asks
a person (its approver) a *new* question — the review of that attempt, never
answered by the call's first approval — and without one it is refused. Only an
approved review runs the call again, as the next attempt (``intend(...,
attempt=n + 1)``, which only one process can claim); should that attempt's
outcome be unknown too, the next resume asks about it anew.

Read tools are not in the ledger: running them again is harmless.

**Fenced writes.** A worker running a run holds its lease (``tether.store.runs``)
and sets ``current_fence`` around it; ``save``, ``intend`` and ``mark`` check that
fence inside their own write transaction (``check_fence``), so once another
worker has taken the run over, the paused one's checkpoint and ledger writes
raise ``LeaseLost`` and write nothing. Without a fence (no worker: a run made
in-process) they write as they always did.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import orjson
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite

from tether.errors import UserError
from tether.redaction import default_scrubber, scrubbed_json
from tether.store.access import StoreAccess
from tether.store.runs import Fence, check_fence, current_fence
from tether.store.schema import checkpoints, tool_ledger

if TYPE_CHECKING:
    pass


def _fence(fence: Fence | None) -> Fence | None:
    """The fence a write is made under: the one given, else the current one (None: unfenced)."""
    return fence if fence is not None else current_fence.get()


__all__ = ["Checkpoint", "DurableRuns", "Effect", "EffectState", "UnknownRun"]

EffectState = Literal["intent", "started", "done", "failed"]


class UnknownRun(UserError):
    """No checkpoint has this run id."""


@dataclass(frozen=True)
class Effect:
    """A tool call's row in the ledger."""

    key: str
    tool: str
    state: EffectState
    output: str | None
    is_error: bool | None
    arguments_hash: str
    #: Which attempt at the call ``state`` is about (1 for the first).
    attempt: int = 1


@dataclass(frozen=True)
class Checkpoint:
    """A run's saved state: what ``Agent.resume`` continues from."""

    run_id: str
    agent: str
    status: str
    state: dict[str, Any]
    updated_at: datetime


_SCRUBBER = default_scrubber()


def arguments_hash(tool: str, arguments: Mapping[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps([tool, dict(arguments)], option=orjson.OPT_SORT_KEYS)).hexdigest()


@functools.cache
def _checkpoint_upsert(dialect_name: str) -> Any:
    """The checkpoint upsert of a dialect, built once: a run saves one per step, and building it costs most."""
    dialect: Any = postgresql if dialect_name == "postgresql" else sqlite
    statement = dialect.insert(checkpoints)
    return statement.on_conflict_do_update(
        index_elements=["run_id"],
        set_={k: statement.excluded[k] for k in ("agent", "status", "state", "updated_at")},
    )


class DurableRuns(StoreAccess):
    """Checkpoints and the tool-call ledger in the store's database, shared by every process.

    Args:
        store: a ``TraceStore`` or an ``Engine`` on a migrated database.
    """

    # -- checkpoints -----------------------------------------------------------------------

    def save(
        self, run_id: str, agent: str, status: str, state: Mapping[str, Any], *, fence: Fence | None = None
    ) -> None:
        """Write the run's checkpoint (replacing the previous one), known secrets scrubbed.

        Args:
            fence: the lease the write is made under; None: ``current_fence`` (unfenced when that is None).

        Raises:
            LeaseLost: the fence is stale; nothing was written.
        """
        fence = _fence(fence)
        row = {
            "run_id": run_id,
            "agent": agent,
            "status": status,
            "state": scrubbed_json(dict(state)),
            "updated_at": datetime.now(UTC),
        }
        with self._write("saving a run checkpoint") as connection:
            if fence is not None:
                check_fence(connection, fence)
            connection.execute(_checkpoint_upsert(connection.dialect.name), row)

    def load(self, run_id: str) -> Checkpoint:
        """The run's checkpoint.

        Raises:
            UnknownRun: no checkpoint has this run id.
        """
        with self._connect("reading a run checkpoint") as connection:
            row = connection.execute(select(checkpoints).where(checkpoints.c.run_id == run_id)).mappings().one_or_none()
        if row is None:
            raise UnknownRun(f"no checkpoint for run {run_id!r}: was the agent built with durable=DurableRuns(store)?")
        updated = row["updated_at"]
        return Checkpoint(
            run_id=row["run_id"],
            agent=row["agent"],
            status=row["status"],
            state=orjson.loads(row["state"]),
            updated_at=updated.replace(tzinfo=UTC) if updated.tzinfo is None else updated,
        )

    def unfinished(self, agent: str) -> list[str]:
        """Run ids of the agent's checkpoints that did not finish (to resume after a restart)."""
        with self._connect("listing unfinished runs") as connection:
            return list(
                connection.scalars(
                    select(checkpoints.c.run_id)
                    .where(checkpoints.c.agent == agent, checkpoints.c.status != "finished")
                    .order_by(checkpoints.c.updated_at)
                )
            )

    # -- the tool-call ledger ----------------------------------------------------------------

    def effect(self, key: str) -> Effect | None:
        """The ledger's row for an idempotency key, if any."""
        with self._connect("reading the tool-call ledger") as connection:
            row = (
                connection.execute(select(tool_ledger).where(tool_ledger.c.idempotency_key == key))
                .mappings()
                .one_or_none()
            )
        if row is None:
            return None
        return Effect(
            row["idempotency_key"],
            row["tool"],
            row["state"],
            row["output"],
            row["is_error"],
            row["arguments_hash"],
            row["attempt"],
        )

    def intend(
        self,
        key: str,
        *,
        run_id: str,
        agent: str,
        tool: str,
        arguments: Mapping[str, Any],
        attempt: int = 1,
        fence: Fence | None = None,
    ) -> bool:
        """Record the intent to make attempt ``attempt`` of a call; True when this caller now owns that attempt.

        Attempt 1 creates the call's row. A later attempt — a person approved running the call again after
        attempt ``attempt - 1`` stopped with its outcome unknown — moves the row on from that attempt, only
        if it is still there, left ``intent`` or ``started``. False: the key is taken (another process made
        or claimed the attempt, or the call has an outcome): the call must not run.

        ``fence`` (None: ``current_fence``) is checked in the same transaction.

        Raises:
            LeaseLost: the fence is stale; nothing was written (the call must not run).
        """
        fence = _fence(fence)
        now = datetime.now(UTC)
        with self._write("recording a tool call's intent") as connection:
            if fence is not None:
                check_fence(connection, fence)
            if attempt == 1:
                row = {
                    "idempotency_key": key,
                    "run_id": run_id,
                    "agent": agent,
                    "tool": tool,
                    "arguments_hash": arguments_hash(tool, arguments),
                    "state": "intent",
                    "updated_at": now,
                    "attempt": 1,
                }
                dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
                statement = dialect.insert(tool_ledger).values(**row).on_conflict_do_nothing()
            else:
                statement = (
                    update(tool_ledger)
                    .where(
                        tool_ledger.c.idempotency_key == key,
                        tool_ledger.c.attempt == attempt - 1,
                        tool_ledger.c.state.in_(("intent", "started")),
                    )
                    .values(attempt=attempt, state="intent", output=None, is_error=None, updated_at=now)
                )
            # RETURNING, not rowcount: psycopg reports -1 for an INSERT … ON CONFLICT DO NOTHING.
            return connection.execute(statement.returning(tool_ledger.c.idempotency_key)).first() is not None

    def mark(
        self,
        key: str,
        state: EffectState,
        *,
        output: str | None = None,
        is_error: bool | None = None,
        attempt: int | None = None,
        fence: Fence | None = None,
    ) -> None:
        """Move a call to ``started``, ``done`` or ``failed`` (with what it returned).

        With ``attempt``, only while the row is still about that attempt. ``fence`` (None:
        ``current_fence``) is checked in the same transaction.

        Raises:
            LeaseLost: the fence is stale; nothing was written.
        """
        fence = _fence(fence)
        values: dict[str, Any] = {"state": state, "updated_at": datetime.now(UTC)}
        if state in ("done", "failed"):
            # Replayed to the model and kept for as long as the run: never with a secret in it.
            values.update(output=_SCRUBBER.scrub(output) if output is not None else None, is_error=is_error)
        where = [tool_ledger.c.idempotency_key == key]
        if attempt is not None:
            where.append(tool_ledger.c.attempt == attempt)
        with self._write("updating the tool-call ledger") as connection:
            if fence is not None:
                check_fence(connection, fence)
            connection.execute(update(tool_ledger).where(*where).values(**values))
