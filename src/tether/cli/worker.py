"""``tether worker``: one worker process, working the runs submitted to the queue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from tether.workers import AppTarget

__all__ = ["worker"]

APP_HELP = (
    "the agents: module:object, a Tether, an AgentRegistry or a function returning one (from the current directory)"
)


def worker(
    app: Annotated[str, typer.Option("--app", help=APP_HELP)],
    concurrency: Annotated[
        int | None, typer.Option(min=1, max=10_000, help="runs at once (default [workers] concurrency, 64)")
    ] = None,
    worker_id: Annotated[str | None, typer.Option("--id", help="this worker's name (default host-pid-xxxx)")] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="serve /metrics (Prometheus) and /healthz on 127.0.0.1:PORT"),
    ] = None,
    drain_timeout: Annotated[
        float, typer.Option(min=0, help="on SIGTERM, seconds runs in progress get to end before they are released")
    ] = 30.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Work submitted runs: take them off the bus, hold a lease on each, resume, park, finish.

    Any number of workers on any machines share the queue (Redis at [workers] or [gateway] redis_url) and
    the store. SIGTERM or Ctrl-C: stop taking runs, let those in progress end (up to --drain-timeout),
    give the rest back to the queue, exit 0. SIGUSR1: write where every run and thread is to the log.
    """
    import asyncio
    import logging

    from tether.errors import ConfigError
    from tether.workers import load_app

    level = logging.getLevelNamesMapping().get(log_level.upper())
    if level is None:
        raise ConfigError(f"--log-level {log_level!r}: use debug, info, warning or error")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    target = load_app(app)
    asyncio.run(_work(target, concurrency, worker_id, metrics_port, drain_timeout))


async def _work(
    target: AppTarget, concurrency: int | None, worker_id: str | None, metrics_port: int | None, drain_timeout: float
) -> None:
    import asyncio
    import contextlib
    import logging
    import signal

    from tether.workers import Worker, serve_metrics, worker_executor

    tt = target.tt
    worker = Worker(tt, target.registry, worker_id=worker_id, concurrency=concurrency, drain_timeout_s=drain_timeout)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(worker_executor(worker.concurrency))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _dump_stacks)
    server = None
    if metrics_port is not None:
        server = await serve_metrics(worker, metrics_port)
        port = server.sockets[0].getsockname()[1]
        logging.getLogger("tether.workers").info(
            "worker %s: metrics on http://127.0.0.1:%d/metrics", worker.worker_id, port
        )
    try:
        await worker.run(stop=stop)
    finally:
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
        await tt.aclose()


def _dump_stacks() -> None:
    """Where every task and thread of this worker is now (SIGUSR1), for a run that seems stuck."""
    import asyncio
    import faulthandler
    import io
    import logging
    import sys

    out = io.StringIO()
    for task in asyncio.all_tasks():
        out.write(f"--- task {task.get_name()}\n")
        task.print_stack(file=out)
    logging.getLogger("tether.workers").warning("stacks of the worker's tasks:\n%s", out.getvalue())
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
