"""Budgets in Redis: the ``BudgetLedger`` every gateway replica shares, one round trip per operation.

``SqlBudgetLedger`` needs a database transaction for every reserve and every
settle, which caps the gateway at a few hundred calls per second.
``RedisBudgetLedger`` keeps the same counters in Redis and does each operation
in one Lua script, which Redis runs atomically: no other command runs between
the check and the charge, so N replicas never get N times the budget.

Semantics are exactly those of ``MemoryBudgetLedger``: integer nano-dollars
(amounts rounded up, limits down), all-or-nothing reservations across scopes,
``BudgetExceeded`` naming the first scope without room, settle recording the
real cost even above the reservation or after a sweep, idempotent release.

Keys, under ``prefix`` (default ``tether:budget:``):

* ``usage:<period>:<scope>`` — a hash of ``spent_nanousd``, ``reserved_nanousd``,
  ``spent_tokens`` and ``reserved_tokens`` (``HINCRBY``, integers, never
  floats), e.g. ``tether:budget:usage:2026-11-21:route:support``. A day's or a
  month's counters expire ``retention`` (default 32 days) after the period
  ends: enforcement only ever reads the current period, and 32 days keeps a
  month of daily usage readable with ``usage(at=...)``. Lifetime (``all``)
  counters never expire.
* ``reservation:<id>`` — an open reservation: its amounts, creation time and
  the counters it holds, so that settle, release and the sweep give back
  exactly what was charged. It lives as long as the counters it holds: it
  expires with them when they all belong to a day or month, and otherwise
  stays until settled, released or swept (an expired reservation would leave
  its amount reserved on a lifetime budget forever).
* ``reservations`` — a sorted set of open reservation ids by creation time,
  for ``sweep_stale``.
* ``epoch`` — the marker that tells the ledger its counters are still the ones it
  built (see below); every usage hash also holds the ``epoch`` it was built in.

Time is the caller's clock (the ``clock`` argument), not Redis's ``TIME``: a
call's period must be the one the SQL ledger and the cost ledger record for
it, and tests inject a clock to cross midnight. Expiry is set with relative
TTLs computed on that clock (``PEXPIRE``), so a skew between the gateway and
the Redis server never expires a current period early; replicas only need
clocks kept in sync (NTP), as with the SQL ledger.

**Persistence, and a Redis that lost its data.** Counters kept only in memory
are forgotten by a restart, which would refill every budget. So the ledger
refuses to start (``ConfigError``) unless ``CONFIG GET appendonly`` says
``yes`` (RDB snapshots alone lose every write since the last one); where
``CONFIG`` is disabled (managed Redis) the operator vouches for it with
``persistence_verified`` (``[gateway] redis_persistence_verified = true``).
And at run time it **detects** a loss: ``epoch`` holds a random marker written
at start, every reserve checks it in the same script, and every usage counter
records the epoch it was built in. When the marker is gone (Redis restarted
empty, a fail-over to a replica without the data, a FLUSHALL), the ledger
fails closed — budgeted calls get ``BudgetUnavailable`` (the proxy's 503
``budget_unavailable``), never a refilled budget — for ``rebuild_grace_s``, so
the cost rows of calls settled meanwhile reach the database; then it writes a
new marker, and each counter of the new epoch is rebuilt, the first time a
reserve touches it, from the durable cost ledger (``rebuild_from``: the
store's ``costs`` table, the recorded spend of that scope in that period),
keeping whichever is larger of that and what Redis still holds. Without a
cost ledger to rebuild from, it stays closed until the process restarts. What
this cannot see: writes Redis lost without losing the marker (``appendfsync
everysec`` loses up to a second of them on a crash), cost rows not yet
written when a counter is rebuilt (normally under a second's worth), and
reservations open at the moment of the loss (their calls are still settled,
and counted, when they end).

Every key of one ledger is touched by scripts that do not declare all of them
(a release finds its counters in the reservation), so on Redis Cluster put a
hash tag in the prefix, e.g. ``tether:{budget}:``, to keep them in one slot.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING, Final, Protocol

from tether.errors import BudgetExceeded, BudgetUnavailable, ConfigError, StoreError, StoreUnavailable
from tether.gateway.budget.ledger import BudgetLedger, Clock
from tether.gateway.budget.money import _check_amounts, _to_nanos, _to_usd
from tether.gateway.budget.period import LIFETIME, _now, _utc, period_key
from tether.gateway.budget.reservation import Reservation
from tether.gateway.budget.scope import BudgetScope, _check_scopes
from tether.gateway.budget.usage import BudgetUsage
from tether.redis_client import client_display, connect

if TYPE_CHECKING:
    # Imported lazily, as in ratelimit: redis.asyncio costs ~0.5 s that `import tether` must not pay.
    from redis.asyncio import Redis

__all__ = ["RedisBudgetLedger", "SpendSource"]

logger = logging.getLogger(__name__)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_INT64_MAX: Final = 2**63 - 1  # what HINCRBY can hold
# Reservations released per sweep script: Redis runs nothing else while a script runs.
_SWEEP_BATCH: Final = 1000

# Shared by every script. Lua numbers are doubles, exact only below 2^53, while nano-dollar
# counters reach 9.2e18; so sums and comparisons split integers into two exact halves.
_PRELUDE = """
local BASE = 1000000000
local MAX = '9223372036854775807'

-- value = hi * BASE + lo with 0 <= lo < BASE; both halves are exact doubles.
local function split(s)
  local negative = string.sub(s, 1, 1) == '-'
  if negative then s = string.sub(s, 2) end
  local n = #s
  local hi = 0
  if n > 9 then hi = tonumber(string.sub(s, 1, n - 9)) end
  local lo = tonumber(string.sub(s, math.max(1, n - 8)))
  if negative then
    if lo > 0 then return -hi - 1, BASE - lo end
    return -hi, 0
  end
  return hi, lo
end

-- Whether a + b + c <= limit, exactly; all four are integer strings.
local function fits(a, b, c, limit)
  local ah, al = split(a)
  local bh, bl = split(b)
  local ch, cl = split(c)
  local lh, ll = split(limit)
  local lo = al + bl + cl
  local hi = ah + bh + ch + math.floor(lo / BASE)
  lo = lo % BASE
  return hi < lh or (hi == lh and lo <= ll)
end

-- The larger of two non-negative integer strings.
local function larger(a, b)
  local ah, al = split(a)
  local bh, bl = split(b)
  if ah > bh or (ah == bh and al >= bl) then return a end
  return b
end

local function negate(s)
  if s == '0' then return s end  -- Redis refuses "-0" as an integer
  return '-' .. s
end

-- Give an open reservation's amounts back to its counters and forget it; false if it is gone.
-- as_spent (the stale sweep): count the amounts as spent instead, since the call may have been billed.
local function give_back(reservation, as_spent)
  local flat = redis.call('HGETALL', reservation)
  if #flat == 0 then return false end
  local held = {}
  for i = 1, #flat, 2 do held[flat[i]] = flat[i + 1] end
  for i = 1, tonumber(held['n']) do
    local counters = held[tostring(i)]
    -- An expired period's counters are not brought back to life (without a TTL) by the give-back.
    if redis.call('EXISTS', counters) == 1 then
      redis.call('HINCRBY', counters, 'reserved_nanousd', negate(held['nanousd']))
      redis.call('HINCRBY', counters, 'reserved_tokens', negate(held['tokens']))
      if as_spent then
        redis.call('HINCRBY', counters, 'spent_nanousd', held['nanousd'])
        redis.call('HINCRBY', counters, 'spent_tokens', held['tokens'])
      end
    end
  end
  redis.call('DEL', reservation)
  return true
end
"""

# KEYS: the reservation, the open-reservations set, the epoch marker, then each scope's counters.
# ARGV: id, nano-dollars, tokens, creation time (µs), the reservation's TTL (ms, 0: none),
#       then per scope: USD limit in nano-dollars ('' for none), token limit ('' for none), TTL (ms, 0: none),
#       and last the ledger's epoch.
# Returns {0} when charged, {1, scope index, unit, spent, reserved} when a scope has no room,
# {2, scope index} when a counter would overflow 64 bits, {3, marker or ''} when the epoch marker
# is not the ledger's (the data was lost), {4, scope index} when a counter was not built in this
# epoch (rebuild it first). Nothing is written unless all fit.
_RESERVE = """
-- The same id again is a retry of a reserve that ran but whose answer was lost: charged already.
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
local epoch = ARGV[#ARGV]
local marker = redis.call('GET', KEYS[3])
if marker ~= epoch then return {3, marker or ''} end
local n = #KEYS - 3
local nanousd, tokens = ARGV[2], ARGV[3]
for i = 1, n do
  local row = redis.call(
    'HMGET', KEYS[i + 3], 'spent_nanousd', 'reserved_nanousd', 'spent_tokens', 'reserved_tokens', 'epoch')
  if row[5] ~= epoch then return {4, i} end
  local spent, reserved = row[1] or '0', row[2] or '0'
  local spent_tokens, reserved_tokens = row[3] or '0', row[4] or '0'
  local usd_limit, token_limit = ARGV[3 + 3 * i], ARGV[4 + 3 * i]
  if usd_limit ~= '' and not fits(spent, reserved, nanousd, usd_limit) then
    return {1, i, 'usd', spent, reserved}
  end
  if token_limit ~= '' and not fits(spent_tokens, reserved_tokens, tokens, token_limit) then
    return {1, i, 'tokens', spent_tokens, reserved_tokens}
  end
  if not fits(reserved, nanousd, '0', MAX) or not fits(reserved_tokens, tokens, '0', MAX) then
    return {2, i}
  end
end
local fields = {'nanousd', nanousd, 'tokens', tokens, 'created_us', ARGV[4], 'n', n}
for i = 1, n do
  local counters = KEYS[i + 3]
  redis.call('HINCRBY', counters, 'reserved_nanousd', nanousd)
  redis.call('HINCRBY', counters, 'reserved_tokens', tokens)
  local ttl = tonumber(ARGV[5 + 3 * i])
  if ttl > 0 then redis.call('PEXPIRE', counters, ttl) end
  fields[#fields + 1] = tostring(i)
  fields[#fields + 1] = counters
end
redis.call('HSET', KEYS[1], unpack(fields))
if tonumber(ARGV[5]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return {0}
"""

# KEYS: the reservation, the open-reservations set, then each scope's counters (its periods).
# ARGV: id, nano-dollars, tokens, then per scope the counters' TTL (ms, 0: none).
# Returns {0}, or {2, scope index} when a counter would overflow 64 bits (nothing written).
_SETTLE = """
local n = #KEYS - 2
local nanousd, tokens = ARGV[2], ARGV[3]
-- Checked before any write: a script that fails halfway keeps its earlier writes.
for i = 1, n do
  local row = redis.call('HMGET', KEYS[i + 2], 'spent_nanousd', 'spent_tokens')
  if not fits(row[1] or '0', nanousd, '0', MAX) or not fits(row[2] or '0', tokens, '0', MAX) then
    return {2, i}
  end
end
give_back(KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
for i = 1, n do
  local counters = KEYS[i + 2]
  redis.call('HINCRBY', counters, 'spent_nanousd', nanousd)
  redis.call('HINCRBY', counters, 'spent_tokens', tokens)
  local ttl = tonumber(ARGV[3 + i])
  if ttl > 0 then redis.call('PEXPIRE', counters, ttl) end
end
return {0}
"""

# KEYS: the epoch marker, one scope's counters. ARGV: the ledger's epoch, the recorded spend
# (nano-dollars, tokens) from the durable cost ledger, the counters' TTL (ms, 0: none).
# Builds the counters in this epoch: spent is the larger of what they hold and what was recorded.
# Returns 1 when they are (now) of this epoch, 0 when the marker is not the ledger's.
_REBUILD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local row = redis.call(
  'HMGET', KEYS[2], 'epoch', 'spent_nanousd', 'spent_tokens', 'reserved_nanousd', 'reserved_tokens')
if row[1] == ARGV[1] then return 1 end  -- another replica rebuilt them first
local spent = larger(row[2] or '0', ARGV[2])
local spent_tokens = larger(row[3] or '0', ARGV[3])
-- A reservation's give-back on counters recreated after the loss can leave them below zero.
local reserved, reserved_tokens = row[4] or '0', row[5] or '0'
if string.sub(reserved, 1, 1) == '-' then reserved = '0' end
if string.sub(reserved_tokens, 1, 1) == '-' then reserved_tokens = '0' end
redis.call('HSET', KEYS[2], 'epoch', ARGV[1], 'spent_nanousd', spent, 'spent_tokens', spent_tokens,
  'reserved_nanousd', reserved, 'reserved_tokens', reserved_tokens)
if tonumber(ARGV[4]) > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
return 1
"""

# KEYS: the reservation, the open-reservations set. ARGV: id. Returns 1 if given back, 0 if gone already.
_RELEASE = """
local released = give_back(KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if released then return 1 end
return 0
"""

# KEYS: the open-reservations set. ARGV: cutoff (µs, exclusive), batch size, the reservation key prefix.
# Returns {reservations given back, ids looked at}; fewer ids than the batch size means done.
_SWEEP = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local released = 0
for _, id in ipairs(ids) do
  if give_back(ARGV[3] .. id, true) then released = released + 1 end
  redis.call('ZREM', KEYS[1], id)
end
return {released, #ids}
"""


@dataclass(frozen=True)
class _Script:
    """A Lua script and its SHA1, for EVALSHA."""

    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.text.encode(), usedforsecurity=False).hexdigest())


_RESERVE_SCRIPT: Final = _Script(_PRELUDE + _RESERVE)
_SETTLE_SCRIPT: Final = _Script(_PRELUDE + _SETTLE)
_RELEASE_SCRIPT: Final = _Script(_PRELUDE + _RELEASE)
_SWEEP_SCRIPT: Final = _Script(_PRELUDE + _SWEEP)
_REBUILD_SCRIPT: Final = _Script(_PRELUDE + _REBUILD)

_USAGE_FIELDS: Final = ("spent_nanousd", "reserved_nanousd", "spent_tokens", "reserved_tokens")


class SpendSource(Protocol):
    """The durable record of what was spent, that lost counters are rebuilt from (``CostLedger``)."""

    def spent(self, kind: str, name: str, period: str) -> tuple[int, int]:
        """Recorded spend of one scope in one period: (nano-dollars, tokens). May block (run in a thread)."""
        ...


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _micros(moment: datetime) -> int:
    """Microseconds since the epoch, exactly (a sorted-set score below 2^53)."""
    return (_utc(moment) - _EPOCH) // timedelta(microseconds=1)


def _period_end(period: str) -> datetime | None:
    """When the period with this key ends; None for a lifetime budget."""
    if period == LIFETIME:
        return None
    # Sliced rather than strptime'd: this runs on every reserve and settle, and strptime is slow.
    year, month = int(period[0:4]), int(period[5:7])
    if len(period) == len("2026-11-21"):
        return datetime(year, month, int(period[8:10]), tzinfo=UTC) + timedelta(days=1)
    return datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)


class RedisBudgetLedger(BudgetLedger):
    """Budgets in Redis, shared by every process and replica that uses the same server and prefix.

    Each operation is one Lua script (EVALSHA, falling back to EVAL when the
    server does not have it cached): one round trip, atomic. A reserve, settle
    or release whose caller is cancelled finishes anyway (a cancelled reserve
    that went through is released again), and ``aclose`` waits for it.

    Redis that cannot be reached raises ``StoreUnavailable`` within about
    ``timeout_s`` (short socket timeouts, one reconnect, no retries with
    back-off), naming the server without its password; other Redis failures
    raise ``StoreError``. Either way the call must not be placed: budgets fail closed.

    Args:
        url: ``redis://[user:password@]host:port/db`` (or ``rediss://``, ``unix://``).
        prefix: prepended to every key; ledgers with the same prefix share their budgets.
        clock: the current time, for periods and the stale sweep (default: UTC now).
        timeout_s: connect, read and wait-for-a-free-connection timeout, in seconds.
        max_connections: connections kept open to Redis at most.
        retention: how long a day's or a month's counters are kept after the period ends.
        rebuild_from: the durable cost ledger counters are rebuilt from after Redis lost them
            (``CostLedger(store)``); without it a loss keeps budgeted calls refused until a restart.
        persistence_verified: skip the start-up check of Redis persistence (``CONFIG GET``), for a
            managed Redis that disables ``CONFIG`` and is known to persist its data.
        rebuild_grace_s: how long budgeted calls are refused after a loss is seen, before rebuilding,
            so that cost rows of calls settled meanwhile are written first.

    Raises:
        ConfigError: the URL is malformed.
        ValueError: a non-positive timeout, connection count or retention.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tether:budget:",
        clock: Clock | None = None,
        timeout_s: float = 1.0,
        max_connections: int = 64,
        retention: timedelta = timedelta(days=32),
        rebuild_from: SpendSource | None = None,
        persistence_verified: bool = False,
        rebuild_grace_s: float = 2.0,
    ) -> None:
        client, display = connect(url, timeout_s=timeout_s, max_connections=max_connections)
        self._init(
            client,
            prefix=prefix,
            clock=clock,
            retention=retention,
            display=display,
            owns_client=True,
            rebuild_from=rebuild_from,
            persistence_verified=persistence_verified,
            rebuild_grace_s=rebuild_grace_s,
        )

    @classmethod
    def from_client(
        cls,
        client: Redis,
        *,
        prefix: str = "tether:budget:",
        clock: Clock | None = None,
        retention: timedelta = timedelta(days=32),
        close_client: bool = False,
        rebuild_from: SpendSource | None = None,
        persistence_verified: bool = True,
        rebuild_grace_s: float = 2.0,
    ) -> RedisBudgetLedger:
        """A ledger on an existing ``redis.asyncio.Redis`` client (its timeouts and retries apply).

        Args:
            client: the client; its responses may be bytes or decoded.
            prefix: prepended to every key.
            clock: as for the constructor.
            retention: as for the constructor.
            close_client: close the client in ``aclose``.
            rebuild_from: as for the constructor.
            persistence_verified: as for the constructor, but True by default: the caller built the client.
            rebuild_grace_s: as for the constructor.
        """
        ledger = cls.__new__(cls)
        ledger._init(
            client,
            prefix=prefix,
            clock=clock,
            retention=retention,
            display=client_display(client),
            owns_client=close_client,
            rebuild_from=rebuild_from,
            persistence_verified=persistence_verified,
            rebuild_grace_s=rebuild_grace_s,
        )
        return ledger

    def _init(
        self,
        client: Redis,
        *,
        prefix: str,
        clock: Clock | None,
        retention: timedelta,
        display: str,
        owns_client: bool,
        rebuild_from: SpendSource | None,
        persistence_verified: bool,
        rebuild_grace_s: float,
    ) -> None:
        if retention <= timedelta(0):
            raise ValueError(f"retention must be positive, got {retention!r}")
        if rebuild_grace_s < 0:
            raise ValueError(f"rebuild_grace_s must be >= 0, got {rebuild_grace_s!r}")
        self._client = client
        self._prefix = prefix
        self._clock: Clock = clock or _now
        self._retention = retention
        self._display = display
        self._owns_client = owns_client
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()
        self._rebuild_from = rebuild_from
        self._persistence_verified = persistence_verified
        self._rebuild_grace_s = rebuild_grace_s
        self._epoch: str | None = None  # the marker this ledger's counters were built under
        self._lost_at: float | None = None  # when a loss was seen (monotonic), until the new epoch begins
        self._starting: asyncio.Lock | None = None
        self.rebuilt = 0  # counters rebuilt from the cost ledger (or first built) in this process
        self.losses = 0  # times the epoch marker was found gone

    @property
    def url(self) -> str:
        """The server's URL without its password."""
        return self._display

    def __repr__(self) -> str:
        return f"RedisBudgetLedger({self.url!r}, prefix={self._prefix!r})"

    # -- keys and expiry -------------------------------------------------------------------

    def _usage_key(self, scope: BudgetScope, period: str) -> str:
        # The period first: it never contains ':', so no scope name can make two keys collide.
        return f"{self._prefix}usage:{period}:{scope}"

    def _reservation_key(self, reservation_id: str) -> str:
        return f"{self._prefix}reservation:{reservation_id}"

    @property
    def _open_key(self) -> str:
        return f"{self._prefix}reservations"

    @property
    def _epoch_key(self) -> str:
        return f"{self._prefix}epoch"

    def _ttl_ms(self, period: str, now: datetime) -> int:
        """How long, from ``now``, the period's counters are kept; 0 for never expiring."""
        end = _period_end(period)
        if end is None:
            return 0
        # At least a second: a settle long after the period must still record (and then drop) its spend.
        return max(1000, math.ceil((end + self._retention - now) / timedelta(milliseconds=1)))

    # -- running scripts -------------------------------------------------------------------

    async def _eval(self, script: _Script, keys: Sequence[str], args: Sequence[str | int], action: str) -> object:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import NoScriptError, RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        if self._closed:
            raise StoreError(f"budget ledger at {self.url} is closed")
        try:
            try:
                return await self._client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                # First use on this server (or after SCRIPT FLUSH / a restart): EVAL also caches it.
                return await self._client.eval(script.text, len(keys), *keys, *args)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise self._unavailable(exc, action) from None
        except RedisError as exc:
            raise StoreError(f"{action} failed: Redis at {self.url} answered: {self._scrub(exc)}") from None

    def _unavailable(self, exc: BaseException, action: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"{action} failed: the budget ledger's Redis at {self.url} is unreachable or overloaded "
            f"({self._scrub(exc)}) — start Redis there or set [gateway] redis_url in tether.toml to a reachable one"
        )

    def _scrub(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        password = self._client.connection_pool.connection_kwargs.get("password")
        return text.replace(password, "[REDACTED]") if isinstance(password, str) and password else text

    def _overflow(self, scope: BudgetScope) -> StoreError:
        return StoreError(f"budget {scope}: a counter in Redis at {self.url} would exceed 64 bits; nothing was charged")

    def _adopt(self, work: Awaitable[None]) -> None:
        """Run ``work`` to its end in the background; ``aclose`` waits for it."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _finish(self, work: asyncio.Future[None], what: str) -> None:
        try:
            await work
        except Exception:
            # Its caller was cancelled, so nobody else hears of it; the sweep frees what it held.
            logger.warning("tether: budget %s could not finish after its caller was cancelled", what, exc_info=True)

    async def _shielded(self, work: asyncio.Future[None], what: str) -> None:
        """Await ``work``; if the caller is cancelled, let it finish anyway rather than lose it halfway."""
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            self._adopt(self._finish(work, what))
            raise

    # -- start-up: persistence and the epoch ------------------------------------------------

    async def start(self) -> None:
        """Check that Redis persists its data, and begin (or join) the current epoch.

        Called by the first reserve if not before; ``tether gateway serve`` calls it at
        start-up so that a Redis without persistence stops it there, with the fix.

        Raises:
            ConfigError: Redis runs without an append-only file, or cannot say (``CONFIG`` disabled)
                and ``persistence_verified`` is not set.
            StoreUnavailable: Redis cannot be reached.
        """
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._closed:
                raise StoreError(f"budget ledger at {self.url} is closed")
            if self._epoch is not None:
                return
            if not self._persistence_verified:
                await self._check_persistence()
                self._persistence_verified = True
            await self._begin_epoch()

    async def _check_persistence(self) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        fix = (
            'set [gateway] budgets = "database" in tether.toml (budgets in the store\'s database, the default '
            "when there is a store)"
        )
        try:
            appendonly = await self._client.config_get("appendonly")
            save = await self._client.config_get("save")
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise self._unavailable(exc, "checking Redis persistence") from None
        except RedisError as exc:
            raise ConfigError(
                f"budgets are kept in Redis at {self.url}, which refuses CONFIG GET ({self._scrub(exc)}), so tether "
                "cannot check that it persists its data (a Redis that forgets its data refills every budget): once "
                "you have checked that it runs with appendonly yes, set [gateway] redis_persistence_verified = true; "
                f"or {fix}"
            ) from None
        values = {_text(k): _text(v) for k, v in {**appendonly, **save}.items()}
        if values.get("appendonly") == "yes":
            return
        snapshots = values.get("save", "")
        how = (
            f"only RDB snapshots (save {snapshots!r}), which lose every write since the last one"
            if snapshots
            else ("no persistence at all (appendonly no, save '')")
        )
        raise ConfigError(
            f"budgets are kept in Redis at {self.url}, which runs with {how}: a restart would forget the spend and "
            f"refill every budget — set appendonly yes on that Redis (CONFIG SET appendonly yes, and in redis.conf), "
            f"or {fix}"
        )

    async def _begin_epoch(self) -> None:
        """Join the epoch in Redis, or begin a new one if there is none (first start, or after a loss)."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            await self._client.set(self._epoch_key, uuid.uuid4().hex, nx=True)
            marker = await self._client.get(self._epoch_key)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise self._unavailable(exc, "reading the budget epoch") from None
        except RedisError as exc:
            raise StoreError(
                f"reading the budget epoch failed: Redis at {self.url} answered: {self._scrub(exc)}"
            ) from None
        if marker is None:
            raise self._lost_error("its epoch marker vanished as it was written")
        self._epoch = _text(marker)
        self._lost_at = None

    def _lost_error(self, detail: str) -> BudgetUnavailable:
        if self._rebuild_from is None:
            return BudgetUnavailable(
                f"the budget counters in Redis at {self.url} were lost ({detail}) and this gateway has no cost ledger "
                "to rebuild them from, so budgeted calls are refused rather than given a refilled budget: run the "
                "gateway with a store (TETHER_DATABASE_URL), or restart it to accept the reset"
            )
        return BudgetUnavailable(
            f"the budget counters in Redis at {self.url} were lost ({detail}); they are being rebuilt from the cost "
            f"ledger, and budgeted calls are refused until then: retry in {math.ceil(self._rebuild_grace_s) + 1} s"
        )

    async def _ensure_epoch(self) -> None:
        """Before a reserve: the epoch is known, or a loss's grace is over and a new one begins."""
        if self._lost_at is not None:
            if self._rebuild_from is None or time.monotonic() - self._lost_at < self._rebuild_grace_s:
                raise self._lost_error("Redis restarted without them, or was flushed")
            self._epoch = None
            self._lost_at = None
        if self._epoch is None:
            await self.start()

    def _epoch_lost(self, marker: str) -> None:
        """The reserve found another marker than ours: adopt a new epoch, or fail closed for the grace."""
        if marker:
            # Another replica saw the loss first and began a new epoch: counters are rebuilt as they are touched.
            logger.warning("tether: budget counters in Redis at %s were rebuilt by another replica", self.url)
            self._epoch = marker
            return
        if self._lost_at is None:
            self.losses += 1
            self._lost_at = time.monotonic()
            logger.error(
                "tether: the budget counters in Redis at %s are gone (Redis restarted without its data, or was "
                "flushed): budgeted calls are refused until they are rebuilt from the cost ledger",
                self.url,
            )
        raise self._lost_error("Redis restarted without them, or was flushed")

    async def _rebuild(self, scope: BudgetScope, period: str, now: datetime) -> None:
        """Build one scope's counters in this epoch from the recorded spend (what Redis still holds, if more)."""
        nanos, tokens = 0, 0
        if self._rebuild_from is not None:
            nanos, tokens = await asyncio.to_thread(self._rebuild_from.spent, scope.kind, scope.name, period)
        assert self._epoch is not None
        await self._eval(
            _REBUILD_SCRIPT,
            [self._epoch_key, self._usage_key(scope, period)],
            [self._epoch, nanos, tokens, self._ttl_ms(period, now)],
            "rebuilding budget counters",
        )
        self.rebuilt += 1

    # -- reserve ---------------------------------------------------------------------------

    async def reserve(self, scopes: Sequence[BudgetScope], *, usd: Decimal, tokens: int) -> Reservation:
        """Charge every scope or none, in one Lua script; see ``BudgetLedger.reserve``.

        Raises:
            BudgetExceeded: the first scope (in the order given) without room; nothing was charged.
            ValueError: negative amounts, or the same scope twice.
            StoreUnavailable: Redis cannot be reached (the call must not be placed).
            StoreError: Redis failed, or a counter would exceed 64 bits.
        """
        _check_amounts(usd, tokens)
        _check_scopes(scopes)
        work = asyncio.ensure_future(self._reserve(tuple(scopes), usd, tokens))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # The script may run anyway; if it charged, nobody will settle: give the charge back.
            self._adopt(self._release_abandoned(work))
            raise

    async def _reserve(self, scopes: tuple[BudgetScope, ...], usd: Decimal, tokens: int) -> Reservation:
        nanos = _to_nanos(usd, ROUND_CEILING)
        now = _utc(self._clock())
        periods = tuple(period_key(s.limit.period, now) for s in scopes)
        reservation = Reservation(uuid.uuid4().hex, scopes, usd, tokens, periods)
        if not scopes:
            return reservation  # no budget applies: nothing to check or hold
        if nanos > _INT64_MAX or tokens > _INT64_MAX:
            raise self._overflow(scopes[0])
        ttls = [self._ttl_ms(period, now) for period in periods]
        args: list[str | int] = [
            reservation.id,
            nanos,
            tokens,
            _micros(now),
            # Held as long as its counters; a lifetime counter (TTL 0) holds it until settled or swept.
            0 if 0 in ttls else max(ttls),
        ]
        for scope, ttl in zip(scopes, ttls, strict=True):
            limit = scope.limit
            args.append("" if limit.usd is None else _to_nanos(limit.usd, ROUND_FLOOR))
            args.append("" if limit.tokens is None else limit.tokens)
            args.append(ttl)
        keys = [
            self._reservation_key(reservation.id),
            self._open_key,
            self._epoch_key,
            *(self._usage_key(s, p) for s, p in zip(scopes, periods, strict=True)),
        ]
        # Each pass either charges, refuses, or builds one counter in this epoch (or adopts a new epoch).
        for _ in range(2 * len(scopes) + 2):
            await self._ensure_epoch()
            assert self._epoch is not None
            result = await self._eval(_RESERVE_SCRIPT, keys, [*args, self._epoch], "reserving budget")
            assert isinstance(result, list)
            outcome = int(result[0])
            if outcome == 3:
                self._epoch_lost(_text(result[1]))
                continue
            if outcome == 4:
                index = int(result[1]) - 1
                await self._rebuild(scopes[index], periods[index], now)
                continue
            break
        else:
            raise StoreError(f"reserving budget failed: the counters in Redis at {self.url} kept changing epoch")
        if outcome == 1:
            scope = scopes[int(result[1]) - 1]
            unit, spent, reserved = _text(result[2]), int(_text(result[3])), int(_text(result[4]))
            if unit == "usd":
                assert scope.limit.usd is not None
                raise BudgetExceeded(
                    str(scope),
                    limit=float(scope.limit.usd),
                    used=float(_to_usd(spent + reserved)),
                    requested=float(usd),
                    unit="usd",
                )
            assert scope.limit.tokens is not None
            raise BudgetExceeded(
                str(scope), limit=scope.limit.tokens, used=spent + reserved, requested=tokens, unit="tokens"
            )
        if outcome == 2:
            raise self._overflow(scopes[int(result[1]) - 1])
        return reservation

    async def _release_abandoned(self, work: asyncio.Future[Reservation]) -> None:
        try:
            reservation = await work
        except Exception:
            return  # refused or failed: nothing was charged
        try:
            await self._release(reservation)
        except StoreError:
            logger.warning("tether: a cancelled budget reservation is left for the sweep", exc_info=True)

    # -- settle, release, sweep ------------------------------------------------------------

    async def settle(self, reservation: Reservation, *, usd: Decimal, tokens: int) -> None:
        """Replace the reservation by the real cost, in one Lua script.

        As with ``SqlBudgetLedger.settle``: the real cost is recorded even above
        the reservation and even after the reservation was swept, to the periods
        it was charged to; settling twice counts twice (the safe side of a bug).

        Raises:
            ValueError: negative amounts.
            StoreUnavailable: Redis cannot be reached (the reservation stays until swept).
            StoreError: Redis failed, or a counter would exceed 64 bits.
        """
        _check_amounts(usd, tokens)
        if not reservation.scopes:
            return
        await self._shielded(asyncio.ensure_future(self._settle(reservation, usd, tokens)), "settle")

    async def _settle(self, reservation: Reservation, usd: Decimal, tokens: int) -> None:
        nanos = _to_nanos(usd, ROUND_CEILING)
        if nanos > _INT64_MAX or tokens > _INT64_MAX:
            raise self._overflow(reservation.scopes[0])
        now = _utc(self._clock())
        keys = [
            self._reservation_key(reservation.id),
            self._open_key,
            *(self._usage_key(s, p) for s, p in zip(reservation.scopes, reservation.periods, strict=True)),
        ]
        args: list[str | int] = [reservation.id, nanos, tokens, *(self._ttl_ms(p, now) for p in reservation.periods)]
        result = await self._eval(_SETTLE_SCRIPT, keys, args, "settling budget")
        assert isinstance(result, list)
        if int(result[0]) == 2:
            raise self._overflow(reservation.scopes[int(result[1]) - 1])

    async def release(self, reservation: Reservation) -> None:
        """Give the reservation back; nothing happens if it is already settled, released or swept.

        Raises:
            StoreUnavailable: Redis cannot be reached (the reservation stays until swept).
            StoreError: Redis failed.
        """
        if not reservation.scopes:
            return
        await self._shielded(asyncio.ensure_future(self._release(reservation)), "release")

    async def _release(self, reservation: Reservation) -> None:
        keys = [self._reservation_key(reservation.id), self._open_key]
        await self._eval(_RELEASE_SCRIPT, keys, [reservation.id], "releasing budget")

    async def sweep_stale(self, older_than: timedelta) -> int:
        """End reservations made more than ``older_than`` ago (e.g. by a process that died mid-call) as spent.

        Fail closed: a dead replica's lease or call may have been billed, and nothing says for how much,
        so its whole reservation counts as spent. One script per 1,000 reservations, so Redis is never
        blocked for long.
        As with ``SqlBudgetLedger.sweep_stale``, choose ``older_than`` well above
        the longest call.

        Returns:
            How many reservations were released.

        Raises:
            StoreUnavailable: Redis cannot be reached.
            StoreError: Redis failed.
        """
        cutoff = _micros(_utc(self._clock()) - older_than)
        released = 0
        while True:
            result = await self._eval(
                _SWEEP_SCRIPT,
                [self._open_key],
                [cutoff, _SWEEP_BATCH, self._reservation_key("")],
                "sweeping stale budget reservations",
            )
            assert isinstance(result, list)
            released += int(result[0])
            if int(result[1]) < _SWEEP_BATCH:
                return released

    # -- reading ---------------------------------------------------------------------------

    async def usage(self, scope: BudgetScope, *, at: datetime | None = None) -> BudgetUsage:
        """The scope's usage in the period containing ``at`` (default: the clock's now).

        Raises:
            StoreUnavailable: Redis cannot be reached.
            StoreError: Redis failed.
        """
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        period = period_key(scope.limit.period, at if at is not None else self._clock())
        if self._closed:
            raise StoreError(f"budget ledger at {self.url} is closed")
        try:
            row = await self._client.hmget(self._usage_key(scope, period), list(_USAGE_FIELDS))
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise self._unavailable(exc, "reading budget usage") from None
        except RedisError as exc:
            raise StoreError(f"reading budget usage failed: Redis at {self.url} answered: {self._scrub(exc)}") from None
        spent, reserved, spent_tokens, reserved_tokens = (0 if v is None else int(_text(v)) for v in row)
        return BudgetUsage(
            scope=str(scope),
            period=period,
            spent_usd=_to_usd(spent),
            reserved_usd=_to_usd(reserved),
            spent_tokens=spent_tokens,
            reserved_tokens=reserved_tokens,
        )

    async def aclose(self) -> None:
        """Wait for settles and releases left running by cancelled callers, then close the client if owned."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self._closed = True
        if self._owns_client:
            await self._client.aclose()
