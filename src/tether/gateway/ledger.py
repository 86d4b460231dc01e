"""The cost ledger: one row per settled model call, and the reports ``tether cost`` prints.

Writing: ``CostWriter(store)`` is the gateway's ``cost_sink``::

    writer = CostWriter(store)
    gateway = Gateway(config, cost_sink=writer)
    ...
    writer.shutdown()                    # writes what is still queued

It queues each ``CostRecord`` as a row and a background thread inserts the
rows in batches, as ``tether.trace.processor.RowWriter`` does for spans: the
database being slow or down never reaches the caller; rows wait in a bounded
buffer (the oldest are dropped and counted beyond ``max_buffer``) and one
warning is logged per outage. Each row carries an id made when it is queued
and is inserted with insert-or-ignore, so a batch sent twice (its commit was
lost with the connection) is stored once.

Reading: ``CostLedger(store).report(since=..., by="route")`` gives the total
spend and tokens, spend grouped by route, model, agent, key, day or
deployment, the most expensive runs and agents, and what prompt caching
saved. Money is summed exactly in integer nano-dollars (1e-9 USD, rounded up
per call as the budget ledger does). A call whose price is unknown has a NULL
cost: it is counted apart and never summed as $0.

What caching saved, per (provider, model): the cache-read tokens priced at
the plain input rate minus the same tokens at the cache-read rate, using
tether's ``Pricer`` (``[prices]`` in tether.toml first, genai-prices
otherwise) at today's prices. genai-prices bills a whole call at a higher
rate once its prompt passes a threshold (e.g. 200k tokens), so the cache
reads are summed per such band of prompt size and each band priced at its
own rate.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal, localcontext
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self, get_args

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price
from sqlalchemy import Connection, Dialect, Engine, Insert, Select, and_, case, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from tether.gateway.journal import CostJournal, JournalEntry
from tether.messages import Usage
from tether.pricing import CONFIGURED_PRICE_VERSION, CostRecord, Pricer, PriceRef
from tether.redaction import default_scrubber
from tether.store.access import StoreAccess
from tether.store.bulk import insert_rows
from tether.store.engine import SQLITE_BEGIN
from tether.store.records import datetime_to_ns
from tether.store.schema import costs
from tether.trace.processor import RowWriter

if TYPE_CHECKING:
    from tether.store import TraceStore

__all__ = [
    "DIMENSIONS",
    "CacheSaving",
    "CostLedger",
    "CostLine",
    "CostReport",
    "CostWriter",
    "Dimension",
    "UnpricedModel",
    "cost_row",
]

logger = logging.getLogger(__name__)

Dimension = Literal["route", "model", "agent", "key", "day", "deployment"]
#: What ``tether cost --by`` can group spend by.
DIMENSIONS: Final[tuple[Dimension, ...]] = get_args(Dimension)

_NS_PER_S: Final = 1_000_000_000
_NANOS_PER_USD: Final = 9
_INT64_MAX: Final = 2**63 - 1
DEFAULT_INTERVAL_S: Final = 0.5
DEFAULT_BATCH: Final = 500
DEFAULT_MAX_BUFFER: Final = 100_000

Row = dict[str, object]


def _usd_to_nanos(usd: Decimal) -> int:
    if not isinstance(usd, Decimal) or not usd.is_finite() or usd < 0:
        raise ValueError(f"cost must be a finite Decimal ≥ 0, got {usd!r}")
    # Rounded up, as the budget ledger rounds spend, so the two agree to the nano-dollar.
    with localcontext(prec=60):
        nanos = int(usd.scaleb(_NANOS_PER_USD).to_integral_value(rounding=ROUND_CEILING))
    if nanos > _INT64_MAX:
        raise ValueError(f"cost ${usd} is beyond what the ledger can hold")
    return nanos


def _nanos_to_usd(nanos: int) -> Decimal:
    return Decimal(nanos).scaleb(-_NANOS_PER_USD)


_SCRUBBER: Final = default_scrubber()


def _text(value: str) -> str:
    # PostgreSQL text cannot hold NUL; one such name must not poison a whole batch.
    return value.replace("\x00", "") if "\x00" in value else value


def _optional_text(value: str | None) -> str | None:
    return None if value is None else _text(value)


def _count(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _INT64_MAX:
        raise ValueError(f"{what} must be an int between 0 and 2**63-1, got {value!r}")
    return value


def cost_row(record: CostRecord, row_id: str | None = None) -> Row:
    """The ``costs`` row for one record, with ``row_id`` as its id (a fresh one when None).

    Raises:
        ValueError: a token count or the cost is negative, not a number, or too large to store.
    """
    time_ns = _count(record.time_ns, "time_ns")
    usage = record.usage
    row: Row = {
        "id": row_id or uuid.uuid4().hex,
        "time_ns": time_ns,
        "day": time.strftime("%Y-%m-%d", time.gmtime(time_ns // _NS_PER_S)),
        "route": _text(record.route),
        "deployment": _text(record.deployment),
        "provider": _text(record.provider),
        "model": _text(record.model),
        "agent": _optional_text(record.agent),
        "key": _optional_text(record.key),
        "run_id": _optional_text(record.run_id),
        "input_tokens": _count(usage.input_tokens, "input_tokens"),
        "output_tokens": _count(usage.output_tokens, "output_tokens"),
        "cache_read_tokens": _count(usage.cache_read_tokens, "cache_read_tokens"),
        "cache_write_tokens": _count(usage.cache_write_tokens, "cache_write_tokens"),
        "cost_nanousd": None if record.cost_usd is None else _usd_to_nanos(record.cost_usd),
        "price_version": _text(record.price_version),
    }
    # The free-text fields come from clients (agent, run id) and upstreams (model): no secret is kept.
    # One search over them all; each is scrubbed only when it holds one.
    if _SCRUBBER.active and _SCRUBBER.contains_secret("\x00".join(v for v in row.values() if isinstance(v, str))):
        row = {k: _SCRUBBER.scrub(v) if isinstance(v, str) else v for k, v in row.items()}
    return row


# -- report records --------------------------------------------------------------------------


@dataclass(frozen=True)
class CostLine:
    """Calls and spend of one group: everything, a route, a model, a run...

    Attributes:
        key: the group's value (route name, day...); None for calls without one (e.g. no agent).
        calls: every call, priced or not.
        unpriced_calls: calls whose price is unknown; their cost is not in ``cost_nanousd``.
        input_tokens: input tokens of every call, cache reads and writes included.
        output_tokens: output tokens of every call.
        cache_read_tokens: input tokens read from the provider's prompt cache.
        cache_write_tokens: input tokens written to it.
        cost_nanousd: the priced calls' cost in nano-dollars; None when no call is priced.
        agent: for a run, its agent.
    """

    key: str | None
    calls: int
    unpriced_calls: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_nanousd: int | None
    agent: str | None = None

    @property
    def cost_usd(self) -> Decimal | None:
        """The priced calls' cost in USD; None when no call is priced (never $0 for unknown)."""
        return None if self.cost_nanousd is None else _nanos_to_usd(self.cost_nanousd)

    def to_dict(self) -> dict[str, object]:
        """Plain values for JSON: exact ``cost_nanousd`` and a float ``cost_usd`` for convenience."""
        cost = self.cost_usd
        return {
            "key": self.key,
            **({"agent": self.agent} if self.agent is not None else {}),
            "calls": self.calls,
            "unpriced_calls": self.unpriced_calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cost_usd": None if cost is None else float(cost),
            "cost_nanousd": self.cost_nanousd,
        }


@dataclass(frozen=True)
class CacheSaving:
    """What prompt caching saved on one model.

    Attributes:
        provider: the provider as recorded (``anthropic``, ``openai``, ``sim``...).
        model: the model.
        cache_read_tokens: every cache-read token of the model.
        unpriced_cache_read_tokens: those of calls with unknown price: not in ``saved_usd``.
        saved_usd: plain input price minus cache-read price of the priced calls' cache reads;
            None when the model has no price.
    """

    provider: str
    model: str
    cache_read_tokens: int
    unpriced_cache_read_tokens: int
    saved_usd: Decimal | None

    def to_dict(self) -> dict[str, object]:
        """Plain values for JSON."""
        return {
            "provider": self.provider,
            "model": self.model,
            "cache_read_tokens": self.cache_read_tokens,
            "unpriced_cache_read_tokens": self.unpriced_cache_read_tokens,
            "saved_usd": None if self.saved_usd is None else float(self.saved_usd),
        }


@dataclass(frozen=True)
class UnpricedModel:
    """A model some calls were made to without a known price."""

    provider: str
    model: str
    calls: int


@dataclass(frozen=True)
class CostReport:
    """Everything ``tether cost`` shows for one time window.

    Attributes:
        since: the window's start (None: all time).
        by: the dimension ``groups`` is grouped by.
        total: every call in the window.
        groups: spend by ``by``, most expensive first (for ``day``: the latest days, in date order).
        more_groups: groups left out of ``groups`` by ``top``.
        top_runs: the most expensive runs (priced calls only).
        top_agents: the most expensive agents (priced calls only).
        cache_savings: per model with cache reads, what caching saved.
        unpriced: the models of calls with unknown price, most calls first.
    """

    since: datetime | None
    by: Dimension
    total: CostLine
    groups: tuple[CostLine, ...]
    more_groups: int
    top_runs: tuple[CostLine, ...]
    top_agents: tuple[CostLine, ...]
    cache_savings: tuple[CacheSaving, ...]
    unpriced: tuple[UnpricedModel, ...]

    @property
    def empty(self) -> bool:
        """No call was recorded in the window."""
        return self.total.calls == 0

    @property
    def saved_usd(self) -> Decimal:
        """What caching saved on every model whose price is known."""
        return sum((s.saved_usd for s in self.cache_savings if s.saved_usd is not None), Decimal(0))

    def to_dict(self) -> dict[str, object]:
        """The report as plain values, for ``tether cost --json``."""
        return {
            "since": self.since.isoformat() if self.since is not None else None,
            "by": self.by,
            "total": self.total.to_dict(),
            "groups": [g.to_dict() for g in self.groups],
            "more_groups": self.more_groups,
            "top_runs": [r.to_dict() for r in self.top_runs],
            "top_agents": [a.to_dict() for a in self.top_agents],
            "cache_savings": {
                "saved_usd": float(self.saved_usd),
                "models": [s.to_dict() for s in self.cache_savings],
            },
            "unpriced": {
                "calls": self.total.unpriced_calls,
                "models": [{"provider": u.provider, "model": u.model, "calls": u.calls} for u in self.unpriced],
            },
        }


# -- pricing cache reads -----------------------------------------------------------------------


def _price_ref(provider: str, model: str) -> PriceRef | None:
    """Where the gateway looked up this model's price: its provider's pricing identity (``tether.models.registry``)."""
    from tether.models.registry import provider_kinds, provider_spec

    if provider in provider_kinds():
        # The simulated model, for one, is priced as the real model it names.
        return provider_spec(provider).price_ref(model)
    return PriceRef(provider_id=provider, model_ref=model)


@functools.lru_cache(maxsize=256)
def _tier_starts(provider_id: str, model_ref: str) -> tuple[int, ...]:
    """Prompt sizes above which genai-prices bills this model's input or cache reads at another rate."""
    try:
        calc = calc_price(PriceUsage(input_tokens=1), model_ref=model_ref, provider_id=provider_id)
    except LookupError:
        return ()
    starts: set[int] = set()
    for prices in (calc.model_price.input_mtok, calc.model_price.cache_read_mtok):
        for tier in getattr(prices, "tiers", None) or ():
            starts.add(int(tier.start))
    return tuple(sorted(starts))


def _saving_per_token(pricer: Pricer, ref: PriceRef | None, model: str, prompt_tokens: int) -> Decimal | None:
    """Plain input rate minus cache-read rate, per token, for a call whose prompt is ``prompt_tokens``."""
    plain = pricer.price(ref, model, Usage(input_tokens=prompt_tokens))
    cached = pricer.price(ref, model, Usage(input_tokens=prompt_tokens, cache_read_tokens=prompt_tokens))
    if plain.usd is None or cached.usd is None:
        return None
    return (plain.usd - cached.usd) / prompt_tokens


# -- the ledger ------------------------------------------------------------------------------


@functools.cache
def _sqlite_insert(dialect: Dialect) -> tuple[str, tuple[str, ...]]:
    """The one-row SQLite insert, compiled once, and the columns its ``?`` take, in order."""
    compiled = _insert_or_ignore("sqlite").compile(dialect=dialect, column_keys=[c.name for c in costs.columns])
    return compiled.string, tuple(compiled.positiontup or ())


def _insert_or_ignore(dialect_name: str) -> Insert:
    if dialect_name == "postgresql":
        return postgresql.insert(costs).on_conflict_do_nothing(index_elements=["id"])
    return sqlite.insert(costs).on_conflict_do_nothing(index_elements=["id"])


def _int(value: Any) -> int:
    # PostgreSQL's SUM of BIGINT is NUMERIC (a Decimal here); SQLite's is an int.
    return int(value) if value is not None else 0


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


_COST_SUM = func.sum(costs.c.cost_nanousd)


def _line_columns() -> tuple[ColumnElement[Any], ...]:
    return (
        func.count().label("calls"),
        func.count(costs.c.cost_nanousd).label("priced_calls"),
        func.sum(costs.c.input_tokens).label("input_tokens"),
        func.sum(costs.c.output_tokens).label("output_tokens"),
        func.sum(costs.c.cache_read_tokens).label("cache_read_tokens"),
        func.sum(costs.c.cache_write_tokens).label("cache_write_tokens"),
        _COST_SUM.label("cost_nanousd"),
    )


def _line(row: Any, key: str | None = None, agent: str | None = None) -> CostLine:
    calls = _int(row.calls)
    return CostLine(
        key=key,
        calls=calls,
        unpriced_calls=calls - _int(row.priced_calls),
        input_tokens=_int(row.input_tokens),
        output_tokens=_int(row.output_tokens),
        cache_read_tokens=_int(row.cache_read_tokens),
        cache_write_tokens=_int(row.cache_write_tokens),
        cost_nanousd=_optional_int(row.cost_nanousd),
        agent=agent,
    )


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class CostLedger(StoreAccess):
    """The ``costs`` table of the store's database: insert rows, and report on them.

    Args:
        store: the ``TraceStore`` whose database (and connection pool) to use,
            or an ``Engine`` on a migrated database. The caller keeps ownership.
    """

    def write(self, rows: Sequence[Mapping[str, object]]) -> None:
        """Insert rows (from ``cost_row``) in one transaction; rows already stored (same id) are skipped.

        Raises:
            StoreUnavailable: the database cannot be reached.
            StoreError: the database refused the write.
        """
        if not rows:
            return
        with self._connect("writing costs") as connection:
            # IMMEDIATE: take SQLite's write lock up front, waiting up to the busy timeout.
            connection.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
            with connection.begin():
                if connection.dialect.name == "sqlite":
                    sql, names = _sqlite_insert(connection.dialect)
                    insert_rows(connection, sql, len(names), [tuple(r[n] for n in names) for r in rows])
                else:
                    connection.execute(_insert_or_ignore(connection.dialect.name), [dict(r) for r in rows])

    def write_rows(self, rows: Sequence[Row], /) -> None:
        """``write``, under the name ``RowWriter`` calls."""
        self.write(rows)

    def record(self, records: Iterable[CostRecord]) -> None:
        """Insert records now, in the caller's thread (``CostWriter`` does it in the background)."""
        self.write([cost_row(r) for r in records])

    def report(
        self,
        *,
        since: datetime | None = None,
        by: Dimension = "route",
        top: int = 10,
        pricer: Pricer | None = None,
    ) -> CostReport:
        """Spend since ``since`` (all time when None), grouped ``by`` one dimension.

        Args:
            since: the window's start; naive means UTC.
            by: what ``groups`` is grouped by.
            top: most rows in ``groups``, ``top_runs`` and ``top_agents``.
            pricer: prices for the cache savings (default: genai-prices alone;
                pass ``Pricer(settings.prices)`` to use tether.toml's too).

        Raises:
            ValueError: ``by`` is not one of ``DIMENSIONS`` or ``top`` < 1.
            StoreError: the database failed.
        """
        if by not in DIMENSIONS:
            raise ValueError(f"cannot group costs by {by!r}: use one of {', '.join(DIMENSIONS)}")
        if top < 1:
            raise ValueError(f"top must be ≥ 1, got {top}")
        since = _utc(since) if since is not None else None
        window = self._window(since)
        with self._connect("reading costs") as connection:
            total = _line(connection.execute(select(*_line_columns()).where(*window)).one())
            groups, more = self._groups(connection, window, by, top)
            top_runs = self._hotspots(connection, window, costs.c.run_id, top, with_agent=True)
            top_agents = self._hotspots(connection, window, costs.c.agent, top)
            unpriced = tuple(
                UnpricedModel(row.provider, row.model, _int(row.calls))
                for row in connection.execute(
                    select(costs.c.provider, costs.c.model, func.count().label("calls"))
                    .where(*window, costs.c.cost_nanousd.is_(None))
                    .group_by(costs.c.provider, costs.c.model)
                    .order_by(func.count().desc(), costs.c.provider, costs.c.model)
                )
            )
            savings = self._cache_savings(connection, window, pricer or Pricer())
        return CostReport(
            since=since,
            by=by,
            total=total,
            groups=groups,
            more_groups=more,
            top_runs=top_runs,
            top_agents=top_agents,
            cache_savings=savings,
            unpriced=unpriced,
        )

    def has_rows(self) -> bool:
        """Whether any call was ever recorded (to tell "nothing in this window" from "nothing at all")."""
        with self._connect("reading costs") as connection:
            return connection.execute(select(costs.c.id).limit(1)).first() is not None

    def spent(self, kind: str, name: str, period: str) -> tuple[int, int]:
        """Recorded spend of one budget scope in one period: (nano-dollars, tokens).

        What a budget ledger that lost its counters (Redis restarted empty) rebuilds
        them from. ``kind`` is a budget scope's kind (``route``, ``agent``, ``key`` or
        ``run``); ``period`` a budget period key (``2026-11-21``, ``2026-11`` or ``all``).
        Calls of unknown price count as $0 here, as they do in the budget ledger.

        Raises:
            ValueError: an unknown scope kind.
            StoreError: the database failed.
        """
        column = {"route": costs.c.route, "agent": costs.c.agent, "key": costs.c.key, "run": costs.c.run_id}.get(kind)
        if column is None:
            raise ValueError(f"unknown budget scope kind {kind!r}")
        where: list[ColumnElement[bool]] = [column == name]
        if len(period) == len("2026-11-21"):
            where.append(costs.c.day == period)
        elif len(period) == len("2026-11"):
            # ``day`` is a YYYY-MM-DD string: a range keeps the index usable.
            where += [costs.c.day >= f"{period}-01", costs.c.day <= f"{period}-31"]
        query = select(
            func.coalesce(func.sum(costs.c.cost_nanousd), 0),
            func.coalesce(func.sum(costs.c.input_tokens + costs.c.output_tokens), 0),
        ).where(*where)
        with self._connect("reading recorded spend") as connection:
            nanos, tokens = connection.execute(query).one()
        return _int(nanos), _int(tokens)

    @staticmethod
    def _window(since: datetime | None) -> tuple[ColumnElement[bool], ...]:
        if since is None:
            return ()
        # ``day`` is indexed; ``time_ns`` makes the cut exact within the first day.
        return (costs.c.day >= since.strftime("%Y-%m-%d"), costs.c.time_ns >= datetime_to_ns(since))

    @staticmethod
    def _groups(
        connection: Connection, window: tuple[ColumnElement[bool], ...], by: Dimension, top: int
    ) -> tuple[tuple[CostLine, ...], int]:
        column = costs.c[by]
        query: Select[Any] = select(column.label("key"), *_line_columns()).where(*window).group_by(column)
        if by == "day":
            rows = list(connection.execute(query.order_by(column.desc()).limit(top)))
            rows.reverse()
        else:
            ordered = query.order_by(_COST_SUM.desc().nulls_last(), func.count().desc(), column)
            rows = list(connection.execute(ordered.limit(top)))
        distinct = select(column).where(*window).group_by(column).subquery()
        count = _int(connection.execute(select(func.count()).select_from(distinct)).scalar())
        return tuple(_line(row, row.key) for row in rows), max(0, count - len(rows))

    @staticmethod
    def _hotspots(
        connection: Connection,
        window: tuple[ColumnElement[bool], ...],
        column: ColumnElement[Any],
        top: int,
        *,
        with_agent: bool = False,
    ) -> tuple[CostLine, ...]:
        extra = (func.max(costs.c.agent).label("agent"),) if with_agent else ()
        query = (
            select(column.label("key"), *extra, *_line_columns())
            .where(*window, column.is_not(None))
            .group_by(column)
            .having(_COST_SUM.is_not(None))
            .order_by(_COST_SUM.desc(), column)
            .limit(top)
        )
        return tuple(_line(row, row.key, agent=row.agent if with_agent else None) for row in connection.execute(query))

    @staticmethod
    def _cache_savings(
        connection: Connection, window: tuple[ColumnElement[bool], ...], pricer: Pricer
    ) -> tuple[CacheSaving, ...]:
        priced = costs.c.cost_nanousd.is_not(None)
        rows = connection.execute(
            select(
                costs.c.provider,
                costs.c.model,
                func.sum(costs.c.cache_read_tokens).label("read"),
                func.sum(case((priced, costs.c.cache_read_tokens), else_=0)).label("priced_read"),
            )
            .where(*window, costs.c.cache_read_tokens > 0)
            .group_by(costs.c.provider, costs.c.model)
            .order_by(func.sum(costs.c.cache_read_tokens).desc(), costs.c.provider, costs.c.model)
        ).all()
        savings: list[CacheSaving] = []
        for row in rows:
            read, priced_read = _int(row.read), _int(row.priced_read)
            saved: Decimal | None = None
            if priced_read:
                saved = CostLedger._saved(connection, window, pricer, row.provider, row.model, priced_read)
            savings.append(CacheSaving(row.provider, row.model, read, read - priced_read, saved))
        return tuple(savings)

    @staticmethod
    def _saved(
        connection: Connection,
        window: tuple[ColumnElement[bool], ...],
        pricer: Pricer,
        provider: str,
        model: str,
        priced_read: int,
    ) -> Decimal | None:
        """What the priced calls' cache reads of one model saved, each prompt-size band at its own rate."""
        ref = _price_ref(provider, model)
        configured = pricer.price(ref, model, Usage(input_tokens=1)).price_version == CONFIGURED_PRICE_VERSION
        starts = () if configured or ref is None else _tier_starts(ref.provider_id, ref.model_ref)
        # Cache reads of calls whose prompt exceeds each threshold (genai-prices: a tier applies above its start).
        above: list[int] = []
        if starts:
            of_model = and_(costs.c.provider == provider, costs.c.model == model)
            sums = connection.execute(
                select(
                    *(
                        func.sum(case((costs.c.input_tokens > start, costs.c.cache_read_tokens), else_=0))
                        for start in starts
                    )
                ).where(*window, of_model, costs.c.cache_read_tokens > 0, costs.c.cost_nanousd.is_not(None))
            ).one()
            above = [_int(value) for value in sums]
        # Band 0 holds prompts up to the first threshold, band i those above threshold i.
        bands = [priced_read - (above[0] if above else 0)]
        bands += [above[i] - (above[i + 1] if i + 1 < len(above) else 0) for i in range(len(above))]
        smallest_prompt = [1, *(start + 1 for start in starts)]
        saved = Decimal(0)
        for tokens, prompt in zip(bands, smallest_prompt, strict=True):
            if not tokens:
                continue
            per_token = _saving_per_token(pricer, ref, model, prompt)
            if per_token is None:
                return None
            saved += per_token * tokens
        return saved


# -- the writer ------------------------------------------------------------------------------


class _RecordSink:
    """Turns records into rows in the writer's thread, so the gateway's call path only queues the record."""

    def __init__(self, ledger: CostLedger, journal: CostJournal | None) -> None:
        self.ledger = ledger
        self.journal = journal
        self.rejected = 0
        self._warned = False

    @property
    def url(self) -> str:
        return self.ledger.url

    def write_rows(self, entries: Sequence[JournalEntry], /) -> None:
        rows: list[Row] = []
        refused: list[Exception] = []
        for entry in entries:
            try:
                rows.append(cost_row(entry.record, entry.id))
            except Exception as exc:  # malformed: kept out, counted once it is clear the batch was stored
                refused.append(exc)
        if rows:
            self.ledger.write_rows(rows)  # raises when the database fails: the batch stays queued, whole
        if self.journal is not None:
            self.journal.stored(entries)  # committed (or never storable): their journal lines may go
        if refused:
            self.rejected += len(refused)
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            logger.log(level, "tether: %d cost record(s) not kept: %s", len(refused), refused[0])


class CostWriter:
    """The gateway's ``cost_sink``: queues each ``CostRecord`` and stores them in batches from a thread.

    Calling it never raises and never waits for the database (the batching is
    ``tether.trace.processor.RowWriter``'s, shared with the span writer); records
    become rows in the writer's thread. A record that cannot be stored at all (a
    negative token count, a cost that is not a number) is counted in
    ``rejected`` and logged once.

    With a ``journal``, each record is also appended to it (one ``os.write``)
    before the call returns, and forgotten there once its row is committed, so
    a record survives the process being killed, and one dropped from a full
    buffer is still in the journal for the next start (``replay``).

    Args:
        store: a ``TraceStore`` or an ``Engine`` on a migrated database, or a ``CostLedger``.
        interval_s: longest time a record waits before it is written.
        batch_size: rows per insert; a full batch wakes the writer early.
        max_buffer: most rows kept waiting while the database is unreachable; older ones are dropped.
        journal: where records wait on disk until they are stored (see ``tether.gateway.journal``).
    """

    def __init__(
        self,
        store: TraceStore | Engine | CostLedger,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        batch_size: int = DEFAULT_BATCH,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        journal: CostJournal | None = None,
    ) -> None:
        self.ledger = store if isinstance(store, CostLedger) else CostLedger(store)
        self.journal = journal
        self._sink = _RecordSink(self.ledger, journal)
        # Row ids: a random prefix and a counter, made on the call path (cheaper than uuid4 there).
        self._id_prefix = uuid.uuid4().hex[:20]
        self._ids = itertools.count()
        self._writer: RowWriter[JournalEntry] = RowWriter(
            self._sink, what="cost records", interval_s=interval_s, batch_size=batch_size, max_buffer=max_buffer
        )

    @property
    def pending(self) -> int:
        """Records queued and not stored yet."""
        return self._writer.pending

    @property
    def written(self) -> int:
        """Records stored so far."""
        return self._writer.written - self._sink.rejected

    @property
    def rejected(self) -> int:
        """Records refused as malformed (counted when their batch is written)."""
        return self._sink.rejected

    @property
    def dropped(self) -> int:
        """Records lost because the buffer was full (or the writer shut down)."""
        return self._writer.dropped

    def __call__(self, record: CostRecord) -> None:
        """Queue one record (and journal it first, when there is a journal); returns at once."""
        entry_id = f"{self._id_prefix}{next(self._ids):012x}"
        journal = self.journal
        segment = journal.append(entry_id, record) if journal is not None else None
        self._writer.add(JournalEntry(entry_id, record, segment))

    def replay(self) -> int:
        """Queue the records a process that stopped left in the journal (none without one); how many."""
        if self.journal is None:
            return 0
        entries = self.journal.adopt()
        for entry in entries:
            self._writer.add(entry)
        return len(entries)

    def flush(self) -> bool:
        """Store everything queued now; False if the database could not take it (it stays queued)."""
        return self._writer.flush()

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop the writer after a last flush; records queued afterwards are dropped.

        Records that could not be stored stay in the journal (when there is one) for the next start.
        """
        self._writer.shutdown(timeout_s)
        if self.journal is not None:
            self.journal.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()
