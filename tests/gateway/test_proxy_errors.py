"""Every refusal and failure comes back in the client's own API error format, with a clear message."""

from __future__ import annotations

import socket
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.gateway.proxy_support import (
    ALICE,
    BOB,
    OPENAI_PROVIDER_KEY,
    FakeKeys,
    base_config,
    json_reply,
    payload,
    raw_reply,
    running_proxy,
    set_provider_keys,
)
from tether import semconv as sc
from tether.config import BudgetLimit, RateLimit
from tether.gateway.keys import VirtualKey

OPENAI = "/v1/chat/completions"
ANTHROPIC = "/v1/messages"
HI_OPENAI = {"model": "fast", "messages": [{"role": "user", "content": "Hi"}]}
HI_ANTHROPIC = {"model": "smart", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(autouse=True)
def _provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    set_provider_keys(monkeypatch)


async def post(url: str, path: str, body: bytes | dict[str, Any], *, key: str | None = ALICE) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    async with httpx.AsyncClient() as client:
        if isinstance(body, bytes):
            return await client.post(f"{url}{path}", content=body, headers=headers)
        return await client.post(f"{url}{path}", json=body, headers=headers)


def openai_error(reply: httpx.Response) -> dict[str, Any]:
    data = reply.json()
    assert set(data) == {"error"}
    assert set(data["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in reply.text
    return dict(data["error"])


def anthropic_error(reply: httpx.Response) -> dict[str, Any]:
    data = reply.json()
    assert data["type"] == "error"
    assert set(data["error"]) == {"type", "message"}
    assert "Traceback" not in reply.text
    return dict(data["error"])


async def test_malformed_json_and_missing_fields_are_400_in_each_format() -> None:
    async with running_proxy() as env:
        reply = await post(env.url, OPENAI, b'{"model": "fast", "messages": [')
        assert reply.status_code == 400
        assert "not valid JSON" in openai_error(reply)["message"]
        assert openai_error(reply)["type"] == "invalid_request_error"

        reply = await post(env.url, ANTHROPIC, b"[1, 2]")
        assert reply.status_code == 400
        error = anthropic_error(reply)
        assert error["type"] == "invalid_request_error"
        assert "JSON object" in error["message"]

        reply = await post(env.url, OPENAI, {"messages": [{"role": "user", "content": "Hi"}]})
        assert reply.status_code == 400
        assert openai_error(reply)["param"] == "model"

        reply = await post(env.url, ANTHROPIC, {"model": "smart", "messages": [{"role": "user", "content": "Hi"}]})
        assert reply.status_code == 400
        assert "max_tokens is required" in anthropic_error(reply)["message"]

        reply = await post(env.url, OPENAI, {"model": "fast", "messages": []})
        assert reply.status_code == 400
        assert openai_error(reply)["param"] == "messages"

        reply = await post(env.url, OPENAI, {**HI_OPENAI, "stream": "yes"})
        assert reply.status_code == 400
        assert env.upstream.requests == []


async def test_missing_or_wrong_key_is_401_and_the_sdks_raise_authentication_errors() -> None:
    async with running_proxy() as env:
        with pytest.raises(openai.AuthenticationError) as caught:
            await env.openai(key="tk-nope").chat.completions.create(**HI_OPENAI)  # type: ignore[call-overload]
        assert "invalid API key" in caught.value.message
        with pytest.raises(anthropic.AuthenticationError) as refused:
            await env.anthropic(key="tk-nope").messages.create(**HI_ANTHROPIC)  # type: ignore[call-overload]
        assert refused.value.body == {
            "type": "error",
            "error": {
                "type": "authentication_error",
                "message": "invalid API key: this tether virtual key is unknown or has been revoked",
            },
        }
        reply = await post(env.url, OPENAI, HI_OPENAI, key=None)
        assert reply.status_code == 401
        assert openai_error(reply)["code"] == "invalid_api_key"
        assert "missing API key" in openai_error(reply)["message"]
        assert env.upstream.requests == []


async def test_a_route_the_key_may_not_use_is_403() -> None:
    keys = FakeKeys({ALICE: VirtualKey(id="k1", name="alice", prefix="tk-alice", routes=("smart",))})
    async with running_proxy(keys=keys) as env:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await env.openai().chat.completions.create(**HI_OPENAI)  # type: ignore[call-overload]
        assert "'alice' may not use route 'fast'" in caught.value.message
        assert env.upstream.requests == []


async def test_an_unknown_route_is_404_in_each_format() -> None:
    async with running_proxy() as env:
        reply = await post(env.url, OPENAI, {**HI_OPENAI, "model": "gpt-7"})
        assert reply.status_code == 404
        assert openai_error(reply) == {
            "message": "the model 'gpt-7' is not a route of this gateway (available: fast, sim, smart)",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
        reply = await post(env.url, ANTHROPIC, {**HI_ANTHROPIC, "model": "claude-opus-9"})
        assert reply.status_code == 404
        assert anthropic_error(reply)["type"] == "not_found_error"
        with pytest.raises(anthropic.NotFoundError):
            await env.anthropic().messages.create(**{**HI_ANTHROPIC, "model": "nope"})  # type: ignore[call-overload]


async def test_a_budget_with_no_room_is_402_naming_the_budget() -> None:
    def config(upstream: str) -> dict[str, Any]:
        return base_config(
            upstream,
            routes={"fast": {"tiers": [["gpt"]], "budget": {"usd": 0.000001}}, "smart": {"tiers": [["claude"]]}},
        )

    async with running_proxy(config) as env:
        # With an output cap: without one (and no known context window) the call is unbounded, a 400.
        reply = await post(env.url, OPENAI, {**HI_OPENAI, "max_tokens": 16})
        assert reply.status_code == 402, reply.text
        error = openai_error(reply)
        assert error["code"] == "budget_exceeded"
        assert "budget route:fast exceeded" in error["message"]
        assert env.upstream.requests == []
        (span,) = await env.chat_spans()
        assert (span.attributes or {})[sc.ERROR_TYPE] == "BudgetExceeded"


async def test_a_key_budget_anthropic_format_is_billing_error() -> None:
    budget = BudgetLimit(usd=Decimal("0.000001"))
    keys = FakeKeys({ALICE: VirtualKey(id="k1", name="alice", prefix="tk-alice", budget=budget)})
    async with running_proxy(keys=keys) as env:
        reply = await post(env.url, ANTHROPIC, HI_ANTHROPIC)
        assert reply.status_code == 402
        error = anthropic_error(reply)
        assert error["type"] == "billing_error"
        assert "budget key:alice exceeded" in error["message"]


async def test_a_rate_limit_is_429_with_retry_after() -> None:
    keys = FakeKeys(
        {
            ALICE: VirtualKey(id="k1", name="alice", prefix="tk-alice", rate_limit=RateLimit(rpm=1)),
            BOB: VirtualKey(id="k2", name="bob", prefix="tk-bob"),
        }
    )
    async with running_proxy(keys=keys) as env:
        env.upstream.on(OPENAI, json_reply(payload("openai_text.json")))
        assert (await post(env.url, OPENAI, HI_OPENAI)).status_code == 200
        reply = await post(env.url, OPENAI, HI_OPENAI)
        assert reply.status_code == 429
        assert int(reply.headers["retry-after"]) >= 1
        assert float(reply.headers["retry-after-ms"]) > 0
        error = openai_error(reply)
        assert error["code"] == "rate_limit_exceeded"
        assert "key:alice" in error["message"]
        # Another key has its own allowance.
        assert (await post(env.url, OPENAI, HI_OPENAI, key=BOB)).status_code == 200
        with pytest.raises(anthropic.RateLimitError):
            await env.anthropic().messages.create(**HI_ANTHROPIC)  # type: ignore[call-overload]


async def test_a_non_json_200_from_the_upstream_is_502_naming_the_deployment() -> None:
    async with running_proxy() as env:
        env.upstream.on(OPENAI, raw_reply(b"<html><body>502 Bad Gateway</body></html>"))
        reply = await post(env.url, OPENAI, HI_OPENAI)
        assert reply.status_code == 502
        error = openai_error(reply)
        assert error["type"] == "server_error"
        assert "deployment gpt" in error["message"]
        assert "not a JSON object" in error["message"]


async def test_every_deployment_failing_is_503_listing_what_was_tried() -> None:
    def config(upstream: str) -> dict[str, Any]:
        return base_config(
            upstream,
            routes={
                "fast": {"tiers": [["gpt-down"], ["gpt"]], "retry": {"max_retries": 0}},
                "smart": {"tiers": [["claude"]]},
            },
        )

    async with running_proxy(config) as env:
        env.upstream.on("/down/v1/chat/completions", json_reply({"error": {"message": "down"}}, status=500))
        env.upstream.on(OPENAI, json_reply({"error": {"message": "overloaded"}}, status=503))
        reply = await post(env.url, OPENAI, HI_OPENAI)
        assert reply.status_code == 503
        error = openai_error(reply)
        assert error["code"] == "no_deployment_available"
        assert "gpt-down: ModelHTTPError" in error["message"]
        assert "gpt: ModelHTTPError" in error["message"]


async def test_an_upstream_4xx_passes_through_with_the_provider_key_redacted() -> None:
    body = {"error": {"message": f"bad request, key {OPENAI_PROVIDER_KEY} is fine", "type": "invalid_request_error"}}
    async with running_proxy() as env:
        env.upstream.on(OPENAI, json_reply(body, status=422))
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            await env.openai().chat.completions.create(**HI_OPENAI)  # type: ignore[call-overload]
        assert OPENAI_PROVIDER_KEY not in str(caught.value.body)
        assert "[REDACTED]" in caught.value.message


async def test_an_upstream_refusing_the_provider_key_is_a_gateway_problem_not_the_clients() -> None:
    async with running_proxy() as env:
        env.upstream.on(ANTHROPIC, json_reply({"type": "error", "error": {"type": "authentication_error"}}, status=401))
        reply = await post(env.url, ANTHROPIC, HI_ANTHROPIC)
        assert reply.status_code == 502
        assert "refused the gateway's provider credentials" in anthropic_error(reply)["message"]


async def test_an_unknown_price_under_a_budget_is_400_with_the_fix() -> None:
    budget = BudgetLimit(usd=Decimal(5))
    keys = FakeKeys({ALICE: VirtualKey(id="k1", name="alice", prefix="tk-alice", budget=budget)})

    def unpriced(upstream: str) -> dict[str, Any]:
        config = base_config(upstream)
        config["prices"] = {}  # a self-hosted OpenAI-compatible model has no list price
        return config

    async with running_proxy(unpriced, keys=keys) as env:
        reply = await post(env.url, OPENAI, HI_OPENAI)
        assert reply.status_code == 400
        error = openai_error(reply)
        assert error["code"] == "unknown_price"
        assert '[prices."gpt-4.1"]' in error["message"]
        assert env.upstream.requests == []


async def test_an_unexpected_failure_is_a_generic_500_in_the_clients_format() -> None:
    class BrokenKeys(FakeKeys):
        async def verify(self, secret: str) -> VirtualKey | None:
            raise RuntimeError("database password is hunter2")

    async with running_proxy(keys=BrokenKeys()) as env:
        reply = await post(env.url, ANTHROPIC, HI_ANTHROPIC)
        assert reply.status_code == 500
        error = anthropic_error(reply)
        assert error["type"] == "api_error"
        assert error["message"] == "internal error in the tether gateway (details are in its log)"
        assert "hunter2" not in reply.text


async def test_the_upstream_url_cannot_be_steered_by_the_request() -> None:
    async with running_proxy() as env:
        env.upstream.on(OPENAI, json_reply(payload("openai_text.json")))
        async with httpx.AsyncClient() as client:
            reply = await client.post(
                f"{env.url}{OPENAI}",
                json={**HI_OPENAI, "base_url": "http://169.254.169.254/", "api_base": "http://evil.example/v1"},
                headers={
                    "authorization": f"Bearer {ALICE}",
                    "host": "evil.example",
                    "x-forwarded-host": "evil.example",
                    "x-upstream-url": "http://evil.example/v1",
                    "openai-base-url": "http://evil.example/v1",
                },
            )
            assert reply.status_code == 200
            assert [r.path for r in env.upstream.requests] == [OPENAI]
            assert env.upstream.requests[0].headers["host"].startswith("127.0.0.1:")
            # A model name shaped like a URL is just an unknown route.
            shaped = await client.post(
                f"{env.url}{OPENAI}",
                json={**HI_OPENAI, "model": "http://evil.example/v1"},
                headers={"authorization": f"Bearer {ALICE}"},
            )
            assert shaped.status_code == 404
        assert len(env.upstream.requests) == 1


async def test_a_body_over_the_limit_is_413() -> None:
    def config(upstream: str) -> dict[str, Any]:
        return base_config(upstream, gateway={"max_request_bytes": 1024})

    async with running_proxy(config) as env:
        reply = await post(env.url, OPENAI, {**HI_OPENAI, "padding": "x" * 2048})
        assert reply.status_code == 413
        error = openai_error(reply)
        assert "larger than this gateway accepts (1,024 bytes)" in error["message"]
        assert "max_request_bytes under [gateway] in tether.toml" in error["message"]
        assert error["code"] == "request_too_large"


async def test_an_unreachable_upstream_is_503_without_its_address() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]

    def config(upstream: str) -> dict[str, Any]:
        settings = base_config(upstream)
        settings["providers"]["oai"]["base_url"] = f"http://127.0.0.1:{dead}/v1"
        return settings

    async with running_proxy(config) as env:
        reply = await post(env.url, OPENAI, HI_OPENAI)
        assert reply.status_code == 503
        message = openai_error(reply)["message"]
        assert "could not reach deployment gpt (openai)" in message
        assert str(dead) not in message
