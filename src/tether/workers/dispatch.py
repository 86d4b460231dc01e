"""Sub-agent calls as messages: a child run submitted to the queue, its end awaited in the runs table.

Inside a run on a worker, ``current_dispatcher`` is a ``QueueDispatcher``: when the agent calls a
sub-agent (``Agent.as_tool()``), the child is not run in this process but submitted like any run —
with the deterministic id the runtime gives it, so a caller resumed on another worker after a crash
finds the same child instead of starting a second one — and may run on any worker. The caller then
waits for the child's row to say it finished. The wait is durable: it reads the runs table, not a
reply on the bus, so neither a restarted Redis nor the child's worker dying loses the answer.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import TYPE_CHECKING

from tether.bus import Bus
from tether.messages import StopReason
from tether.runtime.delegation import DispatchResult, ParentLink
from tether.store.runs import RunRecord, RunRecords
from tether.workers.submit import submit_run

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["QueueDispatcher"]

_OK = frozenset({StopReason.COMPLETED.value, StopReason.DONE_CONDITION.value})


class QueueDispatcher:
    """Runs sub-agent calls as queued runs (the ``Dispatcher`` a worker sets around each run).

    Args:
        records: the runs table.
        bus: the bus the children are published on.
        tracer: traces each child's ``tether.submit`` span (a child of the caller's tool span).
        poll_s: how often the child's row is read at first (backing off to 0.5 s).
    """

    def __init__(self, records: RunRecords, bus: Bus, tracer: Tracer, *, poll_s: float = 0.05) -> None:
        self._records = records
        self._bus = bus
        self._tracer = tracer
        self._poll_s = poll_s

    async def call(self, agent: str, task: str, *, run_id: str, parent: ParentLink) -> DispatchResult:
        """Submit the child (idempotent by ``run_id``), wait for it to end, and say how it ended.

        The wait has no timeout of its own: the caller's run has its wall-clock limit around it.
        A child parked on an approval is waited for like a running one (the caller keeps its slot).
        """
        await submit_run(self._records, self._bus, self._tracer, agent, task, run_id=run_id, parent=parent)
        record = await self._end(run_id)
        stop = record.stop_reason or ("dead" if record.status == "dead" else "error")
        error = record.error
        if record.status == "dead":
            error = f"the run was dead-lettered: {record.dead_reason or 'no reason recorded'}"
        return DispatchResult(
            run_id=record.run_id,
            ok=record.status == "finished" and stop in _OK,
            stop_reason=stop,
            output=record.output or "",
            error=error,
            worker=record.worker,
            cost_usd=record.cost_usd if record.cost_usd is not None else Decimal(0),
            tokens=record.tokens or 0,
            hops=(),
        )

    async def _end(self, run_id: str) -> RunRecord:
        delay = min(self._poll_s, 0.01)
        while True:
            record = await asyncio.to_thread(self._records.get, run_id)
            if record.status in ("finished", "dead"):
                return record
            await asyncio.sleep(delay)
            delay = min(delay * 2, max(self._poll_s, 0.5))
