"""/healthz, /metrics, /v1/models, the response cache, flat memory, and ``tether gateway serve`` itself."""

from __future__ import annotations

import gc
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from opentelemetry import trace as otel_trace
from sqlalchemy import select

from tests.gateway.proxy_support import (
    ALICE,
    BOB,
    FakeKeys,
    base_config,
    json_reply,
    payload,
    running_proxy,
    set_provider_keys,
    sse_events,
    sse_reply,
)
from tether import semconv as sc
from tether.gateway.keys import KeyScope, KeyStore, VirtualKey
from tether.gateway.ledger import CostLedger
from tether.store import open_store
from tether.store.schema import spans

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(autouse=True)
def _provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    set_provider_keys(monkeypatch)


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from a Prometheus text page (labels given must all match)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{labels} in:\n{text}")


async def test_healthz_reports_every_breaker() -> None:
    async with running_proxy() as env, httpx.AsyncClient() as client:
        reply = await client.get(f"{env.url}/healthz")
        assert reply.status_code == 200
        data = reply.json()
        assert data["status"] == "ok"
        assert set(data["breakers"]) == {"gpt", "gpt-down", "claude", "sim-claude"}
        assert data["breakers"]["gpt"]["state"] == "closed"


async def test_version_names_tethers_version_and_the_price_data_without_a_key() -> None:
    from importlib.metadata import version

    from tether.pricing import PRICE_DATA_VERSION

    async with running_proxy() as env, httpx.AsyncClient() as client:
        reply = await client.get(f"{env.url}/version")
        assert reply.status_code == 200
        assert reply.json() == {"tether": version("tether"), "price_data": PRICE_DATA_VERSION}


async def test_unknown_paths_and_wrong_methods_answer_in_the_apis_json_error_format() -> None:
    # Before: Starlette's plain-text "Not Found" / "Method Not Allowed", which no SDK can parse.
    async with running_proxy() as env, httpx.AsyncClient() as client:
        missing = await client.get(f"{env.url}/v1/no-such-thing")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/json"
        error = missing.json()["error"]
        assert error["type"] == "not_found_error" or error["code"] == "not_found"
        assert "/v1/no-such-thing" in error["message"]

        wrong = await client.get(f"{env.url}/v1/chat/completions")
        assert wrong.status_code == 405
        assert wrong.headers["allow"] == "POST"
        assert set(wrong.json()["error"]) == {"message", "type", "param", "code"}  # OpenAI's error object
        assert wrong.json()["error"]["message"] == "GET is not allowed on /v1/chat/completions: use POST"

        anthropic_wrong = await client.get(f"{env.url}/v1/messages")
        assert anthropic_wrong.status_code == 405
        data = anthropic_wrong.json()
        assert data["type"] == "error" and set(data["error"]) == {"type", "message"}  # Anthropic's error shape

        anthropic_missing = await client.post(f"{env.url}/v1/messages/count_tokens", json={})
        assert anthropic_missing.status_code == 404
        assert anthropic_missing.json() == {
            "type": "error",
            "error": {"type": "not_found_error", "message": anthropic_missing.json()["error"]["message"]},
        }

        models_post = await client.post(f"{env.url}/v1/models")
        assert models_post.status_code == 405
        assert models_post.json()["error"]["code"] == "method_not_allowed"


async def test_metrics_count_requests_tokens_cost_cache_and_breakers() -> None:
    async with running_proxy() as env:
        env.upstream.on("/v1/chat/completions", sse_reply(sse_events("openai_stream_text.sse")))
        env.upstream.on("/v1/messages", json_reply(payload("anthropic_parallel_tool_use.json")))
        oai = env.openai()
        stream = await oai.chat.completions.create(model="fast", messages=HI, stream=True)  # type: ignore[arg-type]
        async for _ in stream:
            pass
        await env.anthropic().messages.create(model="smart", max_tokens=50, messages=HI)  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError):
            await oai.chat.completions.create(model="no-such-route", messages=HI)  # type: ignore[arg-type]
        await env.chat_spans(2)
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"{env.url}/metrics")
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = reply.text
        prefix = "tether_gateway_"
        assert metric(text, prefix + "requests_total", api="openai", route="fast", status="200") == 1
        assert metric(text, prefix + "requests_total", api="anthropic", route="smart", status="200") == 1
        # A route the client made up is counted, but never becomes a series of its own.
        assert metric(text, prefix + "requests_total", api="openai", route="-", status="404") == 1
        assert "no-such-route" not in text
        assert metric(text, prefix + "tokens_total", route="fast", kind="cache_read") == 1792
        assert metric(text, prefix + "tokens_total", route="smart", kind="cache_write") == 188
        assert metric(text, prefix + "tokens_total", route="smart", kind="input") == 21 + 188 + 1504
        assert metric(text, prefix + "cost_usd_total", route="smart") > 0
        assert metric(text, prefix + "request_duration_seconds_count", route="fast") == 1
        assert metric(text, prefix + "request_duration_seconds_bucket", route="fast", le="+Inf") == 1
        assert metric(text, prefix + "breaker_state", deployment="gpt", state="closed") == 1
        assert metric(text, prefix + "breaker_state", deployment="gpt", state="open") == 0
        assert metric(text, prefix + "upstream_calls_total", deployment="claude", outcome="ok") == 1
        assert metric(text, prefix + "in_flight_requests") == 0
        assert "# TYPE tether_gateway_request_duration_seconds histogram" in text


async def test_the_response_cache_answers_repeated_deterministic_requests() -> None:
    def cached(upstream: str) -> dict[str, Any]:
        return base_config(upstream, routes={"fast": {"tiers": [["gpt"]], "response_cache": True}})

    async with running_proxy(cached) as env:
        env.upstream.on("/v1/chat/completions", json_reply(payload("openai_text.json")))
        client = env.openai()
        first = await client.chat.completions.create(model="fast", messages=HI, temperature=0)  # type: ignore[arg-type]
        second = await client.chat.completions.create(model="fast", messages=HI, temperature=0)  # type: ignore[arg-type]
        await client.chat.completions.create(model="fast", messages=HI, temperature=0.7)  # type: ignore[arg-type]
        assert second.model_dump() == first.model_dump()
        assert len(env.upstream.requests) == 2  # the repeat was served by tether, the warm one was not cacheable
        spans = await env.chat_spans(3)
        hits = [dict(s.attributes or {}).get(sc.TETHER_CACHE_HIT) for s in spans]
        assert hits == [False, True, None]
        assert dict(spans[1].attributes or {})[sc.TETHER_COST_USD] == 0.0
        assert env.metrics.response_cache[("fast", "hit")] == 1
        assert env.metrics.response_cache[("fast", "miss")] == 1


async def test_cache_control_no_cache_skips_the_response_cache() -> None:
    def cached(upstream: str) -> dict[str, Any]:
        return base_config(upstream, routes={"fast": {"tiers": [["gpt"]], "response_cache": True}})

    async with running_proxy(cached) as env:
        env.upstream.on("/v1/chat/completions", json_reply(payload("openai_text.json")))
        client = env.openai()
        fresh = {"cache-control": "no-cache"}  # what tether's model adapters send for an eval's trials
        await client.chat.completions.create(model="fast", messages=HI, temperature=0)  # type: ignore[arg-type]
        for _ in range(2):
            await client.chat.completions.create(
                model="fast",
                messages=HI,  # type: ignore[arg-type]
                temperature=0,
                extra_headers=fresh,
            )
        assert len(env.upstream.requests) == 3
        assert env.metrics.response_cache[("fast", "hit")] == 0


async def test_models_lists_the_routes_the_key_may_use() -> None:
    keys = FakeKeys(
        {
            ALICE: VirtualKey(id="k1", name="alice", prefix="tk-alice"),
            BOB: VirtualKey(id="k2", name="bob", prefix="tk-bob", routes=("sim",)),
        }
    )
    async with running_proxy(keys=keys) as env:
        assert sorted([m.id async for m in env.openai().models.list()]) == ["fast", "sim", "smart"]
        assert [m.id async for m in env.openai(key=BOB).models.list()] == ["sim"]
        with pytest.raises(openai.AuthenticationError):
            await env.openai(key="tk-wrong").models.list()
        async with httpx.AsyncClient() as client:
            reply = await client.get(
                f"{env.url}/v1/models", headers={"x-api-key": BOB, "anthropic-version": "2023-06-01"}
            )
        assert reply.json()["data"] == [
            {"type": "model", "id": "sim", "display_name": "sim", "created_at": "1970-01-01T00:00:00Z"}
        ]


async def test_an_admin_key_cannot_call_models() -> None:
    keys = FakeKeys({ALICE: VirtualKey(id="k1", name="oncall-console", prefix="tk-alice", scope=KeyScope.ADMIN)})
    async with running_proxy(keys=keys) as env:
        env.upstream.on("/v1/chat/completions", json_reply(payload("openai_text.json")))
        with pytest.raises(openai.PermissionDeniedError, match="this is an admin key"):
            await env.openai().chat.completions.create(model="fast", messages=HI)  # type: ignore[arg-type]
        with pytest.raises(anthropic.PermissionDeniedError, match="cannot call models"):
            await env.anthropic().messages.create(model="sim", max_tokens=20, messages=HI)  # type: ignore[arg-type]
        with pytest.raises(openai.PermissionDeniedError, match="use a model key"):
            await env.openai().models.list()
        async with httpx.AsyncClient() as client:
            reply = await client.get(
                f"{env.url}/v1/models", headers={"x-api-key": ALICE, "anthropic-version": "2023-06-01"}
            )
        assert reply.status_code == 403 and reply.json()["error"]["type"] == "permission_error"
        assert env.upstream.requests == []


async def test_memory_stays_flat_over_many_requests() -> None:
    # No span capture (it keeps every span) and no request log on the mock upstream.
    async with running_proxy(tracer=otel_trace.NoOpTracer(), record=False) as env:
        env.upstream.on("/v1/chat/completions", json_reply(payload("openai_text.json")))
        passthrough = {"model": "fast", "messages": HI}
        translated = {"model": "sim", "max_tokens": 20, "messages": HI}
        streamed = {"model": "sim", "messages": HI, "stream": True}
        async with httpx.AsyncClient(base_url=env.url, headers={"authorization": f"Bearer {ALICE}"}) as client:

            async def rounds(n: int) -> None:
                for _ in range(n):
                    assert (await client.post("/v1/chat/completions", json=passthrough)).status_code == 200
                    assert (await client.post("/v1/messages", json=translated)).status_code == 200
                    reply = await client.post("/v1/chat/completions", json=streamed)
                    assert reply.text.endswith("data: [DONE]\n\n")

            await rounds(200)  # fill every bounded cache and pool first
            gc.collect()
            objects = len(gc.get_objects())
            await rounds(400)
            gc.collect()
            # 1,200 requests: one object kept per request would add 1,200 (keep-alive timers and
            # scheduled callbacks in flight move the count by a few hundred either way).
            assert len(gc.get_objects()) - objects < 600
            tracemalloc.start()
            try:
                await rounds(50)
                gc.collect()
                before = tracemalloc.get_traced_memory()[0]
                await rounds(600)
                gc.collect()
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
        # 1,800 requests: 64 bytes kept per request would be ~115 kB. Measured over fewer requests
        # the bound flaked: bounded caches, breaker windows and writer buffers move by ~25 kB
        # whatever the request count, so the window must be long enough for a leak to stand out.
        assert grown < 64 * 1_800, f"memory grew by {grown:,} bytes over 1,800 requests"


# --- the command ---------------------------------------------------------------------------------

SIM_TOML = """
[providers.sim]
kind = "sim"

[deployments.sim-claude]
provider = "sim"
model = "claude-sonnet-4-5"

[routes.support]
tiers = [["sim-claude"]]
budget = { usd = 5, period = "day" }
"""


def start_server(*args: str) -> tuple[subprocess.Popen[str], str, str]:
    """``tether gateway serve`` in a subprocess on a free port; returns it, its base URL and its first line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tether", "gateway", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "300", "NO_COLOR": "1"},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
    if found is None:
        process.kill()
        raise AssertionError(f"unexpected first line: {line!r} {process.communicate()[0]!r}")
    return process, found.group(1), line


def stop_server(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    return output


@pytest.fixture
def sim_toml() -> None:
    Path("tether.toml").write_text(SIM_TOML)


@pytest.mark.usefixtures("sim_toml")
async def test_serve_with_virtual_keys_from_the_store(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'gateway.db'}"
    store = open_store(database)
    try:
        _, secret = KeyStore(store).create("ci-bot", routes=["support"])
    finally:
        store.close()
    process, url, banner = start_server("--database", database)
    try:
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    health = await client.get(f"{url}/healthz")
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline
            assert health.status_code == 200
            denied = await client.post(f"{url}/v1/chat/completions", json={"model": "support", "messages": HI})
            assert denied.status_code == 401
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0) as sdk:
            answer = await sdk.chat.completions.create(model="support", messages=HI)  # type: ignore[arg-type]
        assert answer.choices[0].message.content
        assert answer.usage is not None and answer.usage.prompt_tokens > 0
    finally:
        output = stop_server(process)
    assert "auth: on" in banner
    assert "routes: support" in banner
    assert "Traceback" not in output
    # The chat span (with the key's name, never its secret) and the call's cost reached the database.
    store = open_store(database)
    try:
        with store.engine.connect() as connection:
            rows = connection.execute(select(spans.c.attributes).where(spans.c.operation == "chat")).all()
        assert len(rows) == 1
        attrs = orjson.loads(rows[0].attributes)
        assert attrs[sc.TETHER_KEY] == "ci-bot"
        assert secret not in rows[0].attributes
        assert CostLedger(store).has_rows()
    finally:
        store.close()


def test_serve_refuses_a_config_without_routes_in_one_line() -> None:
    Path("tether.toml").write_text("[providers.sim]\nkind = 'sim'\n")
    result = subprocess.run(
        [sys.executable, "-m", "tether", "gateway", "serve", "--no-auth", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: no routes are defined")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.usefixtures("sim_toml")
def test_serve_reports_a_taken_port_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = subprocess.run(
            [sys.executable, "-m", "tether", "gateway", "serve", "--no-auth", "--port", port],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
