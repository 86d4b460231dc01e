"""Circuit breakers, one per deployment: stop calling a deployment that keeps failing.

::

    CLOSED ──(N failures in a row, or failure rate ≥ r over the window)──► OPEN
    OPEN ──(open_s has passed; noticed lazily, on the next read)──────────► HALF_OPEN
    HALF_OPEN ──(a probe succeeds)──► CLOSED   (window and counters reset)
    HALF_OPEN ──(a probe fails)─────► OPEN     (open_s starts again)

The caller asks ``allow()`` before each call and then reports exactly one of
``record_success()``, ``record_failure()`` or ``release()`` for every call it
was allowed to make; ``release()`` is for calls whose outcome says nothing
about the deployment's health (cancelled, or a 4xx that is the caller's fault).

The failure-rate window is a ring of ``WINDOW_BUCKETS`` time buckets, so memory
is constant however many calls pass; the window slides in steps of
``window_s / WINDOW_BUCKETS`` (1 s for the default 60 s), which means an outcome
leaves the window between ``window_s - step`` and ``window_s`` after it happened.

Outcomes are not tied to the ``allow()`` that admitted them (``allow`` returns a
plain bool), so the breaker reads them by state. While OPEN, outcomes are late
answers to calls admitted before it opened and are ignored. While HALF_OPEN,
an outcome counts as a probe's only while a probe is in flight; a call admitted
before the breaker opened that finishes then is taken as a probe (its success
or failure is as good evidence as a probe's). The one imprecision: such a
late ``release()`` frees a probe slot the real probe still holds.

State changes happen under a ``threading.Lock`` (the breaker is used from the
event loop and read from a metrics thread); ``on_change`` is called after the
lock is released, so a callback may read the breaker.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Final

from tether.config import BreakerConfig

__all__ = ["WINDOW_BUCKETS", "BreakerRegistry", "BreakerState", "CircuitBreaker", "OnChange"]

WINDOW_BUCKETS: Final = 60
"""Time buckets in the failure-rate window; its resolution is ``window_s / WINDOW_BUCKETS``."""


class BreakerState(StrEnum):
    """Where a circuit breaker is in its cycle."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


OnChange = Callable[[str, BreakerState, BreakerState, str], None]
"""``on_change(name, old, new, reason)``, called on every state change."""


class _Window:
    """Requests and failures over the last ``window_s``, in a fixed ring of time buckets."""

    __slots__ = ("_epochs", "_failures", "_requests", "_step")

    def __init__(self, window_s: float) -> None:
        self._step = window_s / WINDOW_BUCKETS
        # The bucket number (time // step) each slot currently holds; None for never used.
        self._epochs: list[int | None] = [None] * WINDOW_BUCKETS
        self._requests = [0] * WINDOW_BUCKETS
        self._failures = [0] * WINDOW_BUCKETS

    def add(self, now: float, ok: bool) -> None:
        epoch = math.floor(now / self._step)
        slot = epoch % WINDOW_BUCKETS
        if self._epochs[slot] != epoch:
            # The slot held a bucket a whole window old (or older): reuse it.
            self._epochs[slot] = epoch
            self._requests[slot] = 0
            self._failures[slot] = 0
        self._requests[slot] += 1
        if not ok:
            self._failures[slot] += 1

    def totals(self, now: float) -> tuple[int, int]:
        """(requests, failures) in the window ending at ``now``."""
        newest = math.floor(now / self._step)
        oldest = newest - WINDOW_BUCKETS + 1
        requests = failures = 0
        for epoch, req, fail in zip(self._epochs, self._requests, self._failures, strict=True):
            if epoch is not None and oldest <= epoch <= newest:
                requests += req
                failures += fail
        return requests, failures

    def clear(self) -> None:
        self._epochs = [None] * WINDOW_BUCKETS
        self._requests = [0] * WINDOW_BUCKETS
        self._failures = [0] * WINDOW_BUCKETS


_Change = tuple[BreakerState, BreakerState, str]


class CircuitBreaker:
    """The circuit breaker of one deployment; see the module docstring.

    Args:
        name: the deployment's name, passed to ``on_change`` and shown in snapshots.
        config: thresholds; ``BreakerConfig()`` when omitted.
        clock: seconds, monotonic; injectable for tests.
        on_change: called as ``(name, old, new, reason)`` after every state change.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: OnChange | None = None,
    ) -> None:
        self.name = name
        self.config = config if config is not None else BreakerConfig()
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._window = _Window(self.config.window_s)
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probes = 0

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value})"

    @property
    def state(self) -> BreakerState:
        """The current state; OPEN turns into HALF_OPEN here once ``open_s`` has passed."""
        with self._lock:
            changes = self._expire(self._clock())
            state = self._state
        self._notify(changes)
        return state

    def allow(self) -> bool:
        """Whether a call may go to this deployment now.

        CLOSED: always. OPEN: never. HALF_OPEN: while fewer than
        ``half_open_probes`` probes are in flight; a True here takes a probe slot.
        """
        with self._lock:
            changes = self._expire(self._clock())
            if self._state is BreakerState.CLOSED:
                allowed = True
            elif self._state is BreakerState.OPEN:
                allowed = False
            else:
                allowed = self._probes < self.config.half_open_probes
                if allowed:
                    self._probes += 1
        self._notify(changes)
        return allowed

    def record_success(self) -> None:
        """An allowed call succeeded; a half-open probe's success closes the breaker."""
        with self._lock:
            now = self._clock()
            changes = self._expire(now)
            if self._state is BreakerState.CLOSED:
                self._window.add(now, ok=True)
                self._consecutive = 0
            elif self._state is BreakerState.HALF_OPEN and self._probes > 0:
                changes.append(self._move(BreakerState.CLOSED, now, "probe succeeded"))
        self._notify(changes)

    def record_failure(self) -> None:
        """An allowed call failed in a way that counts against the deployment."""
        with self._lock:
            now = self._clock()
            changes = self._expire(now)
            if self._state is BreakerState.CLOSED:
                self._window.add(now, ok=False)
                self._consecutive += 1
                reason = self._trip_reason(now)
                if reason is not None:
                    changes.append(self._move(BreakerState.OPEN, now, reason))
            elif self._state is BreakerState.HALF_OPEN and self._probes > 0:
                changes.append(self._move(BreakerState.OPEN, now, "probe failed"))
        self._notify(changes)

    def release(self) -> None:
        """An allowed call ended without an outcome that counts; frees its probe slot."""
        with self._lock:
            changes = self._expire(self._clock())
            if self._state is BreakerState.HALF_OPEN and self._probes > 0:
                self._probes -= 1
        self._notify(changes)

    def snapshot(self) -> dict[str, object]:
        """The breaker's state and counters, for ``/metrics`` and the CLI.

        ``opened_at`` is on the breaker's clock (monotonic seconds by default);
        ``half_open_in_s`` is the time left before probes are let through.
        """
        with self._lock:
            now = self._clock()
            changes = self._expire(now)
            requests, failures = self._window.totals(now)
            half_open_in = (
                max(0.0, self._opened_at + self.config.open_s - now)
                if self._state is BreakerState.OPEN and self._opened_at is not None
                else None
            )
            snap: dict[str, object] = {
                "name": self.name,
                "state": self._state.value,
                "failures": failures,
                "requests": requests,
                "failure_rate": failures / requests if requests else None,
                "consecutive_failures": self._consecutive,
                "opened_at": self._opened_at,
                "half_open_in_s": half_open_in,
                "probes_in_flight": self._probes,
            }
        self._notify(changes)
        return snap

    def _trip_reason(self, now: float) -> str | None:
        """Why the breaker should open after the failure just recorded, or None."""
        cfg = self.config
        if self._consecutive >= cfg.consecutive_failures:
            n = self._consecutive
            return f"{n} consecutive failure{'s' if n > 1 else ''}"
        requests, failures = self._window.totals(now)
        if requests >= cfg.min_requests and failures / requests >= cfg.failure_rate:
            return f"failure rate {failures / requests:.0%} over {cfg.window_s:g}s ({requests} requests)"
        return None

    def _expire(self, now: float) -> list[_Change]:
        """Turn OPEN into HALF_OPEN once ``open_s`` has passed (caller holds the lock)."""
        if (
            self._state is BreakerState.OPEN
            and self._opened_at is not None
            and now - self._opened_at >= self.config.open_s
        ):
            probes = self.config.half_open_probes
            reason = f"open for {self.config.open_s:g}s, letting {probes} probe{'s' if probes > 1 else ''} through"
            return [self._move(BreakerState.HALF_OPEN, now, reason)]
        return []

    def _move(self, new: BreakerState, now: float, reason: str) -> _Change:
        """Enter ``new`` and reset what it starts afresh (caller holds the lock)."""
        old, self._state, self._probes = self._state, new, 0
        if new is BreakerState.OPEN:
            self._opened_at = now
        elif new is BreakerState.CLOSED:
            self._opened_at = None
            self._consecutive = 0
            # The failures that opened the breaker must not count against the recovered deployment.
            self._window.clear()
        return (old, new, reason)

    def _notify(self, changes: list[_Change]) -> None:
        if self._on_change is not None:
            for old, new, reason in changes:
                self._on_change(self.name, old, new, reason)


class BreakerRegistry:
    """The breakers of all deployments, created on first use.

    Args:
        config: the config of breakers created without one of their own.
        clock: passed to every breaker.
        on_change: the callback of breakers created without one of their own.
    """

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: OnChange | None = None,
    ) -> None:
        self.config = config if config is not None else BreakerConfig()
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(
        self, name: str, config: BreakerConfig | None = None, *, on_change: OnChange | None = None
    ) -> CircuitBreaker:
        """The breaker of deployment ``name``, created on first use.

        Args:
            name: the deployment's name.
            config: the new breaker's config; the registry's when omitted.
            on_change: the new breaker's callback; the registry's when omitted.

        ``config`` and ``on_change`` matter only on first use: an existing
        breaker keeps its own, and its state.
        """
        breaker = self._breakers.get(name)
        if breaker is not None:
            return breaker
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                breaker = CircuitBreaker(
                    name,
                    config if config is not None else self.config,
                    clock=self._clock,
                    on_change=on_change if on_change is not None else self._on_change,
                )
                self._breakers[name] = breaker
            return breaker

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def __len__(self) -> int:
        return len(self._breakers)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._breakers))

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Every breaker's ``snapshot()``, by deployment name."""
        with self._lock:
            breakers = list(self._breakers.values())
        return {b.name: b.snapshot() for b in breakers}
