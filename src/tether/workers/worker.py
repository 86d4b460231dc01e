"""The worker: takes submitted runs off the bus and works them, one writer per run.

::

    worker = Worker(tt, tt.registry, concurrency=64)
    await worker.run(stop=stop_event)          # `tether worker --app myapp:tt` does this

What happens to one delivery (a message naming a run):

1. The run's row decides, never the message: no row, or the run finished, dead or parked → the
   entry is acked and nothing runs (a parked run is published again when a person decides).
2. Delivered ``max_deliveries`` times already (its workers died each time) → dead-lettered.
3. The agent is looked up in the registry. If that fails (an unknown agent, a factory that raises)
   the failure is counted on the row; after ``max_failures`` the run is dead-lettered with the
   reason, before that its entry stays un-acked and is claimed again later. Either way the queue
   keeps moving: the delivery holds a slot only while it is looked at.
4. An agent at its per-agent limit: the delivery waits in this worker (touched, so no other worker
   takes it meanwhile) until one of that agent's runs ends — up to as many waiting as running; more
   are left un-acked for another worker or a later claim.
5. The lease: ``RunRecords.claim`` — one conditional UPDATE by the database clock; None means a live
   lease elsewhere (the entry is left alone). The claim's fencing token guards every write of the run
   (checkpoints, the tool ledger, the end): a worker that lost its lease cannot commit anything.
6. A kill made while the run was queued or parked ends it ``killed`` without running.
7. The run: inside ``fenced(claim.fence)``, with the trace context of the message attached (so its
   spans join the submitter's trace, on every worker that ever runs it), a ``QueueDispatcher`` for its
   sub-agent calls, and approvals that *park* (the run ends ``parked``; no worker waits for a person).
   It resumes from its checkpoint when it has one. A renewal task renews the lease every third of it
   and touches the entry; a renewal refused means another worker owns the run now: the run is
   cancelled here and neither finished nor acked.
8. The end is committed (``finish`` or ``park``), and only then the entry acked (XACK after the
   commit: a crash between the two redelivers an entry whose run is finished, which step 1 acks).

Every ``refeed_s`` (and at once when the bus was found empty and recreated, i.e. Redis restarted
without persistence) the worker compares the runs table with the stream and publishes again every
pending run whose entry is gone, and every running run whose lease expired with no entry left.
Heartbeats go to the ``workers`` table every few seconds (``tether workers``).

**One budget tree.** Every run is worked with ``current_budget_tree`` set to the worker's
``BudgetTree`` (by default on ``SqlBudgetLedger`` in the store, the same counters for every worker):
each model call and tool-call batch of a run is reserved against its own limits and those of every
run above it, whichever worker runs them. Reservations a dead worker left are swept, as spent, once
older than ``stale_reservation_s``.

**Approvals.** Runs a decision (or an expiry, which the worker checks every ``refeed_s``) moves back
to ``pending`` are published at once by the worker of the deciding process, or by the deciding
process itself on Redis (``Tether.publish_unparked_with``); the re-feed is the backstop.

Stopping (``stop`` set, or ``drain()``): no more deliveries are taken; runs in progress get
``drain_timeout_s`` to end; the rest are cancelled, released (pending again, no owner) and published
again at once, so another worker resumes them from their checkpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import propagate

from tether.app import park_on_approval
from tether.bus import BusUnavailable, Delivery
from tether.errors import StoreError
from tether.guard.durable import UnknownRun
from tether.messages import StopReason
from tether.redaction import default_scrubber
from tether.runtime.budget_tree import BudgetTree, current_budget_tree
from tether.runtime.delegation import ParentLink, current_dispatcher
from tether.store.runs import Claim, Fence, LeaseLost, RunRecord, WorkerInfo, fenced
from tether.workers.dispatch import QueueDispatcher
from tether.workers.kills import QueuedKills
from tether.workers.stats import WorkerStats
from tether.workers.submit import PARENT_OPTION, enqueue, republish

if TYPE_CHECKING:
    from tether.app import Tether
    from tether.runtime import Agent, RunResult
    from tether.runtime.topology import AgentRegistry

__all__ = ["Worker", "new_worker_id"]

logger = logging.getLogger("tether.workers")

_DONE = frozenset({"finished", "dead", "parked"})


def new_worker_id() -> str:
    """``host-pid-xxxx``: unique per process, readable in ``tether workers``."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().split("\n", 1)[0]
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return default_scrubber().scrub(line)[:500]


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class _End:
    """How a run ended, as the runs table records it."""

    stop_reason: str
    output: str = ""
    error: str | None = None
    cost_usd: Decimal | None = None
    tokens: int = 0
    parked_on: str | None = None

    @classmethod
    def of(cls, result: RunResult) -> _End:
        parked_on = getattr(result, "parked_on", None)
        return cls(
            stop_reason=result.stop_reason.value,
            output=result.output,
            error=result.error,
            cost_usd=result.cost_usd,
            tokens=result.usage.total_tokens,
            parked_on=str(parked_on) if parked_on is not None else None,
        )


@dataclass
class _Job:
    """One run this worker holds the lease of."""

    run_id: str
    agent: str
    entry_id: str
    fence: Fence
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Task[Any] | None = None
    cancelled_for: Literal["lease", "drain"] | None = None
    #: Set when the run's task is over: the lease keeper stops at its next wake-up.
    ended: bool = False


class Worker:
    """Works the runs submitted to ``tt``'s bus with the agents of ``registry``.

    Args:
        tt: the tether whose store (runs table, checkpoints, ledger, kills), bus and tracer to use.
        registry: the agents by name (default ``tt.registry``: every agent ``tt.agent`` made).
        worker_id: its name in the consumer group and ``tether workers`` (default ``host-pid-xxxx``).
        concurrency: runs at once (default ``[workers] concurrency``).
        agent_limits: runs at once per agent (default ``[workers] agents``).
        lease_s: the lease on a run; renewed every third of it.
        claim_idle_s: take over deliveries another worker has not touched for this long.
        max_deliveries: dead-letter a run delivered this many times.
        max_failures: dead-letter a run whose agent failed to load this many times.
        refeed_s: how often to re-feed runs the stream lost.
        heartbeat_s: how often to write this worker's heartbeat.
        block_s: how long one read of the bus waits for work (also how fast a stop is noticed).
        drain_timeout_s: how long a stop waits for runs in progress before releasing them.
        budget_tree: the budget tree every run here reserves against (default: one on
            ``SqlBudgetLedger`` in ``tt.store``, shared by all workers of that store).
    """

    def __init__(
        self,
        tt: Tether,
        registry: AgentRegistry | None = None,
        *,
        worker_id: str | None = None,
        concurrency: int | None = None,
        agent_limits: Mapping[str, int] | None = None,
        lease_s: float | None = None,
        claim_idle_s: float | None = None,
        max_deliveries: int | None = None,
        max_failures: int | None = None,
        refeed_s: float | None = None,
        heartbeat_s: float = 2.0,
        block_s: float = 0.5,
        drain_timeout_s: float = 30.0,
        budget_tree: BudgetTree | None = None,
    ) -> None:
        config = tt.settings.workers
        self.tt = tt
        self.registry = registry if registry is not None else tt.registry
        self.worker_id = worker_id or new_worker_id()
        self.concurrency = concurrency if concurrency is not None else config.concurrency
        self.agent_limits = dict(agent_limits if agent_limits is not None else config.agents)
        self.lease_s = lease_s if lease_s is not None else config.lease_s
        self.claim_idle_s = claim_idle_s if claim_idle_s is not None else config.claim_idle_s
        self.max_deliveries = max_deliveries if max_deliveries is not None else config.max_deliveries
        self.max_failures = max_failures if max_failures is not None else config.max_failures
        self.refeed_s = refeed_s if refeed_s is not None else config.refeed_s
        self.heartbeat_s = heartbeat_s
        self.block_s = block_s
        self.drain_timeout_s = drain_timeout_s
        if self.concurrency < 1:
            raise ValueError(f"a worker's concurrency must be ≥ 1, got {self.concurrency}")
        for name, limit in self.agent_limits.items():
            if limit < 1:
                raise ValueError(f"the limit of agent {name!r} must be ≥ 1, got {limit}")
        self.records = tt.runs
        self.bus = tt.bus
        self._kills = QueuedKills(tt.store)
        self._dispatcher = QueueDispatcher(self.records, self.bus, tt.tracer)
        self.budget_tree = budget_tree
        self._owns_budget_tree = budget_tree is None
        self._tasks: dict[str, asyncio.Task[None]] = {}  # entry id → its handling
        self._jobs: dict[str, _Job] = {}  # run id → the run it holds the lease of
        self._agents_running: Counter[str] = Counter()
        self._agents_waiting: Counter[str] = Counter()
        self._agent_freed: dict[str, asyncio.Event] = {}
        self._slot_freed: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._draining = False
        self._started_ms = _now_ms()
        self._pending: set[asyncio.Task[None]] = set()
        self._bus_resets = 0
        self._bus_down_logged = 0.0
        self.counts: Counter[str] = Counter()  # completed, parked, killed, failed, dead_lettered, lease_lost…
        self.refeeds = 0
        self.status: Literal["starting", "running", "draining", "stopped"] = "starting"

    def __repr__(self) -> str:
        return f"<Worker {self.worker_id} {self.status}: {len(self._jobs)}/{self.concurrency} running>"

    # --- running ---------------------------------------------------------------------------------

    async def run(self, *, stop: asyncio.Event) -> None:
        """Work runs until ``stop`` is set, then drain (see the module's docstring) and return."""
        self._stop = stop
        self._slot_freed = asyncio.Event()
        self.status = "running"
        self._bus_resets = self.bus.resets
        if self.budget_tree is None:
            from tether.gateway.budget import SqlBudgetLedger

            self.budget_tree = BudgetTree(SqlBudgetLedger(self.tt.store))
        previous_publisher = self.tt.publish_unparked_with(self._unparked_publisher(asyncio.get_running_loop()))
        background = [
            asyncio.create_task(self._heartbeats(), name=f"{self.worker_id} heartbeats"),
            asyncio.create_task(self._refeeds(), name=f"{self.worker_id} re-feed"),
            asyncio.create_task(self._sweeps(), name=f"{self.worker_id} budget sweep"),
        ]
        logger.info(
            "worker %s: working %s on the %s bus (concurrency %d)",
            self.worker_id,
            ", ".join(self._names()) or "no agents",
            self.bus.kind,
            self.concurrency,
        )
        try:
            await self._receive(stop)
        finally:
            self.status = "draining"
            try:
                await self._drain()
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                self.tt.publish_unparked_with(previous_publisher)
                if self._owns_budget_tree and self.budget_tree is not None:
                    with contextlib.suppress(Exception):
                        await self.budget_tree.ledger.aclose()
                self.status = "stopped"
                with contextlib.suppress(StoreError):
                    await asyncio.to_thread(self.records.worker_stopped, self.worker_id)
                logger.info("worker %s: stopped (%s)", self.worker_id, dict(self.counts) or "no runs")

    async def drain(self) -> None:
        """Stop taking work; ``run`` lets the runs in progress end (up to ``drain_timeout_s``) and returns."""
        if self._stop is not None:
            self._stop.set()

    def stats(self) -> WorkerStats:
        """What this worker does now (the queue's figures come from ``metrics.collect``)."""
        return WorkerStats(
            worker_id=self.worker_id,
            status=self.status,
            concurrency=self.concurrency,
            running=len(self._jobs),
            waiting=sum(self._agents_waiting.values()),
            agents=dict(self._agents_running),
            agent_limits=dict(self.agent_limits),
            counts=dict(self.counts),
            refeeds=self.refeeds,
        )

    def _names(self) -> list[str]:
        try:
            return sorted(self.registry.names())
        except Exception:  # a registry that cannot list itself still works runs
            return []

    async def _receive(self, stop: asyncio.Event) -> None:
        assert self._slot_freed is not None
        claim_every = max(0.1, min(self.claim_idle_s / 2, 5.0))
        last_claim = 0.0
        backoff = 0.05
        while not stop.is_set():
            free = self.concurrency - len(self._tasks)
            if free <= 0:
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.block_s):
                        await self._slot_freed.wait()
                continue
            try:
                deliveries: list[Delivery] = []
                if time.monotonic() - last_claim >= claim_every:
                    last_claim = time.monotonic()
                    deliveries = await self.bus.claim_stale(self.worker_id, min_idle_s=self.claim_idle_s, count=free)
                if not deliveries:
                    deliveries = await self.bus.receive(self.worker_id, count=free, block_s=self.block_s)
                backoff = 0.05
            except BusUnavailable as exc:
                self._bus_down(exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await stop.wait()
                backoff = min(backoff * 2, 1.0)
                continue
            for delivery in deliveries:
                if delivery.entry_id in self._tasks:
                    continue  # already in hand (a claim of an entry this worker holds)
                self._tasks[delivery.entry_id] = asyncio.create_task(
                    self._handle(delivery), name=f"{self.worker_id} {delivery.message.run_id}"
                )

    def _bus_down(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._bus_down_logged >= 30:
            self._bus_down_logged = now
            logger.error("worker %s: the bus is unavailable (%s); retrying", self.worker_id, exc)

    async def _drain(self) -> None:
        tasks = list(self._tasks.values())
        if tasks:
            logger.info("worker %s: draining %d run(s) (up to %g s)", self.worker_id, len(tasks), self.drain_timeout_s)
            _, pending = await asyncio.wait(tasks, timeout=self.drain_timeout_s)
            if pending:
                self._draining = True
                for job in list(self._jobs.values()):
                    if job.task is not None and not job.task.done():
                        job.cancelled_for = "drain"
                        job.task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        self._draining = True

    # --- one delivery ----------------------------------------------------------------------------

    async def _handle(self, delivery: Delivery) -> None:
        run_id = delivery.message.run_id
        try:
            await self._process(delivery)
        except LeaseLost as exc:
            self.counts["lease_lost"] += 1
            logger.warning(
                "worker %s: LeaseLost on run %s: %s (not acked; its new owner finishes it)", self.worker_id, run_id, exc
            )
        except (StoreError, BusUnavailable) as exc:
            self.counts["deferred"] += 1
            logger.error("worker %s: run %s left for later: %s", self.worker_id, run_id, exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.counts["deferred"] += 1
            logger.exception("worker %s: run %s left for later after an unexpected error", self.worker_id, run_id)
        finally:
            self._tasks.pop(delivery.entry_id, None)
            if self._slot_freed is not None:
                self._slot_freed.set()

    async def _ack(self, delivery: Delivery) -> None:
        await self.bus.ack([delivery.entry_id])

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        # The row first: the bus's entry is acked by dead_letter, and XACK comes after the commit.
        await asyncio.to_thread(self.records.dead, delivery.message.run_id, reason)
        await self.bus.dead_letter(delivery, reason)
        self.counts["dead_lettered"] += 1
        logger.error("worker %s: run %s dead-lettered: %s", self.worker_id, delivery.message.run_id, reason)

    async def _process(self, delivery: Delivery) -> None:
        run_id = delivery.message.run_id
        record = await asyncio.to_thread(self.records.find, run_id)
        if record is None:
            logger.warning(
                "worker %s: a message names run %s, which was never submitted: acked", self.worker_id, run_id
            )
            await self._ack(delivery)
            return
        if record.status in _DONE:
            await self._ack(delivery)
            return
        # The row's count, not the entry's: it counts the claims (runs started, on any entry of the run), while
        # the entry's also counts deliveries left alone (an agent at its limit, a lease held elsewhere).
        attempts = record.deliveries
        if attempts >= self.max_deliveries:
            await self._dead_letter(delivery, f"delivered {attempts} times; the worker died each time?")
            return
        try:
            agent = self.registry.get(record.agent)
        except Exception as exc:
            reason = f"agent {record.agent!r} could not be loaded: {_first_line(exc)}"
            failures = await asyncio.to_thread(self.records.record_failure, run_id, reason)
            if failures >= self.max_failures:
                await self._dead_letter(delivery, reason)
            else:
                logger.warning(
                    "worker %s: run %s (failure %d of %d): %s",
                    self.worker_id,
                    run_id,
                    failures,
                    self.max_failures,
                    reason,
                )
            return
        if not await self._agent_slot(delivery, record.agent):
            return
        try:
            await self._claim_and_run(delivery, record, agent)
        finally:
            self._agents_running[record.agent] -= 1
            if self._agents_running[record.agent] <= 0:
                del self._agents_running[record.agent]
            freed = self._agent_freed.get(record.agent)
            if freed is not None:
                freed.set()

    async def _agent_slot(self, delivery: Delivery, agent: str) -> bool:
        """Take a place among the agent's runs here, waiting (touching the entry) while its limit is full.

        False: the limit is full and enough wait already, or the worker is stopping — the entry is left
        un-acked for another worker or a later claim.
        """
        limit = self.agent_limits.get(agent)
        if limit is not None and self._agents_running[agent] >= limit:
            if self._agents_waiting[agent] >= limit:
                return False
            self._agents_waiting[agent] += 1
            try:
                touch_every = max(0.05, self.claim_idle_s / 3)
                while self._agents_running[agent] >= limit:
                    if self._draining or (self._stop is not None and self._stop.is_set()):
                        return False
                    freed = self._agent_freed.setdefault(agent, asyncio.Event())
                    freed.clear()
                    try:
                        async with asyncio.timeout(min(touch_every, self.block_s)):
                            await freed.wait()
                    except TimeoutError:
                        with contextlib.suppress(BusUnavailable):
                            await self.bus.touch(self.worker_id, [delivery.entry_id])
            finally:
                self._agents_waiting[agent] -= 1
        self._agents_running[agent] += 1
        return True

    async def _claim_and_run(self, delivery: Delivery, record: RunRecord, agent: Agent) -> None:
        run_id = record.run_id
        claim = await asyncio.to_thread(self.records.claim, run_id, self.worker_id, lease_s=self.lease_s)
        if claim is None:
            now = await asyncio.to_thread(self.records.find, run_id)
            if now is None or now.status in _DONE:
                await self._ack(delivery)
            # Otherwise a live lease elsewhere: its holder acks; this entry is claimed again later.
            return
        kill = await asyncio.to_thread(
            self._kills.find, run_id=run_id, agent=record.agent, since_ms=record.submitted_ms
        )
        if kill is not None:
            await asyncio.to_thread(
                self.records.finish,
                claim.fence,
                stop_reason=StopReason.KILLED.value,
                output="",
                error=kill.message,
                cost_usd=None,
                tokens=0,
            )
            self.counts["killed"] += 1
            await self._ack(delivery)
            return
        job = _Job(run_id=run_id, agent=record.agent, entry_id=delivery.entry_id, fence=claim.fence)
        self._jobs[run_id] = job
        try:
            await self._run(delivery, claim, agent, job)
        finally:
            self._jobs.pop(run_id, None)

    async def _run(self, delivery: Delivery, claim: Claim, agent: Agent, job: _Job) -> None:
        record = claim.record
        job.task = asyncio.create_task(self._execute(agent, record, claim.fence), name=f"run {record.run_id}")
        keeper = asyncio.create_task(self._keep_lease(job), name=f"lease {record.run_id}")
        try:
            outcome = await asyncio.shield(job.task)
        except asyncio.CancelledError:
            if not job.task.done():  # this handler was cancelled, not the run: take the run with it
                job.task.cancel()
                with contextlib.suppress(BaseException):
                    await job.task
                raise
            if job.cancelled_for == "lease":
                self.counts["lease_lost"] += 1
                logger.warning(
                    "worker %s: lost the lease on run %s (LeaseLost): stopped it here, not acked",
                    self.worker_id,
                    record.run_id,
                )
                return
            if job.cancelled_for == "drain":
                await self._release(delivery, job)
                return
            raise
        finally:
            job.ended = True
            keeper.cancel()
            # Never wait on the keeper for long: the end of the run must be recorded whatever it does.
            await asyncio.wait([keeper], timeout=1.0)
        await self._record_end(delivery, job, outcome)

    async def _execute(self, agent: Agent, record: RunRecord, fence: Fence) -> _End:
        """The run itself, in its own task (so its context — fence, trace, dispatcher — is its own)."""
        token = otel_context.attach(propagate.extract(dict(record.headers)))
        dispatcher = current_dispatcher.set(self._dispatcher)
        parking = park_on_approval.set(True)
        budget = current_budget_tree.set(self.budget_tree)
        try:
            with fenced(fence):
                parent_json = record.options.get(PARENT_OPTION)
                parent = ParentLink.from_json(parent_json) if parent_json is not None else None
                checkpoint = await self._checkpoint(agent, record.run_id)
                if checkpoint is not None and checkpoint.status == "finished":
                    return _ended_before(checkpoint.state)
                try:
                    if checkpoint is not None:
                        return _End.of(await agent.resume(record.run_id, parent=parent))
                    return _End.of(await agent.run(record.task, run_id=record.run_id, parent=parent))
                except (LeaseLost, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    # The agent ended the run (stop reason error, on its span) and raised: record that end.
                    return _End(StopReason.ERROR.value, error=_first_line(exc))
        finally:
            current_budget_tree.reset(budget)
            park_on_approval.reset(parking)
            current_dispatcher.reset(dispatcher)
            otel_context.detach(token)

    async def _checkpoint(self, agent: Agent, run_id: str) -> Any:
        durable = getattr(agent, "durable", None)
        if durable is None:
            return None
        try:
            return await asyncio.to_thread(durable.load, run_id)
        except UnknownRun:
            return None

    async def _keep_lease(self, job: _Job) -> None:
        every = self.lease_s / 3
        # Stopped by ``job.ended``, not only by cancellation: a cancel that lands inside a call with a
        # timeout of its own (a bus call) can be turned into that call's error and lost.
        while not job.ended:
            await asyncio.sleep(every)
            if job.ended:
                return
            try:
                kept = await asyncio.to_thread(self.records.renew, job.fence, self.worker_id, lease_s=self.lease_s)
            except StoreError as exc:
                # The lease runs out unless a later renewal gets through; the database refuses this worker's
                # writes after that, so going on is safe.
                logger.error("worker %s: cannot renew the lease on run %s: %s", self.worker_id, job.run_id, exc)
                continue
            if job.ended:
                return
            if not kept:
                job.cancelled_for = "lease"
                if job.task is not None:
                    job.task.cancel()
                return
            with contextlib.suppress(BusUnavailable):
                await self.bus.touch(self.worker_id, [job.entry_id])

    async def _record_end(self, delivery: Delivery, job: _Job, end: _End) -> None:
        if end.stop_reason == "parked":
            await asyncio.to_thread(self.records.park, job.fence, approval_id=end.parked_on or "")
        else:
            await asyncio.to_thread(
                self.records.finish,
                job.fence,
                stop_reason=end.stop_reason,
                output=end.output,
                error=end.error,
                cost_usd=end.cost_usd,
                tokens=end.tokens,
            )
        self.counts[end.stop_reason] += 1
        await self._ack(delivery)

    async def _release(self, delivery: Delivery, job: _Job) -> None:
        """Give a run back that did not end in the drain: pending again, published again, its old entry acked."""
        try:
            await asyncio.to_thread(self.records.release, job.fence)
            record = await asyncio.to_thread(self.records.get, job.run_id)
            if record.status == "pending" and await asyncio.to_thread(
                self.records.mark_refeeding, job.run_id, record.stream_id
            ):
                await enqueue(self.records, self.bus, record)
            await self._ack(delivery)
            self.counts["released"] += 1
            logger.info("worker %s: released run %s (it resumes on another worker)", self.worker_id, job.run_id)
        except (LeaseLost, StoreError, BusUnavailable) as exc:
            logger.warning(
                "worker %s: could not release run %s (%s): its lease runs out instead", self.worker_id, job.run_id, exc
            )

    # --- in the background -----------------------------------------------------------------------

    def _info(self) -> WorkerInfo:
        return WorkerInfo(
            worker_id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_ms=self._started_ms,
            heartbeat_ms=_now_ms(),
            concurrency=self.concurrency,
            running=tuple(self._jobs),
            agents=tuple(self._names()),
            status="draining" if self.status == "draining" else "running",
        )

    async def _heartbeats(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.records.heartbeat, self._info())
            except StoreError as exc:
                logger.error("worker %s: heartbeat not written: %s", self.worker_id, exc)
            await asyncio.sleep(self.heartbeat_s)

    def _unparked_publisher(self, loop: asyncio.AbstractEventLoop) -> Any:
        """What ``tt`` calls with the runs an approval decision unparked: publish them on this worker's loop.

        Called from any thread; never waits (the re-feed is the backstop if the publish fails).
        """

        def publish(run_ids: list[str]) -> None:
            coroutine = self._publish_unparked(list(run_ids))
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                task = loop.create_task(coroutine)
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
            else:
                asyncio.run_coroutine_threadsafe(coroutine, loop)

        return publish

    async def _publish_unparked(self, run_ids: list[str]) -> None:
        try:
            count = await republish(self.records, self.bus, run_ids)
        except (StoreError, BusUnavailable, LeaseLost) as exc:
            logger.warning("worker %s: unparked run(s) left to the re-feed: %s", self.worker_id, exc)
            return
        if count:
            logger.info("worker %s: published %d run(s) an approval decision resumed", self.worker_id, count)

    async def _sweeps(self) -> None:
        """Approvals past their deadline expire (their runs resume and see the denial); stale reservations end."""
        older_than = timedelta(seconds=self.tt.settings.stale_reservation_s)
        last_sweep = 0.0
        while True:
            try:
                await asyncio.to_thread(self.tt.approvals.expire)
            except StoreError as exc:
                logger.error("worker %s: expiring approvals failed: %s", self.worker_id, exc)
            if self.budget_tree is not None and time.monotonic() - last_sweep >= 60.0:
                last_sweep = time.monotonic()
                try:
                    swept = await self.budget_tree.ledger.sweep_stale(older_than)
                except StoreError as exc:
                    logger.error("worker %s: sweeping budget reservations failed: %s", self.worker_id, exc)
                else:
                    if swept:
                        logger.warning(
                            "worker %s: %d stale budget reservation(s) (a worker that died mid-call) counted as spent",
                            self.worker_id,
                            swept,
                        )
            await asyncio.sleep(self.refeed_s)

    async def _refeeds(self) -> None:
        last = 0.0
        while True:
            resets = self.bus.resets
            reset = resets != self._bus_resets
            if reset or time.monotonic() - last >= self.refeed_s:
                self._bus_resets = resets
                last = time.monotonic()
                try:
                    count = await self.refeed(older_than_s=0.0 if reset else self.refeed_s)
                    if count:
                        logger.info(
                            "worker %s: re-fed %d run(s)%s",
                            self.worker_id,
                            count,
                            " (the bus was recreated empty)" if reset else "",
                        )
                except (StoreError, BusUnavailable) as exc:
                    logger.error("worker %s: re-feed failed: %s", self.worker_id, exc)
            await asyncio.sleep(min(self.refeed_s, 0.25))

    async def refeed(self, *, older_than_s: float) -> int:
        """Publish again the runs the runs table has waiting and the stream does not; how many.

        Candidates are pending runs enqueued more than ``older_than_s`` ago and running runs whose lease
        expired; those whose entry is still in the stream are left to it (a dead worker's entries are
        taken over by ``claim_stale``). ``mark_refeeding`` lets one worker win each.
        """
        candidates = await asyncio.to_thread(self.records.refeed_candidates, older_than_s=older_than_s)
        if not candidates:
            return 0
        entries = [c.stream_id for c in candidates if c.stream_id is not None]
        present = await self.bus.contains(entries) if entries else set()
        count = 0
        for record in candidates:
            if record.stream_id is not None and record.stream_id in present:
                continue
            if not await asyncio.to_thread(
                self.records.mark_refeeding, record.run_id, record.stream_id, older_than_s=older_than_s
            ):
                continue
            await enqueue(self.records, self.bus, record)
            count += 1
        self.refeeds += count
        return count


def _ended_before(state: Mapping[str, Any]) -> _End:
    """The end of a run whose last checkpoint says finished but whose row does not (its worker died between).

    The checkpoint keeps the transcript, not the stop reason: a last answer without tool calls is taken
    as completed (with its text), anything else as an error that says what happened.
    """
    messages = state.get("messages") or []
    last = messages[-1] if messages else {}
    if isinstance(last, dict) and last.get("role") == "assistant":
        blocks = last.get("content") or []
        if isinstance(blocks, list) and not any(isinstance(b, dict) and b.get("type") == "tool_use" for b in blocks):
            text = "".join(str(b.get("text", "")) for b in blocks if isinstance(b, dict) and b.get("type") == "text")
            return _End(StopReason.COMPLETED.value, output=text)
    return _End(
        StopReason.ERROR.value,
        error="the run ended on a worker that died before recording its end; see its trace",
    )
