"""Submitting a run: a ``pending`` row in the runs table first, then a message on the bus.

The order is the point. The row is committed before anything is published, so a submitter that
dies between the two leaves a pending row that any worker's re-feed publishes (the runs table is the
record; the stream only carries work); a submitter that dies before the commit never returned a run
id, so nobody waits for a run that does not exist. Publishing twice is harmless: delivery is at least
once anyway, and a worker claims a run through its lease, never through its message.

Trace context travels in the message's headers (W3C ``traceparent``/``tracestate``): with tracing on,
a short ``tether.submit`` PRODUCER span is their parent, so the run's spans — on whichever workers it
runs, across takeovers — hang under it in one trace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate
from opentelemetry.trace import SpanKind

from tether import semconv as sc
from tether.bus import Bus, Message
from tether.errors import UserError
from tether.store.runs import RunRecord, RunRecords, Submission

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from tether.app import Tether
    from tether.runtime.delegation import ParentLink

__all__ = [
    "FINAL_STATUSES",
    "PARENT_OPTION",
    "SUBMIT_SPAN",
    "WaitTimeout",
    "agent_name",
    "await_run",
    "enqueue",
    "parent_options",
    "republish",
    "submit_run",
    "trace_headers",
    "wait",
]

#: The name of the PRODUCER span a submission is traced as.
SUBMIT_SPAN = "tether.submit"

#: The statuses ``wait`` returns at: the run is over, or waits for a person.
FINAL_STATUSES = frozenset({"finished", "dead", "parked"})

#: ``options`` key of the ParentLink JSON of a sub-run.
PARENT_OPTION = "parent"


class WaitTimeout(UserError):
    """The run did not finish, park or die within the wait."""


def trace_headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current trace context as message headers (``traceparent``, ``tracestate``), plus ``extra``."""
    headers: dict[str, str] = dict(extra or {})
    propagate.inject(headers)
    return headers


def agent_name(target: Any) -> str:
    """The name a run is submitted under: a name as given, an agent's name, a mesh's entry agent."""
    if isinstance(target, str):
        return target
    entry = getattr(target, "entry", None)
    if isinstance(entry, str):
        return entry
    name = getattr(target, "name", None)
    if isinstance(name, str):
        return name
    raise UserError(f"cannot submit {target!r}: pass an agent's name, an Agent, a Supervisor or a Mesh")


def parent_options(parent: ParentLink | None) -> dict[str, Any]:
    """The ``options`` of a run started for a parent (its ParentLink, as JSON)."""
    return {} if parent is None else {PARENT_OPTION: parent.to_json()}


async def enqueue(records: RunRecords, bus: Bus, record: RunRecord) -> str:
    """Publish a run's message (its stored trace headers) and record the entry id. Returns the entry id."""
    headers = dict(record.headers)
    headers.setdefault("kind", "run")
    entry_id = await bus.publish(Message(run_id=record.run_id, headers=headers))
    await asyncio.to_thread(records.enqueued, record.run_id, entry_id)
    return entry_id


async def republish(records: RunRecords, bus: Bus, run_ids: list[str]) -> int:
    """Publish runs a decision moved back to ``pending`` (they name no entry yet); how many were published.

    A run that is no longer pending, or already names an entry (a re-feed got there first), is left alone.
    """
    count = 0
    for run_id in run_ids:
        record = await asyncio.to_thread(records.find, run_id)
        if record is None or record.status != "pending" or record.stream_id is not None:
            continue
        await enqueue(records, bus, record)
        count += 1
    return count


async def submit_run(
    records: RunRecords,
    bus: Bus,
    tracer: Tracer,
    agent: str,
    task: str,
    *,
    run_id: str | None = None,
    parent: ParentLink | None = None,
    call_id: str | None = None,
) -> tuple[RunRecord, bool]:
    """Store a pending run, then publish it; ``(the row, whether it was created now)``.

    A run id given makes it idempotent: the same id again returns the stored row and publishes only
    if it was never published (a submitter that died between its commit and its publish).

    Raises:
        StoreError: the row could not be stored (nothing was published).
        BusUnavailable: the bus refused the message (the row is pending: the re-feed publishes it).
    """
    attributes = {sc.GEN_AI_AGENT_NAME: agent}
    if run_id is not None:
        attributes[sc.GEN_AI_CONVERSATION_ID] = run_id
    with tracer.start_as_current_span(SUBMIT_SPAN, kind=SpanKind.PRODUCER, attributes=attributes) as span:
        submission = Submission(
            agent=agent,
            task=task,
            run_id=run_id,
            parent_run_id=parent.parent_run_id if parent is not None else None,
            root_run_id=parent.root_run_id if parent is not None else None,
            depth=parent.depth if parent is not None else 0,
            call_id=call_id,
            headers=trace_headers(),
            options=parent_options(parent),
        )
        record, created = await asyncio.to_thread(records.submit, submission)
        span.set_attribute(sc.GEN_AI_CONVERSATION_ID, record.run_id)
        if created or (record.status == "pending" and record.stream_id is None):
            await enqueue(records, bus, record)
    return record, created


async def await_run(
    records: RunRecords, run_id: str, *, timeout_s: float | None = None, poll_s: float = 0.05
) -> RunRecord:
    """Wait until the run is finished, dead or parked (read from the runs table, so it survives any worker).

    Raises:
        WaitTimeout: ``timeout_s`` passed first.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    # Start fast, then poll at most every half second: a short run is seen at once, a long one costs
    # two queries a second.
    delay = min(poll_s, 0.01)
    while True:
        record = await asyncio.to_thread(records.get, run_id)
        if record.status in FINAL_STATUSES:
            return record
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(
                f"run {run_id} is still {record.status} after {timeout_s:g} s: wait longer, "
                "or see it with `tether runs show`"
            )
        await asyncio.sleep(delay if deadline is None else min(delay, max(deadline - time.monotonic(), 0.001)))
        delay = min(delay * 2, max(poll_s, 0.5))


def wait(tt: Tether, run_id: str, timeout_s: float | None = None, *, poll_s: float = 0.05) -> RunRecord:
    """``await_run`` for code with no event loop: the RunRecord once finished, dead or parked.

    Raises:
        WaitTimeout: ``timeout_s`` passed first.
        UserError: no run has this id.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    delay = min(poll_s, 0.01)
    while True:
        record = tt.runs.get(run_id)
        if record.status in FINAL_STATUSES:
            return record
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(
                f"run {run_id} is still {record.status} after {timeout_s:g} s: wait longer, "
                "or see it with `tether runs show`"
            )
        time.sleep(delay if deadline is None else min(delay, max(deadline - time.monotonic(), 0.001)))
        delay = min(delay * 2, max(poll_s, 0.5))
