"""A worker's figures: what it runs now, and how the queue behind it looks.

``Worker.stats()`` is this process's view (running, concurrency, per agent); ``collect`` adds the
queue's (depth, pending, oldest age, dead letters from ``Bus.stats()``; the oldest pending run from
the runs table — the record, so it counts runs the stream lost too). ``tether worker --metrics-port P``
serves them on loopback as Prometheus text (``/metrics``) with a ``/healthz``; off by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tether.workers.stats import WorkerStats

if TYPE_CHECKING:
    from tether.workers.worker import Worker

__all__ = ["Metrics", "WorkerStats", "collect", "prometheus_text", "serve_metrics"]

logger = logging.getLogger("tether.workers")


@dataclass(frozen=True, slots=True)
class Metrics:
    """A worker's figures and the queue's.

    Attributes:
        worker: the worker's own.
        queue_depth: entries not delivered yet; None when the bus could not be asked.
        queue_pending: delivered, not acked.
        queue_oldest_age_s: age of the oldest entry not delivered or not acked.
        dead_letters: entries in the dead-letter stream.
        oldest_pending_age_s: age of the oldest pending run in the runs table.
        bus_resets: times the bus found its stream gone and recreated it.
    """

    worker: WorkerStats
    queue_depth: int | None = None
    queue_pending: int | None = None
    queue_oldest_age_s: float | None = None
    dead_letters: int | None = None
    oldest_pending_age_s: float | None = None
    bus_resets: int = 0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values."""
        return asdict(self)


async def collect(worker: Worker) -> Metrics:
    """The worker's stats and the queue's, each figure None when its source cannot be read now."""
    from tether.bus import BusUnavailable
    from tether.errors import StoreError

    depth = pending = dead = None
    oldest_entry = oldest_run = None
    with contextlib.suppress(BusUnavailable):
        stats = await worker.bus.stats()
        depth, pending, oldest_entry, dead = stats.depth, stats.pending, stats.oldest_age_s, stats.dead
    with contextlib.suppress(StoreError):
        oldest_run = await asyncio.to_thread(worker.records.oldest_pending_age_s)
    return Metrics(
        worker=worker.stats(),
        queue_depth=depth,
        queue_pending=pending,
        queue_oldest_age_s=oldest_entry,
        dead_letters=dead,
        oldest_pending_age_s=oldest_run,
        bus_resets=worker.bus.resets,
    )


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(metrics: Metrics) -> str:
    """The figures in Prometheus' text format (a gauge or counter each, labelled by worker)."""
    w = metrics.worker
    worker = f'worker="{_label(w.worker_id)}"'
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float | None]]) -> None:
        present = [(labels, value) for labels, value in samples if value is not None]
        if not present:
            return
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in present:
            lines.append(f"{name}{{{labels}}} {value:g}")

    metric("tether_worker_concurrency", "gauge", "Runs the worker works at once at most.", [(worker, w.concurrency)])
    metric("tether_worker_running", "gauge", "Runs the worker holds the lease of now.", [(worker, w.running)])
    metric("tether_worker_waiting", "gauge", "Deliveries held for an agent at its limit.", [(worker, w.waiting)])
    metric(
        "tether_worker_agent_running",
        "gauge",
        "Running runs per agent.",
        [(f'{worker},agent="{_label(agent)}"', n) for agent, n in sorted(w.agents.items())],
    )
    metric(
        "tether_worker_runs_total",
        "counter",
        "Runs the worker handled, by outcome.",
        [(f'{worker},outcome="{_label(outcome)}"', n) for outcome, n in sorted(w.counts.items())],
    )
    metric(
        "tether_worker_refeeds_total",
        "counter",
        "Runs published again after the stream lost them.",
        [(worker, w.refeeds)],
    )
    metric("tether_queue_depth", "gauge", "Entries not delivered yet.", [(worker, metrics.queue_depth)])
    metric("tether_queue_pending", "gauge", "Entries delivered and not acked.", [(worker, metrics.queue_pending)])
    metric(
        "tether_queue_oldest_age_seconds",
        "gauge",
        "Age of the oldest entry not delivered or not acked.",
        [(worker, metrics.queue_oldest_age_s)],
    )
    metric("tether_queue_dead_letters", "gauge", "Entries in the dead-letter stream.", [(worker, metrics.dead_letters)])
    metric(
        "tether_runs_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest pending run in the runs table.",
        [(worker, metrics.oldest_pending_age_s)],
    )
    metric(
        "tether_bus_resets_total",
        "counter",
        "Times the stream was found missing and recreated.",
        [(worker, metrics.bus_resets)],
    )
    return "\n".join(lines) + "\n"


async def serve_metrics(worker: Worker, port: int, host: str = "127.0.0.1") -> asyncio.Server:
    """Serve ``GET /metrics`` (Prometheus text) and ``GET /healthz`` on ``host:port`` (loopback by default).

    A plain asyncio server: one request per connection, nothing else to install or run.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, _, rest = request.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method != "GET":
                status, body, kind = "405 Method Not Allowed", "GET only\n", "text/plain"
            elif path == "/metrics":
                status, kind = "200 OK", "text/plain; version=0.0.4"
                body = prometheus_text(await collect(worker))
            elif path == "/healthz":
                healthy = worker.status in ("starting", "running")
                status = "200 OK" if healthy else "503 Service Unavailable"
                body, kind = f"{worker.status}\n", "text/plain"
            else:
                status, body, kind = "404 Not Found", "try /metrics or /healthz\n", "text/plain"
            data = body.encode()
            writer.write(
                f"HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {len(data)}\r\n"
                "connection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            logger.exception("worker %s: the metrics endpoint failed", worker.worker_id)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port)
