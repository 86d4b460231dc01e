"""Accounting that survives failures, and dependencies that cannot hang requests — with real processes.

(a) SIGTERM while streams are open: the gateway drains them within ``shutdown_grace_s`` (cutting and billing
    those still open at the bound), stores every cost and span, and exits 0 (it exited 143, losing the last
    rows). (b) ``kill -9`` under load, then a restart: every call that answered 200 is in ``costs`` (27-77 of
    them were missing) and the dead replica's lease is swept (it stayed reserved forever). (c) PostgreSQL
    behind a proxy that refuses, then hangs: requests get a 503 within the bound naming the store and never its
    address, ``/readyz`` says which dependency is down, and once it is back the spend of the calls caught by
    the outage is recorded (before: requests hung 5-10 s, bodies showed host/port/user/db).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.faults._support import FaultProxy, GatewayProcess, Upstream, via_port, wait_until

pytestmark = pytest.mark.postgres

KEY = "lifecycle-provider-key-0123456789"
BOUND_S = 1.0  # [gateway] dependency_timeout_s in (c)


def config(upstream: Upstream, **gateway: Any) -> dict[str, Any]:
    return {
        "providers": {"oai": {"kind": "openai", "base_url": f"{upstream.url}/v1", "api_key_env": "FAULT_OPENAI_KEY"}},
        "deployments": {"gpt": {"provider": "oai", "model": "gpt-4.1"}},
        "routes": {"fast": {"tiers": [["gpt"]], "budget": {"usd": 100, "period": "day"}}},
        "prices": {"gpt-4.1": {"input_per_mtok": 2, "output_per_mtok": 8}},
        "gateway": {"budgets": "database", **gateway},
    }


def body(stream: bool = False) -> dict[str, Any]:
    return {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "stream": stream}


@pytest.fixture
def db(pg_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg_url)
    yield engine
    engine.dispose()


def scalar(engine: sa.Engine, sql: str) -> int:
    try:
        with engine.connect() as connection:
            return int(connection.execute(sa.text(sql)).scalar() or 0)
    except sa.exc.ProgrammingError:
        return 0  # the gateway has not migrated the schema yet


def gateway_process(tmp_path: Path, upstream: Upstream, database_url: str, **gateway: Any) -> GatewayProcess:
    return GatewayProcess(
        tmp_path / "gw",
        config(upstream, **gateway),
        database_url=database_url,
        env={"FAULT_OPENAI_KEY": KEY},
        args=["--no-auth"],
    )


# --- (a) SIGTERM ----------------------------------------------------------------------------------------------


def test_sigterm_drains_open_streams_within_the_grace_stores_every_cost_and_span_and_exits_0(
    tmp_path: Path, upstream: Upstream, pg_url: str, db: sa.Engine
) -> None:
    grace_s = 2.5
    upstream.stream_events, upstream.stream_gap_s = 16, 0.25  # a stream takes ~4 s
    gateway = gateway_process(tmp_path, upstream, pg_url, shutdown_grace_s=grace_s).start()
    outcomes: list[str] = []
    lock = threading.Lock()

    def stream() -> None:
        text = ""
        try:
            with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body(True), timeout=20) as answer:
                assert answer.status_code == 200
                for chunk in answer.iter_text():
                    text += chunk
        except httpx.HTTPError as exc:
            text += f" [{type(exc).__name__}]"  # dropped mid-stream: a failure
        with lock:
            # Cut at the grace bound: what was streamed, then an error event in the client's format.
            cut = "data:" in text and "the gateway is shutting down" in text
            outcomes.append("finished" if "[DONE]" in text else "cut" if cut else f"broken: {text[-200:]!r}")

    early = [threading.Thread(target=stream) for _ in range(4)]
    for thread in early:
        thread.start()
    wait_until(lambda: upstream.requests >= 4, 10, "the early streams to start")
    time.sleep(2.5)  # the early streams are past half way: they end within the grace, the late ones cannot
    late = [threading.Thread(target=stream) for _ in range(4)]
    for thread in late:
        thread.start()
    wait_until(lambda: upstream.requests >= 8, 10, "the late streams to start")

    signalled = time.monotonic()
    gateway.terminate()
    code = gateway.wait(grace_s + 15)
    took = time.monotonic() - signalled
    for thread in early + late:
        thread.join(10)

    assert code == 0, gateway.log[-3000:]
    assert took < grace_s + 8, f"stopping took {took:.1f}s with a grace of {grace_s}s"
    assert sorted(outcomes) == ["cut"] * 4 + ["finished"] * 4, outcomes
    # Every accepted call is billed, the cut ones for what they used; every chat span is stored.
    assert scalar(db, "SELECT count(*) FROM costs") == 8
    assert scalar(db, "SELECT count(*) FROM spans WHERE name LIKE 'chat%'") == 8
    assert scalar(db, "SELECT count(*) FROM budget_reservations") == 0  # leases reported, none left reserved
    assert "could not be stored" not in gateway.log


# --- (b) kill -9 ----------------------------------------------------------------------------------------------


def test_kill_9_under_load_loses_no_answered_call_and_the_dead_lease_is_swept(
    tmp_path: Path, upstream: Upstream, pg_url: str, db: sa.Engine
) -> None:
    gateway = gateway_process(tmp_path, upstream, pg_url, stale_reservation_s=2.0).start()
    answered = 0
    lock = threading.Lock()
    stop = threading.Event()

    def load() -> None:
        nonlocal answered
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                try:
                    status = client.post(f"{gateway.url}/v1/chat/completions", json=body()).status_code
                except httpx.HTTPError:
                    continue  # the gateway died under this request: not an answered call
                if status == 200:
                    with lock:
                        answered += 1

    with ThreadPoolExecutor(8) as pool:
        for _ in range(8):
            pool.submit(load)
        wait_until(lambda: answered >= 150, 20, "150 answered calls")
        gateway.kill()  # kill -9 mid-load: the last batches of cost rows were only in its memory
        stop.set()
    died_with = answered
    assert scalar(db, "SELECT count(*) FROM budget_reservations") >= 1  # its lease, left reserved

    gateway.start()  # the same directory, so the same journal: replayed at start-up
    stored = wait_until(
        lambda: (n := scalar(db, "SELECT count(*) FROM costs")) >= died_with and n,
        10,
        f"the {died_with} answered calls in costs",
    )
    # At most the calls in flight at the kill (journaled, the client never saw the answer) are extra.
    assert died_with <= stored <= died_with + 8
    # The dead replica's lease is swept as spent in full (fail closed): nothing reserved, at least what it spent.
    wait_until(lambda: scalar(db, "SELECT count(*) FROM budget_reservations") == 0, 10, "the stale lease swept")
    spent = scalar(db, "SELECT coalesce(sum(spent_nanousd), 0) FROM budget_usage WHERE scope = 'route:fast'")
    billed = scalar(db, "SELECT coalesce(sum(cost_nanousd), 0) FROM costs")
    assert spent >= billed > 0
    assert "being stored" in gateway.log  # the replay said what it did
    gateway.terminate()
    assert gateway.wait(20) == 0


# --- (c) a database that refuses, then hangs --------------------------------------------------------------------


def _post(url: str, key: str) -> tuple[int, str, float]:
    started = time.monotonic()
    try:
        answer = httpx.post(
            f"{url}/v1/chat/completions", json=body(), headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
    except httpx.HTTPError as exc:
        return 0, type(exc).__name__, time.monotonic() - started
    return answer.status_code, answer.text, time.monotonic() - started


def test_a_database_that_refuses_then_hangs_gets_quick_503s_naming_it_and_its_spend_is_kept(
    tmp_path: Path, upstream: Upstream, pg_url: str, db: sa.Engine
) -> None:
    from tether.gateway.keys import KeyStore
    from tether.store import open_store

    store = open_store(pg_url)
    try:
        keys = KeyStore(store)
        secrets = [keys.create(f"agent-{i}")[1] for i in range(4)]
    finally:
        store.close()
    address = sa.make_url(pg_url)

    with FaultProxy(address.port or 5432) as proxy:
        gateway = GatewayProcess(
            tmp_path / "gw",
            # fraction 0: every call reserves and settles on the database, so it is on every request's path.
            config(upstream, dependency_timeout_s=BOUND_S, budget_lease_fraction=0),
            database_url=via_port(pg_url, proxy.port),
            env={"FAULT_OPENAI_KEY": KEY},
        ).start()
        try:
            assert _post(gateway.url, secrets[0])[0] == 200
            assert httpx.get(f"{gateway.url}/readyz", timeout=5).status_code == 200

            # Calls in flight when the database goes away: answered, their settles wait for it.
            upstream.latency_s = 1.0
            with ThreadPoolExecutor(12) as pool:
                caught = [pool.submit(_post, gateway.url, secrets[0]) for _ in range(4)]
                wait_until(lambda: upstream.requests >= 5, 10, "the calls to reach the upstream")
                proxy.set_mode("refuse")
                assert all(f.result()[0] == 200 for f in caught), [f.result()[:2] for f in caught]
                upstream.latency_s = 0.0

                failures = []
                refused = list(pool.map(lambda s: _post(gateway.url, s), [secrets[0], secrets[1]] * 3))
                failures += refused
                ready = wait_until(
                    lambda: (r := httpx.get(f"{gateway.url}/readyz", timeout=5)).status_code == 503 and r,
                    8,
                    "/readyz 503",
                )
                assert "the store (postgresql)" in ready.text

                proxy.set_mode("hang")
                hung = list(pool.map(lambda s: _post(gateway.url, s), [secrets[0], secrets[2]] * 4))
                failures += hung
                wait_until(
                    lambda: "did not answer" in httpx.get(f"{gateway.url}/readyz", timeout=5).text, 8, "/readyz: hung"
                )

            statuses = [status for status, _, _ in failures]
            assert set(statuses) == {503}, failures
            slowest = max(took for _, _, took in failures)
            assert slowest < BOUND_S + 1.5, f"a request took {slowest:.2f}s with a bound of {BOUND_S}s"
            where = [str(address.port), str(proxy.port), f"{address.username}@", "127.0.0.1", "localhost"]
            where += [f"/{address.database}", "tether_fault_", "search_path"]
            for _, text, _ in failures:
                assert "postgresql" in text  # names the dependency...
                for part in where:  # ...never its address, user, database or schema
                    assert part not in text, text
            assert any("did not answer within" in text for _, text, _ in hung)

            proxy.set_mode("pass")
            wait_until(lambda: _post(gateway.url, secrets[3])[0] == 200, 15, "the gateway to serve again")
            wait_until(lambda: httpx.get(f"{gateway.url}/readyz", timeout=5).status_code == 200, 10, "/readyz 200")
            # The spend of the calls caught by the outage reached the budget and the cost ledger: none dropped.
            billed = lambda: scalar(db, "SELECT coalesce(sum(cost_nanousd), 0) FROM costs")  # noqa: E731
            spent = lambda: scalar(db, "SELECT spent_nanousd FROM budget_usage WHERE scope = 'route:fast'")  # noqa: E731
            wait_until(lambda: scalar(db, "SELECT count(*) FROM costs") >= 6, 15, "every answered call in costs")
            wait_until(lambda: spent() == billed(), 15, "the budget to hold every answered call's spend")
            wait_until(lambda: scalar(db, "SELECT count(*) FROM budget_reservations") == 0, 10, "no reservation left")
        finally:
            gateway.terminate()
            code = gateway.wait(30)
        assert code == 0
        assert "could not be recorded" not in gateway.log and "dropped" not in gateway.log
