"""The gateway's dependencies on the request path (store, Redis): bounded waits, and names fit for clients.

Every wait on a dependency during a request goes through ``bounded``: past
``timeout_s`` (``[gateway] dependency_timeout_s``, 2 s by default) the request
fails with ``DependencyUnavailable`` — a 503 in the client's wire format —
instead of hanging on a database that accepts connections and never answers.
The message names the dependency by its role and kind ("the budget store
(postgresql)"), never by its address: driver and ``StoreError`` texts carry
host, port, user and database names, so they go to the log only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

from tether.errors import RateLimitBackendUnavailable, StoreError, StoreUnavailable

__all__ = ["DependencyUnavailable", "backend_of", "bounded"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


class DependencyUnavailable(StoreUnavailable):
    """A dependency on the request path failed or did not answer in time; the message is safe for clients.

    Attributes:
        dependency: what failed, e.g. ``"the budget store (postgresql)"``.
    """

    def __init__(self, dependency: str, message: str) -> None:
        self.dependency = dependency
        super().__init__(message)


def backend_of(component: object) -> str:
    """The kind of database behind a ledger, backend or store: ``postgresql``, ``sqlite``, ``redis`` or ``memory``."""
    seen = 0
    while (inner := getattr(component, "inner", None)) is not None and seen < 4:
        component, seen = inner, seen + 1  # a leased ledger: what it leases from
    try:
        url = str(getattr(component, "url", "") or "")
    except Exception:  # a property that fails: say nothing rather than guess
        url = ""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        return "redis"
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    if scheme == "sqlite":
        return "sqlite"
    return "memory"


def _is_dependency_failure(exc: BaseException) -> bool:
    return isinstance(exc, StoreError | RateLimitBackendUnavailable) and not isinstance(exc, DependencyUnavailable)


async def bounded(awaitable: Awaitable[T], *, dependency: str, timeout_s: float) -> T:
    """Await ``awaitable``, failing with ``DependencyUnavailable`` past ``timeout_s`` or when the dependency fails.

    Other errors (a budget refusal, a rate limit) pass through unchanged.
    """
    try:
        async with asyncio.timeout(timeout_s):
            return await awaitable
    except TimeoutError:
        logger.error("tether gateway: %s did not answer within %g s", dependency, timeout_s)
        raise DependencyUnavailable(
            dependency, f"{dependency} did not answer within {timeout_s:g} s: retry later"
        ) from None
    except Exception as exc:
        if not _is_dependency_failure(exc):
            raise
        # The full text (with the dependency's address) is for the operator's log only.
        logger.error("tether gateway: %s failed: %s", dependency, exc)
        raise DependencyUnavailable(dependency, f"{dependency} is unavailable: retry later") from None
