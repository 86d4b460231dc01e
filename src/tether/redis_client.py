"""The Redis client the gateway's shared backends use (rate limits, budgets), built one way.

``redis.asyncio`` is imported only when a client is made: it costs ~0.5 s to
import, which ``import tether`` must not pay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from tether.errors import ConfigError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["client_display", "connect", "display_url"]


def display_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable Redis URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = (f"{parts.username}@" if parts.username else "") + host + (f":{port}" if port else "")
    query = "&".join(p for p in parts.query.split("&") if p and not p.lower().startswith("password="))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def client_display(client: Redis) -> str:
    """Where a ready-made client points, without credentials."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def connect(url: str, *, timeout_s: float, max_connections: int) -> tuple[Redis, str]:
    """A client for ``url`` that fails fast, and the URL to show in messages.

    Raises:
        ValueError: a non-positive timeout or pool size.
        ConfigError: a URL redis-py cannot parse.
    """
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
    if max_connections < 1:
        raise ValueError(f"max_connections must be at least 1, got {max_connections}")
    display = display_url(url)
    try:
        # Blocking: past max_connections a call waits for a free connection (up to
        # timeout_s) instead of failing with "Too many connections" under a burst.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            # redis-py's default retries 10 times with back-off: minutes of hanging when Redis
            # is down. Retry once, only on a broken connection (a stale pooled one): after a
            # timeout a script may have run, and running it twice would charge twice.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
    except ValueError as exc:
        raise ConfigError(
            f"invalid Redis URL {display}: {exc} — use redis://host:6379/0 ([gateway] redis_url in tether.toml)"
        ) from None
    return Redis.from_pool(pool), display
