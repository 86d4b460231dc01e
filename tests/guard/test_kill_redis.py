"""Kills over Redis pub/sub: the fast path arrives at once, the store's poll still catches everything, once.

Every test uses the machine's Redis (``TETHER_TEST_REDIS_URL``, default
``redis://127.0.0.1:6379/0``; never skipped) on a channel of its own, except
where a command under test only knows the default channel.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from typer.testing import CliRunner

from tests.conftest import REDIS_URL
from tests.gateway.test_proxy_endpoints import SIM_TOML, start_server, stop_server
from tests.guard.test_killswitch import FAST, ended, run_watched
from tests.store import conftest as store_fixtures
from tether.cli import app
from tether.errors import ConfigError
from tether.guard.kill import Kill, KillStore, KillSwitch, new_kill
from tether.guard.kill.redis import KillPublisher, decode_kill, encode_kill
from tether.server.admin.kills import kill_route
from tether.store import TraceStore, open_store

# A SQLite file, or a PostgreSQL schema of the test's own, per ``backend``.
backend = store_fixtures.backend
store_url = store_fixtures.store_url
store = store_fixtures.store

SLOW_POLL = 30.0  # a poll this far apart cannot be what stopped a run within a second
WITHIN_S = 1.0  # how soon a kill over Redis must stop a run (it takes ~1 ms; this is CI-proof)


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client: to publish what the test wants and to look at subscriptions."""
    made = redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        made.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"the test Redis at {redis_url} is not running ({exc}): start it, e.g. with .ci/run")
    yield made
    made.close()


@pytest.fixture
def channel(client: redis.Redis) -> str:
    """A channel no other test uses."""
    return f"tether-test:{uuid.uuid4().hex}:kills"


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[TraceStore]:
    """For the tests where the database plays no part."""
    with open_store(f"sqlite:///{tmp_path / 'tether.db'}") as opened:
        yield opened


@pytest.fixture
def closed_redis_url() -> str:
    """A Redis URL on a loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


async def subscribers(client: redis.Redis, channel: str, *, count: int = 1, within: float = 5.0) -> None:
    """Wait until ``count`` connections listen on ``channel``."""
    deadline = time.monotonic() + within
    while (dict(client.pubsub_numsub(channel)).get(channel.encode(), 0)) != count:
        assert time.monotonic() < deadline, f"{channel} never had {count} subscriber(s)"
        await asyncio.sleep(0.01)


async def listening(switch: KillSwitch, within: float = 5.0) -> None:
    """Wait until ``switch`` is subscribed on Redis."""
    deadline = time.monotonic() + within
    while not switch.redis_listening:
        assert time.monotonic() < deadline, "the switch never subscribed"
        await asyncio.sleep(0.01)


def write_config(text: str) -> None:
    """Write ./tether.toml (each test runs in a directory of its own)."""
    Path("tether.toml").write_text(text)


def redis_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tether-killswitch-redis"]


# --- the fast path ----------------------------------------------------------------------------------


async def test_a_kill_recorded_with_redis_stops_a_run_at_once_not_at_the_next_poll(
    store: TraceStore, store_url: str, redis_url: str, channel: str, client: redis.Redis
) -> None:
    with (
        KillSwitch(store, poll_interval_s=SLOW_POLL, redis_url=redis_url, redis_channel=channel) as switch,
        open_store(store_url) as other,  # the killer's own engine, as `tether kill` opens it
    ):
        task = await run_watched(switch, "run-1")
        spared = await run_watched(switch, "run-2", agent="billing")
        await subscribers(client, channel)
        kills = KillStore(other, redis_url=redis_url, channel=channel)
        began = time.monotonic()
        await asyncio.to_thread(kills.kill, "agent", "oncall", "runaway spend", "alice@host")
        watch = await ended(task, within=WITHIN_S)
        took = time.monotonic() - began
        kills.close()

        assert watch.kill is not None and watch.kill.source == "redis", "it came over Redis, not by a poll"
        assert watch.reason == "killed (agent oncall by alice@host): runaway spend"
        assert took < WITHIN_S
        assert not spared.done()
        assert switch.kills_applied == {"redis": 1}
        # The store is still the record of it.
        (recorded,) = KillStore(store).list()
        assert recorded.id == watch.kill.id and recorded.created_at == watch.kill.created_at
        spared.cancel()


async def test_a_kill_that_arrives_both_ways_is_applied_once(
    store: TraceStore, redis_url: str, channel: str, client: redis.Redis
) -> None:
    with KillSwitch(store, poll_interval_s=FAST, redis_url=redis_url, redis_channel=channel) as switch:
        runs = [await run_watched(switch, f"run-{i}") for i in range(3)]
        await subscribers(client, channel)
        kills = KillStore(store, redis_url=redis_url, channel=channel)
        kill_id = await asyncio.to_thread(kills.kill, "agent", "oncall", "stop them all")
        kills.close()
        watches = [await ended(task) for task in runs]
        await asyncio.sleep(40 * FAST)  # many polls, each re-reading the kill (overlap)

        assert {w.kill.id for w in watches if w.kill is not None} == {kill_id}
        assert sum(switch.kills_applied.values()) == 1, switch.kills_applied


async def test_a_kill_the_poll_applied_is_not_applied_again_when_it_comes_over_redis(
    sqlite_store: TraceStore, redis_url: str, channel: str, client: redis.Redis
) -> None:
    with KillSwitch(sqlite_store, poll_interval_s=FAST, redis_url=redis_url, redis_channel=channel) as switch:
        first = await run_watched(switch, "run-1")
        second = await run_watched(switch, "run-2")
        await subscribers(client, channel)
        kill = new_kill("run", "run-1", "by the poll")
        KillStore(sqlite_store).add(kill)  # no Redis: only the poll can deliver it
        assert (await ended(first)).kill == kill

        with KillPublisher(redis_url, channel=channel) as publisher:
            assert publisher.publish(kill) == 1  # the same kill again, late, over Redis...
            assert publisher.publish(new_kill("run", "run-2", "after it")) == 1  # ...and then another
        watch = await ended(second, within=WITHIN_S)

        assert watch.kill is not None and watch.kill.source == "redis"
        assert switch.kills_applied == {"store": 1, "redis": 1}  # the duplicate, handled before, counted nowhere


class ReadKills(KillStore):
    """A ``KillStore`` that says which kills its reads have returned."""

    def __init__(self, store: TraceStore) -> None:
        super().__init__(store)
        self.read: set[str] = set()

    def made_since(self, moment: datetime) -> list[Kill]:
        found = super().made_since(moment)
        self.read.update(k.id for k in found)
        return found


async def test_a_kill_that_came_over_redis_is_not_applied_again_when_the_poll_reads_it(
    sqlite_store: TraceStore, redis_url: str, channel: str, client: redis.Redis
) -> None:
    kills = ReadKills(sqlite_store)
    with KillSwitch(kills, poll_interval_s=0.05, redis_url=redis_url, redis_channel=channel) as switch:
        task = await run_watched(switch, "run-1")
        other = await run_watched(switch, "run-2")  # still watched after run-1 ends: the poller keeps reading
        await subscribers(client, channel)
        kill = new_kill("run", "run-1", "over Redis first")
        with KillPublisher(redis_url, channel=channel) as publisher:
            publisher.publish(kill)  # before its row exists: only Redis can deliver it now
        watch = await ended(task, within=WITHIN_S)
        assert watch.kill is not None and watch.kill.source == "redis"

        KillStore(sqlite_store).add(kill)  # now the poller finds it too
        deadline = time.monotonic() + 5
        while kill.id not in kills.read:
            assert time.monotonic() < deadline, "the poller never read the kill"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)

        assert switch.kills_applied == {"redis": 1}
        assert not other.done()
        other.cancel()


# --- failures ---------------------------------------------------------------------------------------


async def test_with_redis_down_kills_are_recorded_and_arrive_by_the_poll(
    store: TraceStore, closed_redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="tether.guard"),
        KillSwitch(store, poll_interval_s=FAST, redis_url=closed_redis_url) as switch,
    ):
        first = await run_watched(switch, "run-1")
        second = await run_watched(switch, "run-2")
        kills = KillStore(store, redis_url=closed_redis_url)
        ids = [
            await asyncio.to_thread(kills.kill, "run", "run-1", "Redis is down"),  # neither raises
            await asyncio.to_thread(kills.kill, "run", "run-2", "still down"),
        ]
        kills.close()
        watches = [await ended(first), await ended(second)]

        assert [w.kill.id for w in watches if w.kill is not None] == ids
        assert all(w.kill is not None and w.kill.source == "store" for w in watches)
        assert [k.id for k in KillStore(store).list()] == ids[::-1]
        published = [r for r in caplog.records if r.name == "tether.guard.kill.redis"]
        assert len(published) == 1, "one warning, not one per kill"
        assert published[0].levelno == logging.WARNING and "could not publish the kill of run run-1" in (
            published[0].getMessage()
        )
        listening = [r for r in caplog.records if r.name == "tether.guard.kill" and r.levelno == logging.ERROR]
        assert len(listening) == 1 and "cannot listen for kills on Redis" in listening[0].getMessage()
        assert "by the store's poll" in listening[0].getMessage()
        assert switch.redis_error is not None and "Connection refused" in switch.redis_error


async def test_the_listener_reconnects_after_losing_its_connection(
    sqlite_store: TraceStore, redis_url: str, channel: str, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="tether.guard.kill"),
        KillSwitch(sqlite_store, poll_interval_s=SLOW_POLL, redis_url=redis_url, redis_channel=channel) as switch,
    ):
        task = await run_watched(switch, "run-1")
        await subscribers(client, channel)
        ours = [
            c["id"]
            for c in client.client_list(_type="pubsub")
            if c.get("name") == "tether-killswitch" and int(c.get("sub", 0)) > 0
        ]
        assert ours
        for client_id in ours:
            client.client_kill_filter(_id=client_id)  # what a Redis restart or a failover does to it

        await subscribers(client, channel, count=0)
        # redis-py may reconnect the broken connection itself before raising; the switch then closes that one and
        # opens its own subscription. Publish once the switch says it listens again, not at the first subscriber.
        deadline = time.monotonic() + 5
        while not any("again after" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the switch never listened again"
            await asyncio.sleep(0.01)
        await subscribers(client, channel)  # back
        with KillPublisher(redis_url, channel=channel) as publisher:
            publisher.publish(new_kill("run", "run-1", "after the reconnection"))
        watch = await ended(task, within=WITHIN_S)

        assert watch.kill is not None and watch.kill.source == "redis"
        messages = [r.getMessage() for r in caplog.records]
        assert any("cannot listen for kills on Redis" in m for m in messages)
        assert any("listens on Redis" in m and "again after" in m for m in messages)
        assert switch.redis_error is None


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "a JSON list, not an object"),
        (b'"all"', "a JSON str, not an object"),
        (b'{"target_kind": "all"}', "id missing"),
        (
            b'{"id": "k1", "target_kind": "galaxy", "target": "oncall", "reason": "x", "created_at": "2030-01-01"}',
            "unknown target_kind 'galaxy'",
        ),
        (b'{"id": "k2", "target_kind": "agent", "reason": "x", "created_at": "2030-01-01T00:00Z"}', "target missing"),
        (
            b'{"id": "k3", "target_kind": "agent", "target": "oncall", "reason": "x", "created_at": "yesterday"}',
            "created_at 'yesterday' is not an ISO 8601 time",
        ),
        (
            b'{"id": "k4", "target_kind": "agent", "target": "oncall", "reason": 7, "created_at": "2030-01-01T00:00Z"}',
            "reason missing or not a string",
        ),
        (b'{"id": " ", "target_kind": "all", "reason": "x", "created_at": "2030-01-01T00:00Z"}', "id missing"),
    ],
)
def test_a_message_that_is_not_a_kill_is_refused(message: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        decode_kill(message)


async def test_messages_that_are_not_kills_stop_nothing(
    redis_url: str, channel: str, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    junk = [
        b"not json",
        b"\xff\xfe",
        b'{"id": "k1", "target_kind": "galaxy", "target": "oncall", "reason": "x", "created_at": "2030-01-01T00:00Z"}',
        b'{"id": "k2", "target_kind": "all", "reason": "x"}',
    ]
    # No store: what stops a run here can only have come over Redis.
    with (
        caplog.at_level(logging.WARNING, logger="tether.guard.kill"),
        KillSwitch(redis_url=redis_url, redis_channel=channel) as switch,
    ):
        first = await run_watched(switch, "run-1")
        second = await run_watched(switch, "run-2")
        await subscribers(client, channel)
        for message in junk:
            client.publish(channel, message)
        client.publish(channel, encode_kill(new_kill("run", "run-2", "a real one")))  # after the junk, in order
        assert (await ended(second, within=WITHIN_S)).killed

        assert not first.done()
        warnings = [r.getMessage() for r in caplog.records if "not kills" in r.getMessage()]
        assert len(warnings) == 1 and "not JSON" in warnings[0], "logged once, not once per message"
        client.publish(channel, encode_kill(new_kill("run", "run-1", "another real one")))
        assert (await ended(first, within=WITHIN_S)).killed
        assert switch.kills_applied == {"redis": 2}


_texts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=60).filter(str.strip)


@given(
    kind=st.sampled_from(["run", "agent", "all"]),
    target=_texts,
    reason=st.none() | st.text(max_size=200),
    requested_by=st.none() | st.text(max_size=40),
    created_at=st.datetimes(timezones=st.just(UTC)),
)
def test_a_kill_goes_over_the_wire_unchanged(
    kind: str, target: str, reason: str | None, requested_by: str | None, created_at: datetime
) -> None:
    kill = new_kill(kind, target, reason, requested_by, created_at=created_at)
    assert decode_kill(encode_kill(kill)) == replace(kill, source="redis")
    assert orjson.loads(encode_kill(kill)) == kill.to_dict()


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis://127.0.0.1:notaport/0"])
def test_a_bad_redis_url_is_a_config_error_at_once(sqlite_store: TraceStore, url: str) -> None:
    with pytest.raises(ConfigError, match=r"invalid Redis URL .*\[gateway\] redis_url"):
        KillSwitch(sqlite_store, redis_url=url)
    with pytest.raises(ConfigError, match="invalid Redis URL"):
        KillSwitch(KillStore(sqlite_store), redis_url=url)
    with pytest.raises(ConfigError, match="invalid Redis URL"):
        KillStore(sqlite_store, redis_url=url)


# --- the thread's life ------------------------------------------------------------------------------


async def test_close_stops_the_listener_promptly(
    sqlite_store: TraceStore, redis_url: str, channel: str, client: redis.Redis
) -> None:
    switch = KillSwitch(sqlite_store, redis_url=redis_url, redis_channel=channel)
    task = await run_watched(switch, "run-1")
    await subscribers(client, channel)
    assert len(redis_threads()) == 1

    began = time.monotonic()
    switch.close()
    took = time.monotonic() - began

    assert took < 1.0, f"close took {took:.2f} s"
    assert redis_threads() == []
    await subscribers(client, channel, count=0)
    task.cancel()


async def test_the_listener_unsubscribes_while_no_run_is_watched(
    sqlite_store: TraceStore, redis_url: str, channel: str, client: redis.Redis
) -> None:
    with KillSwitch(sqlite_store, redis_url=redis_url, redis_channel=channel) as switch:
        await asyncio.sleep(0.1)
        assert redis_threads() == []  # nothing watched yet: no thread, no connection

        task = await run_watched(switch, "run-1")
        await subscribers(client, channel)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await subscribers(client, channel, count=0, within=3)  # after a short linger

        again = await run_watched(switch, "run-2")
        await subscribers(client, channel)
        with KillPublisher(redis_url, channel=channel) as publisher:
            publisher.publish(new_kill("run", "run-2", "after a pause"))
        assert (await ended(again, within=WITHIN_S)).killed


# --- who publishes ----------------------------------------------------------------------------------


async def test_an_in_process_kill_is_published_to_other_processes(
    sqlite_store: TraceStore, redis_url: str, channel: str, client: redis.Redis
) -> None:
    with (
        KillSwitch(sqlite_store, poll_interval_s=SLOW_POLL, redis_url=redis_url, redis_channel=channel) as here,
        KillSwitch(redis_url=redis_url, redis_channel=channel) as elsewhere,  # no store: only Redis reaches it
    ):
        task = await run_watched(elsewhere, "run-1")
        await subscribers(client, channel)
        kill = here.kill(run_id="run-1", reason="from the other replica")
        watch = await ended(task, within=WITHIN_S)

        assert watch.kill is not None and watch.kill.id == kill.id and watch.kill.source == "redis"
        assert [k.id for k in KillStore(sqlite_store).list()] == [kill.id]


async def test_post_kill_publishes_on_redis(
    sqlite_store: TraceStore, redis_url: str, channel: str, client: redis.Redis
) -> None:
    kills = KillStore(sqlite_store, redis_url=redis_url, channel=channel)
    application = Starlette(routes=[kill_route(kills, keys=None)])
    with KillSwitch(redis_url=redis_url, redis_channel=channel) as switch:
        task = await run_watched(switch, "run-1")
        await subscribers(client, channel)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://gw") as http:
            response = await http.post("/v1/kill", json={"run_id": "run-1", "reason": "pager"})
        assert response.status_code == 202
        watch = await ended(task, within=WITHIN_S)
    kills.close()
    assert watch.kill is not None and watch.kill.source == "redis" and watch.kill.id == response.json()["id"]


@pytest.mark.parametrize("configured", ["flag", "tether.toml"])
async def test_tether_kill_publishes_on_the_configured_redis(
    tmp_path: Path, redis_url: str, client: redis.Redis, configured: str
) -> None:
    database = f"sqlite:///{tmp_path / 'tether.db'}"
    args = ["kill", "--database", database]
    if configured == "flag":
        args += ["--redis-url", redis_url]
    else:
        write_config(f'[gateway]\nredis_url = "{redis_url}"\n')
    run_id = uuid.uuid4().hex  # the default channel: the run's id keeps other listeners out of it
    with KillSwitch(redis_url=redis_url) as switch:  # no store: only Redis reaches it
        task = await run_watched(switch, run_id)
        await listening(switch)
        result = await asyncio.to_thread(CliRunner().invoke, app, [*args, run_id, "--force", "--reason", "cli"])
        assert result.exit_code == 0, result.output
        watch = await ended(task, within=WITHIN_S)
    assert watch.kill is not None and watch.kill.source == "redis" and watch.kill.reason == "cli"
    with open_store(database) as store:
        assert [k.id for k in KillStore(store).list()] == [watch.kill.id]


def test_tether_kill_with_a_broken_config_still_records_the_kill(tmp_path: Path) -> None:
    write_config("[gateway\nredis_url = ")
    database = f"sqlite:///{tmp_path / 'tether.db'}"
    result = CliRunner().invoke(app, ["kill", "--all", "--database", database])
    assert result.exit_code == 0, result.output
    assert "not publishing the kill on Redis" in result.stderr
    with open_store(database) as store:
        assert len(KillStore(store).list()) == 1


async def test_tether_gateway_serve_publishes_kills_on_its_redis(
    tmp_path: Path, redis_url: str, client: redis.Redis
) -> None:
    # Budgets in the database: this test leaves nothing in the shared Redis.
    write_config(SIM_TOML + f'\n[gateway]\nredis_url = "{redis_url}"\nbudgets = "database"\n')
    database = f"sqlite:///{tmp_path / 'gateway.db'}"
    run_id = uuid.uuid4().hex
    process, url, _ = start_server("--database", database, "--no-auth")
    try:
        with KillSwitch(redis_url=redis_url) as switch:  # no store: only Redis reaches it
            task = await run_watched(switch, run_id)
            await listening(switch)
            async with httpx.AsyncClient(base_url=url) as http:
                deadline = time.monotonic() + 20
                while True:
                    try:
                        response = await http.post("/v1/kill", json={"run_id": run_id})
                        break
                    except httpx.ConnectError:
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.05)
            assert response.status_code == 202
            watch = await ended(task, within=2)
            assert watch.kill is not None and watch.kill.source == "redis"
    finally:
        output = stop_server(process)
    assert "Traceback" not in output
    # --no-auth opens the admin endpoints too, and start-up says so.
    assert "--no-auth:" in output and "approve and deny approvals and kill runs" in output
