"""Gateway fixtures: the machine's Redis, with a key prefix of each test's own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.conftest import REDIS_URL


@pytest.fixture
def redis_url() -> str:
    """The test Redis (``TETHER_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/0``); never skipped."""
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; every key under it is deleted afterwards."""
    prefix = f"tether-test:{uuid.uuid4().hex}:"
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        try:
            client.ping()
        except redis.ConnectionError as exc:
            pytest.fail(f"the test Redis at {redis_url} is not running ({exc}): start it, e.g. with .ci/run")
        yield prefix
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
