"""The server process (``tether serve``): start-up checks, socket, signals, graceful drain, background work.

``serve`` refuses to start, with one line saying what to set, when the server could not answer
a single call: no routes, or a provider whose API-key variable is not set (``check_startable``).
Otherwise it binds the socket first (a taken port is one clear error before anything starts),
replays the cost journal a dead process left, builds the parts (``tether.server.app.ServerParts``),
sweeps stale budget reservations in the background, and on SIGTERM or Ctrl-C gives requests in
flight ``[gateway] shutdown_grace_s`` to finish, stores every cost and span, and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator
from datetime import timedelta
from types import FrameType
from typing import TYPE_CHECKING

from tether.errors import ConfigError
from tether.models.registry import provider_spec

if TYPE_CHECKING:
    import uvicorn

    from tether.config import Settings
    from tether.gateway.gateway import BudgetOverrun, Gateway
    from tether.gateway.journal import CostJournal
    from tether.gateway.keys import KeyVerifier
    from tether.store import TraceStore

__all__ = ["check_startable", "serve"]

logger = logging.getLogger(__name__)


def check_startable(settings: Settings) -> None:
    """Refuse a configuration that would start but answer every call with a 500.

    Raises:
        ConfigError: no routes are defined, or a provider a route uses has its API-key variable unset
            (``sim`` providers, and OpenAI-compatible ones with a ``base_url`` and no ``api_key_env``, need none).
    """
    if not settings.routes:
        raise ConfigError(
            "no routes are defined: add [providers.<name>], [deployments.<name>] and [routes.<name>] to tether.toml "
            "(the route name is the model clients ask for)"
        )
    used = {d for route in settings.routes.values() for tier in route.tiers for d in tier}
    missing: dict[str, list[str]] = {}
    for name in sorted(used):
        provider_name = settings.deployments[name].provider
        provider = settings.providers[provider_name]
        variable = provider_spec(provider.kind).key_env(provider)
        if variable is not None and not os.environ.get(variable):
            providers = missing.setdefault(variable, [])
            if provider_name not in providers:
                providers.append(provider_name)
    if missing:
        unset = "; ".join(f"{var} (provider {', '.join(names)})" for var, names in sorted(missing.items()))
        raise ConfigError(
            f"environment variable not set: {unset} — export the provider's API key before starting, "
            "or set api_key_env in [providers.<name>] to the variable that holds it"
        )


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, so a taken port or a bad address is one clear error before anything starts."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _open_journal(directory: str, *, fsync: bool) -> CostJournal:
    from tether.gateway.journal import CostJournal

    try:
        return CostJournal(directory, fsync=fsync)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the cost journal in {directory}: {exc.strerror or exc} — set [gateway] journal_dir in "
            "tether.toml to a writable directory"
        ) from None


async def _sweep_forever(gateway: Gateway, older_than_s: float) -> None:
    """Sweep budget reservations a dead replica left, at start-up and then every minute (or sooner)."""
    interval = min(60.0, max(older_than_s / 2, 0.5))
    while True:
        try:
            swept = await gateway.sweep_stale_reservations(timedelta(seconds=older_than_s))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store is down: try again at the next round
            logger.warning("tether gateway: sweeping stale budget reservations failed: %s", type(exc).__name__)
        else:
            if swept:
                logger.warning(
                    "tether gateway: %d stale budget reservation(s) (a replica that stopped mid-call) counted as spent",
                    swept,
                )
        await asyncio.sleep(interval)


def _server_class() -> type[uvicorn.Server]:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server with SIGTERM handled as SIGINT, on the event loop, and never re-raised.

        uvicorn catches both signals for its graceful stop and then raises the caught one again. SIGINT
        then becomes KeyboardInterrupt and the flushing ``finally`` blocks run; SIGTERM's default action
        kills the process on the spot (exit 143) before any of them. Here neither is raised again: the
        serve call returns, everything is flushed, and the process exits 0. A second signal stops
        waiting for requests in flight.
        """

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            loop = asyncio.get_running_loop()
            handled = (signal.SIGINT, signal.SIGTERM)
            for sig in handled:
                loop.add_signal_handler(sig, self.handle_exit, sig, None)
            try:
                yield
            finally:
                for sig in handled:
                    loop.remove_signal_handler(sig)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.should_exit:
                self.force_exit = True
                return
            self.should_exit = True
            logger.warning(
                "tether gateway: %s received: finishing the requests in flight (up to %gs), then stopping",
                signal.Signals(sig).name,
                self.config.timeout_graceful_shutdown,
            )

    return Server


def _server(config: uvicorn.Config) -> uvicorn.Server:
    return _server_class()(config)


def _overrun_recorder(store: TraceStore) -> Callable[[BudgetOverrun], None]:
    """What the gateway calls for a call billed above its reservation: an incident row, written off the loop.

    Severity ``low``: the provider billed more than the bound, which is not the agent's
    doing, so it never counts towards a quarantine; it is listed by ``tether incidents``.
    """
    import uuid
    from datetime import UTC, datetime

    from opentelemetry import trace as otel_trace

    from tether.guard.audit import GuardStore

    guard = GuardStore(store)

    def write(row: dict[str, object]) -> None:
        try:
            guard.write_incidents([row])
        except Exception:  # the overrun is still in the log, the span and the metric
            logging.getLogger(__name__).warning("tether: a budget overrun incident could not be stored", exc_info=True)

    def record(overrun: BudgetOverrun) -> None:
        context = otel_trace.get_current_span().get_span_context()
        row: dict[str, object] = {
            "id": uuid.uuid4().hex,
            "created_at": datetime.now(UTC),
            "severity": "low",
            "kind": "budget_overrun",
            "run_id": overrun.run_id or "",
            "agent": overrun.agent or overrun.key or "-",
            "tool": None,
            "summary": (
                f"route {overrun.route}: deployment {overrun.deployment} (model {overrun.model}) billed "
                f"${overrun.cost_usd} above its budget reservation of ${overrun.reserved_usd}"
            ),
            "evidence": (
                f"input_tokens={overrun.usage.input_tokens} output_tokens={overrun.usage.output_tokens} "
                f"key={overrun.key or '-'}"
            ),
            "trace_id": f"{context.trace_id:032x}" if context.is_valid else None,
            "span_id": f"{context.span_id:016x}" if context.is_valid else None,
            "status": "open",
        }
        asyncio.get_running_loop().run_in_executor(None, write, row)

    return record


def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    no_auth: bool = False,
    database: str | None = None,
    announce: Callable[[str, int], None] | None = None,
) -> None:
    """Run the server until SIGTERM or SIGINT; returns once everything is flushed.

    Args:
        settings: the loaded configuration.
        host, port: where to listen (port 0: any free port).
        no_auth: accept requests without a virtual key, on the admin endpoints too.
        database: the store URL (default: ``settings.store.url``).
        announce: called with the bound host and port once the socket listens (the CLI prints it).

    Raises:
        ConfigError: the configuration cannot serve a call (``check_startable``), the port cannot be
            bound, or the cost journal cannot be written.
    """
    import uvicorn
    import uvloop

    from tether.gateway.gateway import Gateway
    from tether.gateway.keys import KeyStore
    from tether.gateway.ledger import CostWriter
    from tether.guard.approvals import ApprovalStore
    from tether.guard.kill import KillStore
    from tether.server.app import ServerParts, build_app
    from tether.store import open_store
    from tether.trace.setup import configure_tracing

    check_startable(settings)
    options = settings.gateway
    journal = _open_journal(options.journal_dir, fsync=options.journal_fsync)
    sock = _bind(host, port)
    store = open_store(database or settings.store.url)
    try:
        tracing = configure_tracing(store)
        costs = CostWriter(store, journal=journal)
        # What a process that died (kill -9, OOM) left in the journal: stored before anything new.
        costs.replay()
        kills = KillStore(store, redis_url=options.redis_url)
        try:
            # Budgets and rate limits are shared (the database or Redis, as [gateway] in tether.toml
            # says), so replicas enforce one copy of every limit instead of each its own.
            gateway = Gateway.from_config(settings, store=store, cost_sink=costs, on_overrun=_overrun_recorder(store))
            keys: KeyVerifier | None = (
                None if no_auth else KeyStore(store, lookup_timeout_s=options.dependency_timeout_s)
            )
            application = build_app(
                settings,
                ServerParts(
                    store=store,
                    gateway=gateway,
                    keys=keys,
                    approvals=ApprovalStore(store),
                    kills=kills,
                    tracer=tracing.tracer,
                    no_auth=no_auth,
                ),
            )
            if announce is not None:
                bound_host, bound_port = sock.getsockname()[:2]
                announce(bound_host, bound_port)
            grace_s = options.shutdown_grace_s
            server = _server(
                uvicorn.Config(
                    application,
                    loop="none",
                    http="httptools",
                    lifespan="on",
                    access_log=False,
                    log_level="warning",
                    proxy_headers=False,
                    server_header=False,
                    # Past the grace, requests still running (streams) are cancelled: each is then
                    # settled and billed for what it used, in its own cleanup.
                    timeout_graceful_shutdown=max(grace_s, 0.01),  # type: ignore[arg-type]  # a float works
                )
            )

            async def run() -> None:
                # Everything loaded so far (modules, price data, config) lives as long as the process: out of
                # the collector's way, so a full collection scans only what requests allocate (measured: the
                # c=64 p99 tail is its pauses otherwise).
                gc.collect()
                gc.freeze()
                try:
                    # Budgets in a Redis without persistence stop the gateway here, saying what to set.
                    await gateway.start()
                except BaseException:
                    await gateway.aclose()
                    raise
                sweeper = asyncio.get_running_loop().create_task(_sweep_forever(gateway, settings.stale_reservation_s))
                try:
                    await server.serve(sockets=[sock])
                    # Requests cancelled at the grace bound (or still running after a second signal) settle
                    # in their own cleanup: let them finish it.
                    running = [task for task in server.server_state.tasks if not task.done()]
                    for task in running:
                        task.cancel()
                    if running:
                        await asyncio.wait(running, timeout=5.0)
                    if server.force_exit and server.started:
                        await server.lifespan.shutdown()  # skipped by uvicorn after a second signal
                finally:
                    sweeper.cancel()
                    await asyncio.gather(sweeper, return_exceptions=True)
                    await gateway.aclose()

            # One worker: budgets and limits are shared through the database and Redis, so scale
            # out with more processes behind a load balancer rather than uvicorn workers.
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(run())
        finally:
            costs.shutdown()
            kills.close()
            tracing.shutdown()
    finally:
        sock.close()
        store.close()
