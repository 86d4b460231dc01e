"""The kill switch: kills from the store, the kill file and in process stop watched runs, and only those."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette

from tests.gateway.proxy_support import ALICE, BOB, FakeKeys
from tests.gateway.test_proxy_endpoints import SIM_TOML, start_server, stop_server
from tests.store import conftest as store_fixtures
from tether.config import GatewayConfig
from tether.errors import StoreUnavailable, UserError
from tether.gateway.gateway import Gateway
from tether.gateway.keys import KeyScope, KeyStore, VirtualKey
from tether.guard.kill import Kill, KillStore, KillSwitch, RunWatch, parse_kill_file
from tether.guard.kill import switch as killswitch
from tether.server.admin.kills import kill_route
from tether.server.proxy import create_app
from tether.store import TraceStore, open_store

# The store tests' fixtures: a SQLite file, or a PostgreSQL schema of the test's own, per ``backend``.
backend = store_fixtures.backend
store_url = store_fixtures.store_url
store = store_fixtures.store

FAST = 0.005  # poll interval for tests: kills land within a few ms
GENEROUS_S = 0.5  # how soon a killed run must end (the target is 100 ms; this is CI-proof)


@pytest.fixture
def switch(store: TraceStore) -> Iterator[KillSwitch]:
    with KillSwitch(store, poll_interval_s=FAST) as opened:
        yield opened


@pytest.fixture
def kill_file(tmp_path: Path) -> Path:
    return tmp_path / "KILL"


def write(path: Path, text: str = "") -> None:
    """Write (or touch) a file: what an operator does to the kill file."""
    path.write_text(text)


def backdate(path: Path, seconds: float = 60) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def touch(path: Path) -> None:
    path.touch()


def remove(path: Path) -> None:
    path.unlink()


async def run_watched(
    switch: KillSwitch, run_id: str, agent: str = "oncall", body: Callable[[], Awaitable[Any]] | None = None
) -> asyncio.Task[RunWatch]:
    """A task that watches a run while awaiting ``body`` (a 60 s sleep by default), once it is watched."""
    started = asyncio.Event()

    async def run() -> RunWatch:
        async with switch.watch(run_id=run_id, agent=agent) as watch:
            started.set()
            await (body() if body is not None else asyncio.sleep(60))
        return watch

    task = asyncio.create_task(run())
    await asyncio.wait_for(started.wait(), 5)
    return task


async def ended(task: asyncio.Task[RunWatch], within: float = GENEROUS_S) -> RunWatch:
    return await asyncio.wait_for(asyncio.shield(task), within)


async def still_running(*tasks: asyncio.Task[RunWatch]) -> None:
    await asyncio.sleep(20 * FAST)  # several polls
    assert not any(t.done() for t in tasks)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --- the store --------------------------------------------------------------------------------------


def test_kill_store_records_and_lists_kills(store: TraceStore) -> None:
    kills = KillStore(store)
    first = kills.kill("run", "3f9a0c2e41d7b6a5", "runaway spend", "alice@host")
    second = kills.kill("all", None, None)

    assert len(first) == 32 and first != second
    listed = kills.list()
    assert [k.id for k in listed] == [second, first]  # newest first
    assert listed[1].target_kind == "run" and listed[1].target == "3f9a0c2e41d7b6a5"
    assert listed[1].reason == "runaway spend" and listed[1].requested_by == "alice@host"
    assert listed[0].target == "*" and listed[0].reason == "no reason given"
    assert listed[0].created_at.tzinfo is not None
    assert [k.id for k in kills.made_since(listed[0].created_at)] == [second]
    assert kills.made_since(datetime.now(UTC) + timedelta(seconds=1)) == []


def test_kill_store_stores_what_it_is_given_verbatim(store: TraceStore) -> None:
    tricky = "x'); DROP TABLE kills; --"
    KillStore(store).kill("agent", tricky, "quote ' and \" and \\")
    (kill,) = KillStore(store).list()
    assert kill.target == tricky and kill.reason == "quote ' and \" and \\"


@pytest.mark.parametrize(
    ("kind", "target", "message"),
    [
        ("process", "x", "invalid kill target kind"),
        ("run", "", "needs the run id"),
        ("agent", "  ", "needs the agent name"),
        ("run", "r" * 300, "longer than 256"),
    ],
)
def test_kill_store_refuses_malformed_targets(store: TraceStore, kind: str, target: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        KillStore(store).kill(kind, target)  # type: ignore[arg-type]
    assert KillStore(store).list() == []


# --- kills through the store -------------------------------------------------------------------------


async def test_a_kill_of_a_run_stops_that_run_only(switch: KillSwitch, store: TraceStore) -> None:
    target = await run_watched(switch, "run-1")
    other = await run_watched(switch, "run-2")

    began = time.monotonic()
    kill_id = KillStore(store).kill("run", "run-1", "stuck in a loop", "alice@host")
    watch = await ended(target)

    assert time.monotonic() - began < GENEROUS_S
    assert watch.killed and watch.kill is not None and watch.kill.id == kill_id
    assert watch.reason == "killed (run run-1 by alice@host): stuck in a loop"
    await still_running(other)


async def test_a_kill_of_an_agent_stops_its_runs_only(switch: KillSwitch, store: TraceStore) -> None:
    a1 = await run_watched(switch, "run-1", agent="oncall")
    a2 = await run_watched(switch, "run-2", agent="oncall")
    b = await run_watched(switch, "run-3", agent="billing")

    KillStore(store).kill("agent", "oncall", "paging storm")

    assert all(w.killed for w in [await ended(a1), await ended(a2)])
    await still_running(b)


async def test_a_kill_of_all_stops_every_run(switch: KillSwitch, store: TraceStore) -> None:
    tasks = [await run_watched(switch, f"run-{i}", agent=f"agent-{i % 2}") for i in range(4)]

    KillStore(store).kill("all", None, "incident 4411")

    watches = [await ended(t) for t in tasks]
    assert all(w.killed and w.reason == "killed (all runs): incident 4411" for w in watches)
    assert switch.watching == 0


async def test_a_kill_made_before_the_run_started_does_not_stop_it(switch: KillSwitch, store: TraceStore) -> None:
    kills = KillStore(store)
    kills.kill("run", "run-1", "too early")
    kills.kill("agent", "oncall", "too early")
    kills.kill("all", None, "too early")
    await asyncio.sleep(0.002)

    task = await run_watched(switch, "run-1")
    await asyncio.sleep(20 * FAST)
    assert not task.done()

    kills.kill("run", "run-1", "now")
    watch = await ended(task)
    assert watch.reason is not None and watch.reason.endswith(": now")


async def test_a_kill_through_one_replica_stops_a_run_on_another(store_url: str) -> None:
    with open_store(store_url) as store_a, open_store(store_url) as store_b:
        replica_a = KillSwitch(store_a, poll_interval_s=FAST)
        replica_b = KillSwitch(store_b, poll_interval_s=FAST)
        try:
            task = await run_watched(replica_b, "run-on-b", agent="oncall")
            local = await run_watched(replica_a, "run-on-a", agent="oncall")

            kill = replica_a.kill(agent="oncall", reason="stop them all", requested_by="ops")

            assert (await ended(local)).kill == kill  # this replica's own run: at once
            watch = await ended(task)  # the other one's: through the database
            assert watch.killed and watch.kill is not None and watch.kill.id == kill.id
            assert watch.kill.source == "store" and watch.reason == "killed (agent oncall by ops): stop them all"
        finally:
            replica_a.close()
            replica_b.close()


# --- in process -----------------------------------------------------------------------------------


async def test_in_process_kills_need_no_store() -> None:
    with KillSwitch(kill_file=None) as switch:
        task = await run_watched(switch, "run-1")
        other = await run_watched(switch, "run-2")

        kill = switch.kill(run_id="run-1", reason="test")

        watch = await ended(task, within=0.1)  # no poll: it goes straight to the run's loop
        assert watch.kill == kill and kill.source == "local"
        await still_running(other)


async def test_an_in_process_kill_made_before_the_run_started_does_not_stop_it() -> None:
    with KillSwitch() as switch:
        switch.kill(all=True)
        task = await run_watched(switch, "run-1")
        await still_running(task)


@pytest.mark.parametrize(
    "targets",
    [{}, {"run_id": "r", "agent": "a"}, {"agent": "a", "all": True}, {"run_id": "", "agent": ""}],
)
def test_a_kill_needs_exactly_one_target(targets: dict[str, Any]) -> None:
    with KillSwitch() as switch, pytest.raises(UserError, match="exactly one target"):
        switch.kill(**targets)


def test_one_switch_serves_runs_on_several_event_loops() -> None:
    """``Agent.run_sync`` makes an event loop per run: the switch's threads are not tied to one."""
    with KillSwitch() as switch:

        async def one_run(run_id: str) -> RunWatch:
            task = await run_watched(switch, run_id)
            await asyncio.to_thread(switch.kill, run_id=run_id)  # from another thread, as the poller does
            return await ended(task)

        assert asyncio.run(one_run("first")).killed
        assert asyncio.run(one_run("second")).killed


# --- what a kill interrupts -----------------------------------------------------------------------


async def test_a_run_waiting_on_a_slow_http_call_is_stopped(switch: KillSwitch, store: TraceStore) -> None:
    """A model call that hangs (a server that never answers) ends at once, its connection closed."""
    accepted = asyncio.Event()
    hung: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.append(writer)
        accepted.set()
        await reader.read()  # until the client goes away

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            task = await run_watched(
                switch, "run-1", body=lambda: client.post(f"http://127.0.0.1:{port}/v1/messages", json={"x": 1})
            )
            await asyncio.wait_for(accepted.wait(), 5)
            await asyncio.sleep(0.05)
            assert not task.done()

            began = time.monotonic()
            KillStore(store).kill("run", "run-1", "slow model")
            watch = await ended(task)
            assert watch.killed and time.monotonic() - began < GENEROUS_S
    finally:
        for writer in hung:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_the_killed_run_can_still_await_afterwards(switch: KillSwitch) -> None:
    """The kill's cancellation is taken back: the code after the watch (ending the run, writing spans) runs."""
    async with switch.watch(run_id="run-1", agent="oncall") as watch:
        switch.kill(run_id="run-1")
        await asyncio.sleep(60)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.01)  # no stray CancelledError
    assert watch.killed


async def test_a_refused_run_that_never_awaits_leaves_no_pending_cancel(kill_file: Path) -> None:
    """The refusal's cancel was never delivered (no await in the body): it must not hit the caller later."""
    write(kill_file, "all\n")
    with KillSwitch(kill_file=kill_file) as switch:
        async with switch.watch(run_id="run-1", agent="oncall") as watch:
            pass
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.01)  # no stray CancelledError
    assert watch.killed


async def test_a_body_that_swallows_the_kill_leaves_the_task_clean(switch: KillSwitch) -> None:
    async with switch.watch(run_id="run-1", agent="oncall") as watch:
        switch.kill(run_id="run-1")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(60)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.01)
    assert watch.killed


async def test_a_kill_inside_an_asyncio_timeout_is_not_a_timeout(switch: KillSwitch) -> None:
    async with asyncio.timeout(5):
        async with switch.watch(run_id="run-1", agent="oncall") as watch:
            asyncio.get_running_loop().call_later(0.01, lambda: switch.kill(run_id="run-1"))
            await asyncio.sleep(60)
    assert watch.killed
    await asyncio.sleep(0.01)


async def test_a_timeout_around_a_watched_run_still_times_out(switch: KillSwitch) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.02), switch.watch(run_id="run-1", agent="oncall") as watch:
            await asyncio.sleep(60)
    assert not watch.killed


async def test_a_timeout_inside_a_watched_run_is_the_runs_own(switch: KillSwitch) -> None:
    async with switch.watch(run_id="run-1", agent="oncall") as watch:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                await asyncio.sleep(60)
        await asyncio.sleep(0)
    assert not watch.killed


async def test_a_kill_and_a_timeout_at_once_leave_the_timeout_its_error(switch: KillSwitch) -> None:
    """Both cancel the task; the watch takes back only its own request, so the timeout still raises."""
    watch = switch.watch(run_id="run-1", agent="oncall")

    async def run() -> None:
        async with asyncio.timeout(0), watch:
            switch.kill(run_id="run-1")  # its delivery and the timeout run in the same loop turn
            await asyncio.sleep(60)

    with pytest.raises(TimeoutError):
        await run()
    assert watch.killed
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_a_caller_cancelling_a_watched_run_is_not_a_kill(switch: KillSwitch) -> None:
    task = await run_watched(switch, "run-1")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert switch.watching == 0


async def test_a_kill_in_a_task_group_leaves_its_siblings_alone(switch: KillSwitch) -> None:
    async def killed_run() -> RunWatch:
        async with switch.watch(run_id="run-1", agent="oncall") as watch:
            await asyncio.sleep(60)
        return watch

    async def sibling() -> str:
        await asyncio.sleep(0.05)
        return "done"

    async with asyncio.TaskGroup() as group:
        run = group.create_task(killed_run())
        other = group.create_task(sibling())
        await asyncio.sleep(0.01)
        switch.kill(run_id="run-1")
    assert run.result().killed and other.result() == "done"


async def test_a_watch_must_be_entered_in_a_task_once(switch: KillSwitch) -> None:
    watch = switch.watch(run_id="run-1", agent="oncall")
    async with watch:
        pass
    with pytest.raises(RuntimeError, match="entered once"):
        async with watch:
            pass


# --- the kill file --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "run_id", "agent"),
    [("run:run-1\n", "run-1", "x"), ("# stop it\nagent: oncall\n", "r", "oncall"), ("all\n", "r", "x"), ("", "r", "x")],
)
async def test_the_kill_file_kills_what_it_names(kill_file: Path, content: str, run_id: str, agent: str) -> None:
    with KillSwitch(kill_file=kill_file, poll_interval_s=FAST) as switch:
        task = await run_watched(switch, run_id, agent=agent)
        other = await run_watched(switch, "bystander", agent="bystander")
        await asyncio.sleep(3 * FAST)

        write(kill_file, content)

        watch = await ended(task)
        assert watch.kill is not None and watch.kill.source == "file"
        assert str(kill_file) in (watch.reason or "")
        if content.strip() in ("", "all"):
            assert (await ended(other)).killed
        else:
            await still_running(other)


async def test_touching_the_kill_file_again_kills_again(kill_file: Path) -> None:
    write(kill_file, "run:run-1\n")
    backdate(kill_file)
    with KillSwitch(kill_file=kill_file, poll_interval_s=FAST) as switch:
        task = await run_watched(switch, "run-1")
        await asyncio.sleep(10 * FAST)
        assert not task.done()  # there before the run started: not a kill of it

        touch(kill_file)

        assert (await ended(task)).killed


async def test_a_kill_file_that_says_all_refuses_new_runs(kill_file: Path) -> None:
    write(kill_file, "all\n")
    with KillSwitch(kill_file=kill_file, poll_interval_s=FAST) as switch:
        task = await run_watched(switch, "run-1")
        watch = await ended(task, within=0.1)
        assert watch.killed and "new runs are refused" in (watch.reason or "")

        remove(kill_file)
        task = await run_watched(switch, "run-2")
        await still_running(task)


async def test_a_kill_file_naming_a_run_does_not_refuse_new_runs(kill_file: Path) -> None:
    write(kill_file, "run:run-1\nagent:oncall\n")
    backdate(kill_file)  # written well before the run starts
    with KillSwitch(kill_file=kill_file, poll_interval_s=FAST) as switch:
        task = await run_watched(switch, "run-1", agent="oncall")
        await still_running(task)


async def test_the_kill_file_is_read_from_the_environment(kill_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_KILL_FILE", str(kill_file))
    with KillSwitch(poll_interval_s=FAST) as switch:
        assert switch.kill_file == kill_file
        task = await run_watched(switch, "run-1")
        touch(kill_file)
        assert (await ended(task)).killed


async def test_a_kill_file_caught_empty_while_being_written_is_not_all(
    kill_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``echo run:x > file`` creates an empty file, then writes: the empty moment must not kill everything."""
    monkeypatch.setattr(killswitch, "_SETTLE_S", 1.0)  # a wide window, so a slow machine cannot close it
    with KillSwitch(kill_file=kill_file, poll_interval_s=FAST) as switch:
        task = await run_watched(switch, "run-1")
        bystander = await run_watched(switch, "bystander")
        await asyncio.sleep(3 * FAST)

        touch(kill_file)
        await asyncio.sleep(10 * FAST)  # seen empty, several times
        assert not task.done() and not bystander.done()
        write(kill_file, "run:run-1\n")

        assert (await ended(task)).killed
        await still_running(bystander)


def test_kill_file_lines() -> None:
    assert parse_kill_file("run:a\nagent:b\n\n# note\nall # everything\n") == (
        [("run", "a"), ("agent", "b"), ("all", "*")],
        [],
    )
    assert parse_kill_file("") == ([("all", "*")], [])
    assert parse_kill_file("please stop\nrun:\n") == ([("all", "*")], ["please stop", "run:"])
    assert parse_kill_file("RUN: a \nnonsense\n") == ([("run", "a")], ["nonsense"])


# --- when the store fails -------------------------------------------------------------------------


class FlakyKills(KillStore):
    """A ``KillStore`` whose reads fail while ``down`` is set."""

    def __init__(self, store: TraceStore) -> None:
        super().__init__(store)
        self.down = threading.Event()
        self.failed = threading.Event()
        self.reads = 0

    def made_since(self, moment: datetime) -> list[Kill]:
        self.reads += 1
        if self.down.is_set():
            self.failed.set()
            raise StoreUnavailable("cannot use SQLite database at sqlite:///x.db: disk I/O error")
        return super().made_since(moment)


async def test_the_switch_keeps_trying_a_failing_store_and_catches_up(
    store: TraceStore, kill_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = FlakyKills(store)
    with (
        caplog.at_level(logging.WARNING, logger="tether.guard.kill"),
        KillSwitch(flaky, kill_file=kill_file, poll_interval_s=FAST) as switch,
    ):
        by_store = await run_watched(switch, "run-1")
        by_file = await run_watched(switch, "run-2")
        flaky.down.set()
        await asyncio.sleep(0.1)
        reads = flaky.reads

        # Loud, once (not once per poll), and visible to whoever asks.
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "NOT seen by this process" in errors[0].getMessage()
        assert switch.store_error is not None and "disk I/O error" in switch.store_error

        # The kill file still works while the store does not.
        write(kill_file, "run:run-2\n")
        assert (await ended(by_file)).killed

        # A kill made during the outage is found once the store is back.
        KillStore(store).kill("run", "run-1", "made while the store was down")
        flaky.failed.clear()
        assert await asyncio.to_thread(flaky.failed.wait, 3)  # still retrying (with backoff)
        assert flaky.reads > reads and not by_store.done()
        flaky.down.clear()
        watch = await ended(by_store, within=1.5)  # backoff is at most 1 s
        assert watch.reason is not None and "made while the store was down" in watch.reason
        assert switch.store_error is None
        assert any("again after" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


async def test_a_failed_recording_still_stops_local_runs(store: TraceStore) -> None:
    class Broken(KillStore):
        def add(self, kill: Kill) -> None:
            raise StoreUnavailable("database is down")

    with KillSwitch(Broken(store), poll_interval_s=FAST) as switch:
        task = await run_watched(switch, "run-1")
        with pytest.raises(StoreUnavailable):
            switch.kill(run_id="run-1")
        assert (await ended(task)).killed


# --- HTTP -----------------------------------------------------------------------------------------


def admin_keys() -> FakeKeys:
    """Alice holds an admin key (kills need one); Bob a model key."""
    return FakeKeys(
        {
            ALICE: VirtualKey(id="k1", name="alice", prefix="tk-alice", scope=KeyScope.ADMIN),
            BOB: VirtualKey(id="k2", name="bob", prefix="tk-bob", routes=("support",)),
        }
    )


def kill_client(store: TraceStore, keys: FakeKeys | None) -> httpx.AsyncClient:
    app = Starlette(routes=[kill_route(KillStore(store), keys=keys)])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


AUTH = {"authorization": f"Bearer {ALICE}"}


@pytest.mark.parametrize(
    ("body", "kind", "target"),
    [({"run_id": "run-1"}, "run", "run-1"), ({"agent": "oncall"}, "agent", "oncall"), ({"all": True}, "all", "*")],
)
async def test_post_kill_records_a_kill(store: TraceStore, body: dict[str, Any], kind: str, target: str) -> None:
    async with kill_client(store, admin_keys()) as client:
        response = await client.post("/v1/kill", json={**body, "reason": "from the pager"}, headers=AUTH)

    assert response.status_code == 202
    answer = response.json()
    (kill,) = KillStore(store).list()
    assert answer["id"] == kill.id and kill.target_kind == kind and kill.target == target
    assert kill.reason == "from the pager" and kill.requested_by == "key:alice"


async def test_post_kill_stops_a_watched_run(switch: KillSwitch, store: TraceStore) -> None:
    task = await run_watched(switch, "run-1")
    async with kill_client(store, admin_keys()) as client:
        response = await client.post("/v1/kill", json={"run_id": "run-1"}, headers={"x-api-key": ALICE})
    assert response.status_code == 202
    assert (await ended(task)).killed


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "must be a JSON object"),
        (b"[1]", "must be a JSON object"),
        (b"{}", "exactly one target"),
        (b'{"run_id": "a", "agent": "b"}', "exactly one target"),
        (b'{"all": false}', "exactly one target"),
        (b'{"all": "yes"}', "all must be true or false"),
        (b'{"run_id": 7}', "run_id must be a string"),
        (b'{"run_id": "a", "reason": ["x"]}', "reason must be a string"),
        (b'{"run": "a"}', "unknown field(s) run"),
    ],
)
async def test_post_kill_refuses_a_bad_body_clearly(store: TraceStore, body: bytes, message: str) -> None:
    async with kill_client(store, admin_keys()) as client:
        response = await client.post("/v1/kill", content=body, headers=AUTH)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]
    assert KillStore(store).list() == []


async def test_post_kill_needs_a_valid_virtual_key(store: TraceStore) -> None:
    async with kill_client(store, admin_keys()) as client:
        missing = await client.post("/v1/kill", json={"all": True})
        wrong = await client.post("/v1/kill", json={"all": True}, headers={"authorization": "Bearer tk-nope"})
    assert missing.status_code == wrong.status_code == 401
    assert "missing API key" in missing.json()["error"]["message"]
    assert KillStore(store).list() == []


async def test_post_kill_refuses_a_model_key(store: TraceStore) -> None:
    async with kill_client(store, admin_keys()) as client:
        refused = await client.post("/v1/kill", json={"all": True}, headers={"authorization": f"Bearer {BOB}"})
    assert refused.status_code == 403
    assert refused.json()["error"] == {
        "type": "permission_error",
        "message": "this needs an admin key: create one with tether keys create NAME --admin",
    }
    assert KillStore(store).list() == []


async def test_post_kill_without_auth_records_who_could_not_be_known(store: TraceStore) -> None:
    async with kill_client(store, None) as client:
        response = await client.post("/v1/kill", json={"agent": "oncall"})
    assert response.status_code == 202 and response.json()["requested_by"] == "http (no auth)"


async def test_post_kill_reports_a_store_failure_as_503(store: TraceStore) -> None:
    class Broken(KillStore):
        def add(self, kill: Kill) -> None:
            raise StoreUnavailable("cannot reach PostgreSQL at postgresql://tether@db.internal:5432/prod")

    app = Starlette(routes=[kill_route(Broken(store), keys=None)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        response = await client.post("/v1/kill", json={"all": True})
    message = response.json()["error"]["message"]
    assert response.status_code == 503 and "the store is unavailable" in message
    assert "db.internal" not in message and "5432" not in message  # the store's address is for the log only


async def test_the_proxy_app_serves_the_kill_endpoint_beside_chat(store: TraceStore) -> None:
    config = {
        "providers": {"sim": {"kind": "sim"}},
        "deployments": {"sim-claude": {"provider": "sim", "model": "claude-sonnet-4-5"}},
        "routes": {"sim": {"tiers": [["sim-claude"]]}},
    }
    gateway = Gateway(GatewayConfig.model_validate(config))
    keys = admin_keys()
    app = create_app(gateway, keys=keys, extra_routes=[kill_route(KillStore(store), keys=keys)])
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            killed = await client.post("/v1/kill", json={"run_id": "run-1"}, headers=AUTH)
            refused = await client.post("/v1/kill", json={"run_id": "run-1"})
            health = await client.get("/healthz")
    finally:
        await gateway.aclose()
    assert killed.status_code == 202 and refused.status_code == 401 and health.status_code == 200
    assert orjson.loads(killed.content)["target"] == "run-1"


async def test_tether_gateway_serve_mounts_the_kill_endpoint_behind_virtual_keys(tmp_path: Path) -> None:
    write(Path("tether.toml"), SIM_TOML)
    database = f"sqlite:///{tmp_path / 'gateway.db'}"
    with open_store(database) as store:
        _, secret = KeyStore(store).create("ops-bot", scope=KeyScope.ADMIN)
    process, url, _ = start_server("--database", database)
    try:
        with open_store(database) as store, KillSwitch(store, poll_interval_s=FAST) as switch:
            task = await run_watched(switch, "run-1")
            async with httpx.AsyncClient(base_url=url) as client:
                deadline = time.monotonic() + 20
                while True:
                    try:
                        refused = await client.post("/v1/kill", json={"run_id": "run-1"})
                        break
                    except httpx.ConnectError:
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.05)
                killed = await client.post(
                    "/v1/kill", json={"run_id": "run-1", "reason": "runbook 7"}, headers={"x-api-key": secret}
                )
            assert refused.status_code == 401 and killed.status_code == 202
            watch = await ended(task, within=2)
            assert watch.reason == "killed (run run-1 by key:ops-bot): runbook 7"
    finally:
        output = stop_server(process)
    assert "Traceback" not in output
