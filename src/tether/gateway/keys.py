"""Virtual keys: what a proxy client presents instead of a provider key.

A virtual key has a name, the routes it may use, and optionally its own budget
and rate limit. Only a SHA-256 hash of its secret is stored (secrets are 160+
bits of randomness, so a fast hash is enough: there is nothing to brute-force).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from tether.gateway.budget import BudgetLimit
from tether.gateway.ratelimit import RateLimit

__all__ = ["KeyVerifier", "VirtualKey"]


@dataclass(frozen=True)
class VirtualKey:
    """A proxy client's identity and allowances (never the secret itself).

    Attributes:
        id: stable identifier.
        name: unique, human-chosen name (``ci-bot``); what spans, costs and budgets record.
        prefix: the first characters of the secret, to recognise it in a list.
        routes: routes it may use; empty means every route.
        budget: its own budget, or None.
        rate_limit: its own RPM/TPM limit, or None.
        created_at: when it was created (UTC).
        revoked_at: when it was revoked, or None while it is valid.
    """

    id: str
    name: str
    prefix: str
    routes: tuple[str, ...] = ()
    budget: BudgetLimit | None = None
    rate_limit: RateLimit | None = None
    created_at: datetime | None = None
    revoked_at: datetime | None = None

    def allows(self, route: str) -> bool:
        return not self.routes or route in self.routes


class KeyVerifier(Protocol):
    """What the proxy needs of a key store."""

    async def verify(self, secret: str) -> VirtualKey | None:
        """The valid (not revoked) key whose secret this is, or None."""
        ...
