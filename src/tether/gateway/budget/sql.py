"""``SqlBudgetLedger``: budgets in the store's database, shared by every process and replica that uses it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING, Final, TypeAlias

from sqlalchemy import Connection, Engine, Insert, bindparam, delete, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from tether.config import load_settings
from tether.errors import BudgetExceeded, StoreError, StoreUnavailable
from tether.gateway.budget.counters import _check_room, _Counters
from tether.gateway.budget.ledger import Clock
from tether.gateway.budget.money import _check_amounts, _to_nanos
from tether.gateway.budget.period import _now, _utc, period_key
from tether.gateway.budget.reservation import Reservation
from tether.gateway.budget.scope import BudgetScope, _check_scopes
from tether.gateway.budget.usage import BudgetUsage
from tether.store.engine import SQLITE_BEGIN, create_store_engine
from tether.store.failures import store_error, translate_errors
from tether.store.migrations import migrate
from tether.store.schema import budget_reservations, budget_usage
from tether.store.url import StoreURL, parse_store_url

if TYPE_CHECKING:
    from tether.store import TraceStore

# Statements are built once, here: building a SQLAlchemy statement costs several times more than running it
# (measured ~350 µs against ~40 µs for an UPDATE on SQLite), and a ledger runs a handful per batch.

_UsageKey: TypeAlias = tuple[str, str]

#: Key columns and counters of a usage row, in ``_Counters`` order after the key.
_USAGE_ROW = (
    budget_usage.c.scope,
    budget_usage.c.period,
    budget_usage.c.spent_nanousd,
    budget_usage.c.reserved_nanousd,
    budget_usage.c.spent_tokens,
    budget_usage.c.reserved_tokens,
)

_INSERT_USAGE: Final[dict[str, Insert]] = {
    "postgresql": postgresql.insert(budget_usage).on_conflict_do_nothing(index_elements=["scope", "period"]),
    "sqlite": sqlite.insert(budget_usage).on_conflict_do_nothing(index_elements=["scope", "period"]),
}

_USAGE_FOR_UPDATE = (
    select(*_USAGE_ROW)
    .where(tuple_(budget_usage.c.scope, budget_usage.c.period).in_(bindparam("keys", expanding=True)))
    .with_for_update()
)
_LOCK_USAGE: Final = {
    # PostgreSQL locks rows in the ORDER BY order. "C" compares bytes, which for UTF-8 is the order Python
    # sorts str in: every ledger, this one or an older single-operation one, locks usage rows in that one order.
    "postgresql": _USAGE_FOR_UPDATE.order_by(budget_usage.c.scope.collate("C"), budget_usage.c.period.collate("C")),
    # BEGIN IMMEDIATE already holds SQLite's one write lock: no order to keep.
    "sqlite": _USAGE_FOR_UPDATE,
}
# Two parameters per key; well under SQLite's limit of 32,766 (999 before SQLite 3.32).
_LOCK_CHUNK: Final = 400

_READ_USAGE = select(*_USAGE_ROW[2:]).where(
    (budget_usage.c.scope == bindparam("b_scope")) & (budget_usage.c.period == bindparam("b_period"))
)

# Increments rather than absolute values: correct even if a row were ever written without our lock.
_ADD_USAGE = (
    update(budget_usage)
    .where((budget_usage.c.scope == bindparam("b_scope")) & (budget_usage.c.period == bindparam("b_period")))
    .values(
        spent_nanousd=budget_usage.c.spent_nanousd + bindparam("b_spent_nanousd"),
        reserved_nanousd=budget_usage.c.reserved_nanousd + bindparam("b_reserved_nanousd"),
        spent_tokens=budget_usage.c.spent_tokens + bindparam("b_spent_tokens"),
        reserved_tokens=budget_usage.c.reserved_tokens + bindparam("b_reserved_tokens"),
        updated_at=bindparam("b_now"),
    )
)

_LOCK_HELD = (
    select(
        budget_reservations.c.id,
        budget_reservations.c.scope,
        budget_reservations.c.period,
        budget_reservations.c.reserved_nanousd,
        budget_reservations.c.reserved_tokens,
    )
    .where(budget_reservations.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(budget_reservations.c.id, budget_reservations.c.scope)
    .with_for_update()
)
_DROP_HELD = delete(budget_reservations).where(budget_reservations.c.id.in_(bindparam("ids", expanding=True)))
_HOLD = budget_reservations.insert()
_STALE_IDS = (
    select(budget_reservations.c.id)
    .where(budget_reservations.c.created_at < bindparam("cutoff"))
    .distinct()
    .order_by(budget_reservations.c.id)
)

#: Most operations one transaction applies, by default.
DEFAULT_MAX_BATCH: Final = 256
#: Most operations waiting for a transaction, per event loop, by default; more callers wait for room.
DEFAULT_MAX_QUEUE: Final = 4 * DEFAULT_MAX_BATCH
# Attempts at a batch whose usage rows vanish mid-transaction (deleted by hand) before it fails.
_ATTEMPTS: Final = 3


@dataclass(frozen=True)
class _Reserve:
    scopes: tuple[BudgetScope, ...]
    usd: Decimal
    nanos: int
    tokens: int


@dataclass(frozen=True)
class _Settle:
    reservation: Reservation
    nanos: int
    tokens: int


@dataclass(frozen=True)
class _Release:
    reservation_id: str
    as_spent: bool = False  # the stale sweep: the reserved amounts count as spent (fail closed)


_Op: TypeAlias = _Reserve | _Settle | _Release
# A refusal is an outcome, not a failure: it is one operation's answer and leaves the batch intact.
_Outcome: TypeAlias = Reservation | BudgetExceeded | bool | None


class _RowsMissing(Exception):
    """A usage row to update is not there (pruned by hand): the batch is retried creating rows first."""


@dataclass(frozen=True)
class _Pending:
    """An operation waiting for its batch; ``future`` is None for work nobody awaits (a background release)."""

    op: _Op
    future: asyncio.Future[_Outcome] | None


@dataclass(eq=False)
class _Lane:
    """One event loop's operations: those waiting for the next transaction, and whether one is running.

    Touched only from its loop's thread, so it needs no lock.
    """

    queue: deque[_Pending] = field(default_factory=deque)
    running: bool = False
    room: list[asyncio.Future[None]] = field(default_factory=list)  # callers waiting for the queue to shrink
    idle: list[asyncio.Future[None]] = field(default_factory=list)  # ``aclose`` waiting for the lane to empty


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()


def _own_copy(error: BaseException) -> BaseException:
    """A ``StoreError`` of its own for each caller of a failed batch: raising one shared instance in many
    tasks would splice their tracebacks together."""
    if type(error) in (StoreError, StoreUnavailable):
        copy = type(error)(*error.args)
        copy.__cause__ = error.__cause__
        return copy
    return error


def _action(ops: Sequence[_Op]) -> str:
    """What a batch does, for error messages: ``"reserving budget"``, or ``"updating budgets"`` when mixed."""
    kinds = {type(op) for op in ops}
    if kinds == {_Reserve}:
        return "reserving budget"
    if kinds == {_Settle}:
        return "settling budget"
    if kinds == {_Release}:
        return "releasing budget"
    return "updating budgets"


class _Tally:
    """The usage rows a batch touches: their values as read under lock, and what the batch adds to each.

    ``rows`` holds only the rows that were read (a batch with reservations reads them all); the checks of a
    reservation see the rows as the operations before it in the batch left them.
    """

    def __init__(self, rows: dict[_UsageKey, _Counters]) -> None:
        self.rows = rows
        self.deltas: dict[_UsageKey, _Counters] = {}

    def add(
        self, key: _UsageKey, spent_nanousd: int, reserved_nanousd: int, spent_tokens: int, reserved_tokens: int
    ) -> None:
        for counters in (self.rows.get(key), self.deltas.setdefault(key, _Counters())):
            if counters is not None:
                counters.spent_nanousd += spent_nanousd
                counters.reserved_nanousd += reserved_nanousd
                counters.spent_tokens += spent_tokens
                counters.reserved_tokens += reserved_tokens

    def changes(self, now: datetime) -> list[dict[str, object]]:
        """Parameters for ``_ADD_USAGE``, in sorted key order (the lock order), skipping rows left unchanged."""
        return [
            {
                "b_scope": scope,
                "b_period": period,
                "b_spent_nanousd": delta.spent_nanousd,
                "b_reserved_nanousd": delta.reserved_nanousd,
                "b_spent_tokens": delta.spent_tokens,
                "b_reserved_tokens": delta.reserved_tokens,
                "b_now": now,
            }
            for (scope, period), delta in sorted(self.deltas.items())
            if delta != _Counters()
        ]


# A reservation's rows as taken from budget_reservations: (usage key, nano-dollars, tokens) per scope.
_Taken: TypeAlias = list[tuple[_UsageKey, int, int]]


class SqlBudgetLedger:
    """Budgets in the store's database (SQLite or PostgreSQL), shared by every process using it.

    Tables ``budget_usage`` (one row per scope and period: spent and reserved,
    money in nano-dollars) and ``budget_reservations`` (one row per open
    reservation and scope, with ``created_at`` for ``sweep_stale``).

    **Group commit.** Operations (``reserve``, ``settle``, ``release``) go to a
    queue; one transaction at a time (per event loop) takes up to
    ``max_batch`` of them and applies them together, in arrival order, in a
    worker thread. Operations that arrive meanwhile wait for the next
    transaction. A lone caller gets a transaction of its own at once, as
    before; 64 concurrent callers share a few, and the database sees one
    ``BEGIN``/``COMMIT`` and a handful of statements for all of them. At most
    ``max_queue`` operations wait; further callers wait for room.

    How a transaction stays atomic and never overspends, whatever the number
    of concurrent callers, processes or replicas:

    1. it locks and deletes the reservation rows the batch settles or releases
       (``SELECT ... FOR UPDATE`` in id order);
    2. it creates any missing usage rows (one ``INSERT ... ON CONFLICT DO
       NOTHING``) and locks every usage row of the batch with one ``SELECT ...
       FOR UPDATE`` in sorted ``(scope, period)`` order — on PostgreSQL every
       transaction touching a row waits for the previous one to commit and then
       reads its result, and one fixed order for all means no deadlock;
    3. it applies the operations in order to the locked values: each
       reservation is checked against the rows as the ones before it left them
       (spent + reserved + this call <= limit), so a batch can never grant more
       than the budget; a refused reservation changes nothing and gets its own
       ``BudgetExceeded`` while the others proceed;
    4. it writes the sums (one ``UPDATE`` executed for many rows) and the new
       reservations (one ``INSERT``), and commits.

    A batch of only settles and releases skips step 2 and lets its ``UPDATE``
    lock the rows, in the same sorted order. On SQLite every transaction starts
    with ``BEGIN IMMEDIATE``, which takes the database's single write lock up
    front (other processes wait up to the store's busy timeout); within the
    process a lock keeps threads from queueing on SQLite's busy handler.

    Outcomes are handed out only after the commit. A database failure fails
    every operation of its batch with a ``StoreError``/``StoreUnavailable``
    (fail closed: the transaction rolls back and no call of the batch is
    placed); the next batch starts afresh. The event loop is never blocked.

    Cancelling ``reserve`` before its batch starts withdraws it. Once its batch
    runs, the thread cannot be stopped: if the reservation commits anyway, it
    is released in the background (``aclose`` waits for it). ``settle`` and
    ``release`` are never withdrawn: cancelling the caller only stops it from
    waiting, so recorded spend is never dropped.

    Args:
        engine: an ``Engine`` whose database is already migrated (``migrate``),
            or a ``TraceStore`` whose engine (and connection pool) to share.
            Either way the caller keeps ownership: ``aclose`` does not dispose
            it. ``SqlBudgetLedger.open(url)`` makes, migrates and owns its own.
        clock: the current time, for periods and the stale sweep (default: UTC now).
        max_batch: most operations per transaction.
        max_queue: most operations waiting for a transaction, per event loop.

    Raises:
        ValueError: ``max_batch`` or ``max_queue`` below 1.
    """

    def __init__(
        self,
        engine: Engine | TraceStore,
        *,
        clock: Clock | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be >= 1, got {max_batch} and {max_queue}")
        if not isinstance(engine, Engine):
            engine = engine.engine  # share the store's connection pool
        self._engine = engine
        self._where: StoreURL = parse_store_url(engine.url.render_as_string(hide_password=False))
        self._clock: Clock = clock or _now
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._owns_engine = False
        self._closed = False
        # SQLite has one writer at a time anyway; queueing here spares the busy handler's
        # polling and makes an in-memory database's single shared connection safe for threads.
        self._sqlite_lock: contextlib.AbstractContextManager[object] = (
            threading.Lock() if self._where.backend == "sqlite" else contextlib.nullcontext()
        )
        # One lane per event loop: futures belong to a loop, and a ledger may outlive one (``asyncio.run`` twice).
        self._lanes: dict[asyncio.AbstractEventLoop, _Lane] = {}
        self._stats_lock = threading.Lock()
        self._transactions = 0
        self._operations = 0

    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        clock: Clock | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> SqlBudgetLedger:
        """A ledger on the database at ``url`` with an engine of its own, migrated as ``open_store`` does.

        Args:
            url: a store URL; None means the configured one (``TETHER_DATABASE_URL``, tether.toml).
            clock: as for the constructor.
            max_batch: as for the constructor.
            max_queue: as for the constructor.

        Raises:
            ConfigError: the URL is malformed.
            StoreUnavailable: the database cannot be reached or opened.
            StoreError: the database was migrated by a newer tether.
            ValueError: ``max_batch`` or ``max_queue`` below 1.
        """
        if url is None:
            url = load_settings().store.url
        where = parse_store_url(url)
        engine = create_store_engine(where)
        try:
            migrate(engine)
            ledger = cls(engine, clock=clock, max_batch=max_batch, max_queue=max_queue)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise store_error(exc, where, "migrating the schema") from exc
        except BaseException:
            engine.dispose()
            raise
        ledger._owns_engine = True
        return ledger

    @property
    def url(self) -> str:
        """The database's URL without its password."""
        return self._where.display

    @property
    def transactions(self) -> int:
        """Budget transactions begun so far; under concurrency, far fewer than ``operations``."""
        return self._transactions

    @property
    def operations(self) -> int:
        """Reserve, settle and release operations committed so far (a refused reservation counts)."""
        return self._operations

    def __repr__(self) -> str:
        return f"SqlBudgetLedger({self.url!r})"

    def _closed_error(self) -> StoreError:
        return StoreError(f"budget ledger at {self.url} is closed")

    @contextlib.contextmanager
    def _connect(self, action: str) -> Iterator[Connection]:
        if self._closed:
            raise self._closed_error()
        with self._sqlite_lock, translate_errors(self._where, action), self._engine.connect() as connection:
            yield connection

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[Connection]:
        with self._connect(action) as connection:
            if self._where.backend == "sqlite":
                connection.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
            with connection.begin():
                yield connection

    # -- one batch, in a worker thread -------------------------------------------------------

    def _run_batch(self, ops: Sequence[_Op]) -> list[_Outcome]:
        """Apply ``ops`` in one transaction; one outcome per operation, in order.

        Raises:
            StoreError: the database failed; nothing of the batch was applied.
        """
        action = _action(ops)
        # Reservations may open new periods, so their rows are created up front; settles and
        # releases find theirs already there, bar a row pruned by hand (then: retry, creating it).
        create = any(isinstance(op, _Reserve) for op in ops)
        for _ in range(_ATTEMPTS):
            try:
                outcomes = self._apply(ops, action, create_rows=create)
            except _RowsMissing:
                create = True
                continue
            with self._stats_lock:
                self._operations += len(ops)
            return outcomes
        raise StoreError(f"budget ledger at {self.url}: {action} failed: usage rows kept vanishing mid-transaction")

    def _apply(self, ops: Sequence[_Op], action: str, *, create_rows: bool) -> list[_Outcome]:
        with self._transaction(action) as connection:
            with self._stats_lock:
                self._transactions += 1
            now = _utc(self._clock())
            # Reservation rows first, usage rows second: the order every ledger transaction locks in.
            held = self._take_held(connection, ops)
            keys: set[_UsageKey] = set()
            periods: list[tuple[str, ...]] = []
            for op in ops:
                if isinstance(op, _Reserve):
                    periods.append(tuple(period_key(s.limit.period, now) for s in op.scopes))
                    keys.update((str(s), p) for s, p in zip(op.scopes, periods[-1], strict=True))
                elif isinstance(op, _Settle):
                    keys.update((str(s), p) for s, p in zip(op.reservation.scopes, op.reservation.periods, strict=True))
            for rows in held.values():
                keys.update(key for key, _, _ in rows)
            tally = _Tally(self._lock_usage(connection, sorted(keys), now) if create_rows else {})

            outcomes: list[_Outcome] = []
            holds: list[dict[str, object]] = []
            reserve_periods = iter(periods)
            for op in ops:
                if isinstance(op, _Reserve):
                    outcomes.append(self._grant(op, next(reserve_periods), tally, holds, now))
                    continue
                reservation_id = op.reservation.id if isinstance(op, _Settle) else op.reservation_id
                taken = held.pop(reservation_id, [])  # gone: settled, released or swept already
                spent = isinstance(op, _Release) and op.as_spent
                for key, nanos, tokens in taken:
                    tally.add(key, nanos if spent else 0, -nanos, tokens if spent else 0, -tokens)
                if isinstance(op, _Settle):
                    # Recorded even when the reservation is gone: spend is never dropped.
                    for scope, period in zip(op.reservation.scopes, op.reservation.periods, strict=True):
                        tally.add((str(scope), period), op.nanos, 0, op.tokens, 0)
                    outcomes.append(None)
                else:
                    outcomes.append(bool(taken))

            changes = tally.changes(now)
            if changes and connection.execute(_ADD_USAGE, changes).rowcount != len(changes):
                raise _RowsMissing
            if holds:
                connection.execute(_HOLD, holds)
        return outcomes

    @staticmethod
    def _take_held(connection: Connection, ops: Sequence[_Op]) -> dict[str, _Taken]:
        """Lock and delete the reservation rows the batch settles or releases, by reservation id."""
        ids = sorted(
            {
                op.reservation.id if isinstance(op, _Settle) else op.reservation_id
                for op in ops
                if not isinstance(op, _Reserve)
            }
        )
        if not ids:
            return {}
        held: dict[str, _Taken] = {}
        for row in connection.execute(_LOCK_HELD, {"ids": ids}):
            held.setdefault(row.id, []).append(((row.scope, row.period), row.reserved_nanousd, row.reserved_tokens))
        if held:
            connection.execute(_DROP_HELD, {"ids": sorted(held)})
        return held

    @staticmethod
    def _lock_usage(connection: Connection, keys: list[_UsageKey], now: datetime) -> dict[_UsageKey, _Counters]:
        """Create the missing usage rows among ``keys`` (sorted), then lock and read them all."""
        if not keys:
            return {}
        dialect = connection.dialect.name
        connection.execute(
            _INSERT_USAGE[dialect],
            [
                {
                    "scope": scope,
                    "period": period,
                    "spent_nanousd": 0,
                    "reserved_nanousd": 0,
                    "spent_tokens": 0,
                    "reserved_tokens": 0,
                    "updated_at": now,
                }
                for scope, period in keys
            ],
        )
        rows: dict[_UsageKey, _Counters] = {}
        # Chunks in sorted order keep the one global lock order.
        for start in range(0, len(keys), _LOCK_CHUNK):
            for scope, period, *counters in connection.execute(
                _LOCK_USAGE[dialect], {"keys": keys[start : start + _LOCK_CHUNK]}
            ):
                rows[(scope, period)] = _Counters(*counters)
        if len(rows) != len(keys):
            raise _RowsMissing  # deleted by hand between the INSERT and the SELECT
        return rows

    @staticmethod
    def _grant(
        op: _Reserve, periods: tuple[str, ...], tally: _Tally, holds: list[dict[str, object]], now: datetime
    ) -> Reservation | BudgetExceeded:
        """Charge one reservation to the locked rows, or refuse it leaving them untouched."""
        keys = [(str(s), p) for s, p in zip(op.scopes, periods, strict=True)]
        try:
            for scope, key in zip(op.scopes, keys, strict=True):
                _check_room(scope, tally.rows[key], op.usd, op.nanos, op.tokens)
        except BudgetExceeded as refused:
            return refused
        reservation = Reservation(uuid.uuid4().hex, op.scopes, op.usd, op.tokens, periods)
        for key in sorted(keys):
            tally.add(key, 0, op.nanos, 0, op.tokens)
            holds.append(
                {
                    "id": reservation.id,
                    "scope": key[0],
                    "period": key[1],
                    "reserved_nanousd": op.nanos,
                    "reserved_tokens": op.tokens,
                    "created_at": now,
                }
            )
        return reservation

    # -- batching, on the event loop ---------------------------------------------------------

    def _lane(self, loop: asyncio.AbstractEventLoop) -> _Lane:
        lane = self._lanes.get(loop)
        if lane is None:
            # A loop closed with a batch in flight never empties its lane: forget it.
            for stale in [other for other in list(self._lanes) if other.is_closed()]:  # list(): one atomic copy
                self._lanes.pop(stale, None)
            lane = self._lanes[loop] = _Lane()
        return lane

    async def _submit(self, op: _Op) -> _Outcome:
        """Queue ``op`` for the next transaction and wait for its outcome."""
        if self._closed:
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        while True:
            lane = self._lane(loop)
            if len(lane.queue) < self._max_queue:
                break
            # Backpressure: wait for a batch to take operations from the queue, then look again.
            room: asyncio.Future[None] = loop.create_future()
            lane.room.append(room)
            try:
                await room
            except asyncio.CancelledError:
                with contextlib.suppress(ValueError):  # gone already if a batch woke the waiters meanwhile
                    lane.room.remove(room)
                raise
        future: asyncio.Future[_Outcome] = loop.create_future()
        lane.queue.append(_Pending(op, future))
        if not lane.running:
            self._next_batch(loop, lane)
        return await future

    def _next_batch(self, loop: asyncio.AbstractEventLoop, lane: _Lane) -> None:
        """Send the next batch from the queue to a worker thread, or mark the lane idle when none is left."""
        batch: list[_Pending] = []
        while lane.queue and len(batch) < self._max_batch:
            pending = lane.queue.popleft()
            if isinstance(pending.op, _Reserve) and pending.future is not None and pending.future.cancelled():
                continue  # its caller left before the batch began: nothing was charged
            batch.append(pending)
        _wake(lane.room)
        if not batch:
            lane.running = False
            if self._lanes.get(loop) is lane:
                del self._lanes[loop]
            _wake(lane.idle)
            return
        lane.running = True
        work: asyncio.Future[list[_Outcome]]
        try:
            work = loop.run_in_executor(None, self._run_batch, [pending.op for pending in batch])
        except RuntimeError as exc:  # the default executor is shut down: the loop is closing
            work = loop.create_future()
            work.set_exception(StoreError(f"budget ledger at {self.url}: event loop closing: {exc}"))
        work.add_done_callback(functools.partial(self._end_batch, loop, lane, batch))

    def _end_batch(
        self, loop: asyncio.AbstractEventLoop, lane: _Lane, batch: list[_Pending], work: asyncio.Future[list[_Outcome]]
    ) -> None:
        """Hand each caller its outcome (or the batch's error), then start the next batch."""
        error: BaseException | None
        if work.cancelled():  # nothing cancels it; failing closed all the same
            error = StoreError(f"budget ledger at {self.url}: the transaction's worker was cancelled")
        else:
            error = work.exception()
        if error is not None:
            for pending in batch:
                if pending.future is not None and not pending.future.done():
                    pending.future.set_exception(_own_copy(error))
        else:
            for pending, outcome in zip(batch, work.result(), strict=True):
                future = pending.future
                if future is None:
                    continue  # background work: a failed release is left to ``sweep_stale``
                if future.cancelled():
                    if isinstance(outcome, Reservation):
                        # Committed for a caller that left: nobody will settle it, so give it back.
                        lane.queue.append(_Pending(_Release(outcome.id), None))
                elif isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        self._next_batch(loop, lane)

    # -- the operations ----------------------------------------------------------------------

    async def reserve(self, scopes: Sequence[BudgetScope], *, usd: Decimal, tokens: int) -> Reservation:
        """Charge every scope or none, in one database transaction; see the class docstring.

        Cancelling the caller withdraws the reservation, or gives it back once it commits.

        Raises:
            BudgetExceeded: the first scope (in the order given) without room; nothing was charged.
            ValueError: negative amounts, or the same scope twice.
            StoreUnavailable: the database cannot be reached (the call must not be placed).
            StoreError: the database refused the transaction.
        """
        _check_amounts(usd, tokens)
        _check_scopes(scopes)
        outcome = await self._submit(_Reserve(tuple(scopes), usd, _to_nanos(usd, ROUND_CEILING), tokens))
        assert isinstance(outcome, Reservation)
        return outcome

    async def settle(self, reservation: Reservation, *, usd: Decimal, tokens: int) -> None:
        """Replace the reservation by the real cost, in one transaction.

        The real cost is recorded even when it exceeds the reservation, and
        even when the reservation is gone (swept as stale while the call was
        still running): spend is never dropped. So settling the same
        reservation twice counts its cost twice — the safe side of a bug.
        The spend goes to the periods the reservation was charged to.
        Cancelling the caller does not withdraw the settle.

        Raises:
            ValueError: negative amounts.
            StoreError: the database failed (the reservation stays until swept).
        """
        _check_amounts(usd, tokens)
        await self._submit(_Settle(reservation, _to_nanos(usd, ROUND_CEILING), tokens))

    async def release(self, reservation: Reservation) -> None:
        """Give the reservation back; nothing happens if it is already settled, released or swept."""
        await self._submit(_Release(reservation.id))

    def _stale_ids(self, cutoff: datetime) -> list[str]:
        with self._connect("finding stale reservations") as connection:
            return list(connection.scalars(_STALE_IDS, {"cutoff": cutoff}))

    async def sweep_stale(self, older_than: timedelta) -> int:
        """End reservations made more than ``older_than`` ago (e.g. by a process that died mid-call) as spent.

        Fail closed: a dead replica's lease or call may have been billed, and nothing says for how much,
        so the whole reservation counts as spent, never as money given back. Choose ``older_than`` well
        above the longest call: a call still running when its reservation is swept is settled in full
        later, on top (counted twice: the safe side).

        Returns:
            How many reservations were swept.
        """
        stale = await asyncio.to_thread(self._stale_ids, _utc(self._clock()) - older_than)
        released = 0
        # A batch's worth at a time, so a large sweep never crowds live calls out of the queue.
        for start in range(0, len(stale), self._max_batch):
            chunk = stale[start : start + self._max_batch]
            outcomes = await asyncio.gather(*(self._submit(_Release(rid, as_spent=True)) for rid in chunk))
            released += sum(outcome is True for outcome in outcomes)
        return released

    # -- reading ---------------------------------------------------------------------------

    def _usage_sync(self, key: _UsageKey) -> BudgetUsage:
        with self._connect("reading budget usage") as connection:
            row = connection.execute(_READ_USAGE, {"b_scope": key[0], "b_period": key[1]}).one_or_none()
        return (_Counters(*row) if row is not None else _Counters()).usage(*key)

    async def usage(self, scope: BudgetScope, *, at: datetime | None = None) -> BudgetUsage:
        """The scope's usage in the period containing ``at`` (default: the clock's now)."""
        period = period_key(scope.limit.period, at if at is not None else self._clock())
        return await asyncio.to_thread(self._usage_sync, (str(scope), period))

    async def aclose(self) -> None:
        """Wait for this event loop's pending operations and background releases, then free resources.

        Disposes the engine only if this ledger made it.
        """
        loop = asyncio.get_running_loop()
        # Includes releases of reservations whose callers left; one that fails is left to ``sweep_stale``.
        while (lane := self._lanes.get(loop)) is not None:
            idle: asyncio.Future[None] = loop.create_future()
            lane.idle.append(idle)
            await idle
        self._closed = True
        if self._owns_engine:
            self._engine.dispose()
