"""The harness itself: each fault it injects is real (a test that relied on a fault that never happened
would prove nothing)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.faults._support import FaultProxy, GatewayProcess, RedisServer, Upstream, write_toml

KEY = "canary-provider-key-0123456789abcdef"


def gateway_config(upstream: Upstream) -> dict[str, object]:
    return {
        "providers": {
            "oai": {"kind": "openai", "base_url": f"{upstream.url}/v1", "api_key_env": "FAULT_OPENAI_KEY"},
            "ant": {"kind": "anthropic", "base_url": upstream.url, "api_key_env": "FAULT_ANTHROPIC_KEY"},
        },
        "deployments": {
            "gpt": {"provider": "oai", "model": "gpt-4.1"},
            "claude": {"provider": "ant", "model": "claude-sonnet-4-5"},
        },
        "routes": {"fast": {"tiers": [["gpt"]]}, "smart": {"tiers": [["claude"]]}},
        "prices": {"gpt-4.1": {"input_per_mtok": 2, "output_per_mtok": 8}},
    }


def test_toml_round_trips(tmp_path: Path) -> None:
    import tomllib

    data = {"a": 1, "b": {"c": 'x"y', "d": [["p"], ["q"]], "e": {"f": True, "g": 0.5}}, "h": {"i": {"j": "k"}}}
    assert tomllib.loads(write_toml(tmp_path / "t.toml", data).read_text()) == data


def test_a_gateway_process_serves_through_the_mock_upstream(tmp_path: Path, sqlite_url: str) -> None:
    with Upstream() as upstream:
        gateway = GatewayProcess(
            tmp_path / "gw",
            gateway_config(upstream),
            database_url=sqlite_url,
            env={"FAULT_OPENAI_KEY": KEY, "FAULT_ANTHROPIC_KEY": KEY},
            args=["--no-auth"],
        )
        with gateway:
            body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
            answer = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=10)
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"].startswith("ok")
            body = {"model": "smart", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "stream": True}
            with httpx.stream("POST", f"{gateway.url}/v1/messages", json=body, timeout=10) as stream:
                assert stream.status_code == 200
                text = "".join(stream.iter_text())
            assert "message_stop" in text
            assert upstream.requests == 2
            assert upstream.credentials == {KEY}
            gateway.kill()
            assert gateway.process is not None and gateway.process.returncode == -9


def test_a_private_redis_restarts_empty_unless_persistent(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "plain") as plain, RedisServer(tmp_path / "aof", persistent=True) as aof:
        for server in (plain, aof):
            client = redis.Redis.from_url(server.url)
            client.set("spent", 5)
            client.close()
            server.restart()
        assert redis.Redis.from_url(plain.url).get("spent") is None
        assert redis.Redis.from_url(aof.url).get("spent") == b"5"
        aof.restart(empty=True)
        assert redis.Redis.from_url(aof.url).get("spent") is None


def test_the_fault_proxy_passes_refuses_and_hangs(redis_server: RedisServer) -> None:
    with FaultProxy(redis_server.port) as proxy:
        client = redis.Redis(
            host="127.0.0.1",
            port=proxy.port,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        assert client.ping()
        proxy.set_mode("refuse")
        with pytest.raises(redis.ConnectionError):
            client.ping()
        proxy.set_mode("hang")
        started = time.monotonic()
        with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
            client.ping()
        assert time.monotonic() - started >= 0.4  # it waited for an answer that never came
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=1):
            pass  # a hung dependency still accepts connections
        proxy.set_mode("pass")
        fresh = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=2)
        assert fresh.ping()
        client.close()
        fresh.close()
