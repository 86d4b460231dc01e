"""Worker processes under faults: kill -9, SIGSTOP past the lease, Redis restarted empty, a poison run.

Real ``tether worker --app _workers_app:…`` processes on a fresh PostgreSQL schema and a private,
non-persistent ``redis-server``; this process submits (``Tether.asubmit``), plays the person who decides
approvals, and counts effects: ``charge`` appends its idempotency key to a file before it returns, so an
effect executed twice would show as a key twice.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
from tests.faults._support import RedisServer, tether_env, wait_until, write_toml
from tether.app import Tether
from tether.bus import open_bus
from tether.guard.approvals import ApprovalStatus

pytestmark = pytest.mark.postgres

HERE = Path(__file__).parent


class Deployment:
    """A directory with tether.toml and the app, worker processes in it, and this process's tether."""

    def __init__(self, directory: Path, database_url: str, redis: RedisServer, **workers: Any) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.redis = redis
        self.effects = directory / "effects.txt"
        self.effects.touch()
        table = {
            "redis_url": redis.url,
            "prefix": "faults",
            "embedded": False,
            "lease_s": 1.0,
            "claim_idle_s": 1.0,
            "refeed_s": 0.5,
            "max_deliveries": 200,
            "max_failures": 2,
            "concurrency": 16,
            **workers,
        }
        write_toml(
            directory / "tether.toml",
            {
                "store": {"url": database_url},
                "workers": table,
                "guard": {
                    "agents": {
                        "payer": {"tools": {"check": {}, "charge": {"approval": "never"}}},
                        "sleepy": {"tools": {"charge": {"approval": "never"}}},
                    }
                },
            },
        )
        shutil.copy(HERE / "_workers_app.py", directory / "_workers_app.py")
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.tt: Tether = tether.open(directory / "tether.toml")

    def env(self, **extra: str) -> dict[str, str]:
        return tether_env(None, EFFECTS=str(self.effects), **extra)

    def start(
        self, worker_id: str, *, app: str = "_workers_app:tt", args: tuple[str, ...] = (), **env: str
    ) -> subprocess.Popen[bytes]:
        log = (self.dir / f"{worker_id}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "tether", "worker", "--app", app, "--id", worker_id, *args],
            cwd=self.dir,
            env=self.env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes[worker_id] = process
        return process

    def log(self, worker_id: str) -> str:
        return (self.dir / f"{worker_id}.log").read_text(errors="replace")

    def live(self, n: int, timeout_s: float = 30) -> None:
        wait_until(lambda: len(self.tt.runs.workers(live_within_s=5)) >= n, timeout_s, f"{n} workers to beat")

    def submit(self, agent: str, tasks: list[str]) -> list[str]:
        async def all_of_them() -> list[str]:
            ids: list[str] = []
            for start in range(0, len(tasks), 50):
                ids += await asyncio.gather(*(self.tt.asubmit(agent, t) for t in tasks[start : start + 50]))
            return ids

        return asyncio.run(all_of_them())

    def keys(self) -> Counter[str]:
        return Counter(line.split()[0] for line in self.effects.read_text().splitlines() if line.strip())

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                with_signal(process, signal.SIGCONT)
                process.kill()
            process.wait(10)
        self.tt.close()


def with_signal(process: subprocess.Popen[bytes], signum: int) -> None:
    if process.poll() is None:
        os.kill(process.pid, signum)


@pytest.fixture
def deployment(tmp_path: Path, pg_url: str, redis_server: RedisServer) -> Iterator[Deployment]:
    found = Deployment(tmp_path / "deploy", pg_url, redis_server)
    yield found
    found.close()


def decide_like_a_person(deployment: Deployment) -> int:
    """Decide every pending approval as a careful person would: an unknown outcome whose effect is on
    record is not run again (denied); anything else is approved. Returns how many were decided."""
    tt = deployment.tt
    keys = deployment.keys()
    decided = 0
    for approval in tt.approvals.list(status=ApprovalStatus.PENDING):
        done = any(k.startswith(f"{approval.run_id}:") and k.endswith(f":{approval.call_id}") for k in keys)
        tt.approvals.decide(approval.id, approve=not done, by="test", reason="checked the effect file")
        decided += 1
    return decided


def test_kill_9_a_hundred_times_loses_no_run_and_repeats_no_effect(tmp_path: Path, pg_url: str) -> None:
    rng = random.Random(12)
    with RedisServer(tmp_path / "redis") as redis:
        deployment = Deployment(tmp_path / "deploy", pg_url, redis, concurrency=8)
        try:
            slots = [f"w{i}" for i in range(4)]
            generation = Counter[str]()
            for slot in slots:
                deployment.start(f"{slot}-0", MODEL_S="0.1")
            deployment.live(len(slots))
            tt = deployment.tt
            ids = deployment.submit("payer", [f"pay order-{i}" for i in range(100)])
            kills = 0
            deadline = time.monotonic() + 90
            while kills < 100:
                assert time.monotonic() < deadline, f"only {kills} kills in time: {tt.runs.counts()}"
                time.sleep(rng.uniform(0.3, 0.5))
                decide_like_a_person(deployment)
                if tt.runs.counts().get("pending", 0) < 40:  # keep work queued, so every kill lands on runs
                    ids += deployment.submit("payer", [f"pay order-{len(ids) + i}" for i in range(40)])
                holders = {r.lease_owner for r in tt.runs.list(statuses=["running"], limit=1000) if r.lease_owner}
                alive = [w for w, p in deployment.processes.items() if p.poll() is None]
                # Mostly workers in the middle of runs; now and then one that is starting or idle.
                victims = [w for w in alive if w in holders] or alive
                victim = rng.choice(victims)
                deployment.processes[victim].kill()
                deployment.processes[victim].wait(10)
                kills += 1
                slot = victim.split("-")[0]
                generation[slot] += 1
                deployment.start(f"{slot}-{generation[slot]}", MODEL_S="0.1")

            def all_finished() -> bool:
                decide_like_a_person(deployment)
                return all(r.status in ("finished", "dead") for r in tt.runs.list(limit=10_000))

            try:
                wait_until(all_finished, 60, "every run to finish after the kills")
            except AssertionError as exc:
                stuck = [
                    (r.run_id, r.status, r.lease_owner, r.deliveries, r.stream_id, r.parked_on, r.error)
                    for r in tt.runs.list(statuses=["pending", "running", "parked"], limit=20)
                ]
                owners = {owner for _, _, owner, *_ in stuck if owner}
                for owner in owners:
                    with_signal(deployment.processes[owner], signal.SIGUSR1)
                time.sleep(1)  # the stacks are diagnostics, not proof: give the workers a moment to write them
                logs = {owner: deployment.log(owner)[-12000:] for owner in owners}
                raise AssertionError(f"{exc}: {tt.runs.counts()}; stuck: {stuck}; logs: {logs}") from None
            records = {r.run_id: r for r in tt.runs.list(limit=10_000)}
            assert set(ids) <= set(records)
            lost = [r for r in records.values() if r.status != "finished" or r.stop_reason != "completed"]
            assert lost == [], [(r.run_id, r.status, r.stop_reason, r.error, r.dead_reason) for r in lost]
            keys = deployment.keys()
            twice = {k: n for k, n in keys.items() if n > 1}
            assert twice == {}
            charged = {k.split(":")[0] for k in keys}
            assert charged == set(ids)  # every run charged, exactly once
            taken_over = sum(1 for r in records.values() if r.deliveries > 1)
            assert taken_over >= 20, f"only {taken_over} runs were taken over: the kills missed the runs"
        finally:
            deployment.close()


def test_a_worker_paused_past_its_lease_cannot_write_and_the_effect_happens_once(deployment: Deployment) -> None:
    tt = deployment.tt
    first = deployment.start("paused", SLEEPY_S="2")
    deployment.live(1)
    [run_id] = deployment.submit("sleepy", ["charge order-S"])
    wait_until(lambda: tt.runs.get(run_id).lease_owner == "paused", 20, "the first worker to take the run")
    with_signal(first, signal.SIGSTOP)
    try:
        deployment.start("taker", SLEEPY_S="2")
        record = wait_until(
            lambda: (r := tt.runs.get(run_id)).status == "finished" and r, 30, "the other worker to finish it"
        )
    finally:
        with_signal(first, signal.SIGCONT)
    assert record.worker == "taker"
    assert record.stop_reason == "completed"
    wait_until(lambda: "LeaseLost" in deployment.log("paused"), 20, "the paused worker to find its lease lost")
    assert list(deployment.keys().values()) == [1]
    assert tt.runs.get(run_id).worker == "taker"  # the stale worker's writes did not land
    assert first.poll() is None  # it goes on working


def test_redis_restarted_empty_with_500_runs_queued_all_complete(deployment: Deployment) -> None:
    tt = deployment.tt
    ids = deployment.submit("quick", [f"quick {i}" for i in range(500)])
    deployment.start("a")
    deployment.start("b")
    wait_until(lambda: tt.runs.counts().get("finished", 0) >= 20, 60, "the first runs to finish")
    deployment.redis.restart(empty=True)
    wait_until(lambda: tt.runs.counts().get("finished", 0) == 500, 90, "all 500 runs to finish")
    records = [tt.runs.get(run_id) for run_id in ids]
    assert Counter(r.stop_reason for r in records) == {"completed": 500}


def test_a_poison_run_is_dead_lettered_with_its_reason_and_the_queue_keeps_moving(deployment: Deployment) -> None:
    tt = deployment.tt
    deployment.start("a", app="_workers_app:registry")
    [poison] = deployment.submit("poison", ["eat this"])
    good = deployment.submit("quick", [f"quick {i}" for i in range(20)])
    dead = wait_until(lambda: (r := tt.runs.get(poison)).status == "dead" and r, 30, "the poison run to die")
    assert "POISON_API_KEY is not set" in (dead.dead_reason or "")
    assert "more detail" not in (dead.dead_reason or "")  # the first line only
    assert dead.failures == 2
    wait_until(lambda: all(tt.runs.get(r).status == "finished" for r in good), 30, "the good runs to finish")

    async def letters() -> list[Any]:
        bus = open_bus(deployment.redis.url, prefix="faults")
        try:
            return await bus.dead()
        finally:
            await bus.close()

    [letter] = asyncio.run(letters())
    assert letter.message.run_id == poison
    assert "POISON_API_KEY" in letter.reason


def test_sigterm_drains_releases_what_did_not_end_and_exits_0(deployment: Deployment) -> None:
    tt = deployment.tt
    leaving = deployment.start("leaving", args=("--drain-timeout", "0.3"), SLEEPY_S="3")
    deployment.live(1)
    [run_id] = deployment.submit("sleepy", ["charge order-T"])
    wait_until(lambda: tt.runs.get(run_id).lease_owner == "leaving", 20, "the worker to take the run")
    leaving.send_signal(signal.SIGTERM)
    assert leaving.wait(30) == 0
    assert "released run" in deployment.log("leaving")
    released = tt.runs.get(run_id)
    assert released.status == "pending" and released.lease_owner is None
    deployment.start("staying", SLEEPY_S="0.1")
    done = wait_until(lambda: (r := tt.runs.get(run_id)).status == "finished" and r, 30, "another worker to finish it")
    assert done.stop_reason == "completed" and done.worker == "staying"
    assert list(deployment.keys().values()) == [1]
    assert [w.status for w in tt.runs.workers(live_within_s=None) if w.worker_id == "leaving"] == ["stopped"]
