"""Virtual keys: what a proxy client presents instead of a provider key.

A virtual key has a name and a scope. A ``model`` key (the default) calls the
routes it names, with optionally its own budget and rate limit; an ``admin``
key uses the gateway's admin endpoints (approvals, kills) and calls no model.
Keeping the two apart is what makes "the key of a run can never approve that
run" structural: whatever key an agent holds to call models cannot decide.

Only a SHA-256 hash of its secret is stored (secrets are 160+ bits of
randomness, so a fast hash is enough: there is nothing to brute-force).

``KeyStore`` keeps them in the store's database (table ``virtual_keys``)::

    keys = KeyStore(store)
    key, secret = keys.create("ci-bot", routes=("support",), rate_limit=RateLimit(rpm=60))
    print(secret)                       # shown once: only its hash is kept
    assert await keys.verify(secret) == key
    keys.revoke("ci-bot")               # other processes stop accepting it within cache_ttl_s
    admin, admin_secret = keys.create("oncall-console", scope=KeyScope.ADMIN)

The secret itself is never stored, logged, put in an error message or on a
span: the store holds its hash and the first few characters (``prefix``), so
a key can be recognised in a list without being usable.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import hashlib
import re
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Final, Protocol

import orjson
from pydantic import ValidationError
from sqlalchemy import Connection, Engine, RowMapping, insert, select, update
from sqlalchemy.exc import IntegrityError

from tether.config import BudgetLimit, RateLimit
from tether.errors import StoreError, UnknownVirtualKey, UserError, VirtualKeyExists, VirtualKeyRevoked
from tether.gateway.deps import backend_of, bounded
from tether.store.access import StoreAccess
from tether.store.schema import virtual_keys

if TYPE_CHECKING:
    from tether.store import TraceStore

__all__ = [
    "DEFAULT_CACHE_TTL_S",
    "KeyScope",
    "KeyStore",
    "KeyVerifier",
    "UnknownVirtualKey",
    "VirtualKey",
    "VirtualKeyExists",
    "VirtualKeyRevoked",
]

#: How long ``KeyStore.verify`` trusts what it looked up, and so how long a revoked key may still work elsewhere.
DEFAULT_CACHE_TTL_S: Final = 5.0
SECRET_PREFIX: Final = "tk-"  # noqa: S105 (what every secret starts with, not a secret)
_SECRET_BYTES: Final = 30  # token_urlsafe(30): 40 characters, 240 bits
_SHOWN_CHARS: Final = 6  # random characters kept in ``prefix``: enough to tell keys apart, useless to guess with
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Anything else cannot be a secret this module made: refused without a lookup or a cache entry.
_SECRET_SHAPE: Final = re.compile(rf"{SECRET_PREFIX}[A-Za-z0-9_-]{{20,200}}")
_KNOWN_NAMES_SHOWN: Final = 20


class KeyScope(StrEnum):
    """What a virtual key may do: call models on its routes, or administer (and nothing else)."""

    MODEL = "model"
    ADMIN = "admin"


@dataclass(frozen=True)
class VirtualKey:
    """A proxy client's identity and allowances (never the secret itself).

    Attributes:
        id: stable identifier.
        name: unique, human-chosen name (``ci-bot``); what spans, costs and budgets record.
        prefix: the first characters of the secret, to recognise it in a list.
        routes: routes it may use; empty means every route (an admin key uses none).
        budget: its own budget, or None.
        rate_limit: its own RPM/TPM limit, or None.
        created_at: when it was created (UTC).
        revoked_at: when it was revoked, or None while it is valid.
        scope: ``model`` (calls its routes) or ``admin`` (the admin endpoints: approvals, kills; no model calls).
    """

    id: str
    name: str
    prefix: str
    routes: tuple[str, ...] = ()
    budget: BudgetLimit | None = None
    rate_limit: RateLimit | None = None
    created_at: datetime | None = None
    revoked_at: datetime | None = None
    scope: KeyScope = KeyScope.MODEL

    @property
    def is_admin(self) -> bool:
        return self.scope is KeyScope.ADMIN

    def allows(self, route: str) -> bool:
        """Whether it may call this route: a model key on one of its routes (or any, if it names none)."""
        return self.scope is KeyScope.MODEL and (not self.routes or route in self.routes)


class KeyVerifier(Protocol):
    """What the proxy needs of a key store."""

    async def verify(self, secret: str) -> VirtualKey | None:
        """The valid (not revoked) key whose secret this is, or None."""
        ...


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _utc(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; they were written in UTC.
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _key_from_row(row: RowMapping) -> VirtualKey:
    name = row["name"]
    try:
        routes = tuple(str(r) for r in orjson.loads(row["routes"]))
        budget = BudgetLimit.model_validate_json(row["budget"]) if row["budget"] is not None else None
        rate_limit = RateLimit.model_validate_json(row["rate_limit"]) if row["rate_limit"] is not None else None
        scope = KeyScope(row["scope"])
    except (orjson.JSONDecodeError, ValidationError, TypeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise StoreError(f"virtual key {name!r} is stored in a form this tether cannot read: {reason}") from None
    return VirtualKey(
        id=row["id"],
        name=name,
        prefix=row["prefix"],
        routes=routes,
        budget=budget,
        rate_limit=rate_limit,
        created_at=_utc(row["created_at"]),
        revoked_at=_utc(row["revoked_at"]),
        scope=scope,
    )


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UserError(
            f"invalid key name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def _check_routes(routes: Iterable[str]) -> tuple[str, ...]:
    if isinstance(routes, str):
        raise UserError(f"routes must be a list of route names, not the string {routes!r}")
    checked: list[str] = []
    for route in routes:
        if not isinstance(route, str) or not route.strip():
            raise UserError(f"invalid route name {route!r}: route names are non-empty strings")
        if route not in checked:
            checked.append(route)
    return tuple(checked)


class KeyStore(StoreAccess):
    """Virtual keys in the store's database (SQLite or PostgreSQL), shared by every gateway replica.

    ``create``, ``list`` and ``revoke`` are synchronous (the CLI's and an
    operator's tools); ``verify`` is the proxy's hot path and is async.

    How ``verify`` stays off the database: the secret's SHA-256 is looked up
    in an in-memory cache first; a miss queries the database in a worker
    thread (``asyncio.to_thread``) and caches the answer for ``cache_ttl_s``
    seconds, **unknown and revoked secrets included**, so a client retrying a
    bad key costs one query per TTL. Concurrent misses for the same secret
    share one query, at most ``max_lookups`` queries run at once (a flood of
    distinct bad keys queues instead of taking the connection pool from the
    budget ledger), and both caches are bounded LRUs of ``cache_size``.

    Revocation: ``revoke`` drops the key from *this* instance's cache at once;
    every other process or replica keeps accepting it until its cached entry
    expires, i.e. for at most ``cache_ttl_s`` seconds (5 s by default).

    Args:
        store: the ``TraceStore`` whose database (and connection pool) to use,
            or an ``Engine`` on a migrated database. The caller keeps ownership.
        cache_ttl_s: how long a verification result is trusted; 0 disables the cache.
        cache_size: most entries in each of the valid and the unknown-secret caches.
        max_lookups: most database lookups ``verify`` runs at once.
        clock: monotonic seconds, for the cache (tests pass a fake).
        lookup_timeout_s: longest wait for a lookup; past it (or when the database fails) ``verify``
            raises ``DependencyUnavailable`` naming the key store, not its address. None: no bound.
    """

    def __init__(
        self,
        store: TraceStore | Engine,
        *,
        cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
        cache_size: int = 10_000,
        max_lookups: int = 4,
        clock: Callable[[], float] = time.monotonic,
        lookup_timeout_s: float | None = None,
    ) -> None:
        if not cache_ttl_s >= 0:
            raise ValueError(f"cache_ttl_s must be ≥ 0, got {cache_ttl_s!r}")
        if cache_size < 1 or max_lookups < 1:
            raise ValueError(f"cache_size and max_lookups must be ≥ 1, got {cache_size} and {max_lookups}")
        super().__init__(store)
        self._ttl = cache_ttl_s
        self._cache_size = cache_size
        self._max_lookups = max_lookups
        self._clock = clock
        # hash → (expires at, key); hash → expires at. Touched from the event loop and from
        # revoke/create in any thread, hence the lock (held for dictionary operations only).
        self._valid: OrderedDict[str, tuple[float, VirtualKey]] = OrderedDict()
        self._invalid: OrderedDict[str, float] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._inflight: dict[str, asyncio.Task[VirtualKey | None]] = {}
        self._gate: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self.lookups = 0  # database lookups made by ``verify``, for tests and metrics
        self.lookup_timeout_s = lookup_timeout_s
        self._dependency = f"the key store ({backend_of(self)})"

    # -- managing keys ---------------------------------------------------------------------

    def create(
        self,
        name: str,
        *,
        routes: Iterable[str] = (),
        budget: BudgetLimit | None = None,
        rate_limit: RateLimit | None = None,
        scope: KeyScope = KeyScope.MODEL,
    ) -> tuple[VirtualKey, str]:
        """Create a key and return it with its secret, which is never available again.

        Args:
            name: unique name: 1-64 letters, digits, ``.``, ``_``, ``-``.
            routes: the routes it may use; empty for every route.
            budget: its own budget, charged alongside the route's.
            rate_limit: its own RPM/TPM limit.
            scope: ``KeyScope.MODEL`` (the default) or ``KeyScope.ADMIN``, which takes no routes, budget
                or rate limit: it calls no model.

        Returns:
            The key, and its secret (``tk-`` and 40 URL-safe characters).

        Raises:
            VirtualKeyExists: a key with this name exists (revoked or not).
            UserError: the name or a route name is malformed, or an admin key was given routes or limits.
            StoreError: the database failed.
        """
        _check_name(name)
        checked_routes = _check_routes(routes)
        try:
            scope = KeyScope(scope)
        except ValueError:
            raise UserError(f"invalid key scope {scope!r}: use model or admin") from None
        if scope is KeyScope.ADMIN and (checked_routes or budget is not None or rate_limit is not None):
            raise UserError(
                "an admin key takes no routes, budget or rate limit: it calls no model — "
                "create a separate model key for model calls"
            )
        if budget is not None and not isinstance(budget, BudgetLimit):
            raise UserError(f"budget must be a BudgetLimit, got {type(budget).__name__}")
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise UserError(f"rate_limit must be a RateLimit, got {type(rate_limit).__name__}")
        secret = SECRET_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)
        digest = _hash(secret)
        key = VirtualKey(
            id=uuid.uuid4().hex,
            name=name,
            prefix=secret[: len(SECRET_PREFIX) + _SHOWN_CHARS],
            routes=checked_routes,
            budget=budget,
            rate_limit=rate_limit,
            created_at=datetime.now(UTC),
            scope=scope,
        )
        row = {
            "id": key.id,
            "name": key.name,
            "prefix": key.prefix,
            "secret_hash": digest,
            "routes": orjson.dumps(list(checked_routes)).decode(),
            "budget": budget.model_dump_json(exclude_none=True) if budget is not None else None,
            "rate_limit": rate_limit.model_dump_json(exclude_none=True) if rate_limit is not None else None,
            "created_at": key.created_at,
            "revoked_at": None,
            "scope": scope.value,
        }
        with self._connect("creating a virtual key") as connection, connection.begin():
            if self._find(connection, name) is not None:
                raise VirtualKeyExists(self._exists_message(name))
            try:
                connection.execute(insert(virtual_keys), [row])
            except IntegrityError:
                # Another process took the name between our check and the insert. (The
                # driver's message quotes the row's values; it is not repeated here.)
                raise VirtualKeyExists(self._exists_message(name)) from None
        with self._cache_lock:
            self._invalid.pop(digest, None)
        return key, secret

    @staticmethod
    def _exists_message(name: str) -> str:
        return (
            f"a virtual key named {name!r} exists already (names stay taken after revocation): "
            "choose another name, or see them with tether keys list --all"
        )

    @staticmethod
    def _find_row(connection: Connection, name: str) -> RowMapping | None:
        return connection.execute(select(virtual_keys).where(virtual_keys.c.name == name)).mappings().one_or_none()

    @classmethod
    def _find(cls, connection: Connection, name: str) -> VirtualKey | None:
        row = cls._find_row(connection, name)
        return _key_from_row(row) if row is not None else None

    def list(self, include_revoked: bool = False) -> builtins.list[VirtualKey]:
        """Keys by creation time, oldest first; valid ones only unless ``include_revoked``."""
        query = select(virtual_keys).order_by(virtual_keys.c.created_at, virtual_keys.c.name)
        if not include_revoked:
            query = query.where(virtual_keys.c.revoked_at.is_(None))
        with self._connect("listing virtual keys") as connection:
            rows = connection.execute(query).mappings().all()
        return [_key_from_row(row) for row in rows]

    def get(self, name: str) -> VirtualKey:
        """The key with this name, revoked or not.

        Raises:
            UnknownVirtualKey: no key has this name (the message lists the valid ones).
        """
        with self._connect("reading a virtual key") as connection:
            key = self._find(connection, name)
            if key is None:
                raise UnknownVirtualKey(self._unknown_message(connection, name))
        return key

    def revoke(self, name: str) -> VirtualKey:
        """Revoke a key: it stops working here at once and everywhere within the cache TTL.

        Returns:
            The key as revoked (``revoked_at`` set).

        Raises:
            UnknownVirtualKey: no key has this name (the message lists the valid ones).
            VirtualKeyRevoked: it was revoked already (the message says when).
        """
        now = datetime.now(UTC)
        with self._connect("revoking a virtual key") as connection, connection.begin():
            # Conditional, so that of two concurrent revokes exactly one succeeds.
            changed = connection.execute(
                update(virtual_keys)
                .where((virtual_keys.c.name == name) & virtual_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            ).rowcount
            row = self._find_row(connection, name)
            if row is None:
                raise UnknownVirtualKey(self._unknown_message(connection, name))
        key = _key_from_row(row)
        if not changed:
            revoked = key.revoked_at.strftime("%Y-%m-%d %H:%M:%S UTC") if key.revoked_at else "earlier"
            raise VirtualKeyRevoked(f"virtual key {name!r} was already revoked at {revoked}")
        with self._cache_lock:
            self._valid.pop(row["secret_hash"], None)
        return key

    @staticmethod
    def _unknown_message(connection: Connection, name: str) -> str:
        query = (
            select(virtual_keys.c.name)
            .where(virtual_keys.c.revoked_at.is_(None))
            .order_by(virtual_keys.c.name)
            .limit(_KNOWN_NAMES_SHOWN + 1)
        )
        known = list(connection.scalars(query))
        if not known:
            return f"no virtual key named {name!r}: there are no valid keys — create one with tether keys create NAME"
        shown = ", ".join(known[:_KNOWN_NAMES_SHOWN]) + (", …" if len(known) > _KNOWN_NAMES_SHOWN else "")
        return f"no virtual key named {name!r}; valid keys: {shown} (tether keys list --all shows revoked ones too)"

    # -- verifying -------------------------------------------------------------------------

    async def verify(self, secret: str) -> VirtualKey | None:
        """The valid (not revoked) key whose secret this is, or None.

        A revoked key may still be returned for up to ``cache_ttl_s`` seconds
        by a ``KeyStore`` that verified it before the revocation.

        Raises:
            StoreError: the database failed (fail closed: the caller must refuse the request).
        """
        if not isinstance(secret, str) or not _SECRET_SHAPE.fullmatch(secret):
            return None
        digest = _hash(secret)
        hit, cached = self._cached(digest)
        if hit:
            return cached
        loop = asyncio.get_running_loop()
        lookup = self._inflight.get(digest)
        if lookup is None or lookup.get_loop() is not loop:
            # One lookup per secret at a time, in a task of its own: a caller that is
            # cancelled (client gone) neither cancels it nor fails the others waiting on it.
            lookup = loop.create_task(self._fetch(digest))
            self._inflight[digest] = lookup
            lookup.add_done_callback(functools.partial(self._fetched, digest))
        if self.lookup_timeout_s is None:
            return await asyncio.shield(lookup)
        # Bounded only here, on a cache miss: a hit never pays for the timer.
        return await bounded(asyncio.shield(lookup), dependency=self._dependency, timeout_s=self.lookup_timeout_s)

    async def _fetch(self, digest: str) -> VirtualKey | None:
        async with self._semaphore(asyncio.get_running_loop()):
            key = await asyncio.to_thread(self._lookup, digest)
        self._remember(digest, key)
        return key

    def _fetched(self, digest: str, lookup: asyncio.Task[VirtualKey | None]) -> None:
        if self._inflight.get(digest) is lookup:
            del self._inflight[digest]
        if not lookup.cancelled():
            lookup.exception()  # mark it retrieved: its waiters (if any are left) have it

    def _semaphore(self, loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
        # asyncio primitives belong to one event loop; make a new one if the loop changed.
        if self._gate is None or self._gate[0] is not loop:
            self._gate = (loop, asyncio.Semaphore(self._max_lookups))
        return self._gate[1]

    def _cached(self, digest: str) -> tuple[bool, VirtualKey | None]:
        """``(True, key)`` or ``(True, None)`` for a cached valid or unknown secret; ``(False, None)`` on a miss."""
        now = self._clock()
        with self._cache_lock:
            valid = self._valid.get(digest)
            if valid is not None:
                if valid[0] > now:
                    self._valid.move_to_end(digest)
                    return True, valid[1]
                del self._valid[digest]
            expires = self._invalid.get(digest)
            if expires is not None:
                if expires > now:
                    return True, None
                del self._invalid[digest]
        return False, None

    def _remember(self, digest: str, key: VirtualKey | None) -> None:
        if self._ttl <= 0:
            return
        expires = self._clock() + self._ttl
        with self._cache_lock:
            cache: OrderedDict[str, tuple[float, VirtualKey]] | OrderedDict[str, float]
            if key is None:
                self._invalid[digest] = expires
                self._invalid.move_to_end(digest)
                cache = self._invalid
            else:
                self._valid[digest] = (expires, key)
                self._valid.move_to_end(digest)
                cache = self._valid
            while len(cache) > self._cache_size:
                cache.popitem(last=False)

    def _lookup(self, digest: str) -> VirtualKey | None:
        self.lookups += 1
        query = select(virtual_keys).where((virtual_keys.c.secret_hash == digest) & virtual_keys.c.revoked_at.is_(None))
        with self._connect("verifying a virtual key") as connection:
            row = connection.execute(query).mappings().one_or_none()
        return _key_from_row(row) if row is not None else None

    def clear_cache(self) -> None:
        """Forget every cached verification, so the next ones read the database."""
        with self._cache_lock:
            self._valid.clear()
            self._invalid.clear()
