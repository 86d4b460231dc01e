"""Rate limits: token buckets in memory and in Redis, and the RPM/TPM limiter on top of them."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio
from pydantic import ValidationError

from tether.config import RateLimit
from tether.errors import ConfigError, RateLimited
from tether.gateway.ratelimit import (
    Grant,
    MemoryRateLimitBackend,
    RateLimitBackend,
    RateLimitBackendUnavailable,
    RateLimiter,
    RedisRateLimitBackend,
    RequestTooLarge,
)

SLOW = 1e-3  # tokens per second: refill that cannot add a whole token during a test
PER_MINUTE = 1 / 60


def about(expected: float) -> object:
    """``expected`` give or take what a bucket refills at ``SLOW`` while a test runs."""
    return pytest.approx(expected, rel=1e-3)


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest, redis_url: str, redis_prefix: str) -> AsyncIterator[RateLimitBackend]:
    """Each backend in turn; the Redis one on the machine's Redis, under the test's own prefix."""
    made: RateLimitBackend = (
        MemoryRateLimitBackend() if request.param == "memory" else RedisRateLimitBackend(redis_url, prefix=redis_prefix)
    )
    try:
        yield made
    finally:
        await made.aclose()


@pytest.fixture
async def redis_backend(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisRateLimitBackend]:
    made = RedisRateLimitBackend(redis_url, prefix=redis_prefix)
    try:
        yield made
    finally:
        await made.aclose()


async def take_all(backend: RateLimitBackend, key: str, times: int, *, capacity: float, refill: float) -> list[float]:
    return [await backend.take(key, 1, capacity=capacity, refill_per_s=refill) for _ in range(times)]


# --- both backends ---------------------------------------------------------------------------------------------


async def test_a_fresh_bucket_allows_its_capacity_then_says_when_to_retry(backend: RateLimitBackend) -> None:
    waits = await take_all(backend, "k", 11, capacity=10, refill=10 * PER_MINUTE)

    assert waits[:10] == [0.0] * 10
    # One token short at 10 per minute: six seconds, less the little time the test took.
    assert 5.5 < waits[10] <= 6.0


async def test_a_refused_take_takes_nothing(backend: RateLimitBackend) -> None:
    assert await backend.take("k", 60, capacity=100, refill_per_s=SLOW) == 0.0

    wait = await backend.take("k", 50, capacity=100, refill_per_s=SLOW)

    assert wait == pytest.approx(10 / SLOW, rel=1e-3)
    assert await backend.take("k", 40, capacity=100, refill_per_s=SLOW) == 0.0


async def test_more_than_the_capacity_never_fits(backend: RateLimitBackend) -> None:
    assert await backend.take("k", 11, capacity=10, refill_per_s=1) == math.inf
    assert await backend.take("k", 10, capacity=10, refill_per_s=1) == 0.0


async def test_a_bucket_refills_with_time_up_to_its_capacity(backend: RateLimitBackend) -> None:
    await take_all(backend, "k", 5, capacity=5, refill=50)
    wait = await backend.take("k", 1, capacity=5, refill_per_s=50)
    assert 0 < wait <= 0.02

    await asyncio.sleep(wait + 0.02)
    assert await backend.take("k", 1, capacity=5, refill_per_s=50) == 0.0

    await asyncio.sleep(0.3)  # long enough to refill 15 tokens, but it holds 5 at most
    assert await backend.take("k", 5, capacity=5, refill_per_s=50) == 0.0
    # Empty again: 5 tokens at 50 per second are 0.1 s away (none would be had it held 15).
    assert 0.05 < await backend.take("k", 5, capacity=5, refill_per_s=50) <= 0.1


async def test_giving_back_returns_tokens_up_to_the_capacity(backend: RateLimitBackend) -> None:
    await take_all(backend, "k", 10, capacity=10, refill=SLOW)

    await backend.give_back("k", 3, capacity=10, refill_per_s=SLOW)
    assert await take_all(backend, "k", 4, capacity=10, refill=SLOW) == [0.0, 0.0, 0.0, about(1 / SLOW)]

    await backend.give_back("k", 1000, capacity=10, refill_per_s=SLOW)
    waits = await take_all(backend, "k", 11, capacity=10, refill=SLOW)
    assert waits[:10] == [0.0] * 10
    assert waits[10] > 0


async def test_giving_back_a_negative_amount_puts_the_bucket_in_debt(backend: RateLimitBackend) -> None:
    await take_all(backend, "k", 10, capacity=10, refill=1)

    await backend.give_back("k", -5, capacity=10, refill_per_s=1)

    # 5 tokens in debt and 1 to take: 6 s at 1 per second, less the time the test took.
    wait = await backend.take("k", 1, capacity=10, refill_per_s=1)
    assert 5.5 < wait <= 6.0
    # In debt, even taking nothing has to wait.
    assert await backend.take("k", 0, capacity=10, refill_per_s=1) > 0


async def test_exactly_the_capacity_goes_to_200_concurrent_takers(backend: RateLimitBackend) -> None:
    waits = await asyncio.gather(*(backend.take("hot", 1, capacity=50, refill_per_s=SLOW) for _ in range(200)))

    assert sum(1 for w in waits if w == 0.0) == 50
    assert all(w > 0 for w in waits if w != 0.0)


async def test_keys_are_independent(backend: RateLimitBackend) -> None:
    await take_all(backend, "a", 3, capacity=3, refill=SLOW)

    assert await backend.take("a", 1, capacity=3, refill_per_s=SLOW) > 0
    assert await take_all(backend, "b", 3, capacity=3, refill=SLOW) == [0.0] * 3


@pytest.mark.parametrize(
    ("amount", "capacity", "refill"),
    [(1, 0, 1), (1, -1, 1), (1, 10, 0), (1, 10, math.inf), (-1, 10, 1), (math.nan, 10, 1)],
)
async def test_nonsense_bucket_arguments_are_refused(
    backend: RateLimitBackend, amount: float, capacity: float, refill: float
) -> None:
    with pytest.raises(ValueError, match="bucket 'k'"):
        await backend.take("k", amount, capacity=capacity, refill_per_s=refill)


# --- the memory backend ----------------------------------------------------------------------------------------


async def test_memory_refill_is_exact_on_its_clock() -> None:
    clock = FakeClock()
    backend = MemoryRateLimitBackend(clock=clock)
    await take_all(backend, "k", 60, capacity=60, refill=1)

    clock.advance(0.25)
    assert await backend.take("k", 1, capacity=60, refill_per_s=1) == pytest.approx(0.75)
    clock.advance(0.75)
    assert await backend.take("k", 1, capacity=60, refill_per_s=1) == 0.0
    assert await backend.take("k", 1, capacity=60, refill_per_s=1) == pytest.approx(1.0)


async def test_memory_forgets_buckets_that_are_full_again() -> None:
    clock = FakeClock()
    backend = MemoryRateLimitBackend(clock=clock)
    await backend.take("idle", 1, capacity=10, refill_per_s=1)
    await backend.take("busy", 1, capacity=10, refill_per_s=1)
    assert len(backend) == 2

    clock.advance(1.0)  # both have refilled
    await backend.take("busy", 1, capacity=10, refill_per_s=1)

    assert len(backend) == 1
    await backend.give_back("busy", 1, capacity=10, refill_per_s=1)  # full again: nothing to keep
    assert len(backend) == 0


async def test_memory_keeps_a_bounded_number_of_buckets() -> None:
    backend = MemoryRateLimitBackend(max_buckets=1000)

    for i in range(100_000):
        assert await backend.take(f"key-{i}", 1, capacity=5, refill_per_s=SLOW) == 0.0

    assert len(backend) == 1000
    # The least recently used went first: the newest are kept, the oldest forgotten (full again).
    await take_all(backend, "key-99999", 4, capacity=5, refill=SLOW)
    assert await backend.take("key-99999", 1, capacity=5, refill_per_s=SLOW) > 0
    assert await take_all(backend, "key-0", 5, capacity=5, refill=SLOW) == [0.0] * 5


# --- the Redis backend -----------------------------------------------------------------------------------------


async def test_two_redis_clients_share_one_bucket(redis_url: str, redis_prefix: str) -> None:
    one = RedisRateLimitBackend(redis_url, prefix=redis_prefix)
    two = RedisRateLimitBackend(redis_url, prefix=redis_prefix)
    try:
        waits = [await (one, two)[i % 2].take("shared", 1, capacity=6, refill_per_s=SLOW) for i in range(8)]
    finally:
        await one.aclose()
        await two.aclose()

    assert waits[:6] == [0.0] * 6
    assert waits[6] > 0
    assert waits[7] > 0


async def test_redis_buckets_expire_once_they_would_be_full(
    redis_backend: RedisRateLimitBackend, redis_url: str, redis_prefix: str
) -> None:
    await redis_backend.take("k", 1, capacity=10, refill_per_s=10 * PER_MINUTE)
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        # One token at 10 per minute: full again in 6 s.
        assert 5_900 < await client.pttl(f"{redis_prefix}k") <= 6_000

        await redis_backend.give_back("k", 1, capacity=10, refill_per_s=10 * PER_MINUTE)

        assert await client.exists(f"{redis_prefix}k") == 0  # full: the same as no bucket at all


async def test_redis_loads_its_script_again_after_a_flush(redis_backend: RedisRateLimitBackend, redis_url: str) -> None:
    await redis_backend.take("k", 1, capacity=3, refill_per_s=SLOW)
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        # Harmless to anything else on this Redis: a script missing from the cache is sent again.
        await client.script_flush()

    assert await take_all(redis_backend, "k", 3, capacity=3, refill=SLOW) == [0.0, 0.0, about(1 / SLOW)]


async def test_redis_backend_from_an_existing_client(redis_url: str, redis_prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        backend = RedisRateLimitBackend.from_client(client, prefix=redis_prefix)
        assert await take_all(backend, "k", 3, capacity=2, refill=SLOW) == [0.0, 0.0, about(1 / SLOW)]
        assert backend.url == "redis://127.0.0.1:6379/0"

        await backend.aclose()  # the client is the caller's: still usable

        assert await client.ping()
    finally:
        await client.aclose()


async def test_an_unreachable_redis_fails_fast_naming_the_url_but_not_the_password() -> None:
    backend = RedisRateLimitBackend("redis://:hunter2@127.0.0.1:6399/0", timeout_s=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(RateLimitBackendUnavailable) as err:
            await backend.take("k", 1, capacity=10, refill_per_s=1)
    finally:
        await backend.aclose()

    assert time.monotonic() - started < 3
    message = str(err.value)
    assert "redis://127.0.0.1:6399/0" in message
    assert "unreachable" in message
    assert "[gateway] redis_url" in message
    assert "hunter2" not in message
    assert backend.url == "redis://127.0.0.1:6399/0"


async def test_a_redis_that_never_answers_times_out_instead_of_hanging() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def accept_and_stay_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(accept_and_stay_silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = RedisRateLimitBackend(f"redis://127.0.0.1:{port}/0", timeout_s=0.2)
    started = time.monotonic()
    try:
        with pytest.raises(RateLimitBackendUnavailable, match=f"127.0.0.1:{port}"):
            await backend.take("k", 1, capacity=10, refill_per_s=1)
    finally:
        await backend.aclose()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()

    assert time.monotonic() - started < 2


def test_an_invalid_redis_url_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as err:
        RedisRateLimitBackend("http://user:hunter2@127.0.0.1:6379/0")

    assert "http://user@127.0.0.1:6379/0" in str(err.value)
    assert "hunter2" not in str(err.value)


# --- two processes, one limit ----------------------------------------------------------------------------------

# Runs in a separate interpreter: warms up (connects, loads the script), says "ready", waits for the
# start line on stdin so both processes hammer at the same moment, then prints how many takes it was granted.
HAMMER = """
import asyncio, sys
from tether.gateway.ratelimit import MemoryRateLimitBackend, RedisRateLimitBackend

async def main(kind, url, prefix, capacity, attempts):
    backend = RedisRateLimitBackend(url, prefix=prefix) if kind == "redis" else MemoryRateLimitBackend()
    try:
        await backend.take("warm-up", 0, capacity=1, refill_per_s=1)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        granted = 0
        for _ in range(attempts // 10):
            waits = await asyncio.gather(
                *(backend.take("shared", 1, capacity=capacity, refill_per_s=1e-3) for _ in range(10))
            )
            granted += sum(1 for wait in waits if wait == 0.0)
        print(granted, flush=True)
    finally:
        await backend.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
"""


def hammer_from_two_processes(kind: str, redis_url: str, prefix: str, *, capacity: int, attempts: int) -> list[int]:
    """Grants each of two concurrent processes got from a bucket of ``capacity`` named alike in both."""
    args = [sys.executable, "-c", HAMMER, kind, redis_url, prefix, str(capacity), str(attempts)]
    processes = [
        subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready", process.stderr and process.stderr.read()
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        granted = []
        for process in processes:
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0, err
            granted.append(int(out.strip()))
        return granted
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_two_processes_on_redis_never_exceed_one_limit(redis_url: str, redis_prefix: str) -> None:
    granted = hammer_from_two_processes("redis", redis_url, redis_prefix, capacity=100, attempts=300)

    assert sum(granted) == 100


def test_two_processes_in_memory_each_grant_the_whole_limit(redis_url: str, redis_prefix: str) -> None:
    # The contrast: in-process buckets multiply a limit by the number of replicas.
    granted = hammer_from_two_processes("memory", redis_url, redis_prefix, capacity=100, attempts=300)

    assert granted == [100, 100]


# --- RateLimit -------------------------------------------------------------------------------------------------


def test_a_rate_limit_reads_like_tether_toml() -> None:
    limit = RateLimit.model_validate({"rpm": 600, "tpm": 200000})

    assert (limit.rpm, limit.tpm) == (600, 200000)
    assert RateLimit(rpm=5).tpm is None
    with pytest.raises(ValidationError):
        limit.rpm = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ({"rpm": 0}, "greater than 0"),
        ({"tpm": -5}, "greater than 0"),
        ({}, "needs rpm or tpm"),
        ({"rpm": 10, "rph": 3}, "Extra inputs"),
    ],
)
def test_a_rate_limit_refuses_nonsense(raw: dict[str, int], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        RateLimit.model_validate(raw)


# --- RateLimiter -----------------------------------------------------------------------------------------------


@pytest.fixture
def limiter(backend: RateLimitBackend) -> RateLimiter:
    return RateLimiter(backend)


async def acquire_many(limiter: RateLimiter, limit: RateLimit, times: int, *, tokens: int = 0) -> list[Grant]:
    return [await limiter.acquire("key:ci-bot", limit, estimated_tokens=tokens) for _ in range(times)]


async def test_rpm_refuses_past_its_limit(limiter: RateLimiter) -> None:
    limit = RateLimit(rpm=3)
    await acquire_many(limiter, limit, 3)

    with pytest.raises(RateLimited) as err:
        await limiter.acquire("key:ci-bot", limit, estimated_tokens=0)

    assert err.value.key == "key:ci-bot"
    assert err.value.limit == "rpm 3"
    assert 19.5 < err.value.retry_after <= 20.0  # one request at 3 per minute
    assert "rate limit rpm 3 for key:ci-bot reached" in str(err.value)


async def test_tpm_refuses_and_gives_the_request_back(limiter: RateLimiter) -> None:
    limit = RateLimit(rpm=2, tpm=1000)
    await limiter.acquire("key:ci-bot", limit, estimated_tokens=800)

    with pytest.raises(RateLimited) as err:
        await limiter.acquire("key:ci-bot", limit, estimated_tokens=300)

    assert err.value.limit == "tpm 1000"
    assert 5.5 < err.value.retry_after <= 6.0  # 100 tokens short at 1000 per minute
    # The refused request did not keep its RPM token: a second request still fits, a third does not.
    await limiter.acquire("key:ci-bot", limit, estimated_tokens=100)
    with pytest.raises(RateLimited, match="rpm 2"):
        await limiter.acquire("key:ci-bot", limit, estimated_tokens=0)


async def test_scopes_are_limited_apart(limiter: RateLimiter) -> None:
    limit = RateLimit(rpm=1)
    await limiter.acquire("key:ci-bot", limit, estimated_tokens=0)

    await limiter.acquire("route:support", limit, estimated_tokens=0)
    with pytest.raises(RateLimited):
        await limiter.acquire("key:ci-bot", limit, estimated_tokens=0)


async def test_settle_gives_back_an_over_estimate(limiter: RateLimiter) -> None:
    limit = RateLimit(tpm=1000)
    grant = await limiter.acquire("key:ci-bot", limit, estimated_tokens=900)
    with pytest.raises(RateLimited):
        await limiter.acquire("key:ci-bot", limit, estimated_tokens=900)

    await limiter.settle(grant, 100)

    await limiter.acquire("key:ci-bot", limit, estimated_tokens=900)


async def test_settle_takes_the_rest_of_an_under_estimate_into_debt(limiter: RateLimiter) -> None:
    limit = RateLimit(tpm=1000)
    grant = await limiter.acquire("key:ci-bot", limit, estimated_tokens=1000)

    await limiter.settle(grant, 1500)

    # 500 tokens in debt at 1000 per minute: even a request of no tokens waits ~30 s.
    with pytest.raises(RateLimited) as err:
        await limiter.acquire("key:ci-bot", limit, estimated_tokens=0)
    assert 29.5 < err.value.retry_after <= 30.0


async def test_settling_again_adjusts_by_the_difference_only(limiter: RateLimiter) -> None:
    limit = RateLimit(tpm=1000)
    grant = await limiter.acquire("key:ci-bot", limit, estimated_tokens=500)

    await limiter.settle(grant, 700)
    await limiter.settle(grant, 700)  # the same count again changes nothing
    await limiter.settle(grant, 600)

    assert grant.charged_tokens == 600
    await limiter.acquire("key:ci-bot", limit, estimated_tokens=400)
    with pytest.raises(RateLimited):
        await limiter.acquire("key:ci-bot", limit, estimated_tokens=1)


async def test_release_returns_the_request_and_its_tokens(limiter: RateLimiter) -> None:
    limit = RateLimit(rpm=1, tpm=1000)
    grant = await limiter.acquire("key:ci-bot", limit, estimated_tokens=1000)

    await limiter.release(grant)
    await limiter.release(grant)  # twice is still once

    await limiter.acquire("key:ci-bot", limit, estimated_tokens=1000)


async def test_a_request_larger_than_the_whole_tpm_is_refused_for_good(limiter: RateLimiter) -> None:
    limit = RateLimit(rpm=1, tpm=1000)

    with pytest.raises(RequestTooLarge) as err:
        await limiter.acquire("route:support", limit, estimated_tokens=1001)

    assert not isinstance(err.value, RateLimited)  # retrying would never help
    message = str(err.value)
    assert "route:support" in message
    assert "1,001 tokens" in message
    assert "could never be sent" in message
    assert "tpm" in message
    # Nothing was taken: the one request per minute is still there.
    await limiter.acquire("route:support", limit, estimated_tokens=1000)


async def test_limiter_refuses_negative_token_counts(limiter: RateLimiter) -> None:
    with pytest.raises(ValueError, match="estimated_tokens"):
        await limiter.acquire("key:ci-bot", RateLimit(tpm=10), estimated_tokens=-1)
    grant = await limiter.acquire("key:ci-bot", RateLimit(tpm=10), estimated_tokens=1)
    with pytest.raises(ValueError, match="actual_tokens"):
        await limiter.settle(grant, -1)
