"""Virtual keys: create/list/revoke, secrets kept only as hashes, and a verify path that stays off the database.

Every test that touches the store runs on SQLite and on the machine's
PostgreSQL (a schema of its own per test, as in ``tests/store``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from tests.store import conftest as store_fixtures
from tether.config import BudgetLimit, RateLimit
from tether.errors import StoreUnavailable, UserError
from tether.gateway.keys import (
    KeyScope,
    KeyStore,
    KeyVerifier,
    UnknownVirtualKey,
    VirtualKey,
    VirtualKeyExists,
    VirtualKeyRevoked,
)
from tether.store import TraceStore, open_store
from tether.store.engine import create_store_engine
from tether.store.migrations import MIGRATIONS, migrate
from tether.store.url import parse_store_url

# The store tests' fixtures: a SQLite file, or a PostgreSQL schema of the test's own, per ``backend``.
backend = store_fixtures.backend
store_url = store_fixtures.store_url


class Clock:
    """A settable monotonic clock for the verification cache."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Queries:
    """Counts the statements an engine sends that read ``virtual_keys``."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        self._engine = engine
        sa.event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: object, cursor: object, statement: str, *args: object) -> None:
        if "virtual_keys" in statement:
            self.count += 1

    def close(self) -> None:
        sa.event.remove(self._engine, "before_cursor_execute", self._seen)


@pytest.fixture
def store(store_url: str) -> Iterator[TraceStore]:
    with open_store(store_url) as opened:
        yield opened


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(store: TraceStore, clock: Clock) -> KeyStore:
    return KeyStore(store, clock=clock)


@pytest.fixture
def queries(store: TraceStore) -> Iterator[Queries]:
    counter = Queries(store.engine)
    yield counter
    counter.close()


def stored_rows(store: TraceStore) -> list[dict[str, object]]:
    with store.engine.connect() as connection:
        return [dict(row) for row in connection.execute(sa.text("SELECT * FROM virtual_keys")).mappings()]


# -- create, list, revoke --------------------------------------------------------------------


def test_create_returns_the_secret_once_and_stores_only_its_hash(keys: KeyStore, store: TraceStore) -> None:
    key, secret = keys.create("ci-bot", routes=("support",))

    assert secret.startswith("tk-") and len(secret) == 43
    assert key.name == "ci-bot" and key.routes == ("support",) and key.revoked_at is None
    assert key.prefix == secret[:9] and key.created_at is not None
    assert secret not in repr(key)
    (row,) = stored_rows(store)
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    every_value = " ".join(str(value) for value in row.values())
    assert secret not in every_value
    assert secret[9:] not in every_value  # nothing beyond the prefix, in any column


def test_each_key_gets_its_own_secret(keys: KeyStore) -> None:
    secrets = {keys.create(f"bot-{i}")[1] for i in range(20)}
    assert len(secrets) == 20


def test_budget_rate_limit_and_routes_round_trip(keys: KeyStore) -> None:
    budget = BudgetLimit(usd=Decimal("12.50"), tokens=2_000_000, period="day")
    limit = RateLimit(rpm=600, tpm=200_000)
    created, _ = keys.create("ci-bot", routes=["support", "triage", "support"], budget=budget, rate_limit=limit)

    (listed,) = keys.list()
    assert listed == created
    assert listed.routes == ("support", "triage")
    assert listed.budget == budget and listed.rate_limit == limit
    assert listed.allows("triage") and not listed.allows("billing")
    assert keys.create("anything")[0].allows("billing")  # no routes: every route


def test_list_hides_revoked_keys_unless_asked(keys: KeyStore) -> None:
    keys.create("a")
    keys.create("b")
    keys.revoke("a")

    assert [k.name for k in keys.list()] == ["b"]
    listed = {k.name: k for k in keys.list(include_revoked=True)}
    assert set(listed) == {"a", "b"}
    assert listed["a"].revoked_at is not None and listed["b"].revoked_at is None
    assert keys.get("a").revoked_at is not None


def test_a_duplicate_name_is_refused_even_after_revocation(keys: KeyStore, store: TraceStore) -> None:
    keys.create("ci-bot")
    with pytest.raises(VirtualKeyExists, match=r"'ci-bot' exists already"):
        keys.create("ci-bot")
    keys.revoke("ci-bot")
    with pytest.raises(VirtualKeyExists):
        keys.create("ci-bot")
    assert len(stored_rows(store)) == 1


def test_a_name_taken_by_another_process_between_check_and_insert_is_refused(store_url: str) -> None:
    # Two stores on two engines: the second's insert meets the unique index, not its own check.
    with open_store(store_url) as first, open_store(store_url) as second:
        KeyStore(first).create("ci-bot")
        racing = KeyStore(second)
        racing._find = lambda connection, name: None  # type: ignore[method-assign]
        with pytest.raises(VirtualKeyExists):
            racing.create("ci-bot")


def test_revoking_an_unknown_key_names_the_valid_ones(keys: KeyStore) -> None:
    with pytest.raises(UnknownVirtualKey, match=r"no valid keys .* tether keys create"):
        keys.revoke("ghost")
    keys.create("alpha")
    keys.create("beta")
    keys.revoke("beta")
    with pytest.raises(UnknownVirtualKey, match=r"'ghost'; valid keys: alpha \("):
        keys.revoke("ghost")
    with pytest.raises(UnknownVirtualKey):
        keys.get("ghost")


def test_revoking_twice_says_when_it_was_revoked(keys: KeyStore) -> None:
    keys.create("ci-bot")
    revoked = keys.revoke("ci-bot")
    assert revoked.revoked_at is not None

    with pytest.raises(VirtualKeyRevoked, match=r"'ci-bot' was already revoked at \d{4}-\d\d-\d\d"):
        keys.revoke("ci-bot")


@pytest.mark.parametrize("name", ["", "-leading-dash", "has space", "x" * 65, "semi;colon", "ünïcode"])
def test_malformed_names_are_refused(keys: KeyStore, name: str) -> None:
    with pytest.raises(UserError, match="invalid key name"):
        keys.create(name)


def test_routes_must_be_a_list_of_names(keys: KeyStore) -> None:
    with pytest.raises(UserError, match="not the string"):
        keys.create("ci-bot", routes="support")
    with pytest.raises(UserError, match="invalid route name"):
        keys.create("ci-bot", routes=["support", " "])


# -- scopes ----------------------------------------------------------------------------------


def test_keys_are_model_keys_unless_created_admin(keys: KeyStore, store: TraceStore) -> None:
    model, _ = keys.create("ci-bot", routes=("support",))
    admin, _ = keys.create("oncall-console", scope=KeyScope.ADMIN)

    assert model.scope is KeyScope.MODEL and not model.is_admin
    assert admin.scope is KeyScope.ADMIN and admin.is_admin
    assert {k.name: k.scope for k in keys.list()} == {"ci-bot": KeyScope.MODEL, "oncall-console": KeyScope.ADMIN}
    assert {row["name"]: row["scope"] for row in stored_rows(store)} == {"ci-bot": "model", "oncall-console": "admin"}
    # An admin key names no routes, and that does not mean "every route": it calls none.
    assert not admin.allows("support") and not admin.allows("anything")


@pytest.mark.parametrize(
    "allowance",
    [{"routes": ("support",)}, {"budget": BudgetLimit(usd=Decimal(1))}, {"rate_limit": RateLimit(rpm=60)}],
)
def test_an_admin_key_takes_no_routes_or_limits(keys: KeyStore, allowance: dict[str, object]) -> None:
    with pytest.raises(UserError, match="an admin key takes no routes, budget or rate limit"):
        keys.create("oncall-console", scope=KeyScope.ADMIN, **allowance)  # type: ignore[arg-type]
    assert keys.list() == []


def test_an_unknown_scope_is_refused(keys: KeyStore) -> None:
    with pytest.raises(UserError, match="invalid key scope 'root': use model or admin"):
        keys.create("x", scope="root")  # type: ignore[arg-type]


async def test_the_scope_is_verified_from_the_cache_without_another_lookup(
    keys: KeyStore, queries: Queries, clock: Clock
) -> None:
    _, secret = keys.create("oncall-console", scope=KeyScope.ADMIN)
    before = queries.count
    for _ in range(50):
        verified = await keys.verify(secret)
        assert verified is not None and verified.is_admin
        clock.advance(0.05)
    assert queries.count == before + 1 and keys.lookups == 1


def test_keys_made_before_scopes_existed_become_model_keys(store_url: str) -> None:
    engine = create_store_engine(parse_store_url(store_url))
    try:
        before_scopes = [m for m in MIGRATIONS if m.version < 7]
        migrate(engine, before_scopes)
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO virtual_keys (id, name, prefix, secret_hash, routes, created_at) "
                    "VALUES ('k1', 'old-bot', 'tk-abcdef', :digest, '[\"support\"]', :now)"
                ),
                {"digest": "0" * 64, "now": datetime.now(UTC)},
            )
        assert 7 in migrate(engine)
    finally:
        engine.dispose()
    with open_store(store_url) as store:
        (old,) = KeyStore(store).list()
    assert old.name == "old-bot" and old.scope is KeyScope.MODEL and old.allows("support")


# -- verify ----------------------------------------------------------------------------------


async def test_verify_returns_the_key_for_its_secret_and_none_otherwise(keys: KeyStore) -> None:
    key, secret = keys.create("ci-bot", routes=("support",))
    other, other_secret = keys.create("other")

    assert await keys.verify(secret) == key
    assert await keys.verify(other_secret) == other
    assert await keys.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    verifier: KeyVerifier = keys
    assert await verifier.verify(secret) == key


async def test_malformed_secrets_are_refused_without_a_lookup(keys: KeyStore, queries: Queries) -> None:
    for junk in ["", "sk-ant-123", "tk-short", "tk-" + "a" * 300, "tk-" + "é" * 40, "Bearer tk-" + "a" * 40]:
        assert await keys.verify(junk) is None
    assert queries.count == 0 and keys.lookups == 0


async def test_a_cache_hit_does_not_touch_the_database(keys: KeyStore, queries: Queries, clock: Clock) -> None:
    key, secret = keys.create("ci-bot")
    before = queries.count

    assert await keys.verify(secret) == key
    assert queries.count == before + 1
    for _ in range(100):
        clock.advance(0.04)  # 4 s in all: within the 5 s TTL
        assert await keys.verify(secret) == key
    assert queries.count == before + 1 and keys.lookups == 1

    clock.advance(1.5)  # past the TTL: looked up again
    assert await keys.verify(secret) == key
    assert queries.count == before + 2


async def test_unknown_secrets_are_cached_too(keys: KeyStore, queries: Queries, clock: Clock) -> None:
    bad = "tk-" + "x" * 40
    for _ in range(50):
        assert await keys.verify(bad) is None
    assert queries.count == 1

    clock.advance(6)
    assert await keys.verify(bad) is None
    assert queries.count == 2


async def test_a_burst_of_the_same_secret_makes_one_lookup(keys: KeyStore, queries: Queries) -> None:
    key, secret = keys.create("ci-bot")
    before = queries.count

    results = await asyncio.gather(*(keys.verify(secret) for _ in range(50)))

    assert results == [key] * 50
    assert queries.count == before + 1


async def test_a_flood_of_distinct_bad_keys_runs_a_bounded_number_of_lookups_at_once(store: TraceStore) -> None:
    keys = KeyStore(store, max_lookups=2)
    running = 0
    most = 0
    lookup = keys._lookup
    guard = threading.Lock()  # the lookups run in worker threads

    def counting(digest: str) -> VirtualKey | None:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.002)  # long enough for the other lookups to pile up if nothing held them back
            return lookup(digest)
        finally:
            with guard:
                running -= 1

    keys._lookup = counting  # type: ignore[method-assign]
    flood = [f"tk-{i:040d}" for i in range(40)]

    assert await asyncio.gather(*(keys.verify(s) for s in flood)) == [None] * 40
    assert keys.lookups == 40 and 1 <= most <= 2


async def test_the_caches_are_bounded(store: TraceStore, clock: Clock) -> None:
    keys = KeyStore(store, cache_size=3, clock=clock)
    flood = [f"tk-{i:040d}" for i in range(10)]
    for secret in flood:
        await keys.verify(secret)
    assert keys.lookups == 10

    await keys.verify(flood[-1])  # still cached
    assert keys.lookups == 10
    await keys.verify(flood[0])  # evicted long ago
    assert keys.lookups == 11


async def test_a_key_revoked_elsewhere_stops_working_within_the_ttl(store_url: str, clock: Clock) -> None:
    with open_store(store_url) as gateway_store, open_store(store_url) as admin_store:
        gateway = KeyStore(gateway_store, clock=clock)  # a proxy replica
        admin = KeyStore(admin_store)  # the operator's `tether keys revoke`, another process
        key, secret = admin.create("ci-bot")
        assert await gateway.verify(secret) == key

        admin.revoke("ci-bot")
        clock.advance(4.9)
        assert await gateway.verify(secret) == key  # cached: still accepted inside the TTL
        clock.advance(0.2)
        assert await gateway.verify(secret) is None
        clock.advance(60)
        assert await gateway.verify(secret) is None


async def test_revoking_through_the_same_store_takes_effect_at_once(keys: KeyStore) -> None:
    _, secret = keys.create("ci-bot")
    assert await keys.verify(secret) is not None

    keys.revoke("ci-bot")

    assert await keys.verify(secret) is None


async def test_a_zero_ttl_always_reads_the_database(store: TraceStore) -> None:
    keys = KeyStore(store, cache_ttl_s=0)
    _, secret = keys.create("ci-bot")
    for _ in range(3):
        assert await keys.verify(secret) is not None
    assert keys.lookups == 3


async def test_a_cancelled_caller_does_not_fail_the_others_waiting(keys: KeyStore) -> None:
    key, secret = keys.create("ci-bot")
    first = asyncio.ensure_future(keys.verify(secret))
    second = asyncio.ensure_future(keys.verify(secret))
    await asyncio.sleep(0)
    first.cancel()

    assert await second == key
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_the_secret_never_reaches_the_logs(
    keys: KeyStore, caplog: pytest.LogCaptureFixture, store: TraceStore
) -> None:
    caplog.set_level(logging.DEBUG)
    _, secret = keys.create("ci-bot")
    await keys.verify(secret)
    keys.revoke("ci-bot")
    await keys.verify(secret)
    with pytest.raises(VirtualKeyExists) as exists:
        keys.create("ci-bot")

    assert secret not in caplog.text
    assert secret not in str(exists.value)


async def test_a_database_outage_fails_closed_and_is_not_cached() -> None:
    engine = create_store_engine(parse_store_url("postgresql+psycopg://postgres@127.0.0.1:1/test"))
    try:
        keys = KeyStore(engine)
        secret = "tk-" + "y" * 40
        for _ in range(2):
            with pytest.raises(StoreUnavailable) as raised:
                await keys.verify(secret)
            assert secret not in str(raised.value)
        assert keys.lookups == 2
    finally:
        engine.dispose()


def test_invalid_cache_settings_are_refused(store: TraceStore) -> None:
    with pytest.raises(ValueError, match="cache_ttl_s"):
        KeyStore(store, cache_ttl_s=-1)
    with pytest.raises(ValueError, match="cache_size"):
        KeyStore(store, cache_size=0)
