"""A worker's figures: ``Worker.stats()``, ``collect`` and the optional ``/metrics`` + ``/healthz`` endpoint."""

from __future__ import annotations

import asyncio

from tests.workers.conftest import Infra, working
from tether.testing import FunctionModel, text_response
from tether.workers import await_run, collect, serve_metrics, submit_run


async def get(port: int, path: str) -> tuple[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.decode().partition("\r\n\r\n")
    return head.split("\r\n", 1)[0], body


async def test_metrics_show_the_worker_and_the_queue(infra: Infra) -> None:
    tt = infra.tether()
    tt.agent("echo", FunctionModel(lambda request: text_response("hi")))
    queued, _ = await submit_run(tt.runs, tt.bus, tt.tracer, "nobody-runs-this", "wait")
    async with working(tt, concurrency=5, agent_limits={"echo": 2}) as running:
        record, _ = await submit_run(tt.runs, tt.bus, tt.tracer, "echo", "hello")
        await await_run(tt.runs, record.run_id, timeout_s=15)
        metrics = await collect(running.worker)
        assert metrics.worker.concurrency == 5
        assert metrics.worker.counts["completed"] == 1
        assert metrics.oldest_pending_age_s is not None and metrics.oldest_pending_age_s >= 0
        server = await serve_metrics(running.worker, 0)
        try:
            port = server.sockets[0].getsockname()[1]
            status, body = await get(port, "/metrics")
            assert status == "HTTP/1.1 200 OK"
            worker = f'worker="{running.worker.worker_id}"'
            assert f"tether_worker_concurrency{{{worker}}} 5" in body
            assert f'tether_worker_runs_total{{{worker},outcome="completed"}} 1' in body
            assert "tether_queue_depth" in body and "tether_runs_oldest_pending_age_seconds" in body
            assert (await get(port, "/healthz"))[0] == "HTTP/1.1 200 OK"
            assert (await get(port, "/nope"))[0] == "HTTP/1.1 404 Not Found"
        finally:
            server.close()
            await server.wait_closed()
    assert tt.runs.get(queued.run_id).status in ("pending", "running")
