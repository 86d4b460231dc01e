"""Kills over Redis pub/sub: the fast path from whoever records a kill to every switch listening.

The store's ``kills`` table stays the source of truth (durable, audited, read
by every switch's poller). Redis only makes a kill arrive sooner: once its row
is committed, ``KillStore`` (given ``redis_url``) publishes it here, and every
``KillSwitch`` given the same ``redis_url`` applies it the moment it arrives
(~1 ms on a LAN) instead of at its next poll. Pub/sub is fire-and-forget: a
switch that is not subscribed at that moment never gets the message, and its
poller delivers the kill instead.

One message per kill on channel ``tether:kills`` (``KILL_CHANNEL``; choose
another per deployment when several share one Redis), the JSON of
``Kill.to_dict()``::

    {"id": "3f9a…", "target_kind": "agent", "target": "oncall", "reason": "runaway spend",
     "requested_by": "alice@host", "created_at": "2026-11-21T10:00:00.123456+00:00"}

A message that is not such an object (not JSON, a missing or mistyped field,
an unknown ``target_kind``) is not a kill: the switch logs it and drops it.
Anyone who can ``PUBLISH`` on that Redis can stop runs (not start or change
one): protect it as you protect the database.

``redis`` is imported with this module, which ``tether.guard.kill``
imports only when a Redis URL is given.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from types import TracebackType
from typing import Any, Final

import orjson
import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from tether.errors import ConfigError
from tether.guard.kill.record import (
    _ALL_TARGET,
    _DEFAULT_REASON,
    _MAX_REASON,
    _MAX_TARGET,
    _TARGET_KINDS,
    KILL_CHANNEL,
    Kill,
    _utc,
)
from tether.redis_client import display_url

__all__ = ["KILL_CHANNEL", "KillPublisher", "KillSubscription", "check_url", "decode_kill", "encode_kill"]

logger = logging.getLogger(__name__)

#: How long a publish may wait on Redis (connect, then answer) before the kill is left to the poller.
DEFAULT_PUBLISH_TIMEOUT_S: Final = 0.5
#: How long a subscriber waits to connect and subscribe before it counts as a failure.
DEFAULT_SUBSCRIBE_TIMEOUT_S: Final = 1.0
_MAX_ID: Final = 128
_ERROR_REPEAT_S: Final = 30.0
_CLIENT_NAME: Final = "tether-killswitch"


def encode_kill(kill: Kill) -> bytes:
    """The message that carries ``kill``: the JSON of ``Kill.to_dict()``."""
    return orjson.dumps(kill.to_dict())


def decode_kill(data: bytes | str) -> Kill:
    """The kill a message carries, as received over Redis (``source="redis"``).

    Raises:
        ValueError: the message is not a kill (not JSON, a missing or mistyped field, an unknown target kind).
    """
    try:
        fields = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(fields, dict):
        raise ValueError(f"a JSON {type(fields).__name__}, not an object")
    kill_id = _text(fields, "id")
    if len(kill_id) > _MAX_ID:
        raise ValueError(f"id longer than {_MAX_ID} characters")
    kind = _text(fields, "target_kind")
    if kind not in _TARGET_KINDS:
        # Unlike a row in the store (read as "all"), a message naming an unknown kind stops nothing:
        # the row it was published for, if any, is read by the poller.
        raise ValueError(f"unknown target_kind {kind[:40]!r}")
    target = _ALL_TARGET if kind == "all" else _text(fields, "target")
    if len(target) > _MAX_TARGET:
        raise ValueError(f"target longer than {_MAX_TARGET} characters")
    reason = fields.get("reason")
    if not isinstance(reason, str):
        raise ValueError("reason missing or not a string")
    requested_by = fields.get("requested_by")
    if requested_by is not None and not isinstance(requested_by, str):
        raise ValueError("requested_by not a string")
    made = _text(fields, "created_at")
    try:
        created_at = _utc(datetime.fromisoformat(made))
    except ValueError:
        raise ValueError(f"created_at {made[:40]!r} is not an ISO 8601 time") from None
    return Kill(
        id=kill_id,
        target_kind=kind,  # type: ignore[arg-type]  # checked against _TARGET_KINDS above
        target=target,
        reason=(reason if len(reason) <= _MAX_REASON + 1 else reason[:_MAX_REASON] + "…") or _DEFAULT_REASON,
        requested_by=requested_by,
        created_at=created_at,
        source="redis",
    )


def _text(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} missing or not a non-empty string")
    return value


def check_url(url: str) -> str:
    """``url`` without its password, once redis-py has accepted it (nothing is connected).

    Raises:
        ConfigError: a URL redis-py cannot parse.
    """
    _client(url, timeout_s=DEFAULT_SUBSCRIBE_TIMEOUT_S, retries=0).close()
    return display_url(url)


def _client(url: str, *, timeout_s: float, retries: int) -> redis.Redis:
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
    try:
        return redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            # redis-py's default retries with back-off for seconds when Redis is down; a kill must
            # not wait on that (the poller delivers it). At most once more, on a broken (stale) connection.
            retry=Retry(NoBackoff(), retries, supported_errors=(RedisConnectionError,)),
            client_name=_CLIENT_NAME,
        )
    except ValueError as exc:
        raise ConfigError(
            f"invalid Redis URL {display_url(url)}: {exc} — "
            "use redis://host:6379/0 ([gateway] redis_url in tether.toml)"
        ) from None


class KillPublisher:
    """Publishes recorded kills on Redis; a failure is logged, never raised (the poller delivers the kill).

    Thread-safe: one publisher may serve every request of a gateway.

    Args:
        url: the Redis URL (``redis://host:6379/0``).
        channel: the channel to publish on.
        timeout_s: how long one publish may wait on Redis.

    Raises:
        ConfigError: a URL redis-py cannot parse.
    """

    def __init__(self, url: str, *, channel: str = KILL_CHANNEL, timeout_s: float = DEFAULT_PUBLISH_TIMEOUT_S) -> None:
        self.url = display_url(url)
        self.channel = channel
        self._client = _client(url, timeout_s=timeout_s, retries=1)
        self._lock = threading.Lock()
        self._failing_since: float | None = None
        self._last_log = 0.0

    def __repr__(self) -> str:
        return f"KillPublisher({self.url!r}, channel={self.channel!r})"

    def publish(self, kill: Kill) -> int | None:
        """Publish ``kill``; how many subscribers got it, or None when Redis failed (logged, not raised)."""
        try:
            receivers = self._client.publish(self.channel, encode_kill(kill))
        except (RedisError, OSError) as exc:
            self._failed(kill, exc)
            return None
        self._recovered()
        return receivers

    def close(self) -> None:
        """Close the connections to Redis."""
        self._client.close()

    def __enter__(self) -> KillPublisher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _failed(self, kill: Kill, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            first = self._failing_since is None
            if first:
                self._failing_since = now
            elif now - self._last_log < _ERROR_REPEAT_S:
                return
            self._last_log = now
            since = now - (self._failing_since or now)
        if first:
            logger.warning(
                "could not publish the kill of %s on Redis %s (channel %s): %s — it is recorded in the store, and "
                "switches there see it at their next poll instead of at once",
                kill.what,
                self.url,
                self.channel,
                str(exc) or type(exc).__name__,
            )
        else:
            logger.warning(
                "still cannot publish kills on Redis %s after %.0f s: %s; they reach switches by the store's poll",
                self.url,
                since,
                str(exc) or type(exc).__name__,
            )

    def _recovered(self) -> None:
        if self._failing_since is None:
            return
        with self._lock:
            since, self._failing_since = self._failing_since, None
        if since is not None:
            logger.warning("kills are published on Redis %s again after %.1f s", self.url, time.monotonic() - since)


class KillSubscription:
    """One connection subscribed to the kill channel; the switch's Redis thread owns it.

    Connects and subscribes at once, waiting for Redis to confirm.

    Args:
        url: the Redis URL.
        channel: the channel to listen on.
        timeout_s: how long connecting, subscribing and any one read may take.

    Raises:
        ConfigError: a URL redis-py cannot parse.
        redis.RedisError: Redis cannot be reached, or did not confirm the subscription in time.
    """

    def __init__(
        self, url: str, *, channel: str = KILL_CHANNEL, timeout_s: float = DEFAULT_SUBSCRIBE_TIMEOUT_S
    ) -> None:
        self.channel = channel
        # No retry: a broken connection is the switch's to report and reopen.
        self._client = _client(url, timeout_s=timeout_s, retries=0)
        self._pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        try:
            self._pubsub.subscribe(channel)
            deadline = time.monotonic() + timeout_s
            while (left := deadline - time.monotonic()) > 0:
                message = self._pubsub.get_message(timeout=left)
                if message is not None and message["type"] == "subscribe":
                    return
            raise redis.TimeoutError(f"Redis did not confirm the subscription to {channel} within {timeout_s:g} s")
        except BaseException:
            self.close()
            raise

    def receive(self, timeout_s: float) -> bytes | None:
        """The next message's data, or None if none came within ``timeout_s``.

        Raises:
            redis.RedisError: the connection broke (close this subscription and open another).
        """
        message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout_s)
        if message is None or message.get("type") != "message":
            return None
        data = message["data"]
        return data if isinstance(data, bytes) else str(data).encode()

    def close(self) -> None:
        """Unsubscribe (by closing the connection)."""
        try:
            self._pubsub.close()
        finally:
            self._client.close()
