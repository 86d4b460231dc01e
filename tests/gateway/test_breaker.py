"""Circuit breaker: when it opens, how it recovers, what it tells, and that it stays small."""

from __future__ import annotations

import threading
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tether.config import BreakerConfig
from tether.gateway.breaker import BreakerRegistry, BreakerState, CircuitBreaker

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
Change = tuple[str, BreakerState, BreakerState, str]


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def changes() -> list[Change]:
    return []


def breaker(clock: FakeClock, changes: list[Change] | None = None, **config: float) -> CircuitBreaker:
    return CircuitBreaker(
        "primary",
        BreakerConfig(**config),
        clock=clock,
        on_change=None if changes is None else lambda *change: changes.append(change),
    )


def open_breaker(b: CircuitBreaker) -> None:
    for _ in range(b.config.consecutive_failures):
        assert b.allow()
        b.record_failure()
    assert b.state is OPEN


# --- opening -----------------------------------------------------------------------------------


def test_opens_after_consecutive_failures(clock: FakeClock, changes: list[Change]) -> None:
    b = breaker(clock, changes, consecutive_failures=3)
    b.record_failure()
    b.record_failure()
    assert b.state is CLOSED
    assert b.allow()

    b.record_failure()

    assert b.state is OPEN
    assert not b.allow()
    assert changes == [("primary", CLOSED, OPEN, "3 consecutive failures")]


def test_a_success_breaks_the_run_of_failures(clock: FakeClock) -> None:
    b = breaker(clock, consecutive_failures=3, min_requests=100)
    for _ in range(10):
        b.record_failure()
        b.record_failure()
        b.record_success()
    assert b.state is CLOSED
    assert b.snapshot()["consecutive_failures"] == 0


def test_failure_rate_opens_only_once_the_window_holds_min_requests(clock: FakeClock, changes: list[Change]) -> None:
    b = breaker(clock, changes, consecutive_failures=100, failure_rate=0.5, min_requests=10)
    for _ in range(4):  # 4 of 8: a 50% failure rate, but too few requests to judge
        b.record_failure()
        b.record_success()
    assert b.state is CLOSED

    b.record_success()  # 9 requests, 4 failures
    b.record_failure()  # 10 requests, 5 failures: 50%

    assert b.state is OPEN
    assert changes == [("primary", CLOSED, OPEN, "failure rate 50% over 60s (10 requests)")]


def test_failure_rate_below_the_threshold_keeps_the_breaker_closed(clock: FakeClock) -> None:
    b = breaker(clock, consecutive_failures=100, failure_rate=0.5, min_requests=10)
    for _ in range(100):
        b.record_failure()
        b.record_success()
        b.record_success()
    assert b.state is CLOSED
    snap = b.snapshot()
    assert (snap["requests"], snap["failures"]) == (300, 100)


def test_old_failures_fall_out_of_the_window(clock: FakeClock) -> None:
    b = breaker(clock, consecutive_failures=100, failure_rate=0.5, min_requests=4, window_s=60)
    for _ in range(3):
        b.record_failure()
    b.record_success()  # 3 failures in 4 requests would trip on the next failure
    assert b.snapshot()["failures"] == 3

    clock.advance(61)
    assert (b.snapshot()["requests"], b.snapshot()["failures"]) == (0, 0)
    b.record_failure()

    assert b.state is CLOSED  # 1 request in the window: below min_requests
    assert b.snapshot()["failures"] == 1


def test_outcomes_inside_the_window_still_count_when_it_slides(clock: FakeClock) -> None:
    b = breaker(clock, consecutive_failures=100, failure_rate=0.5, min_requests=4, window_s=60)
    b.record_failure()
    clock.advance(30)
    b.record_failure()
    b.record_success()
    clock.advance(29)  # the first failure is 59 s old: still in the window
    b.record_failure()
    assert b.state is OPEN


# --- open, half-open and recovery ---------------------------------------------------------------


def test_stays_open_until_open_s_then_lets_exactly_n_probes_through(clock: FakeClock, changes: list[Change]) -> None:
    b = breaker(clock, changes, consecutive_failures=1, open_s=30, half_open_probes=2)
    open_breaker(b)

    clock.advance(29.9)
    assert b.state is OPEN
    assert not b.allow()

    clock.advance(0.1)
    assert b.state is HALF_OPEN
    assert [b.allow() for _ in range(4)] == [True, True, False, False]
    assert changes[-1] == ("primary", OPEN, HALF_OPEN, "open for 30s, letting 2 probes through")


def test_half_open_is_entered_lazily_by_allow(clock: FakeClock, changes: list[Change]) -> None:
    b = breaker(clock, changes, consecutive_failures=1, open_s=30)
    open_breaker(b)
    clock.advance(30)

    assert b.allow()  # no read of .state in between: allow() itself notices the time
    assert not b.allow()
    assert [c[2] for c in changes] == [OPEN, HALF_OPEN]


def test_probe_success_closes_and_resets_the_window(clock: FakeClock, changes: list[Change]) -> None:
    b = breaker(clock, changes, consecutive_failures=2, open_s=30)
    open_breaker(b)
    clock.advance(30)
    assert b.allow()

    b.record_success()

    assert b.state is CLOSED
    assert b.allow()
    snap = b.snapshot()
    assert (snap["failures"], snap["requests"], snap["consecutive_failures"], snap["opened_at"]) == (0, 0, 0, None)
    assert changes[-1] == ("primary", HALF_OPEN, CLOSED, "probe succeeded")
    b.record_failure()  # the failures before the opening are forgotten: one new failure does not reopen
    assert b.state is CLOSED


def test_probe_failure_reopens_for_a_fresh_open_s(clock: FakeClock, changes: list[Change]) -> None:
    b = breaker(clock, changes, consecutive_failures=1, open_s=30)
    open_breaker(b)
    clock.advance(30)
    assert b.allow()

    b.record_failure()

    assert b.state is OPEN
    assert b.snapshot()["opened_at"] == clock.now
    clock.advance(29)
    assert not b.allow()
    clock.advance(1)
    assert b.allow()
    assert changes[-3:] == [
        ("primary", OPEN, HALF_OPEN, "open for 30s, letting 1 probe through"),
        ("primary", HALF_OPEN, OPEN, "probe failed"),
        ("primary", OPEN, HALF_OPEN, "open for 30s, letting 1 probe through"),
    ]


def test_release_frees_a_probe_slot(clock: FakeClock) -> None:
    b = breaker(clock, consecutive_failures=1, open_s=30)
    open_breaker(b)
    clock.advance(30)
    assert b.allow()
    assert not b.allow()

    b.release()  # the probe was cancelled: it says nothing about the deployment

    assert b.state is HALF_OPEN
    assert b.allow()


def test_release_while_closed_counts_nothing(clock: FakeClock) -> None:
    b = breaker(clock)
    assert b.allow()
    b.release()
    assert (b.snapshot()["requests"], b.state) == (0, CLOSED)


def test_late_outcomes_while_open_change_nothing(clock: FakeClock, changes: list[Change]) -> None:
    b = breaker(clock, changes, consecutive_failures=1, open_s=30)
    open_breaker(b)
    opened_at = b.snapshot()["opened_at"]
    clock.advance(10)

    b.record_failure()  # answers to calls admitted before the breaker opened
    b.record_success()
    b.release()

    assert b.state is OPEN
    assert b.snapshot()["opened_at"] == opened_at  # a late failure does not extend the open period
    clock.advance(20)
    assert b.state is HALF_OPEN
    assert len(changes) == 2


def test_outcomes_while_half_open_without_a_probe_in_flight_are_ignored(clock: FakeClock) -> None:
    b = breaker(clock, consecutive_failures=1, open_s=30)
    open_breaker(b)
    clock.advance(30)
    assert b.state is HALF_OPEN

    b.record_success()  # a stale answer: no probe was let through yet
    b.record_failure()

    assert b.state is HALF_OPEN
    assert b.allow()


def test_on_change_sees_a_whole_cycle(clock: FakeClock, changes: list[Change]) -> None:
    b = breaker(clock, changes, consecutive_failures=2, open_s=5)
    open_breaker(b)
    clock.advance(5)
    b.allow()
    b.record_failure()
    clock.advance(5)
    b.allow()
    b.record_success()

    assert [(old, new) for _, old, new, _ in changes] == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]
    assert all(name == "primary" and reason for name, _, _, reason in changes)


def test_on_change_may_read_the_breaker(clock: FakeClock) -> None:
    seen: list[BreakerState] = []
    b = CircuitBreaker(
        "primary", BreakerConfig(consecutive_failures=1), clock=clock, on_change=lambda *_: seen.append(b.state)
    )
    b.record_failure()  # would deadlock if the callback ran under the breaker's lock
    assert seen == [OPEN]


def test_snapshot_reports_state_and_counters(clock: FakeClock) -> None:
    b = breaker(clock, consecutive_failures=3, open_s=30)
    b.record_success()
    b.record_failure()
    assert b.snapshot() == {
        "name": "primary",
        "state": "closed",
        "failures": 1,
        "requests": 2,
        "failure_rate": 0.5,
        "consecutive_failures": 1,
        "opened_at": None,
        "half_open_in_s": None,
        "probes_in_flight": 0,
    }
    b.record_failure()
    b.record_failure()
    clock.advance(10)
    snap = b.snapshot()
    assert (snap["state"], snap["opened_at"], snap["half_open_in_s"]) == ("open", clock.now - 10, 20.0)


# --- config and registry --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("consecutive_failures", 0),
        ("failure_rate", 0.0),
        ("failure_rate", 1.5),
        ("window_s", 0),
        ("window_s", float("inf")),
        ("min_requests", 0),
        ("open_s", -1),
        ("half_open_probes", 0),
    ],
)
def test_config_rejects_values_out_of_range(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        BreakerConfig(**{field: value})


def test_config_is_frozen_and_rejects_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="open_seconds"):
        BreakerConfig(open_seconds=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        BreakerConfig().open_s = 1  # type: ignore[misc]


def test_registry_creates_each_breaker_once_with_its_config(clock: FakeClock, changes: list[Change]) -> None:
    registry = BreakerRegistry(BreakerConfig(consecutive_failures=7), clock=clock)
    strict = BreakerConfig(consecutive_failures=1)

    a = registry.get("a", strict, on_change=lambda *change: changes.append(change))
    b = registry.get("b")

    assert registry.get("a") is a
    assert registry.get("a", BreakerConfig(consecutive_failures=9)).config == strict  # config matters on first use only
    assert b.config.consecutive_failures == 7
    assert ("a" in registry, "c" in registry, len(registry), sorted(registry)) == (True, False, 2, ["a", "b"])
    a.record_failure()
    assert changes == [("a", CLOSED, OPEN, "1 consecutive failure")]
    snap = registry.snapshot()
    assert (snap["a"]["state"], snap["b"]["state"]) == ("open", "closed")


def test_registry_passes_its_on_change_to_the_breakers_it_creates(clock: FakeClock, changes: list[Change]) -> None:
    registry = BreakerRegistry(
        BreakerConfig(consecutive_failures=1), clock=clock, on_change=lambda *change: changes.append(change)
    )
    registry.get("x").record_failure()
    assert changes == [("x", CLOSED, OPEN, "1 consecutive failure")]


# --- properties -----------------------------------------------------------------------------------

# Discrete steps reach every state quickly: enough failures to open, ticks past open_s (30 s)
# and past the window (60 s), and more than one probe's worth of allow() while half-open.
_OPS = st.lists(
    st.sampled_from(["allow", "allow", "success", "failure", "failure", "release", 0.5, 10.0, 31.0, 61.0]),
    min_size=10,
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(
    ops=_OPS,
    consecutive=st.integers(1, 4),
    rate=st.sampled_from([0.25, 0.5, 1.0]),
    min_requests=st.integers(1, 6),
    probes=st.integers(1, 3),
)
def test_never_allows_while_open_nor_more_than_n_probes_while_half_open(
    ops: list[str | float], consecutive: int, rate: float, min_requests: int, probes: int
) -> None:
    clock = FakeClock(0.0)
    episode = {"allowed": 0, "resolved": 0}

    def on_change(name: str, old: BreakerState, new: BreakerState, reason: str) -> None:
        assert old is not new
        assert (old, new) in {(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (HALF_OPEN, CLOSED)}
        if new is HALF_OPEN:
            episode.update(allowed=0, resolved=0)

    b = CircuitBreaker(
        "d",
        BreakerConfig(
            consecutive_failures=consecutive,
            failure_rate=rate,
            min_requests=min_requests,
            window_s=60,
            open_s=30,
            half_open_probes=probes,
        ),
        clock=clock,
        on_change=on_change,
    )
    held = 0  # calls admitted whose outcome is not reported yet, as a real caller has
    for op in ops:
        if not isinstance(op, str):
            clock.advance(op)
            continue
        state = b.state  # makes any due OPEN → HALF_OPEN move now, so allow() sees this state
        if op == "allow":
            allowed = b.allow()
            if state is OPEN:
                assert not allowed
            elif state is CLOSED:
                assert allowed
            elif allowed:
                episode["allowed"] += 1
                assert episode["allowed"] - episode["resolved"] <= probes
            held += allowed
        elif held:
            held -= 1
            {"success": b.record_success, "failure": b.record_failure, "release": b.release}[op]()
            if state is HALF_OPEN:
                episode["resolved"] += 1


def test_memory_stays_flat_over_100k_outcomes(clock: FakeClock) -> None:
    b = breaker(clock)  # 1 failure in 10: never opens

    def record(n: int) -> None:
        for i in range(n):
            clock.advance(0.001)  # 100 s in all: the window turns over
            if i % 10 == 0:
                b.record_failure()
            else:
                b.record_success()

    tracemalloc.start()
    try:
        record(1_000)
        before, _ = tracemalloc.get_traced_memory()
        record(100_000)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert b.state is CLOSED
    assert after - before < 16 * 1024
    requests = b.snapshot()["requests"]
    assert isinstance(requests, int)
    assert requests <= 60_000 + 1_000  # one window's worth, give or take a bucket


def test_concurrent_records_from_threads_are_all_counted(clock: FakeClock) -> None:
    b = breaker(clock)
    snapshots: list[dict[str, object]] = []

    def work() -> None:
        for _ in range(5_000):
            b.record_success()
        snapshots.append(b.snapshot())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.snapshot()["requests"] == 20_000
    assert len(snapshots) == 4
