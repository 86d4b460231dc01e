"""``tether gateway serve``: the gateway as an HTTP proxy speaking the OpenAI and Anthropic APIs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from tether.cli import _format as fmt
from tether.errors import ConfigError

if TYPE_CHECKING:
    import uvicorn

    from tether.gateway.gateway import BudgetOverrun, Gateway
    from tether.gateway.journal import CostJournal
    from tether.gateway.keys import KeyVerifier
    from tether.store import TraceStore

logger = logging.getLogger(__name__)

app = typer.Typer(help="Run tether's gateway as an HTTP proxy for agents not built with tether.", no_args_is_help=True)


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


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on (loopback unless you mean otherwise)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port to listen on (0: any free port)")] = 4000,
    config: Annotated[
        Path | None, typer.Option("--config", help="tether.toml to read (default: ./tether.toml or TETHER_CONFIG)")
    ] = None,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            help="accept requests without a virtual key, on the admin endpoints (approvals, kill) too: "
            "local development only",
        ),
    ] = False,
    database: Annotated[
        str | None, typer.Option(help="store URL for traces, budgets, keys and costs (default: TETHER_DATABASE_URL)")
    ] = None,
) -> None:
    """Serve POST /v1/chat/completions and /v1/messages (plus /v1/models, /healthz, /readyz, /metrics, POST /v1/kill).

    Point an OpenAI SDK at http://HOST:PORT/v1, or an Anthropic SDK at
    http://HOST:PORT, with a virtual key from 'tether keys create' as the API
    key and a route name as the model. The admin endpoints (/v1/approvals,
    POST /v1/kill) take only an admin key: 'tether keys create NAME --admin'.

    SIGTERM or Ctrl-C: requests in flight get [gateway] shutdown_grace_s to
    finish, costs and spans are stored, and the exit code is 0.
    """
    import uvicorn
    import uvloop

    from tether.config import load_settings
    from tether.gateway.gateway import Gateway
    from tether.gateway.keys import KeyStore
    from tether.gateway.ledger import CostWriter
    from tether.gateway.proxy import create_app
    from tether.guard.approvals import ApprovalStore, approval_routes
    from tether.guard.killswitch import KillStore, kill_route
    from tether.store import open_store
    from tether.trace.setup import configure_tracing

    settings = load_settings(config)
    if not settings.routes:
        raise ConfigError(
            "no routes are defined: add [providers.<name>], [deployments.<name>] and [routes.<name>] to tether.toml "
            "(the route name is the model clients ask for)"
        )
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
            application = create_app(
                gateway,
                keys=keys,
                require_keys=not no_auth,
                tracer=tracing.tracer,
                # Kills and approvals take admin keys only (checked in each route; none with --no-auth).
                extra_routes=[
                    kill_route(kills, keys=keys),
                    *approval_routes(ApprovalStore(store), keys=keys),
                ],
                store=store,
            )
            bound_host, bound_port = sock.getsockname()[:2]
            url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
            auth = "[red]OFF (--no-auth)[/]" if no_auth else "[green]on[/] (virtual keys)"
            console = fmt.console()
            console.print(
                f"[bold]tether gateway[/] listening on [cyan]http://{url_host}:{bound_port}[/] · "
                f"routes: {escape(', '.join(sorted(settings.routes)))} · auth: {auth}",
                soft_wrap=True,
            )
            if no_auth:
                console.print(
                    "[bold red]⚠ --no-auth:[/] anyone who reaches this port can call every route and also "
                    "list, approve and deny approvals and kill runs (/v1/approvals, POST /v1/kill) — "
                    "local development only",
                    soft_wrap=True,
                )
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
