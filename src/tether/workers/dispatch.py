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
from tether.runtime.delegation import DispatchResult, Hop, ParentLink
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
        tree = await asyncio.to_thread(self._records.tree, record.root_run_id)
        return _result(record, tree, parent)

    async def _end(self, run_id: str) -> RunRecord:
        delay = min(self._poll_s, 0.01)
        while True:
            record = await asyncio.to_thread(self._records.get, run_id)
            if record.status in ("finished", "dead"):
                return record
            await asyncio.sleep(delay)
            delay = min(delay * 2, max(self._poll_s, 0.5))


def _result(record: RunRecord, tree: list[RunRecord], parent: ParentLink) -> DispatchResult:
    """The child's end as its caller's run takes it: its branch's spend, and the handoffs made under it.

    Each run of the table spent its own; the branch is the child and every run under it. The handoffs
    under the child are its descendants' (caller agent → callee agent), in the order they were
    submitted, after the ``ParentLink.hops`` the child was given — so a bounce detected deep on another
    worker also ends the chain above it (their spend per hop is not known here: recorded as 0).
    """
    by_id = {r.run_id: r for r in tree}
    children: dict[str, list[RunRecord]] = {}
    for r in tree:
        if r.parent_run_id is not None:
            children.setdefault(r.parent_run_id, []).append(r)
    branch: list[RunRecord] = []
    stack = [record.run_id]
    while stack:
        for child in children.get(stack.pop(), []):
            branch.append(child)
            stack.append(child.run_id)
    runs = [record, *branch]
    known = all(r.cost_usd is not None for r in runs)
    cost = sum((r.cost_usd for r in runs if r.cost_usd is not None), Decimal(0)) if known else None
    tokens = sum(r.tokens or 0 for r in runs)
    hops = list(parent.hops)
    for r in sorted(branch, key=lambda r: (r.submitted_ms, r.run_id)):
        caller = by_id.get(r.parent_run_id or "")
        if caller is not None:
            hops.append(Hop(caller.agent, r.agent, 0, Decimal(0)))
    # The handoff that was refused as a bounce started no run: the run that detected it (loop_detected, no
    # loop_detected run under it) tried to hand the work back to the agent that called it.
    for r in runs:
        if r.stop_reason != "loop_detected" or any(
            c.stop_reason == "loop_detected" for c in children.get(r.run_id, [])
        ):
            continue
        caller_agent = by_id[r.parent_run_id].agent if r.parent_run_id in by_id else None
        if caller_agent is not None:
            hops.append(Hop(r.agent, caller_agent, 0, Decimal(0)))
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
        cost_usd=cost,
        tokens=tokens,
        hops=tuple(hops),
    )
