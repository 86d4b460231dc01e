"""Workers: runs/s with 1, 2 and 4 `tether worker` processes, queue-to-start latency, distributed kill p99,
and how many concurrent runs one worker holds at 50 ms model latency.

Everything is real: worker processes started with ``tether worker --app _workers_app:tt`` (the agents in
``benchmarks/_workers_app.py``: the simulated model, durable runs, spans into the store), the machine's
PostgreSQL (a fresh schema per measurement) and Redis Streams (the machine's Redis, a fresh key prefix).
Runs are submitted with ``Tether.asubmit`` from this process, which runs no worker of its own.

- **runs/s**: ``quick`` runs (2 model calls, 1 tool call), all submitted at once; from the first
  submission to the last run's end, by the database's clock (``submitted_ms`` .. ``finished_ms``).
- **queue-to-start**: ``started_ms - submitted_ms`` of runs submitted at a steady 20/s to 2 workers (an
  unloaded queue: what a run waits for a worker, not for a backlog).
- **distributed kill**: ``slow`` runs (a 60 s model call) spread over 2 workers; each is killed with
  ``tt.kills.kill(run_id=...)`` (recorded in the store, published on Redis) and timed until its row is
  ``finished`` (polled every 2 ms), one after another.
- **concurrency at 50 ms**: one worker at ``concurrency`` 8, 32 and 256 and ``long`` runs (9 model calls of
  50 ms: 450 ms of model time); runs in flight sampled every 100 ms, and their duration against the
  ideal 450 ms (a worker that falls behind stretches every run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

BENCH = "workers"
POSTGRES_URL = os.environ.get("TETHER_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TETHER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
HERE = Path(__file__).resolve().parent
CORES = os.cpu_count() or 0
MACHINE = f"{CORES} cores, workers + PostgreSQL + Redis + this process on one machine"


def _row(metric: str, value: float, unit: str, target: str, ok: bool, notes: str) -> dict[str, Any]:
    return {
        "benchmark": BENCH,
        "metric": metric,
        "value": value,
        "unit": unit,
        "target": target,
        "ok": bool(ok),
        "notes": f"{notes} ({MACHINE})".replace("|", "/"),
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@contextlib.contextmanager
def _schema() -> Iterator[str]:
    name = f"tether_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_URL)
    try:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{name}"')
        yield (
            sa.make_url(POSTGRES_URL)
            .update_query_dict({"options": f"-csearch_path={name}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        admin.dispose()


class _Deployment:
    """A tether.toml in a temporary directory, N worker processes, and this process's own Tether."""

    def __init__(self, database_url: str, *, latency_ms: float, concurrency: int = 256) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tether-bench-workers-"))
        self.prefix = f"bench{uuid.uuid4().hex[:8]}"
        self.latency_ms = latency_ms
        (self.dir / "tether.toml").write_text(
            "[store]\n"
            f'url = "{database_url}"\n'
            "[workers]\n"
            f'redis_url = "{REDIS_URL}"\n'
            f'prefix = "{self.prefix}"\n'
            f"concurrency = {concurrency}\n"
            "embedded = false\n"
            "lease_s = 30\n"
        )
        shutil.copy(HERE / "_workers_app.py", self.dir / "_workers_app.py")
        self.workers: list[subprocess.Popen[bytes]] = []
        self.tt: Any = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "OTEL_"))}
        env["BENCH_LATENCY_MS"] = str(self.latency_ms)
        env["PYTHONPATH"] = str(self.dir)
        return env

    def start_workers(self, n: int) -> None:
        tether_cli = [sys.executable, "-m", "tether"]
        for i in range(n):
            log = (self.dir / f"worker{i}.log").open("wb")
            self.workers.append(
                subprocess.Popen(
                    [*tether_cli, "worker", "--app", "_workers_app:tt", "--id", f"w{i}"],
                    cwd=self.dir,
                    env=self.env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def open(self) -> Any:
        import tether

        os.environ["BENCH_LATENCY_MS"] = str(self.latency_ms)
        sys.path.insert(0, str(self.dir))
        self.tt = tether.open(self.dir / "tether.toml")
        return self.tt

    def wait_for_workers(self, n: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.tt.runs.workers(live_within_s=10.0)) >= n:
                return
            for proc in self.workers:
                if proc.poll() is not None:
                    raise RuntimeError(f"a worker exited with {proc.returncode}: see {self.dir}")
            time.sleep(0.1)
        raise RuntimeError(f"{n} workers did not report within {timeout_s:.0f} s: see {self.dir}")

    def close(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.tt is not None:
            asyncio.run(self._close_bus())
            self.tt.close()
        with contextlib.suppress(ValueError):
            sys.path.remove(str(self.dir))
        shutil.rmtree(self.dir, ignore_errors=True)

    async def _close_bus(self) -> None:
        # The benchmark's streams go with it.
        from redis.asyncio import Redis

        client = Redis.from_url(REDIS_URL)
        try:
            keys = [key async for key in client.scan_iter(match=f"{self.prefix}:*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


async def _submit_all(tt: Any, agent: str, n: int, batch: int = 64) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, batch):
        ids += await asyncio.gather(
            *(tt.asubmit(agent, f"{agent} task {i}") for i in range(start, min(n, start + batch)))
        )
    return ids


def _wait_finished(tt: Any, ids: list[str], timeout_s: float, sample: Callable[[], None] | None = None) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counts = tt.runs.counts()
        if counts.get("finished", 0) + counts.get("dead", 0) >= len(ids):
            return [tt.runs.get(run_id) for run_id in ids]
        if sample is not None:
            sample()
        time.sleep(0.1)
    counts = tt.runs.counts()
    raise RuntimeError(f"runs did not finish within {timeout_s:.0f} s: {counts}")


def _throughput(workers: int, latency_ms: float, runs: int) -> tuple[float, list[Any]]:
    with _schema() as url:
        deployment = _Deployment(url, latency_ms=latency_ms)
        try:
            tt = deployment.open()
            deployment.start_workers(workers)
            deployment.wait_for_workers(workers)
            ids = asyncio.run(_submit_all(tt, "quick", runs))
            records = _wait_finished(tt, ids, timeout_s=600)
        finally:
            deployment.close()
    bad = [r for r in records if r.stop_reason != "completed"]
    if bad:
        raise RuntimeError(f"{len(bad)} of {runs} runs did not complete, e.g. {bad[0].stop_reason}: {bad[0].error}")
    first = min(r.submitted_ms for r in records)
    last = max(r.finished_ms for r in records)
    return runs / ((last - first) / 1000), records


def _queue_to_start(runs: int = 200, rate: float = 20.0) -> list[float]:
    with _schema() as url:
        deployment = _Deployment(url, latency_ms=0)
        try:
            tt = deployment.open()
            deployment.start_workers(2)
            deployment.wait_for_workers(2)

            async def paced() -> list[str]:
                ids = []
                for i in range(runs):
                    ids.append(await tt.asubmit("quick", f"quick paced {i}"))
                    await asyncio.sleep(1 / rate)
                return ids

            ids = asyncio.run(paced())
            records = _wait_finished(tt, ids, timeout_s=300)
        finally:
            deployment.close()
    return [float(r.started_ms - r.submitted_ms) for r in records]


def _kill_latencies(runs: int = 40) -> list[float]:
    with _schema() as url:
        deployment = _Deployment(url, latency_ms=0)
        try:
            tt = deployment.open()
            deployment.start_workers(2)
            deployment.wait_for_workers(2)
            ids = asyncio.run(_submit_all(tt, "slow", runs))
            deadline = time.monotonic() + 60
            while tt.runs.counts().get("running", 0) < runs:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"slow runs did not all start: {tt.runs.counts()}")
                time.sleep(0.05)
            latencies = []
            for run_id in ids:
                began = time.perf_counter()
                tt.kills.kill(run_id=run_id, reason="benchmark")
                while tt.runs.get(run_id).status != "finished":
                    if time.perf_counter() - began > 30:
                        raise RuntimeError(f"run {run_id} was not killed within 30 s")
                    time.sleep(0.002)
                latencies.append((time.perf_counter() - began) * 1000)
        finally:
            deployment.close()
    return latencies


def _concurrency_at_50ms(runs: int = 1200, concurrency: int = 256) -> tuple[int, float, float, float]:
    in_flight: list[int] = []
    with _schema() as url:
        deployment = _Deployment(url, latency_ms=50, concurrency=concurrency)
        try:
            tt = deployment.open()
            deployment.start_workers(1)
            deployment.wait_for_workers(1)
            ids = asyncio.run(_submit_all(tt, "long", runs))

            def sample() -> None:
                in_flight.append(tt.runs.counts().get("running", 0))

            records = _wait_finished(tt, ids, timeout_s=900, sample=sample)
        finally:
            deployment.close()
    durations = [float(r.finished_ms - r.started_ms) for r in records if r.started_ms is not None]
    first = min(r.submitted_ms for r in records)
    last = max(r.finished_ms for r in records)
    return (
        max(in_flight, default=0),
        statistics.median(durations),
        _percentile(durations, 0.99),
        runs / ((last - first) / 1000),
    )


def run(log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for latency in (0.0, 50.0):
        for workers in (1, 2, 4):
            n = 600 if latency == 0 else 1000
            try:
                rate, _ = _throughput(workers, latency, n)
            except Exception as exc:  # one measurement failing must not lose the others
                rows.append(
                    _row(
                        f"runs/s, {workers} worker(s), model {latency:g} ms",
                        float("nan"),
                        "runs/s",
                        "measured",
                        False,
                        f"failed: {exc}",
                    )
                )
                continue
            log(f"  {workers} worker(s), {latency:g} ms: {rate:,.0f} runs/s")
            rows.append(
                _row(
                    f"runs/s, {workers} worker(s), model {latency:g} ms",
                    rate,
                    "runs/s",
                    "measured",
                    True,
                    f"{n} quick runs (2 model calls, 1 tool call each) submitted at once",
                )
            )
    try:
        waits = _queue_to_start()
        log(f"  queue-to-start p50 {_percentile(waits, 0.5):.0f} ms, p99 {_percentile(waits, 0.99):.0f} ms")
        rows.append(
            _row(
                "queue-to-start p50",
                _percentile(waits, 0.5),
                "ms",
                "measured",
                True,
                f"{len(waits)} runs at 20/s, 2 workers; database clock",
            )
        )
        rows.append(
            _row(
                "queue-to-start p99",
                _percentile(waits, 0.99),
                "ms",
                "measured",
                True,
                f"{len(waits)} runs at 20/s, 2 workers; database clock",
            )
        )
    except Exception as exc:
        rows.append(_row("queue-to-start", float("nan"), "ms", "measured", False, f"failed: {exc}"))
    try:
        kills = _kill_latencies()
        p99 = _percentile(kills, 0.99)
        log(f"  distributed kill p50 {_percentile(kills, 0.5):.0f} ms, p99 {p99:.0f} ms")
        rows.append(
            _row(
                "distributed kill p99",
                p99,
                "ms",
                "≤ 1,000 ms",
                p99 <= 1000,
                f"{len(kills)} running runs on 2 workers, kill → row finished; p50 "
                f"{_percentile(kills, 0.5):.0f} ms, max {max(kills):.0f} ms",
            )
        )
    except Exception as exc:
        rows.append(_row("distributed kill p99", float("nan"), "ms", "≤ 1,000 ms", False, f"failed: {exc}"))
    ideal = 9 * 50.0
    held = 0
    for concurrency in (8, 32, 256):
        name = f"one worker, 50 ms model, concurrency {concurrency}"
        try:
            peak, p50, p99, rate = _concurrency_at_50ms(runs=max(40, 2 * concurrency), concurrency=concurrency)
        except Exception as exc:
            rows.append(_row(name, float("nan"), "runs", "≥ 200 without falling behind", False, f"failed: {exc}"))
            continue
        keeps_up = p50 <= 1.5 * ideal
        if keeps_up:
            held = max(held, peak)
        log(f"  one worker at 50 ms, concurrency {concurrency}: {peak} in flight, run p50 {p50:.0f} ms")
        rows.append(
            _row(
                name,
                peak,
                "runs in flight",
                "≥ 200 without falling behind",
                peak >= 200 and keeps_up,
                f"run duration p50 {p50:.0f} ms / p99 {p99:.0f} ms against an ideal {ideal:.0f} ms "
                f"(9 model calls); {rate:,.1f} runs/s; {'keeps up' if keeps_up else 'falls behind'}",
            )
        )
    rows.append(
        _row(
            "concurrent runs one worker holds at 50 ms",
            held,
            "runs",
            "≥ 200",
            held >= 200,
            "the most runs in flight with run p50 ≤ 1.5 × the ideal 450 ms, over the concurrencies above",
        )
    )
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
