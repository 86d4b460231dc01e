"""Budgets: reserve a call's maximum cost before it is made, settle the real cost after.

Budgets fail closed. A call is placed only after ``reserve`` has charged its
worst-case cost to every budget that applies (route, agent, run, key); a
budget without room refuses the call with ``BudgetExceeded``, and a ledger
that cannot be reached raises ``StoreError`` — never "no answer, so allow".
After the call, ``settle`` replaces the reservation by the real cost, or
``release`` gives it back when the call never happened::

    reservation = await ledger.reserve(scopes, usd=worst_case, tokens=max_tokens)
    try:
        response = await call()
    except BaseException:
        await ledger.release(reservation)
        raise
    await ledger.settle(reservation, usd=real_cost, tokens=used_tokens)

Two ledgers:

* ``MemoryBudgetLedger`` — one process; an ``asyncio.Lock`` makes each
  operation atomic.
* ``SqlBudgetLedger`` — the store's database (SQLite or PostgreSQL), shared by
  every process and gateway replica that uses it, so N replicas never get N
  times the budget.

Money is counted in integer **nano-dollars** (1e-9 USD) so sums are exact:
amounts are rounded *up* to the next nano-dollar and limits *down*, so
rounding never lets a call through that the exact arithmetic would refuse.

Periods are UTC calendar days (``"2026-11-21"``) or months (``"2026-11"``),
or ``"all"`` for a lifetime budget; a reservation is charged, and settled, to
the period in which it was made.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext
from typing import TYPE_CHECKING, Final, Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Connection, Engine, Insert, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from tether.errors import BudgetExceeded, StoreError
from tether.store._engine import SQLITE_BEGIN, create_store_engine
from tether.store._failures import store_error, translate_errors
from tether.store._url import StoreURL, parse_store_url
from tether.store.migrations import migrate
from tether.store.schema import budget_reservations, budget_usage

if TYPE_CHECKING:
    from tether.store import TraceStore

__all__ = [
    "LIFETIME",
    "BudgetLedger",
    "BudgetLimit",
    "BudgetScope",
    "BudgetUsage",
    "Clock",
    "MemoryBudgetLedger",
    "Reservation",
    "ScopeKind",
    "SqlBudgetLedger",
    "period_key",
]

ScopeKind = Literal["run", "agent", "route", "key"]
Clock = Callable[[], datetime]

#: The period key of a budget without a period.
LIFETIME: Final = "all"

_NANOS_PER_USD: Final = 9  # decimal places of a nano-dollar
# A BIGINT holds 9.2e18 nano-dollars; a limit of at most $1e9 leaves room for overspend on top.
_MAX_USD: Final = Decimal(1_000_000_000)
_MAX_TOKENS: Final = 10**15


class BudgetLimit(BaseModel):
    """A budget's limits, as written in tether.toml: ``{usd = 50, tokens = 2_000_000, period = "day"}``.

    Attributes:
        usd: the most that may be spent, in US dollars; None for no USD limit.
        tokens: the most tokens (input + output) that may be used; None for no token limit.
        period: ``"day"`` or ``"month"`` (UTC calendar periods); None for a lifetime budget.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    usd: Decimal | None = Field(default=None, gt=0, le=_MAX_USD, allow_inf_nan=False)
    tokens: int | None = Field(default=None, gt=0, le=_MAX_TOKENS)
    period: Literal["day", "month"] | None = None

    @model_validator(mode="after")
    def _some_limit(self) -> Self:
        if self.usd is None and self.tokens is None:
            raise ValueError("a budget needs usd, tokens or both, e.g. {usd = 50, period = 'day'}")
        return self


@dataclass(frozen=True)
class BudgetScope:
    """One budget a call draws on.

    Attributes:
        kind: what the budget belongs to: a run, an agent, a route or a virtual key.
        name: which one, e.g. the route's name.
        limit: its limits; read at each reservation, so a changed tether.toml applies at once.
    """

    kind: ScopeKind
    name: str
    limit: BudgetLimit

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError(f"a {self.kind} budget needs a name")

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class Reservation:
    """What ``reserve`` charged: settle or release it exactly once.

    Attributes:
        id: unique id (32 hex digits).
        scopes: the budgets charged, in the order given to ``reserve``.
        usd: the amount reserved on each scope.
        tokens: the tokens reserved on each scope.
        periods: the period key each scope was charged to, aligned with ``scopes``.
    """

    id: str
    scopes: tuple[BudgetScope, ...]
    usd: Decimal
    tokens: int
    periods: tuple[str, ...]


@dataclass(frozen=True)
class BudgetUsage:
    """A budget's state in one period.

    Attributes:
        scope: the budget, e.g. ``route:support``.
        period: the period key (``"2026-11-21"``, ``"2026-11"`` or ``"all"``).
        spent_usd: settled spend.
        reserved_usd: held by calls in flight.
        spent_tokens: settled tokens.
        reserved_tokens: tokens held by calls in flight.
    """

    scope: str
    period: str
    spent_usd: Decimal
    reserved_usd: Decimal
    spent_tokens: int
    reserved_tokens: int

    @property
    def used_usd(self) -> Decimal:
        """Spent plus reserved: what a new reservation is checked against."""
        return self.spent_usd + self.reserved_usd

    @property
    def used_tokens(self) -> int:
        """Spent plus reserved tokens."""
        return self.spent_tokens + self.reserved_tokens


class BudgetLedger(Protocol):
    """Where budgets are charged. Every method is safe to call concurrently."""

    async def reserve(self, scopes: Sequence[BudgetScope], *, usd: Decimal, tokens: int) -> Reservation:
        """Charge ``usd`` and ``tokens`` as reserved to every scope, or to none.

        Raises:
            BudgetExceeded: the first scope (in the order given) without room; nothing was charged.
            ValueError: negative amounts, or the same scope twice.
        """
        ...

    async def settle(self, reservation: Reservation, *, usd: Decimal, tokens: int) -> None:
        """Replace the reservation by the real cost, which may exceed it (it is recorded anyway)."""
        ...

    async def release(self, reservation: Reservation) -> None:
        """Give the reservation back: the call never happened or used nothing. Idempotent."""
        ...

    async def usage(self, scope: BudgetScope, *, at: datetime | None = None) -> BudgetUsage:
        """The scope's usage in the period containing ``at`` (default: now)."""
        ...

    async def sweep_stale(self, older_than: timedelta) -> int:
        """Release reservations older than ``older_than`` (left by a process that died mid-call)."""
        ...

    async def aclose(self) -> None:
        """Finish pending work and free resources."""
        ...


def _utc(moment: datetime) -> datetime:
    # Naive datetimes mean UTC, as everywhere in the store.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def period_key(period: Literal["day", "month"] | None, at: datetime) -> str:
    """The key of the period containing ``at``: ``"2026-11-21"``, ``"2026-11"`` or ``"all"``."""
    moment = _utc(at)
    if period == "day":
        return moment.strftime("%Y-%m-%d")
    if period == "month":
        return moment.strftime("%Y-%m")
    return LIFETIME


def _to_nanos(usd: Decimal, rounding: str) -> int:
    # A wide context: the scaling must be exact before the one rounding we choose.
    with localcontext(prec=60):
        return int(usd.scaleb(_NANOS_PER_USD).to_integral_value(rounding=rounding))


def _to_usd(nanos: int) -> Decimal:
    return Decimal(nanos).scaleb(-_NANOS_PER_USD)


def _check_amounts(usd: Decimal, tokens: int) -> None:
    if not isinstance(usd, Decimal) or not usd.is_finite() or usd < 0:
        raise ValueError(f"a budget amount must be a finite Decimal >= 0, got {usd!r}")
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise ValueError(f"a token count must be an int >= 0, got {tokens!r}")


def _check_scopes(scopes: Sequence[BudgetScope]) -> None:
    names = [str(s) for s in scopes]
    if len(set(names)) != len(names):
        raise ValueError(f"a budget scope appears twice in {names}: each may be charged once per call")


@dataclass
class _Counters:
    """A (scope, period) row: money in nano-dollars."""

    spent_nanousd: int = 0
    reserved_nanousd: int = 0
    spent_tokens: int = 0
    reserved_tokens: int = 0

    def usage(self, scope: str, period: str) -> BudgetUsage:
        return BudgetUsage(
            scope=scope,
            period=period,
            spent_usd=_to_usd(self.spent_nanousd),
            reserved_usd=_to_usd(self.reserved_nanousd),
            spent_tokens=self.spent_tokens,
            reserved_tokens=self.reserved_tokens,
        )


def _check_room(scope: BudgetScope, row: _Counters, usd: Decimal, nanos: int, tokens: int) -> None:
    """Raise ``BudgetExceeded`` unless spent + reserved + this call fits every limit of ``scope``."""
    limit = scope.limit
    if limit.usd is not None:
        used = row.spent_nanousd + row.reserved_nanousd
        if used + nanos > _to_nanos(limit.usd, ROUND_FLOOR):
            raise BudgetExceeded(
                str(scope), limit=float(limit.usd), used=float(_to_usd(used)), requested=float(usd), unit="usd"
            )
    if limit.tokens is not None:
        used = row.spent_tokens + row.reserved_tokens
        if used + tokens > limit.tokens:
            raise BudgetExceeded(str(scope), limit=limit.tokens, used=used, requested=tokens, unit="tokens")


@dataclass(frozen=True)
class _Held:
    """An open reservation as the memory ledger keeps it."""

    keys: tuple[tuple[str, str], ...]
    nanousd: int
    tokens: int
    created_at: datetime


class MemoryBudgetLedger:
    """Budgets held in this process's memory; lost on exit.

    For one process (tests, a single embedded gateway). Replicas must share a
    ``SqlBudgetLedger`` instead, or each would spend the whole budget.

    Args:
        clock: the current time, for periods and the stale sweep (default: UTC now).
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or _now
        self._lock = asyncio.Lock()
        self._rows: dict[tuple[str, str], _Counters] = {}
        self._held: dict[str, _Held] = {}

    def _row(self, key: tuple[str, str]) -> _Counters:
        return self._rows.setdefault(key, _Counters())

    async def reserve(self, scopes: Sequence[BudgetScope], *, usd: Decimal, tokens: int) -> Reservation:
        """Charge every scope or none; see ``BudgetLedger.reserve``."""
        _check_amounts(usd, tokens)
        _check_scopes(scopes)
        nanos = _to_nanos(usd, ROUND_CEILING)
        async with self._lock:
            now = _utc(self._clock())
            periods = tuple(period_key(s.limit.period, now) for s in scopes)
            keys = tuple((str(s), p) for s, p in zip(scopes, periods, strict=True))
            for scope, key in zip(scopes, keys, strict=True):
                _check_room(scope, self._rows.get(key, _Counters()), usd, nanos, tokens)
            for key in keys:
                row = self._row(key)
                row.reserved_nanousd += nanos
                row.reserved_tokens += tokens
            reservation = Reservation(uuid.uuid4().hex, tuple(scopes), usd, tokens, periods)
            self._held[reservation.id] = _Held(keys, nanos, tokens, now)
        return reservation

    def _give_back(self, reservation_id: str) -> None:
        held = self._held.pop(reservation_id, None)
        if held is None:
            return  # settled, released or swept already
        for key in held.keys:
            row = self._row(key)
            row.reserved_nanousd -= held.nanousd
            row.reserved_tokens -= held.tokens

    async def settle(self, reservation: Reservation, *, usd: Decimal, tokens: int) -> None:
        """Record the real cost; see ``SqlBudgetLedger.settle`` for a settle after a sweep."""
        _check_amounts(usd, tokens)
        nanos = _to_nanos(usd, ROUND_CEILING)
        async with self._lock:
            self._give_back(reservation.id)
            for scope, period in zip(reservation.scopes, reservation.periods, strict=True):
                row = self._row((str(scope), period))
                row.spent_nanousd += nanos
                row.spent_tokens += tokens

    async def release(self, reservation: Reservation) -> None:
        """Give the reservation back; nothing happens if it is already settled or released."""
        async with self._lock:
            self._give_back(reservation.id)

    async def usage(self, scope: BudgetScope, *, at: datetime | None = None) -> BudgetUsage:
        """The scope's usage in the period containing ``at`` (default: the clock's now)."""
        period = period_key(scope.limit.period, at if at is not None else self._clock())
        async with self._lock:
            return self._rows.get((str(scope), period), _Counters()).usage(str(scope), period)

    async def sweep_stale(self, older_than: timedelta) -> int:
        """Release reservations made more than ``older_than`` ago; returns how many."""
        async with self._lock:
            cutoff = _utc(self._clock()) - older_than
            stale = [rid for rid, held in self._held.items() if held.created_at < cutoff]
            for rid in stale:
                self._give_back(rid)
        return len(stale)

    async def aclose(self) -> None:
        """Nothing to free; present for the ``BudgetLedger`` protocol."""


def _insert_or_ignore(dialect_name: str) -> Insert:
    if dialect_name == "postgresql":
        return postgresql.insert(budget_usage).on_conflict_do_nothing(index_elements=["scope", "period"])
    return sqlite.insert(budget_usage).on_conflict_do_nothing(index_elements=["scope", "period"])


def _zero_row(scope: str, period: str, now: datetime) -> dict[str, object]:
    return {
        "scope": scope,
        "period": period,
        "spent_nanousd": 0,
        "reserved_nanousd": 0,
        "spent_tokens": 0,
        "reserved_tokens": 0,
        "updated_at": now,
    }


def _add(connection: Connection, key: tuple[str, str], delta: _Counters, now: datetime) -> None:
    """Add ``delta`` to a usage row, creating the row when it is missing."""
    where = (budget_usage.c.scope == key[0]) & (budget_usage.c.period == key[1])
    change = (
        update(budget_usage)
        .where(where)
        .values(
            spent_nanousd=budget_usage.c.spent_nanousd + delta.spent_nanousd,
            reserved_nanousd=budget_usage.c.reserved_nanousd + delta.reserved_nanousd,
            spent_tokens=budget_usage.c.spent_tokens + delta.spent_tokens,
            reserved_tokens=budget_usage.c.reserved_tokens + delta.reserved_tokens,
            updated_at=now,
        )
    )
    if connection.execute(change).rowcount == 0:
        # Rows are made by reserve; only a row pruned by hand is missing here.
        connection.execute(_insert_or_ignore(connection.dialect.name), [_zero_row(*key, now)])
        connection.execute(change)


def _read(connection: Connection, key: tuple[str, str], *, lock: bool) -> _Counters:
    query = select(
        budget_usage.c.spent_nanousd,
        budget_usage.c.reserved_nanousd,
        budget_usage.c.spent_tokens,
        budget_usage.c.reserved_tokens,
    ).where((budget_usage.c.scope == key[0]) & (budget_usage.c.period == key[1]))
    row = connection.execute(query.with_for_update() if lock else query).one_or_none()
    return _Counters(*row) if row is not None else _Counters()


class SqlBudgetLedger:
    """Budgets in the store's database (SQLite or PostgreSQL), shared by every process using it.

    Tables ``budget_usage`` (one row per scope and period: spent and reserved,
    money in nano-dollars) and ``budget_reservations`` (one row per open
    reservation and scope, with ``created_at`` for ``sweep_stale``).

    How ``reserve`` stays atomic and never overspends, whatever the number of
    concurrent callers, processes or replicas — one transaction that:

    1. creates any missing usage rows (``INSERT ... ON CONFLICT DO NOTHING``);
    2. locks the scope's rows one by one in sorted ``(scope, period)`` order
       (``SELECT ... FOR UPDATE`` on PostgreSQL, so every transaction waits
       for the previous one to commit and then reads its result; a fixed order
       means two reservations over the same scopes cannot deadlock);
    3. checks every scope (spent + reserved + this call <= limit), and raises
       ``BudgetExceeded`` — rolling everything back — for the first without room;
    4. adds the reservation to each row and records it in ``budget_reservations``.

    On SQLite the transaction starts with ``BEGIN IMMEDIATE``, which takes the
    database's single write lock up front (other processes wait up to the
    store's busy timeout), so the check and the update cannot interleave with
    another writer; within the process a lock keeps threads from queueing on
    SQLite's busy handler. ``settle``, ``release`` and the sweep lock
    reservation rows before usage rows, and usage rows in the same sorted
    order, so no two operations wait on each other in a cycle.

    The database work runs in a worker thread (``asyncio.to_thread``) so the
    event loop is never blocked. Cancelling ``reserve`` cannot stop the thread:
    if its transaction commits anyway, the reservation is released in the
    background (``aclose`` waits for it). Any database failure is a
    ``StoreError``/``StoreUnavailable`` — the call is not placed.

    Args:
        engine: an ``Engine`` whose database is already migrated (``migrate``),
            or a ``TraceStore`` whose engine (and connection pool) to share.
            Either way the caller keeps ownership: ``aclose`` does not dispose
            it. ``SqlBudgetLedger.open(url)`` makes, migrates and owns its own.
        clock: the current time, for periods and the stale sweep (default: UTC now).
    """

    def __init__(self, engine: Engine | TraceStore, *, clock: Clock | None = None) -> None:
        if not isinstance(engine, Engine):
            engine = engine.engine  # share the store's connection pool
        self._engine = engine
        self._where: StoreURL = parse_store_url(engine.url.render_as_string(hide_password=False))
        self._clock: Clock = clock or _now
        self._owns_engine = False
        self._closed = False
        # SQLite has one writer at a time anyway; queueing here spares the busy handler's
        # polling and makes an in-memory database's single shared connection safe for threads.
        self._sqlite_lock: contextlib.AbstractContextManager[object] = (
            threading.Lock() if self._where.backend == "sqlite" else contextlib.nullcontext()
        )
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    def open(cls, url: str | None = None, *, clock: Clock | None = None) -> SqlBudgetLedger:
        """A ledger on the database at ``url`` with an engine of its own, migrated as ``open_store`` does.

        Args:
            url: a store URL; None means the configured one (``TETHER_DATABASE_URL``, tether.toml).
            clock: as for the constructor.

        Raises:
            ConfigError: the URL is malformed.
            StoreUnavailable: the database cannot be reached or opened.
            StoreError: the database was migrated by a newer tether.
        """
        if url is None:
            # Imported here: tether.config imports the gateway's config, which imports this module.
            from tether.config import load_settings

            url = load_settings().store.url
        where = parse_store_url(url)
        engine = create_store_engine(where)
        try:
            migrate(engine)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise store_error(exc, where, "migrating the schema") from exc
        except BaseException:
            engine.dispose()
            raise
        ledger = cls(engine, clock=clock)
        ledger._owns_engine = True
        return ledger

    @property
    def url(self) -> str:
        """The database's URL without its password."""
        return self._where.display

    def __repr__(self) -> str:
        return f"SqlBudgetLedger({self.url!r})"

    @contextlib.contextmanager
    def _connect(self, action: str) -> Iterator[Connection]:
        if self._closed:
            raise StoreError(f"budget ledger at {self.url} is closed")
        with self._sqlite_lock, translate_errors(self._where, action), self._engine.connect() as connection:
            yield connection

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[Connection]:
        with self._connect(action) as connection:
            if self._where.backend == "sqlite":
                connection.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
            with connection.begin():
                yield connection

    # -- reserve ---------------------------------------------------------------------------

    def _reserve_sync(self, scopes: tuple[BudgetScope, ...], usd: Decimal, tokens: int) -> Reservation:
        nanos = _to_nanos(usd, ROUND_CEILING)
        with self._transaction("reserving budget") as connection:
            now = _utc(self._clock())
            periods = tuple(period_key(s.limit.period, now) for s in scopes)
            keys = [(str(s), p) for s, p in zip(scopes, periods, strict=True)]
            ordered = sorted(keys)
            if not ordered:
                return Reservation(uuid.uuid4().hex, scopes, usd, tokens, periods)
            connection.execute(_insert_or_ignore(connection.dialect.name), [_zero_row(*k, now) for k in ordered])
            rows = {key: _read(connection, key, lock=True) for key in ordered}
            for scope, key in zip(scopes, keys, strict=True):
                _check_room(scope, rows[key], usd, nanos, tokens)
            for key in ordered:
                _add(connection, key, _Counters(reserved_nanousd=nanos, reserved_tokens=tokens), now)
            reservation = Reservation(uuid.uuid4().hex, scopes, usd, tokens, periods)
            connection.execute(
                budget_reservations.insert(),
                [
                    {
                        "id": reservation.id,
                        "scope": scope,
                        "period": period,
                        "reserved_nanousd": nanos,
                        "reserved_tokens": tokens,
                        "created_at": now,
                    }
                    for scope, period in ordered
                ],
            )
        return reservation

    async def reserve(self, scopes: Sequence[BudgetScope], *, usd: Decimal, tokens: int) -> Reservation:
        """Charge every scope or none, in one database transaction; see the class docstring.

        Raises:
            BudgetExceeded: the first scope (in the order given) without room; nothing was charged.
            ValueError: negative amounts, or the same scope twice.
            StoreUnavailable: the database cannot be reached (the call must not be placed).
            StoreError: the database refused the transaction.
        """
        _check_amounts(usd, tokens)
        _check_scopes(scopes)
        work = asyncio.ensure_future(asyncio.to_thread(self._reserve_sync, tuple(scopes), usd, tokens))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # The thread runs on; if it commits, nobody will settle: give the charge back.
            task = asyncio.get_running_loop().create_task(self._release_abandoned(work))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            raise

    async def _release_abandoned(self, work: asyncio.Future[Reservation]) -> None:
        try:
            reservation = await work
        except Exception:
            return  # refused or failed: nothing was charged
        await self.release(reservation)

    # -- settle, release, sweep ------------------------------------------------------------

    def _take_reservation(self, connection: Connection, reservation_id: str) -> dict[tuple[str, str], _Counters]:
        """Lock and delete a reservation's rows; the amounts to subtract from each usage row."""
        held = connection.execute(
            select(
                budget_reservations.c.scope,
                budget_reservations.c.period,
                budget_reservations.c.reserved_nanousd,
                budget_reservations.c.reserved_tokens,
            )
            .where(budget_reservations.c.id == reservation_id)
            .order_by(budget_reservations.c.scope)
            .with_for_update()
        ).all()
        if held:
            connection.execute(delete(budget_reservations).where(budget_reservations.c.id == reservation_id))
        return {
            (row.scope, row.period): _Counters(
                reserved_nanousd=-row.reserved_nanousd, reserved_tokens=-row.reserved_tokens
            )
            for row in held
        }

    def _settle_sync(self, reservation: Reservation, nanos: int, tokens: int) -> None:
        with self._transaction("settling budget") as connection:
            now = _utc(self._clock())
            deltas = self._take_reservation(connection, reservation.id)
            for scope, period in zip(reservation.scopes, reservation.periods, strict=True):
                delta = deltas.setdefault((str(scope), period), _Counters())
                delta.spent_nanousd += nanos
                delta.spent_tokens += tokens
            for key in sorted(deltas):
                _add(connection, key, deltas[key], now)

    def _release_sync(self, reservation_id: str) -> bool:
        with self._transaction("releasing budget") as connection:
            now = _utc(self._clock())
            deltas = self._take_reservation(connection, reservation_id)
            for key in sorted(deltas):
                _add(connection, key, deltas[key], now)
        return bool(deltas)

    async def settle(self, reservation: Reservation, *, usd: Decimal, tokens: int) -> None:
        """Replace the reservation by the real cost, in one transaction.

        The real cost is recorded even when it exceeds the reservation, and
        even when the reservation is gone (swept as stale while the call was
        still running): spend is never dropped. So settling the same
        reservation twice counts its cost twice — the safe side of a bug.
        The spend goes to the periods the reservation was charged to.

        Raises:
            ValueError: negative amounts.
            StoreError: the database failed (the reservation stays until swept).
        """
        _check_amounts(usd, tokens)
        # Shielded from the caller's cancellation only in effect: the thread finishes regardless.
        await asyncio.to_thread(self._settle_sync, reservation, _to_nanos(usd, ROUND_CEILING), tokens)

    async def release(self, reservation: Reservation) -> None:
        """Give the reservation back; nothing happens if it is already settled, released or swept."""
        await asyncio.to_thread(self._release_sync, reservation.id)

    def _stale_ids(self, cutoff: datetime) -> list[str]:
        with self._connect("finding stale reservations") as connection:
            query = (
                select(budget_reservations.c.id)
                .where(budget_reservations.c.created_at < cutoff)
                .distinct()
                .order_by(budget_reservations.c.id)
            )
            return list(connection.scalars(query))

    def _sweep_sync(self, older_than: timedelta) -> int:
        cutoff = _utc(self._clock()) - older_than
        # One transaction per reservation, exactly as release: a sweep never holds many locks at once.
        return sum(self._release_sync(rid) for rid in self._stale_ids(cutoff))

    async def sweep_stale(self, older_than: timedelta) -> int:
        """Release reservations made more than ``older_than`` ago, e.g. by a process that died mid-call.

        Choose ``older_than`` well above the longest call: a call still running
        when its reservation is swept is still settled in full, but until then
        its budget could be over-committed by the released amount.

        Returns:
            How many reservations were released.
        """
        return await asyncio.to_thread(self._sweep_sync, older_than)

    # -- reading ---------------------------------------------------------------------------

    def _usage_sync(self, key: tuple[str, str]) -> BudgetUsage:
        with self._connect("reading budget usage") as connection:
            return _read(connection, key, lock=False).usage(*key)

    async def usage(self, scope: BudgetScope, *, at: datetime | None = None) -> BudgetUsage:
        """The scope's usage in the period containing ``at`` (default: the clock's now)."""
        period = period_key(scope.limit.period, at if at is not None else self._clock())
        return await asyncio.to_thread(self._usage_sync, (str(scope), period))

    async def aclose(self) -> None:
        """Wait for background releases, then dispose the engine if this ledger made it."""
        # A release that fails here leaves its reservation to ``sweep_stale``: nothing to raise.
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self._closed = True
        if self._owns_engine:
            self._engine.dispose()
