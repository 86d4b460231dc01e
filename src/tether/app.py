"""The wiring object: ``tether.open()`` builds the whole system from one ``Settings``.

::

    with tether.open() as tt:                       # tether.toml + TETHER_* variables
        agent = tt.agent("oncall", model="route:oncall", tools=[query_logs])
        result = agent.run_sync("checkout error rate is 12%")

Each part is built the first time it is used and kept: opening costs nothing
heavy, and a script that only reads the store never starts a gateway. The
parts, and what each needs (built on demand, in this order):

- ``settings`` — read at ``open()`` (a bad file is an error there, not later);
- ``store`` — ``open_store`` at ``database_url`` or ``[store] url``;
- ``tracing`` — spans into the store (and OTLP when ``OTEL_EXPORTER_OTLP_*`` say so);
- ``costs`` — the cost-ledger writer every gateway call records its cost with;
- ``gateway`` — ``Gateway.from_config(settings)`` with budgets in the store and the cost writer;
- ``policy``, ``guard_recorder``, ``approvals`` — the guard's policy, its audit recorder
  (audit rows, incidents, quarantines) and the approval store people decide in;
- ``kills`` — the kill switch over the store (and Redis when ``[gateway]`` or ``[workers] redis_url`` is set);
- ``durable`` — checkpoints and the exactly-once tool ledger;
- ``runs``, ``bus``, ``registry`` — the runs table (every submitted run, with its lease), the bus that
  carries submitted runs to workers (Redis Streams with ``[workers]``/``[gateway] redis_url``, else in
  memory), and the agents by name (every agent ``tt.agent`` makes is registered).

``tt.submit(agent, task)`` stores a pending run and publishes it; ``tether worker`` processes run it
(see ``tether.workers``). With the in-memory bus, the first submit starts one embedded worker on a
background thread (``make demo`` needs no Redis); ``close()`` stops it.

``tt.agent(...)`` returns an ``Agent`` bound to all of them: its own ``Guard``
(the policy, ``RuleScanner``, the approval store's approver, the audit
recorder), the kill switch, durable runs and the tracer. ``close()`` (or
leaving the ``with`` block, sync or async) flushes spans and costs and closes
everything, in reverse order; it also runs at interpreter exit, once, so a
script that never closes still has every run and cost stored.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import importlib
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from tether.config import Settings, load_settings
from tether.errors import ConfigError, UserError

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from tether.bus import Bus
    from tether.gateway.gateway import Gateway
    from tether.gateway.ledger import CostWriter
    from tether.guard.approvals import ApprovalRequest, ApprovalStore, StoredApproval
    from tether.guard.audit import StoreGuardRecorder
    from tether.guard.durable import DurableRuns
    from tether.guard.guard import Guard
    from tether.guard.kill import KillSwitch
    from tether.guard.policy import Policy
    from tether.models.base import Model
    from tether.runtime import Agent, Limits, Tool
    from tether.runtime.delegation import ParentLink
    from tether.runtime.topology import AgentRegistry
    from tether.store import TraceStore
    from tether.store.runs import RunRecord, RunRecords
    from tether.trace.setup import Tracing

__all__ = ["ROUTE_PREFIX", "Tether", "guard_policy", "open", "park_on_approval"]

logger = logging.getLogger(__name__)

#: A model reference that names a gateway route: ``route:oncall``.
ROUTE_PREFIX = "route:"

#: True around a run a worker works: its agents' approvals *park* the run (it ends ``parked`` and is
#: re-enqueued by the decision) instead of holding a worker while a person decides.
park_on_approval: contextvars.ContextVar[bool] = contextvars.ContextVar("tether_park_on_approval", default=False)


class _RunApprover:
    """The approver of ``tt.guard()``: waits for a person, or parks the run when a worker works it."""

    def __init__(self, waiting: Any, parking: Any) -> None:
        self.waiting = waiting
        self.parking = parking

    async def __call__(self, request: ApprovalRequest) -> StoredApproval:
        approver = self.parking if park_on_approval.get() else self.waiting
        decision: StoredApproval = await approver(request)
        return decision


#: How often a kill switch that hears kills over Redis still reads the store (a missed message's bound).
KILLS_BACKSTOP_POLL_S = 0.25


def _workers() -> Any:
    """``tether.workers``, imported when first needed.

    The layers put workers above this module (a worker uses a ``Tether``), while ``tt.submit`` must
    start one: the package is looked up at run time, the one place this module reaches upwards.
    """
    return importlib.import_module("tether.workers")


def guard_policy(settings: Settings) -> Policy:
    """The guard's policy for these settings: the one place that decides where it comes from.

    From the settings' ``[guard]`` tables (validated with the rest of tether.toml, line numbers
    from the file in messages); with no ``[guard]`` table, each agent may use its own tools
    (``Policy.open()``).
    """
    from tether.guard.policy import Policy

    if "guard" not in settings.model_fields_set:
        return Policy.open()
    return Policy.from_settings(settings.guard, source=settings.source, text=settings.source_text)


class Tether:
    """tether, wired: store, tracing, gateway, guard, approvals, kill switch, durable runs and agents.

    Made by ``tether.open()``; see ``tether.app`` for what is built, when, and what closes.

    Args:
        settings: the settings everything is built from.
        database_url: the store's URL, overriding ``[store] url`` and ``TETHER_DATABASE_URL``.
        trace: write spans (to the store, and OTLP when configured); False for none.
        approvals_timeout_s: how long an irreversible call waits for a person before it is refused.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        database_url: str | None = None,
        trace: bool = True,
        approvals_timeout_s: float = 900.0,
    ) -> None:
        self._settings = settings
        self._database_url = database_url
        self._trace = trace
        self._approvals_timeout_s = approvals_timeout_s
        self._lock = threading.RLock()
        self._parts: dict[str, Any] = {}
        self._unparked_publisher: Callable[[list[str]], None] | None = None
        self._closed = False
        atexit.register(self.close)

    # -- the parts, each built once on first use ------------------------------------------------

    def _part(self, name: str, build: Any) -> Any:
        with self._lock:
            if self._closed:
                raise UserError(f"this tether was closed: call tether.open() again to use its {name}")
            if name not in self._parts:
                self._parts[name] = build()
            return self._parts[name]

    @property
    def settings(self) -> Settings:
        """The settings everything is built from."""
        return self._settings

    @property
    def store(self) -> TraceStore:
        """The store: runs, spans, costs, budgets, approvals, kills, audit, checkpoints."""

        def build() -> TraceStore:
            from tether.store import open_store

            return open_store(self._database_url or self._settings.store.url)

        store: TraceStore = self._part("store", build)
        return store

    @property
    def tracing(self) -> Tracing | None:
        """Spans into the store, and to OTLP when ``OTEL_EXPORTER_OTLP_*`` is set; None with ``trace=False``."""
        if not self._trace:
            return None

        def build() -> Tracing:
            from tether.trace.setup import configure_tracing

            return configure_tracing(self.store)

        tracing: Tracing = self._part("tracing", build)
        return tracing

    @property
    def tracer(self) -> Tracer:
        """The tracer agents record with (OpenTelemetry's no-op one with ``trace=False``)."""
        tracing = self.tracing
        if tracing is not None:
            return tracing.tracer
        from opentelemetry import trace as otel_trace

        return otel_trace.NoOpTracer()

    @property
    def costs(self) -> CostWriter:
        """The cost-ledger writer: every gateway call's cost becomes a row (``tether cost``)."""

        def build() -> CostWriter:
            from tether.gateway.ledger import CostWriter

            return CostWriter(self.store)

        costs: CostWriter = self._part("costs", build)
        return costs

    @property
    def gateway(self) -> Gateway:
        """The gateway of ``[routes]``: budgets in the store, every call's cost in the cost ledger."""

        def build() -> Gateway:
            from tether.gateway.gateway import Gateway

            if not self._settings.routes:
                raise ConfigError(
                    "no routes are defined: add [providers.<name>], [deployments.<name>] and [routes.<name>] "
                    "to tether.toml, or give agents a model such as 'sim:claude-sonnet-4-5'"
                )
            return Gateway.from_config(self._settings, store=self.store, cost_sink=self.costs)

        gateway: Gateway = self._part("gateway", build)
        return gateway

    @property
    def policy(self) -> Policy:
        """The guard's policy (see ``guard_policy``)."""
        policy: Policy = self._part("policy", lambda: guard_policy(self._settings))
        return policy

    @property
    def guard_recorder(self) -> StoreGuardRecorder:
        """The guard's audit recorder: every decision, incident and quarantine stored."""

        def build() -> StoreGuardRecorder:
            from tether.guard.audit import StoreGuardRecorder

            return StoreGuardRecorder(self.store, self.policy)

        recorder: StoreGuardRecorder = self._part("guard_recorder", build)
        return recorder

    @property
    def approvals(self) -> ApprovalStore:
        """Approval requests for irreversible calls (``tether approvals approve ID``)."""

        def build() -> ApprovalStore:
            from tether.guard.approvals import ApprovalStore

            return ApprovalStore(self.store, on_unparked=self._publish_unparked)

        approvals: ApprovalStore = self._part("approvals", build)
        return approvals

    def _publish_unparked(self, run_ids: list[str]) -> None:
        """Publish runs a decision unparked, so a worker resumes them now rather than at the next re-feed.

        A worker in this process publishes them on its own loop and bus (``publish_unparked_with``);
        otherwise, on Redis, the submitter's loop does. On the in-memory bus with no worker here nobody
        else could take them: workers elsewhere find them by their re-feed.
        """
        publisher = self._unparked_publisher
        if publisher is not None:
            publisher(run_ids)
        elif self._settings.workers.redis_url or self._settings.gateway.redis_url:
            self._submitter().republish(run_ids)

    def publish_unparked_with(
        self, publisher: Callable[[list[str]], None] | None
    ) -> Callable[[list[str]], None] | None:
        """Let a worker of this process publish the runs approval decisions unpark; returns the one before.

        A worker sets its own when it starts and puts the previous one back when it stops.
        """
        with self._lock:
            previous, self._unparked_publisher = self._unparked_publisher, publisher
        return previous

    @property
    def kills(self) -> KillSwitch:
        """The kill switch: ``tether kill`` reaches runs through the store, at once over Redis when set."""

        def build() -> KillSwitch:
            from tether.guard.kill import KillSwitch

            redis_url = self._settings.kills_redis_url
            # With Redis, kills arrive by pub/sub at once; the store is still read, as a backstop, 4 times a second.
            if redis_url is not None:
                return KillSwitch(self.store, redis_url=redis_url, poll_interval_s=KILLS_BACKSTOP_POLL_S)
            return KillSwitch(self.store)

        kills: KillSwitch = self._part("kills", build)
        return kills

    @property
    def durable(self) -> DurableRuns:
        """Checkpoints and the exactly-once tool ledger (``agent.resume(run_id)``)."""

        def build() -> DurableRuns:
            from tether.guard.durable import DurableRuns

            return DurableRuns(self.store)

        durable: DurableRuns = self._part("durable", build)
        return durable

    @property
    def runs(self) -> RunRecords:
        """The runs table: every submitted run, its status, lease and end (``tether runs --queued``)."""

        def build() -> RunRecords:
            from tether.store.runs import RunRecords

            return RunRecords(self.store)

        runs: RunRecords = self._part("runs", build)
        return runs

    @property
    def bus(self) -> Bus:
        """The bus carrying submitted runs: Redis Streams at ``[workers]``/``[gateway] redis_url``, else in memory."""

        def build() -> Bus:
            from tether.bus import open_bus

            workers = self._settings.workers
            return open_bus(workers.redis_url or self._settings.gateway.redis_url, prefix=workers.prefix)

        bus: Bus = self._part("bus", build)
        return bus

    @property
    def registry(self) -> AgentRegistry:
        """The agents by name, as workers find them: every agent ``tt.agent(...)`` made, and what you register."""

        def build() -> AgentRegistry:
            from tether.runtime.topology import AgentRegistry

            return AgentRegistry()

        registry: AgentRegistry = self._part("registry", build)
        return registry

    # -- what users make from them --------------------------------------------------------------

    def guard(self) -> Guard:
        """A new ``Guard``: the policy, the injection scanner, a person's approval, the audit recorder.

        Its approver waits for the person's decision, except in a run a worker works: there it parks the
        run (see ``park_on_approval``), so no worker is held while a person decides.
        """
        from tether.guard.detectors import RuleScanner
        from tether.guard.guard import Guard

        approvals = self.approvals
        return Guard(
            self.policy,
            detectors=[RuleScanner()],
            approver=_RunApprover(
                approvals.approver(timeout_s=self._approvals_timeout_s),
                approvals.parking_approver(timeout_s=self._approvals_timeout_s),
            ),
            recorder=self.guard_recorder,
        )

    def model(self, ref: str | Model) -> Model:
        """A model: ``route:NAME`` (through the gateway), ``provider:model`` (e.g. ``sim:claude-sonnet-4-5``).

        Raises:
            UnknownRouteError: ``route:NAME`` names no ``[routes.NAME]``.
            UnknownModelError: an unknown provider prefix.
        """
        if not isinstance(ref, str):
            return ref
        if ref.startswith(ROUTE_PREFIX):
            return self.gateway.model(ref.removeprefix(ROUTE_PREFIX))
        from tether.models import resolve_model

        return resolve_model(ref)

    def agent(
        self,
        name: str,
        model: str | Model,
        *,
        tools: Iterable[Tool] = (),
        instructions: str = "",
        limits: Limits | None = None,
        guard: Guard | None = None,
        durable: bool = True,
        **options: Any,
    ) -> Agent:
        """An ``Agent`` bound to this tether: its guard, kill switch, durable runs and tracer.

        Args:
            name: the agent's name (its policy is ``[guard.agents.NAME]``).
            model: ``route:NAME``, ``provider:model`` or a ``Model`` (see ``model``).
            tools: its tools (``@tool`` functions).
            instructions: the system prompt.
            limits: its run limits (defaults are on).
            guard: a guard of your own instead of ``guard()``.
            durable: checkpoint each step, so ``agent.resume(run_id)`` works (False: no checkpoints).
            **options: any other ``Agent`` argument (``max_tokens``, ``stream``, ``done_condition``…).
        """
        from tether.runtime import Agent

        if self._trace:
            options.setdefault("payload_chars", self._settings.trace.payload_chars)
        agent = Agent(
            name,
            self.model(model),
            instructions=instructions,
            tools=tools,
            limits=limits,
            tracer=self.tracer,
            guard=guard if guard is not None else self.guard(),
            kill_switch=self.kills,
            durable=self.durable if durable else None,
            **options,
        )
        self._register(agent)
        return agent

    def _register(self, agent: Agent) -> None:
        """Register an agent made here, so workers find it by name; a newer one of the same name wins."""
        registry = self.registry
        try:
            registry.register(agent)
        except ValueError:
            logger.debug("tether: agent %r made again: the registry keeps the first one", agent.name)

    # -- submitting runs --------------------------------------------------------------------------

    def _submitter(self) -> Any:
        return self._part("submitter", lambda: _workers().Submitter(self))

    def submit(self, agent: Any, task: str, *, run_id: str | None = None, parent: ParentLink | None = None) -> str:
        """Submit a run: a pending row in the runs table (committed first), then a message for a worker.

        Args:
            agent: an agent's name, an ``Agent``, a ``Supervisor`` or a ``Mesh`` (registered if new).
            task: the task.
            run_id: the run's id (16 hex by default); the same id again is the same run (idempotent).
            parent: the logical run tree it joins (sub-runs).

        Returns:
            the run id; ``wait(run_id)`` for its end. With the in-memory bus the run is worked in this
            process (the embedded worker, started on the first submit).

        Raises:
            UserError: no agent of that name is known here (nothing is stored).
        """
        run: str = self._submitter().submit(agent, task, run_id=run_id, parent=parent)
        return run

    async def asubmit(
        self, agent: Any, task: str, *, run_id: str | None = None, parent: ParentLink | None = None
    ) -> str:
        """``submit`` from async code."""
        run: str = await self._submitter().asubmit(agent, task, run_id=run_id, parent=parent)
        return run

    def wait(self, run_id: str, timeout_s: float | None = None) -> RunRecord:
        """Wait for a submitted run to finish, die or park; its row in the runs table.

        Raises:
            WaitTimeout: it did not within ``timeout_s``.
        """
        record: RunRecord = _workers().wait(self, run_id, timeout_s)
        return record

    # -- flushing and closing -------------------------------------------------------------------

    def flush(self) -> bool:
        """Store every finished span, cost and audit row now; False if some could not be written."""
        with self._lock:
            parts = dict(self._parts)
        ok = True
        if "tracing" in parts:
            ok = parts["tracing"].flush() and ok
        if "costs" in parts:
            ok = parts["costs"].flush() and ok
        if "guard_recorder" in parts:
            ok = parts["guard_recorder"].flush() and ok
        return ok

    async def aclose(self) -> None:
        """``close`` from async code: the gateway's (and a worker's bus') connections are closed on this loop."""
        with self._lock:
            gateway = None if self._closed else self._parts.pop("gateway", None)
            bus = None if self._closed or "submitter" in self._parts else self._parts.pop("bus", None)
        if gateway is not None:
            await gateway.aclose()
        if bus is not None:
            try:
                await bus.close()
            except Exception as exc:
                logger.error("tether: closing the bus failed: %s", exc)
        if "submitter" in self._parts:
            await asyncio.to_thread(self.close)  # the embedded worker drains on its own loop meanwhile
        else:
            self.close()

    def close(self) -> None:
        """Flush and close everything built, newest first. Safe to call again (and at interpreter exit)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            parts, self._parts = self._parts, {}
        atexit.unregister(self.close)
        submitter = parts.pop("submitter", None)
        if submitter is not None:
            # First: the embedded worker still writes runs, spans and costs while it drains; it closes the bus.
            try:
                submitter.close()
            except Exception as exc:
                logger.error("tether: stopping the embedded worker failed: %s", exc)
            parts.pop("bus", None)
        bus = parts.pop("bus", None)
        if bus is not None:
            self._close_async("bus", bus.close)
        gateway = parts.pop("gateway", None)
        if gateway is not None:
            self._close_gateway(gateway)
        # Costs and audit rows before spans, spans before the store they are written to.
        for name, method in (
            ("costs", "shutdown"),
            ("guard_recorder", "close"),
            ("kills", "close"),
            ("tracing", "shutdown"),
            ("store", "close"),
        ):
            part = parts.get(name)
            if part is None:
                continue
            try:
                getattr(part, method)()
            except Exception as exc:  # one part failing to close must not keep the others open
                logger.error("tether: closing the %s failed: %s", name, exc)

    @staticmethod
    def _close_async(name: str, close: Any) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            logger.warning("tether: close() inside an event loop; use 'async with' or 'await tt.aclose()'")
            return
        try:
            asyncio.run(close())
        except Exception as exc:
            logger.error("tether: closing the %s failed: %s", name, exc)

    @staticmethod
    def _close_gateway(gateway: Gateway) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            # Called from async code without ``aclose``: its connections go with the loop.
            logger.warning("tether: close() inside an event loop; use 'async with' or 'await tt.aclose()'")
            return
        try:
            asyncio.run(gateway.aclose())
        except Exception as exc:
            logger.error("tether: closing the gateway failed: %s", exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        built = ", ".join(self._parts) or "nothing yet"
        return f"<Tether {'closed' if self._closed else 'open'}: {built}>"


def open(  # ``tether.open()`` is the name users call; the builtin is not used in this module
    config: str | Path | None = None,
    *,
    settings: Settings | None = None,
    database_url: str | None = None,
    trace: bool = True,
    approvals_timeout_s: float = 900.0,
) -> Tether:
    """Open tether: the one way to get the store, tracing, gateway, guard, kill switch and agents.

    Args:
        config: the ``tether.toml`` to read (default: ``./tether.toml`` or ``TETHER_CONFIG``).
        settings: settings already loaded (then ``config`` only names the file the guard's policy is in).
        database_url: the store's URL, overriding ``[store] url`` and ``TETHER_DATABASE_URL``.
        trace: write spans (to the store, and OTLP when configured).
        approvals_timeout_s: how long an irreversible call waits for a person's decision.

    Raises:
        ConfigError: the config file does not exist or is not valid.
    """
    if settings is None:
        settings = load_settings(config)
    return Tether(
        settings,
        database_url=database_url,
        trace=trace,
        approvals_timeout_s=approvals_timeout_s,
    )
