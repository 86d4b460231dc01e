"""Streams that do not end well: cut upstreams, error events, clients that leave, fallbacks before the first byte."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from tests.gateway.proxy_support import (
    base_config,
    json_reply,
    running_proxy,
    set_provider_keys,
    sse_events,
    sse_reply,
)
from tether import semconv as sc
from tether.config import BudgetLimit
from tether.gateway.budget import BudgetScope

LIMIT = BudgetLimit(usd=Decimal(10))


async def read_all(stream: Any, into: list[str] | None = None) -> None:
    """Consume an OpenAI SDK stream, keeping its text."""
    async for chunk in stream:
        if into is not None and chunk.choices:
            into.append(chunk.choices[0].delta.content or "")


async def stream_message(client: anthropic.AsyncAnthropic, **kwargs: Any) -> None:
    """Consume an Anthropic SDK message stream to its end."""
    async with client.messages.stream(**kwargs) as stream:
        async for _ in stream:
            pass


@pytest.fixture(autouse=True)
def _provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    set_provider_keys(monkeypatch)


def budgeted(upstream: str) -> dict[str, Any]:
    config = base_config(
        upstream,
        routes={
            "fast": {"tiers": [["gpt"]], "retry": {"max_retries": 0}, "budget": {"usd": 10}},
            "smart": {"tiers": [["claude"]], "retry": {"max_retries": 0}, "budget": {"usd": 10}},
            "fallback": {"tiers": [["gpt-down"], ["gpt"]], "retry": {"max_retries": 0}},
            "sim-cut": {"tiers": [["sim-cut"]], "retry": {"max_retries": 0}, "budget": {"usd": 10}},
        },
    )
    config["deployments"]["sim-cut"] = {
        "provider": "sim",
        "model": "claude-sonnet-4-5",
        "faults": {"stream_cut_rate": 1.0, "stream_cut_after": 3},
    }
    return config


async def test_an_openai_stream_that_ends_without_done_is_an_error_for_the_sdk_and_is_billed() -> None:
    events = sse_events("openai_stream_text.sse")
    async with running_proxy(budgeted) as env:
        env.upstream.on("/v1/chat/completions", sse_reply(events, stop_after=3))
        client = env.openai()
        stream = await client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        received: list[str] = []
        with pytest.raises(openai.APIError) as caught:
            await read_all(stream, received)
        assert "".join(received) == "Hello!"  # what arrived before the cut did reach the client
        assert "ended before the answer was complete" in caught.value.message

        (span,) = await env.chat_spans()
        attrs = dict(span.attributes or {})
        assert attrs[sc.ERROR_TYPE] == "StreamInterrupted"
        assert attrs[sc.TETHER_USAGE_ESTIMATED] is True
        assert attrs[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 2  # "Hello!": 6 characters ≈ 2 tokens
        assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] > 0
        assert attrs[sc.TETHER_COST_USD] > 0
        usage = await env.gateway.budgets.usage(BudgetScope("route", "fast", LIMIT))
        assert usage.spent_usd > 0 and usage.reserved_usd == 0
        assert env.metrics.stream_interruptions["fast"] == 1
        # A cut is the deployment's failure: its breaker counts it.
        assert env.gateway.breakers.snapshot()["gpt"]["failures"] == 1


async def test_an_anthropic_stream_whose_connection_drops_is_an_error_for_the_sdk() -> None:
    events = sse_events("anthropic_stream_tool_use.sse")
    async with running_proxy(budgeted) as env:
        env.upstream.on("/v1/messages", sse_reply(events, stop_after=4, abort=True))
        client = env.anthropic()
        with pytest.raises(anthropic.APIError) as caught:
            await stream_message(client, model="smart", max_tokens=100, messages=[{"role": "user", "content": "Hi"}])
        assert "ended before the answer was complete" in str(caught.value)

        (span,) = await env.chat_spans()
        attrs = dict(span.attributes or {})
        assert attrs[sc.ERROR_TYPE] == "StreamInterrupted"
        # message_start reported the input (with its cache reads); that part is billed as reported.
        assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] == 472 + 2048
        assert attrs[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 2048
        assert attrs[sc.TETHER_USAGE_ESTIMATED] is True
        usage = await env.gateway.budgets.usage(BudgetScope("route", "smart", LIMIT))
        assert usage.spent_usd > 0 and usage.reserved_usd == 0


async def test_an_anthropic_error_event_mid_stream_reaches_the_sdk_and_is_billed() -> None:
    async with running_proxy(budgeted) as env:
        env.upstream.on("/v1/messages", sse_reply(sse_events("anthropic_stream_overloaded.sse")))
        client = env.anthropic()
        with pytest.raises(anthropic.APIStatusError) as caught:
            await stream_message(client, model="smart", max_tokens=100, messages=[{"role": "user", "content": "Hi"}])
        assert "overloaded_error" in str(caught.value)
        (span,) = await env.chat_spans()
        attrs = dict(span.attributes or {})
        assert attrs[sc.ERROR_TYPE] == "ModelHTTPError"
        assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] == 25
        usage = await env.gateway.budgets.usage(BudgetScope("route", "smart", LIMIT))
        assert usage.spent_usd > 0


async def test_a_translated_stream_cut_mid_way_is_an_error_for_the_sdk() -> None:
    async with running_proxy(budgeted) as env:
        client = env.openai()
        stream = await client.chat.completions.create(
            model="sim-cut",
            messages=[{"role": "user", "content": "Explain the outage in detail, step by step, please."}],
            stream=True,
        )
        with pytest.raises(openai.APIError) as caught:
            await read_all(stream)
        assert "stream cut" in caught.value.message
        (span,) = await env.chat_spans()
        attrs = dict(span.attributes or {})
        assert attrs[sc.ERROR_TYPE] == "StreamInterrupted"
        assert attrs[sc.TETHER_USAGE_ESTIMATED] is True
        assert attrs[sc.GEN_AI_USAGE_OUTPUT_TOKENS] > 0
        usage = await env.gateway.budgets.usage(BudgetScope("route", "sim-cut", LIMIT))
        assert usage.spent_usd > 0 and usage.reserved_usd == 0


async def test_a_client_leaving_mid_stream_cancels_the_upstream_and_pays_for_what_was_used() -> None:
    hold, gone = asyncio.Event(), asyncio.Event()
    async with running_proxy(budgeted) as env:
        env.upstream.on("/v1/chat/completions", sse_reply(sse_events("openai_stream_text.sse"), hold=hold, gone=gone))
        client = env.openai()
        stream = await client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        first = await anext(aiter(stream))
        assert first.choices[0].delta.role == "assistant"
        await stream.close()
        # The proxy drops its upstream connection: the (held) upstream sees it go.
        await asyncio.wait_for(gone.wait(), timeout=5)

        (span,) = await env.chat_spans()
        attrs = dict(span.attributes or {})
        assert attrs[sc.TETHER_USAGE_ESTIMATED] is True
        assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] > 0
        assert [e.name for e in span.events] == ["client_disconnected"]
        assert sc.ERROR_TYPE not in attrs  # the client's choice, not a failure
        usage = await env.gateway.budgets.usage(BudgetScope("route", "fast", LIMIT))
        assert usage.spent_usd > 0 and usage.reserved_usd == 0
        assert env.metrics.client_disconnects["fast"] == 1
        # Not the deployment's fault: the breaker does not count it.
        assert env.gateway.breakers.snapshot()["gpt"]["failures"] == 0


async def test_a_503_before_the_stream_starts_falls_back_to_the_next_deployment() -> None:
    async with running_proxy(budgeted) as env:
        env.upstream.on(
            "/down/v1/chat/completions",
            json_reply({"error": {"message": "overloaded", "type": "server_error"}}, status=503),
        )
        env.upstream.on("/v1/chat/completions", sse_reply(sse_events("openai_stream_text.sse")))
        client = env.openai()
        stream = await client.chat.completions.create(
            model="fallback", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Hello! How can I help you today?"
        assert [r.path for r in env.upstream.requests] == ["/down/v1/chat/completions", "/v1/chat/completions"]

        (span,) = await env.chat_spans()
        attrs = dict(span.attributes or {})
        assert attrs[sc.TETHER_DEPLOYMENT] == "gpt"
        (fallback,) = attrs[sc.TETHER_FALLBACKS]
        assert fallback.startswith("gpt-down: ModelHTTPError")
        assert sc.ERROR_TYPE not in attrs
        assert env.metrics.upstream_calls[("gpt-down", "error")] == 1
        assert env.metrics.upstream_calls[("gpt", "ok")] == 1
