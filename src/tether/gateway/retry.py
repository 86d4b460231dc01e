"""Retries of one deployment: which errors, how long to wait, how many times.

Delay before retry ``n`` (1-based): ``cap = min(max_delay_s, base_delay_s *
multiplier ** (n - 1))``, then jitter:

- ``full`` (default): uniform in ``[0, cap]``.
- ``equal``: ``cap / 2`` plus uniform in ``[0, cap / 2]``.
- ``none``: exactly ``cap``.

Why full jitter. When a provider starts failing, every client sees the errors
at about the same moment; without jitter they all retry at the same moments
too, and each wave of retries hits the provider as it tries to recover. AWS's
measurements ("Exponential Backoff And Jitter", Marc Brooker, AWS Architecture
Blog, 2015) found full jitter spreads retries most evenly and needs the fewest
calls and the least total time to get everyone through; its cost, an
occasional near-zero wait, is cheap here because retries are few (``max_retries``)
and the gateway falls back to another deployment after them.

Retry-After. A provider's ``Retry-After`` (``ModelHTTPError.retry_after``) is
a floor: the delay is never shorter than it. One longer than
``max_retry_after_s`` is not waited for: ``backoff_delay`` returns None and
``call_with_retries`` re-raises, so the gateway falls back elsewhere instead of
holding the request. With ``honour_retry_after=False`` the header is ignored.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tether.config import RetryPolicy
from tether.errors import ModelError

__all__ = ["OnRetry", "backoff_delay", "call_with_retries", "is_retryable"]

T = TypeVar("T")

OnRetry = Callable[[int, BaseException, float], None]
"""``on_retry(attempt, error, delay)``, called before each wait."""

# Jitter needs no reproducibility unless a test asks for it (by passing rng).
_RNG = random.Random()


def is_retryable(exc: BaseException) -> bool:
    """Whether retrying the same deployment could succeed.

    True for model errors marked retryable: HTTP 408, 409, 429 and 5xx (529
    included), timeouts, connection errors, malformed bodies and cut streams.
    False for everything else, including 4xx caller mistakes, ``UserError``,
    the gateway's own refusals and cancellation.
    """
    return isinstance(exc, ModelError) and exc.retryable


def backoff_delay(policy: RetryPolicy, attempt: int, *, retry_after: float | None, rng: random.Random) -> float | None:
    """Seconds to wait before retry number ``attempt`` (1-based).

    Args:
        policy: the retry policy.
        attempt: 1 for the first retry, 2 for the second...
        retry_after: the provider's Retry-After in seconds, if it sent one.
        rng: the source of jitter.

    Returns:
        The delay, never shorter than an honoured ``retry_after``; None when
        ``retry_after`` exceeds ``max_retry_after_s`` (do not retry here).
    """
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    cap = _cap(policy, attempt)
    if policy.jitter == "full":
        delay = rng.uniform(0.0, cap)
    elif policy.jitter == "equal":
        delay = cap / 2 + rng.uniform(0.0, cap / 2)
    else:
        delay = cap
    # uniform(a, b) may round to just past b; keep the documented bound exact.
    delay = min(delay, cap)
    if retry_after is None or not policy.honour_retry_after:
        return delay
    if retry_after > policy.max_retry_after_s:
        return None
    return max(delay, retry_after)


def _cap(policy: RetryPolicy, attempt: int) -> float:
    """The un-jittered delay of retry ``attempt``: exponential growth, capped."""
    if policy.base_delay_s == 0.0:
        return 0.0
    try:
        grown = policy.base_delay_s * policy.multiplier ** (attempt - 1)
    except OverflowError:  # a float power past ~1e308: far beyond any cap
        return policy.max_delay_s
    return min(policy.max_delay_s, grown)


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    rng: random.Random | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_retry: OnRetry | None = None,
) -> T:
    """Await ``fn()``, retrying retryable errors per ``policy``.

    Args:
        fn: makes one attempt; called afresh for each.
        policy: how many retries and how long between them.
        rng: the source of jitter (a shared system-seeded one by default).
        sleep: how to wait; injectable for tests.
        on_retry: called as ``(attempt, error, delay)`` before each wait.

    Returns:
        The first successful attempt's result.

    Raises:
        The error of the last attempt: at once when it is not retryable or its
        Retry-After is too long, otherwise once ``max_retries`` are spent.
        Cancellation is never caught.
    """
    jitter = rng if rng is not None else _RNG
    attempt = 0
    while True:
        try:
            return await fn()
        except Exception as exc:  # CancelledError is a BaseException, so it always propagates.
            if not is_retryable(exc) or attempt >= policy.max_retries:
                raise
            retry_after = getattr(exc, "retry_after", None)
            delay = backoff_delay(
                policy,
                attempt + 1,
                retry_after=retry_after if isinstance(retry_after, int | float) else None,
                rng=jitter,
            )
            if delay is None:
                raise
            attempt += 1
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            await sleep(delay)
