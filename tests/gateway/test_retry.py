"""Retry policy: which errors are retried, how long between tries, and what is never swallowed."""

from __future__ import annotations

import asyncio
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from tether.config import RetryPolicy
from tether.errors import (
    BudgetExceeded,
    ConfigError,
    MalformedResponseError,
    ModelConnectionError,
    ModelHTTPError,
    ModelTimeoutError,
    RateLimited,
    StreamInterrupted,
    UserError,
)
from tether.gateway.retry import backoff_delay, call_with_retries, is_retryable


class Sleeps:
    """A fake ``asyncio.sleep`` that records each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class Flaky:
    """An attempt that raises the given errors in turn, then answers ``"ok"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def overloaded(retry_after: float | None = None) -> ModelHTTPError:
    return ModelHTTPError(529, '{"type":"error"}', provider="anthropic", retry_after=retry_after)


def no_jitter(**fields: object) -> RetryPolicy:
    return RetryPolicy(jitter="none", **fields)


RNG = random.Random(7)


# --- delays ---------------------------------------------------------------------------------------


def test_delays_grow_exponentially_and_are_capped() -> None:
    policy = no_jitter(base_delay_s=0.5, multiplier=2.0, max_delay_s=5.0)
    delays = [backoff_delay(policy, n, retry_after=None, rng=RNG) for n in range(1, 7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_huge_attempt_number_is_capped_not_an_overflow() -> None:
    policy = no_jitter(base_delay_s=1.0, multiplier=10.0, max_delay_s=20.0)
    assert backoff_delay(policy, 10_000, retry_after=None, rng=RNG) == 20.0


def test_a_zero_base_delay_means_no_wait_however_many_retries() -> None:
    policy = no_jitter(base_delay_s=0.0, multiplier=10.0, max_delay_s=20.0)
    assert [backoff_delay(policy, n, retry_after=None, rng=RNG) for n in (1, 2, 10_000)] == [0.0, 0.0, 0.0]


def test_full_jitter_spreads_delays_over_zero_to_the_cap() -> None:
    policy = RetryPolicy(base_delay_s=1.0, multiplier=2.0, max_delay_s=20.0, jitter="full")
    rng = random.Random(1)
    delays = [backoff_delay(policy, 3, retry_after=None, rng=rng) for _ in range(2_000)]
    assert all(d is not None and 0.0 <= d <= 4.0 for d in delays)
    assert min(d for d in delays if d is not None) < 0.1
    assert max(d for d in delays if d is not None) > 3.9


def test_equal_jitter_keeps_at_least_half_the_cap() -> None:
    policy = RetryPolicy(base_delay_s=1.0, multiplier=2.0, jitter="equal")
    rng = random.Random(2)
    delays = [backoff_delay(policy, 3, retry_after=None, rng=rng) for _ in range(2_000)]
    assert all(d is not None and 2.0 <= d <= 4.0 for d in delays)


def test_the_same_rng_seed_gives_the_same_delays() -> None:
    policy = RetryPolicy()
    first = [backoff_delay(policy, n, retry_after=None, rng=random.Random(42)) for n in (1, 2, 3)]
    again = [backoff_delay(policy, n, retry_after=None, rng=random.Random(42)) for n in (1, 2, 3)]
    assert first == again


def test_retry_after_is_a_floor_even_above_max_delay() -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=20.0, max_retry_after_s=60.0)
    assert backoff_delay(policy, 1, retry_after=7.0, rng=RNG) == 7.0
    assert backoff_delay(policy, 1, retry_after=45.0, rng=RNG) == 45.0
    assert backoff_delay(no_jitter(base_delay_s=8.0, max_delay_s=8.0), 1, retry_after=3.0, rng=RNG) == 8.0


def test_a_retry_after_longer_than_max_retry_after_is_not_waited_for() -> None:
    policy = RetryPolicy(max_retry_after_s=60.0)
    assert backoff_delay(policy, 1, retry_after=60.0, rng=RNG) == 60.0
    assert backoff_delay(policy, 1, retry_after=61.0, rng=RNG) is None


def test_retry_after_is_ignored_when_not_honoured() -> None:
    policy = no_jitter(base_delay_s=0.5, honour_retry_after=False, max_retry_after_s=1.0)
    assert backoff_delay(policy, 1, retry_after=300.0, rng=RNG) == 0.5


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="1-based"):
        backoff_delay(RetryPolicy(), 0, retry_after=None, rng=RNG)


_POLICIES = st.builds(
    lambda base, extra, multiplier, jitter, max_after: RetryPolicy(
        base_delay_s=base,
        max_delay_s=base + extra,
        multiplier=multiplier,
        jitter=jitter,
        max_retry_after_s=max_after,
    ),
    st.floats(0, 10),
    st.floats(0, 100),
    st.floats(1, 10),
    st.sampled_from(["full", "equal", "none"]),
    st.floats(0, 120),
)


def expected_cap(policy: RetryPolicy, attempt: int) -> float:
    """min(max_delay, base * multiplier ** (attempt - 1)), in logs so it cannot overflow."""
    if policy.base_delay_s == 0 or policy.max_delay_s == 0:
        return 0.0
    log_grown = math.log(policy.base_delay_s) + (attempt - 1) * math.log(policy.multiplier)
    return policy.max_delay_s if log_grown >= math.log(policy.max_delay_s) else math.exp(log_grown)


@given(
    policy=_POLICIES,
    attempt=st.integers(1, 2_000),
    retry_after=st.none() | st.floats(0, 200),
    seed=st.integers(0, 2**32),
)
def test_delay_bounds_hold_for_any_policy(
    policy: RetryPolicy, attempt: int, retry_after: float | None, seed: int
) -> None:
    delay = backoff_delay(policy, attempt, retry_after=retry_after, rng=random.Random(seed))
    cap = expected_cap(policy, attempt)
    if retry_after is not None and retry_after > policy.max_retry_after_s:
        assert delay is None
        return
    assert delay is not None
    floor = {"full": 0.0, "equal": cap / 2, "none": cap}[policy.jitter]
    if retry_after is None:
        assert floor <= delay <= cap or math.isclose(delay, cap)
    else:
        assert retry_after <= delay <= max(cap, retry_after) or math.isclose(delay, max(cap, retry_after))
        assert delay >= floor or math.isclose(delay, floor)


# --- which errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
def test_transient_http_statuses_are_retryable(status: int) -> None:
    assert is_retryable(ModelHTTPError(status, "{}"))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_the_callers_own_http_errors_are_not_retryable(status: int) -> None:
    assert not is_retryable(ModelHTTPError(status, "{}"))


@pytest.mark.parametrize(
    "error",
    [
        ModelTimeoutError("slow"),
        ModelConnectionError("reset"),
        MalformedResponseError("<html>"),
        StreamInterrupted("cut", partial_text="Hel"),
    ],
)
def test_timeouts_connection_errors_garbage_and_cut_streams_are_retryable(error: Exception) -> None:
    assert is_retryable(error)


@pytest.mark.parametrize(
    "error",
    [
        UserError("bad"),
        ConfigError("bad toml"),
        ValueError("bug"),
        TimeoutError(),
        RateLimited("route:x", retry_after=1.0, limit="10/min"),
        BudgetExceeded("route:x", limit=1.0, used=1.0, requested=0.1),
        asyncio.CancelledError(),
    ],
)
def test_everything_else_is_not_retryable(error: BaseException) -> None:
    assert not is_retryable(error)


# --- call_with_retries -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [ModelHTTPError(400, "{}"), ModelHTTPError(401, "{}"), UserError("no such route")],
    ids=["400", "401", "UserError"],
)
async def test_non_retryable_errors_are_raised_at_once_without_sleeping(error: Exception) -> None:
    attempt, sleeps = Flaky(error), Sleeps()
    with pytest.raises(type(error)) as raised:
        await call_with_retries(attempt, RetryPolicy(max_retries=5), sleep=sleeps)
    assert raised.value is error
    assert (attempt.calls, sleeps.delays) == (1, [])


@pytest.mark.parametrize("failures", [0, 1, 2, 3])
async def test_retryable_errors_succeed_after_k_failures_with_exactly_k_sleeps(failures: int) -> None:
    errors = [overloaded(), ModelTimeoutError("slow"), ModelConnectionError("reset")][:failures]
    errors += [StreamInterrupted("cut")] * (failures - len(errors))
    attempt, sleeps = Flaky(*errors), Sleeps()
    retries: list[tuple[int, BaseException, float]] = []

    result = await call_with_retries(
        attempt,
        no_jitter(max_retries=3, base_delay_s=0.5),
        sleep=sleeps,
        on_retry=lambda n, exc, delay: retries.append((n, exc, delay)),
    )

    assert result == "ok"
    assert attempt.calls == failures + 1
    assert sleeps.delays == [0.5, 1.0, 2.0][:failures]
    assert [(n, delay) for n, _, delay in retries] == list(enumerate(sleeps.delays, start=1))
    assert [type(exc) for _, exc, _ in retries] == [type(e) for e in errors]


async def test_gives_up_after_max_retries_and_raises_the_last_error() -> None:
    errors = [overloaded(), overloaded(), overloaded(), overloaded()]
    attempt, sleeps = Flaky(*errors), Sleeps()
    with pytest.raises(ModelHTTPError) as raised:
        await call_with_retries(attempt, RetryPolicy(max_retries=2), sleep=sleeps)
    assert raised.value is errors[2]
    assert (attempt.calls, len(sleeps.delays)) == (3, 2)


async def test_zero_max_retries_means_one_attempt() -> None:
    attempt, sleeps = Flaky(overloaded()), Sleeps()
    with pytest.raises(ModelHTTPError):
        await call_with_retries(attempt, RetryPolicy(max_retries=0), sleep=sleeps)
    assert (attempt.calls, sleeps.delays) == (1, [])


async def test_the_providers_retry_after_sets_the_wait() -> None:
    attempt, sleeps = Flaky(overloaded(retry_after=12.0)), Sleeps()
    assert await call_with_retries(attempt, RetryPolicy(base_delay_s=0.5), sleep=sleeps) == "ok"
    assert sleeps.delays == [12.0]


async def test_a_too_long_retry_after_fails_over_instead_of_waiting() -> None:
    error = overloaded(retry_after=600.0)
    attempt, sleeps = Flaky(error), Sleeps()
    with pytest.raises(ModelHTTPError) as raised:
        await call_with_retries(attempt, RetryPolicy(max_retries=3, max_retry_after_s=60.0), sleep=sleeps)
    assert raised.value is error
    assert (attempt.calls, sleeps.delays) == (1, [])


async def test_jitter_comes_from_the_rng_given() -> None:
    first, again = Sleeps(), Sleeps()
    policy = RetryPolicy(max_retries=3)
    await call_with_retries(Flaky(overloaded(), overloaded()), policy, rng=random.Random(5), sleep=first)
    await call_with_retries(Flaky(overloaded(), overloaded()), policy, rng=random.Random(5), sleep=again)
    assert first.delays == again.delays
    assert len(first.delays) == 2


async def test_cancellation_raised_by_an_attempt_is_never_swallowed() -> None:
    attempt, sleeps = Flaky(asyncio.CancelledError()), Sleeps()
    with pytest.raises(asyncio.CancelledError):
        await call_with_retries(attempt, RetryPolicy(max_retries=5), sleep=sleeps)
    assert (attempt.calls, sleeps.delays) == (1, [])


async def test_cancelling_during_the_backoff_wait_cancels_the_call() -> None:
    tried = asyncio.Event()
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        tried.set()
        raise overloaded()

    task = asyncio.create_task(call_with_retries(attempt, no_jitter(base_delay_s=30.0, max_delay_s=30.0)))
    await tried.wait()  # the task ran until it parked in its 30 s backoff sleep
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == 1


# --- the policy itself ------------------------------------------------------------------------------------


def test_default_policy() -> None:
    policy = RetryPolicy()
    assert (policy.max_retries, policy.base_delay_s, policy.max_delay_s, policy.multiplier) == (2, 0.5, 20.0, 2.0)
    assert (policy.jitter, policy.honour_retry_after, policy.max_retry_after_s) == ("full", True, 60.0)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"base_delay_s": -0.1}, "base_delay_s"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": "decorrelated"}, "jitter"),
        ({"max_retry_after_s": float("nan")}, "max_retry_after_s"),
        ({"base_delay_s": 5.0, "max_delay_s": 1.0}, "max_delay_s"),
        ({"retries": 3}, "retries"),
    ],
)
def test_invalid_policies_are_rejected_naming_the_field(fields: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        RetryPolicy(**fields)
