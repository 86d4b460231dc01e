"""Rate limits: requests per minute (RPM) and tokens per minute (TPM) as token buckets.

A limit of ``rpm = 600`` is a bucket that holds at most 600 requests and refills
continuously at 600/60 = 10 per second; ``tpm`` works the same way with tokens.
So:

- **A full minute's burst is allowed.** An idle scope may send all 600 requests
  at once; after that it gets 10 per second, never 600 at the turn of a minute
  (there are no fixed windows, so no double burst at a window's edge).
- **Refill is smooth.** A refused call learns exactly when there will be room
  (``RateLimited.retry_after``), computed from the refill rate.
- **TPM is charged up front and reconciled.** ``RateLimiter.acquire`` takes the
  request's *estimated* tokens; ``RateLimiter.settle`` then gives back what was
  over-estimated or takes the rest, which may put the bucket in debt so that
  the next requests wait until it is repaid. A request estimated at more than
  the whole TPM limit is refused outright (``RequestTooLarge``): it could never fit.

Two backends sit behind ``RateLimitBackend`` (``take``, ``give_back``, ``aclose``):

- ``MemoryRateLimitBackend`` for one process. With N replicas every replica has
  its own buckets, so the effective limit is N times the configured one.
- ``RedisRateLimitBackend`` shared by every replica. One Lua script reads the
  bucket, refills it with Redis's own clock (so replicas with skewed clocks
  agree), decides and writes, atomically; the limit holds whatever the number
  of replicas. This is the failure of peer gateways tether sets out to avoid.

A bucket that is not stored is full, so both backends forget buckets that have
refilled completely (Redis with ``PEXPIRE``, memory by pruning) and memory stays
bounded by the number of scopes active in the last minute.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from tether.config import RateLimit
from tether.errors import RateLimitBackendUnavailable, RateLimited, RequestTooLarge
from tether.redis_client import client_display, connect

if TYPE_CHECKING:
    # redis is imported lazily: importing redis.asyncio costs ~0.5 s, which every
    # `tether` command would pay for although only the Redis backend needs it.
    from redis.asyncio import Redis

__all__ = [
    "Grant",
    "MemoryRateLimitBackend",
    "RateLimitBackend",
    "RateLimitBackendUnavailable",
    "RateLimiter",
    "RedisRateLimitBackend",
    "RequestTooLarge",
]


class RateLimitBackend(Protocol):
    """Where token buckets live. Amounts are floats; a bucket that was never used is full."""

    async def take(self, key: str, amount: float, *, capacity: float, refill_per_s: float) -> float:
        """Take ``amount`` from bucket ``key`` if it holds that much.

        Returns:
            0.0 when taken; otherwise the seconds until the bucket would hold
            enough (nothing is taken then), ``math.inf`` if ``amount > capacity``.
        """
        ...

    async def give_back(self, key: str, amount: float, *, capacity: float, refill_per_s: float) -> None:
        """Adjust a bucket after the fact.

        A positive ``amount`` returns tokens (capped at ``capacity``); a negative
        one takes more, possibly into debt, which delays the next takers.
        """
        ...

    async def aclose(self) -> None:
        """Release connections; the backend is not used afterwards."""
        ...


def _check_bucket(key: str, capacity: float, refill_per_s: float) -> None:
    if not key:
        raise ValueError("a rate-limit bucket needs a non-empty key")
    if not (math.isfinite(capacity) and capacity > 0):
        raise ValueError(f"bucket {key!r}: capacity must be a positive number, got {capacity!r}")
    # A bucket that never refills would also never expire (expiring it would refill it at once).
    if not (math.isfinite(refill_per_s) and refill_per_s > 0):
        raise ValueError(f"bucket {key!r}: refill_per_s must be a positive number, got {refill_per_s!r}")


def _check_take(key: str, amount: float, capacity: float, refill_per_s: float) -> None:
    _check_bucket(key, capacity, refill_per_s)
    if not (math.isfinite(amount) and amount >= 0):
        raise ValueError(f"bucket {key!r}: cannot take {amount!r}, take a finite amount ≥ 0")


def _check_adjust(key: str, amount: float, capacity: float, refill_per_s: float) -> None:
    _check_bucket(key, capacity, refill_per_s)
    if not math.isfinite(amount):
        raise ValueError(f"bucket {key!r}: cannot give back {amount!r}")


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float
    # The parameters of the last call, to tell when the bucket is full again.
    capacity: float
    refill_per_s: float

    def level(self, now: float, capacity: float, refill_per_s: float) -> float:
        return min(capacity, self.tokens + max(0.0, now - self.updated) * refill_per_s)

    def full_at(self, now: float) -> bool:
        return self.level(now, self.capacity, self.refill_per_s) >= self.capacity


class MemoryRateLimitBackend(RateLimitBackend):
    """Token buckets in this process only: each replica limits on its own.

    Each operation runs without awaiting, so it is atomic under asyncio; a lock
    makes it safe across threads too. Memory is bounded: buckets that have
    refilled completely are forgotten (they equal a new bucket), and beyond
    ``max_buckets`` the least recently used bucket is dropped, which forgets its
    usage, so size ``max_buckets`` above the number of scopes active in a minute.

    Args:
        max_buckets: the most buckets kept at once.
        clock: monotonic seconds; injectable for tests.
    """

    def __init__(self, *, max_buckets: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        if max_buckets < 1:
            raise ValueError(f"max_buckets must be at least 1, got {max_buckets}")
        self._max_buckets = max_buckets
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """The number of buckets kept now."""
        return len(self._buckets)

    async def take(self, key: str, amount: float, *, capacity: float, refill_per_s: float) -> float:
        """See ``RateLimitBackend.take``."""
        _check_take(key, amount, capacity, refill_per_s)
        if amount > capacity:
            return math.inf
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            tokens = capacity if bucket is None else bucket.level(now, capacity, refill_per_s)
            if tokens < amount:
                self._buckets.move_to_end(key)  # refused, but in use: not the one to evict
                return (amount - tokens) / refill_per_s
            self._store(key, tokens - amount, now, capacity, refill_per_s)
            return 0.0

    async def give_back(self, key: str, amount: float, *, capacity: float, refill_per_s: float) -> None:
        """See ``RateLimitBackend.give_back``."""
        _check_adjust(key, amount, capacity, refill_per_s)
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            tokens = capacity if bucket is None else bucket.level(now, capacity, refill_per_s)
            self._store(key, min(capacity, tokens + amount), now, capacity, refill_per_s)

    async def aclose(self) -> None:
        """Forget every bucket."""
        with self._lock:
            self._buckets.clear()

    def _store(self, key: str, tokens: float, now: float, capacity: float, refill_per_s: float) -> None:
        if tokens >= capacity:
            self._buckets.pop(key, None)
        else:
            bucket = self._buckets.get(key)
            if bucket is None:
                self._buckets[key] = _Bucket(tokens, now, capacity, refill_per_s)
                if len(self._buckets) > self._max_buckets:
                    self._buckets.popitem(last=False)
            else:
                bucket.tokens, bucket.updated = tokens, now
                bucket.capacity, bucket.refill_per_s = capacity, refill_per_s
                self._buckets.move_to_end(key)
        # Forget idle buckets that are full again, a couple per call from the least
        # recently used end: constant work per call, and memory follows the active scopes.
        for _ in range(2):
            if not self._buckets:
                break
            oldest_key, oldest = next(iter(self._buckets.items()))
            if not oldest.full_at(now):
                break
            del self._buckets[oldest_key]


# KEYS[1]: the bucket (a hash: tokens, ts in µs of Redis's clock).
# ARGV: op ("take" | "adjust"), amount, capacity, refill per second.
# Returns the deficit in tokens as a string ("0" when taken or adjusted): a Lua
# number would be truncated to an integer on its way back to the client.
_SCRIPT = """
local amount = tonumber(ARGV[2])
local capacity = tonumber(ARGV[3])
local rate = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = capacity
if state[1] then
  local elapsed = math.max(0, now - tonumber(state[2])) / 1000000
  tokens = math.min(capacity, tonumber(state[1]) + elapsed * rate)
end
if ARGV[1] == 'take' then
  if tokens < amount then
    return string.format('%.17g', amount - tokens)
  end
  tokens = tokens - amount
else
  tokens = math.min(capacity, tokens + amount)
end
if tokens >= capacity then
  redis.call('DEL', KEYS[1])
  return '0'
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%d', now))
-- Expire when full again: a missing bucket is a full one, so nothing is lost.
local ttl_ms = math.min(math.ceil((capacity - tokens) / rate * 1000), 1e12)
redis.call('PEXPIRE', KEYS[1], string.format('%d', math.max(1, ttl_ms)))
return '0'
"""
_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode(), usedforsecurity=False).hexdigest()


class RedisRateLimitBackend(RateLimitBackend):
    """Token buckets in Redis, shared by every replica, so N replicas keep one limit.

    Every operation is one Lua script (EVALSHA, falling back to EVAL when the
    server does not have it cached), so there is no read-modify-write race
    between replicas. Time is Redis's own clock. Idle buckets expire once they
    would be full again. Failures raise ``RateLimitBackendUnavailable`` quickly
    (short socket timeouts, one reconnect) rather than hanging the request.

    Args:
        url: ``redis://[user:password@]host:port/db`` (or ``rediss://``, ``unix://``).
        prefix: prepended to every bucket key.
        timeout_s: connect, read and wait-for-a-free-connection timeout, in seconds.
        max_connections: connections kept open to Redis at most.
    """

    def __init__(
        self, url: str, *, prefix: str = "tether:rl:", timeout_s: float = 1.0, max_connections: int = 64
    ) -> None:
        client, display = connect(url, timeout_s=timeout_s, max_connections=max_connections)
        self._init(client, prefix=prefix, display=display, owns_client=True)

    @classmethod
    def from_client(
        cls, client: Redis, *, prefix: str = "tether:rl:", close_client: bool = False
    ) -> RedisRateLimitBackend:
        """Use an existing ``redis.asyncio.Redis`` client (its timeouts and retries apply).

        Args:
            client: the client; its responses may be bytes or decoded.
            prefix: prepended to every bucket key.
            close_client: close the client in ``aclose``.
        """
        backend = cls.__new__(cls)
        backend._init(client, prefix=prefix, display=client_display(client), owns_client=close_client)
        return backend

    def _init(self, client: Redis, *, prefix: str, display: str, owns_client: bool) -> None:
        self._client = client
        self._prefix = prefix
        self._display = display
        self._owns_client = owns_client

    @property
    def url(self) -> str:
        """The server's URL without password."""
        return self._display

    async def take(self, key: str, amount: float, *, capacity: float, refill_per_s: float) -> float:
        """See ``RateLimitBackend.take``."""
        _check_take(key, amount, capacity, refill_per_s)
        if amount > capacity:
            return math.inf
        deficit = await self._run(key, "take", amount, capacity, refill_per_s)
        return deficit / refill_per_s if deficit > 0 else 0.0

    async def give_back(self, key: str, amount: float, *, capacity: float, refill_per_s: float) -> None:
        """See ``RateLimitBackend.give_back``."""
        _check_adjust(key, amount, capacity, refill_per_s)
        await self._run(key, "adjust", amount, capacity, refill_per_s)

    async def aclose(self) -> None:
        """Close the client if this backend created it (or was asked to close it)."""
        if self._owns_client:
            await self._client.aclose()

    async def _run(self, key: str, op: str, amount: float, capacity: float, refill_per_s: float) -> float:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import NoScriptError, RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        args = (self._prefix + key, op, repr(float(amount)), repr(float(capacity)), repr(float(refill_per_s)))
        try:
            try:
                result = await self._client.evalsha(_SCRIPT_SHA, 1, *args)
            except NoScriptError:
                # First use on this server (or after SCRIPT FLUSH / a restart): EVAL also caches it.
                result = await self._client.eval(_SCRIPT, 1, *args)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise RateLimitBackendUnavailable(
                f"rate limits cannot be checked: Redis at {self._display} is unreachable or overloaded "
                f"({self._scrub(exc)}) — start Redis there or set [gateway] redis_url in tether.toml to a reachable one"
            ) from None
        except RedisError as exc:
            raise RateLimitBackendUnavailable(
                f"rate limits cannot be checked: Redis at {self._display} failed: {self._scrub(exc)}"
            ) from None
        return float(result.decode() if isinstance(result, bytes) else result)

    def _scrub(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        password = self._client.connection_pool.connection_kwargs.get("password")
        return text.replace(password, "[REDACTED]") if isinstance(password, str) and password else text


@dataclass(slots=True)
class Grant:
    """Room granted to one request by ``RateLimiter.acquire``.

    Attributes:
        scope: the limited scope, e.g. ``key:ci-bot``.
        limit: the limit it was granted under.
        estimated_tokens: the tokens taken from TPM when granted.
        charged_tokens: the tokens TPM holds against the request now (updated by ``settle``).
        holds_request: whether it holds an RPM token (released by ``release``).
    """

    scope: str
    limit: RateLimit
    estimated_tokens: int
    charged_tokens: int
    holds_request: bool


class RateLimiter:
    """RPM and TPM limits for scopes such as ``key:ci-bot`` or ``route:support``.

    Args:
        backend: where the buckets live; ``RedisRateLimitBackend`` to share them between replicas.
    """

    def __init__(self, backend: RateLimitBackend) -> None:
        self.backend = backend

    async def acquire(self, scope: str, limit: RateLimit, *, estimated_tokens: int) -> Grant:
        """Take one request from RPM and ``estimated_tokens`` from TPM, or neither.

        Raises:
            RateLimited: RPM or TPM has no room now; ``retry_after`` says when it will.
            RequestTooLarge: ``estimated_tokens`` exceeds the whole TPM limit.
            RateLimitBackendUnavailable: the shared store cannot be reached.
        """
        if estimated_tokens < 0:
            raise ValueError(f"estimated_tokens must be ≥ 0, got {estimated_tokens}")
        if limit.tpm is not None and estimated_tokens > limit.tpm:
            raise RequestTooLarge(scope, tokens=estimated_tokens, tpm=limit.tpm)
        if limit.rpm is not None:
            wait = await self.backend.take(f"{scope}:rpm", 1, capacity=limit.rpm, refill_per_s=limit.rpm / 60)
            if wait > 0:
                raise RateLimited(scope, retry_after=wait, limit=f"rpm {limit.rpm}")
        if limit.tpm is not None:
            # Taken even for 0 tokens: a bucket in debt (from under-estimates) must hold requests back.
            wait = await self.backend.take(
                f"{scope}:tpm", estimated_tokens, capacity=limit.tpm, refill_per_s=limit.tpm / 60
            )
            if wait > 0:
                if limit.rpm is not None:
                    # The request is not going out, so it must not count against RPM.
                    await self.backend.give_back(f"{scope}:rpm", 1, capacity=limit.rpm, refill_per_s=limit.rpm / 60)
                raise RateLimited(scope, retry_after=wait, limit=f"tpm {limit.tpm}")
        return Grant(
            scope=scope,
            limit=limit,
            estimated_tokens=estimated_tokens,
            charged_tokens=estimated_tokens,
            holds_request=limit.rpm is not None,
        )

    async def settle(self, grant: Grant, actual_tokens: int) -> None:
        """Charge TPM what the provider really reported instead of the estimate.

        Gives back an over-estimate, or takes the rest of an under-estimate (the
        bucket may go into debt). Calling it again with a newer count adjusts by
        the difference only.
        """
        if actual_tokens < 0:
            raise ValueError(f"actual_tokens must be ≥ 0, got {actual_tokens}")
        tpm = grant.limit.tpm
        difference = actual_tokens - grant.charged_tokens
        # Recorded before awaiting, so that concurrent settles of one grant never count twice.
        grant.charged_tokens = actual_tokens
        if tpm is not None and difference:
            await self.backend.give_back(f"{grant.scope}:tpm", -difference, capacity=tpm, refill_per_s=tpm / 60)

    async def release(self, grant: Grant) -> None:
        """Undo a grant whose request was never sent (e.g. another limit refused it).

        Returns its RPM token and every token it holds on TPM.
        """
        limit = grant.limit
        if grant.holds_request and limit.rpm is not None:
            grant.holds_request = False
            await self.backend.give_back(f"{grant.scope}:rpm", 1, capacity=limit.rpm, refill_per_s=limit.rpm / 60)
        await self.settle(grant, 0)

    async def aclose(self) -> None:
        """Close the backend."""
        await self.backend.aclose()
